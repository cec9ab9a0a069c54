//! FlowCam dataset layout: object-store access, meta/features CSV, images (dir or zip), labels, split, stats.
#![forbid(unsafe_code)]

pub mod cloud;
pub mod error;
pub mod faults;
pub mod feature_transform;
pub mod features;
pub mod images;
pub mod labels;
pub mod layout;
pub mod meta;
pub mod split;
pub mod stats;
pub mod storage;
pub mod summary;
pub mod zip_index;

pub use cloud::{StoreKind, StoreOperation, StoreOptions};
pub use error::{DatasetError, ImageHeaderError};
pub use feature_transform::{DroppedFeature, FeatureTransform, ImputationCounts};
pub use features::{FeatureTable, read_features};
pub use images::{
    ImageSource, ImageVersions, check_image_header, fetch_image, fetch_images, image_path,
    image_source_version, is_bad_image, list_image_objids, open_image_source,
};
pub use labels::LabelEncoding;
pub use meta::{MetaRecord, MetaTable, read_meta};
pub use split::{
    ClassWeighting, class_weights, indices_by_label, stratified_shards, stratified_split,
    stratified_subsample,
};
pub use stats::{DatasetStats, compute_stats, write_plots};
pub use storage::{
    FetchRetry, RetriesExhausted, StoreLocation, is_transient, open_location, open_location_with,
};
pub use summary::{ReadSummary, SkippedItem};
pub use zip_index::ZipIndex;

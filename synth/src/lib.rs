//! Synthetic FlowCam dataset generator with measured native features.
//!
//! [`generate`] writes a dataset root in the real layout (`meta.csv`, `features_native.csv[.gz]`,
//! `imgs/<objid>.jpg` or `imgs.zip`) to any [`object_store::ObjectStore`], with the reference class
//! imbalance ([`class_counts`]), per-class morphologies ([`render_object`]) and native features
//! measured on the rendered pixels ([`measure_features`]).
#![forbid(unsafe_code)]

mod counts;
mod error;
mod features;
mod generate;
mod image;
mod meta;
mod morphology;
mod rng;
pub mod zip;

pub use counts::{CLASS_COUNT, MINIMUM_OBJECTS, class_counts, class_name};
pub use error::SynthError;
pub use features::measure_features;
pub use generate::{SynthConfig, SynthSummary, generate};
pub use image::GreyImage;
pub use morphology::render_object;

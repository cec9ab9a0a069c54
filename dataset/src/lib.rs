//! FlowCam dataset layout: object-store access, meta/features CSV, images (dir or zip), labels, split, stats.
pub mod layout;

//! Synthetic FlowCam dataset generator with measured native features.

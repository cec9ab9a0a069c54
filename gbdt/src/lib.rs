//! Gradient-boosted trees for the 64 native features: one-vs-rest logistic boosting per class on a dense
//! `f32` matrix (NaN = missing, each split learns where missing values go), per-sample weights (the job's class
//! weighting), class probabilities, and the model as bytes.
//!
//! The engine is `forust-ml` (histogram splits, depth-wise growth, stable Rust, pure Rust). It boosts binary
//! log-loss only, so a `C`-class model is `C` boosters trained in parallel (rayon), each on "this class vs the
//! rest" with the same sample weights; a row's probabilities are the boosters' sigmoids normalised to sum 1.
//! Candidates weighed against it: `perpetual` (every release needs a nightly compiler), `gbdt` (exact greedy
//! splits, unmaintained since 2020), `lightgbm3` (builds LightGBM's C++ with cmake and libclang, which
//! neither the build machines nor CI have). bench/src/bin/gbdt_compare.rs measures it against XGBoost.
#![forbid(unsafe_code)]

mod booster;
mod error;

pub use booster::{FeatureMatrix, GbdtModel, GbdtParams};
pub use error::GbdtError;

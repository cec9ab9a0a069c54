//! Models (lenet, wide_lenet, resnet, fusion) and the data-parallel training loop on libtorch.
#![forbid(unsafe_code)]

pub mod batch;
pub mod card;
pub mod config;
pub mod cost;
pub mod data_parallel;
pub mod error;
pub mod inference;
pub mod model;
pub mod optimizer;
mod pytorch_init;
mod safetensors_io;
pub mod training;

/// The collective API the trainer runs on, re-exported for callers.
pub use plankton_collective::{Collective, CollectiveError, GradientCompression, SingleProcess};

pub use batch::{AssembledBatch, EpochBatches, ImageRecords, RandomTransform, ShardData};
pub use card::{ModelCard, ModelInput, TrainingRecord};
pub use config::{
    Architecture, AugmentationMode, IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE, LossFunction,
    LossNormalization, LrSchedule, NonFinitePolicy, OptimizerChoice, Precision, TrainConfig,
};
pub use cost::{PassCost, pass_cost};
pub use data_parallel::{
    DataParallelTrainer, MISTAKES_PER_CLASS, Mistake, ShardEvaluation, StepOutcome, StepTimings,
    TrainingProgress,
};
pub use error::TrainError;
pub use inference::{InferenceModel, TrainedModel};
pub use model::{FEATURE_MLP_WIDTH, Network};
pub use optimizer::Optimizer;
pub use training::{
    EpochEvaluation, GenerationOutcome, LoggingObserver, StepProgress, TrainingObserver,
    VirtualShardData, run_generation, run_training,
};

//! End-to-end on one rank: a tiny run learns, cancellation, safetensors round trip.
use std::ops::ControlFlow;

use plankton_collective::SingleProcess;
use plankton_trainer::{
    Architecture, AugmentationMode, EpochEvaluation, IMAGE_LEN, IMAGE_SIZE, InferenceModel,
    LrSchedule, Precision, ShardData, StepProgress, TrainConfig, TrainError, TrainingObserver,
    run_training,
};

/// Class 0: a bright vertical bar, class 1: a bright horizontal bar, at random positions, on noise.
fn bar_images(count: usize, seed: u64) -> ShardData {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let mut shard = ShardData::default();
    for index in 0..count {
        let label = (index % 2) as u32;
        let mut image = vec![0u8; IMAGE_LEN];
        for value in image.iter_mut() {
            *value = next(60) as u8;
        }
        let bar_start = 8 + next(40) as usize;
        for channel in 0..3 {
            for along in 0..IMAGE_SIZE {
                for across in bar_start..bar_start + 6 {
                    let (x, y) = if label == 0 {
                        (across, along)
                    } else {
                        (along, across)
                    };
                    image[channel * IMAGE_SIZE * IMAGE_SIZE + y * IMAGE_SIZE + x] = 230;
                }
            }
        }
        shard.images.extend_from_slice(&image);
        shard.labels.push(label);
    }
    shard
}

#[derive(Default)]
struct Recorder {
    steps: Vec<StepProgress>,
    epochs: Vec<EpochEvaluation>,
    cancel_after_steps: Option<usize>,
}

impl TrainingObserver for Recorder {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()> {
        self.steps.push(progress.clone());
        match self.cancel_after_steps {
            Some(limit) if self.steps.len() >= limit => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()> {
        self.epochs.push(evaluation.clone());
        ControlFlow::Continue(())
    }
}

fn tiny_config(architecture: Architecture) -> TrainConfig {
    let mut config = TrainConfig::new(2, vec![1.0, 1.0]);
    config.architecture = architecture;
    config.epochs = 3;
    config.batch_size = 16;
    config.steps_per_epoch = 4;
    config.learning_rate = 2e-3;
    config.lr_schedule = LrSchedule::Cosine;
    config
}

fn accuracy(confusion: &[u64]) -> f64 {
    let correct = confusion[0] + confusion[3];
    correct as f64 / confusion.iter().sum::<u64>() as f64
}

#[test]
fn a_tiny_resnet_run_learns_bars_and_round_trips_through_safetensors() {
    let train = bar_images(48, 1);
    let test = bar_images(32, 2);
    let mut config = tiny_config(Architecture::ResNet);
    config.augmentation = AugmentationMode::RareClasses;
    // The four-stage ResNet's batch-norm running statistics need more steps than the tiny default; with 16
    // the run reaches the bounds below from the initial weights of each of the seeds 1-9 and 42.
    config.steps_per_epoch = 16;
    let mut recorder = Recorder::default();
    let model = run_training(&config, &train, &test, &mut SingleProcess, &mut recorder).unwrap();

    assert_eq!(recorder.steps.len(), 48);
    assert_eq!(recorder.epochs.len(), 3);
    assert!(
        recorder
            .steps
            .iter()
            .all(|step| step.loss.is_finite() && step.images_per_second > 0.0)
    );
    let first_epoch = &recorder.epochs[0];
    let last_epoch = &recorder.epochs[2];
    assert_eq!(last_epoch.test_count, 32);
    assert_eq!(last_epoch.confusion.iter().sum::<u64>(), 32);
    assert!(
        last_epoch.train_loss < first_epoch.train_loss,
        "{recorder_losses:?}",
        recorder_losses = recorder
            .epochs
            .iter()
            .map(|e| e.train_loss)
            .collect::<Vec<_>>()
    );
    assert!(
        accuracy(&last_epoch.confusion) >= 0.9,
        "confusion {:?}",
        last_epoch.confusion
    );
    assert!(
        last_epoch.test_loss_sum / 32.0 < std::f64::consts::LN_2,
        "test loss {}",
        last_epoch.test_loss_sum
    );

    let trained_probabilities = model
        .predict_probabilities(&test.images, test.len())
        .unwrap();
    assert_eq!(trained_probabilities.len(), 64);
    let confusion = model.evaluate(&test).unwrap().confusion;
    assert_eq!(confusion, last_epoch.confusion);

    let weights = model.to_safetensors().unwrap();
    let loaded =
        InferenceModel::from_safetensors(Architecture::ResNet, 2, &weights, tch::Device::Cpu)
            .unwrap();
    let loaded_probabilities = loaded
        .predict_probabilities(&test.images, test.len())
        .unwrap();
    // Batch norms folded into the convolutions: the same function up to float rounding.
    for (folded, trained) in loaded_probabilities.iter().zip(&trained_probabilities) {
        assert!(
            (folded - trained).abs() < 1e-5,
            "folded {folded} vs trained {trained}"
        );
    }
    for row in loaded_probabilities.chunks(2) {
        assert!((row[0] + row[1] - 1.0).abs() < 1e-5);
    }
    let unfolded_probabilities =
        InferenceModel::from_safetensors(Architecture::ResNet, 2, &weights, tch::Device::Cpu)
            .unwrap()
            .without_folding()
            .predict_probabilities(&test.images, test.len())
            .unwrap();
    assert_eq!(unfolded_probabilities, trained_probabilities);

    let wrong_architecture =
        InferenceModel::from_safetensors(Architecture::LeNet, 2, &weights, tch::Device::Cpu);
    assert!(matches!(
        wrong_architecture,
        Err(TrainError::WeightsMismatch { .. })
    ));
    let wrong_classes =
        InferenceModel::from_safetensors(Architecture::ResNet, 5, &weights, tch::Device::Cpu);
    assert!(matches!(
        wrong_classes,
        Err(TrainError::WeightsMismatch { .. })
    ));
    let garbage =
        InferenceModel::from_safetensors(Architecture::ResNet, 2, b"not weights", tch::Device::Cpu);
    assert!(matches!(garbage, Err(TrainError::WeightsMismatch { .. })));
    assert!(matches!(
        loaded.predict_probabilities(&test.images[..100], 1),
        Err(TrainError::InvalidInput(_))
    ));
}

/// `wide_lenet`: the notebook's `lenet` (6/16/16 filters of 2x2) needs more than these 16 steps to leave the
/// constant answer.
#[test]
fn wide_lenet_learns_bars_too() {
    let train = bar_images(48, 3);
    let test = bar_images(32, 4);
    let mut config = tiny_config(Architecture::WideLeNet);
    config.epochs = 4;
    let mut recorder = Recorder::default();
    run_training(&config, &train, &test, &mut SingleProcess, &mut recorder).unwrap();
    let last_epoch = recorder.epochs.last().unwrap();
    assert!(
        accuracy(&last_epoch.confusion) >= 0.9,
        "confusion {:?}",
        last_epoch.confusion
    );
}

#[test]
fn the_observer_cancels_and_bad_input_is_an_error() {
    let train = bar_images(8, 5);
    let test = bar_images(4, 6);
    let mut config = tiny_config(Architecture::LeNet);
    config.batch_size = 4;
    let mut recorder = Recorder {
        cancel_after_steps: Some(2),
        ..Default::default()
    };
    let result = run_training(&config, &train, &test, &mut SingleProcess, &mut recorder);
    assert!(matches!(result, Err(TrainError::Cancelled)));
    assert_eq!(recorder.steps.len(), 2);
    assert!(recorder.epochs.is_empty());

    let mut bad_labels = train.clone();
    bad_labels.labels[3] = 7;
    let error = run_training(
        &config,
        &bad_labels,
        &test,
        &mut SingleProcess,
        &mut Recorder::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("image 3"), "{error}");

    let mut bad_config = config.clone();
    bad_config.class_weights = vec![1.0];
    let error = run_training(
        &bad_config,
        &train,
        &test,
        &mut SingleProcess,
        &mut Recorder::default(),
    )
    .unwrap_err();
    assert!(matches!(error, TrainError::InvalidConfig(_)));
}

/// Macro-F1 of a 2x2 confusion matrix (rows: true class).
fn macro_f1(confusion: &[u64]) -> f64 {
    (0..2)
        .map(|class| {
            let true_positive = confusion[class * 2 + class] as f64;
            let predicted = (confusion[class] + confusion[2 + class]) as f64;
            let actual = (confusion[class * 2] + confusion[class * 2 + 1]) as f64;
            if predicted + actual == 0.0 {
                0.0
            } else {
                2.0 * true_positive / (predicted + actual)
            }
        })
        .sum::<f64>()
        / 2.0
}

/// bf16 forward/backward on f32 master weights learns the bars as f32 does: same steps, same data, both
/// reach >= 0.9 accuracy with macro-F1 within 0.01 (400 test images: one image moves it ~0.0025), the bf16
/// train loss falls, and the first step's loss agrees with f32 to bf16 precision.
#[test]
fn bf16_precision_learns_like_fp32() {
    let train = bar_images(48, 1);
    let test = bar_images(400, 2);
    let mut outcomes = Vec::new();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let mut config = tiny_config(Architecture::ResNet);
        config.steps_per_epoch = 16;
        config.precision = precision;
        let mut recorder = Recorder::default();
        run_training(&config, &train, &test, &mut SingleProcess, &mut recorder).unwrap();
        outcomes.push(recorder);
    }
    let (fp32, bf16) = (&outcomes[0], &outcomes[1]);
    let first_losses = (fp32.steps[0].loss, bf16.steps[0].loss);
    assert!(
        (first_losses.0 - first_losses.1).abs() <= 0.02 * first_losses.0.abs(),
        "first-step losses fp32 {} bf16 {}",
        first_losses.0,
        first_losses.1
    );
    assert_ne!(
        first_losses.0, first_losses.1,
        "the bf16 run computed in f32"
    );
    assert!(bf16.epochs[2].train_loss < bf16.epochs[0].train_loss);
    let fp32_f1 = macro_f1(&fp32.epochs[2].confusion);
    let bf16_f1 = macro_f1(&bf16.epochs[2].confusion);
    assert!(
        accuracy(&bf16.epochs[2].confusion) >= 0.9,
        "{:?}",
        bf16.epochs[2].confusion
    );
    assert!(
        (fp32_f1 - bf16_f1).abs() <= 0.01,
        "macro-F1 fp32 {fp32_f1} bf16 {bf16_f1}"
    );
}

/// Random images whose class is only in the features: the fusion network learns it through its feature MLP,
/// folds for inference like the resnet, and refuses to predict without features.
#[test]
fn fusion_learns_from_features_and_folds_for_inference() {
    const WIDTH: usize = 3;
    let shard_with_features = |count: usize, seed: u64| {
        let mut shard = bar_images(count, seed);
        // Same images for both classes: noise only.
        let noise = bar_images(1, seed + 100).images;
        shard.images = noise.repeat(count);
        shard.feature_width = WIDTH;
        for (index, label) in shard.labels.iter().enumerate() {
            let sign = if *label == 0 { -1.0 } else { 1.0 };
            shard
                .features
                .extend([sign, 0.5 * sign, (index % 5) as f32 * 0.1]);
        }
        shard
    };
    let train = shard_with_features(48, 5);
    let test = shard_with_features(32, 6);
    let mut config = tiny_config(Architecture::Fusion);
    config.feature_width = WIDTH;
    // Enough steps for the bound from the initial weights of each of the seeds 1-9 and 42.
    config.steps_per_epoch = 8;
    let mut recorder = Recorder::default();
    let model = run_training(&config, &train, &test, &mut SingleProcess, &mut recorder).unwrap();
    let last_epoch = recorder.epochs.last().unwrap();
    assert!(
        accuracy(&last_epoch.confusion) >= 0.9,
        "confusion {:?}",
        last_epoch.confusion
    );
    assert_eq!(model.feature_width(), WIDTH);
    let trained = model
        .predict_probabilities_with_features(&test.images, &test.features, test.len())
        .unwrap();
    let weights = model.to_safetensors().unwrap();
    let loaded =
        InferenceModel::from_safetensors(Architecture::Fusion, 2, &weights, tch::Device::Cpu)
            .unwrap();
    assert_eq!(loaded.feature_width(), WIDTH);
    let folded = loaded
        .predict_probabilities_with_features(&test.images, &test.features, test.len())
        .unwrap();
    for (folded, trained) in folded.iter().zip(&trained) {
        assert!(
            (folded - trained).abs() < 1e-5,
            "folded {folded} vs trained {trained}"
        );
    }
    let without_features = loaded.predict_probabilities(&test.images, test.len());
    match without_features {
        Err(TrainError::InvalidInput(message)) => {
            assert!(message.contains("features"), "{message}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(matches!(
        InferenceModel::from_safetensors(Architecture::ResNet, 2, &weights, tch::Device::Cpu),
        Err(TrainError::WeightsMismatch { .. })
    ));
}

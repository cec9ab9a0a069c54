//! The batcher skips queued requests whose deadline passed or whose caller went away: never computed, counted.
mod common;

use std::time::{Duration, Instant};

use common::{CLASS_NAMES, train_weights};
use plankton_serve::{BatchingConfig, InferenceEngine, ModelInput, ServeError, ServeMetrics};
use plankton_trainer::{Architecture, IMAGE_LEN, InferenceModel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_past_their_deadline_are_skipped_and_live_ones_computed()
-> anyhow::Result<()> {
    let weights = train_weights(3)?;
    let metrics = ServeMetrics::new();
    let engine = InferenceEngine::start(
        "plankton:1".to_string(),
        CLASS_NAMES.len(),
        BatchingConfig::default(),
        metrics.engine_metrics(),
        move || {
            InferenceModel::from_safetensors(
                Architecture::ResNet,
                CLASS_NAMES.len(),
                &weights,
                tch::Device::Cpu,
            )
        },
    )
    .await?;
    let pixels = vec![128u8; 2 * IMAGE_LEN];

    let expired = engine
        .predict(
            ModelInput::Pixels(pixels.clone()),
            2,
            Some(Instant::now() - Duration::from_millis(1)),
            engine.announce(),
        )
        .await;
    assert!(
        matches!(expired, Err(ServeError::DeadlineExceeded(_))),
        "{expired:?}"
    );
    assert_eq!(
        metrics.forward_passes.get(),
        0,
        "an expired request was computed"
    );

    let live = engine
        .predict(
            ModelInput::Pixels(pixels.clone()),
            2,
            Some(Instant::now() + Duration::from_secs(30)),
            engine.announce(),
        )
        .await?;
    assert_eq!(live.len(), 2 * CLASS_NAMES.len());
    assert_eq!(metrics.forward_passes.get(), 1);

    // The same images scaled to [0, 1] give the same probabilities.
    let scaled: Vec<f32> = pixels
        .iter()
        .map(|pixel| f32::from(*pixel) / 255.0)
        .collect();
    let from_scaled = engine
        .predict(ModelInput::Scaled(scaled), 2, None, engine.announce())
        .await?;
    for (left, right) in live.iter().zip(&from_scaled) {
        assert!((left - right).abs() < 1e-6, "{left} vs {right}");
    }
    let text = metrics.encode_text();
    assert!(
        text.contains(r#"plankton_serve_queued_requests_skipped_total{reason="deadline"} 1"#),
        "{text}"
    );
    Ok(())
}

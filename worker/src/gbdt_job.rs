//! A `gbdt` job on this one worker: the feature rows of its virtual shards under the transform the coordinator
//! fitted on the training split (the fusion network's rows: median imputation + missing indicators, z-scored,
//! one of each pair correlated above |0.95| dropped; z-scoring does not move a tree's splits), plankton-gbdt
//! trained with the job's class weights as sample weights, every virtual shard's test objects evaluated once
//! (epoch 1), the trees and the model card (with the transform, which serving applies to raw features) written.
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tracing::info;

use anyhow::Context;
use plankton_dataset::open_location;
use plankton_gbdt::{FeatureMatrix, GbdtModel, GbdtParams};
use plankton_preprocess::ShardCache;
use plankton_proto::GBDT_MODEL_FILE;
use plankton_proto::v1::{EpochReport, JobSpec, ShardAssignment};
use plankton_trainer::{Architecture, ModelCard, ModelInput};

use crate::features::{FeatureSource, shard_feature_matrices};
use crate::outbox::{Outbox, Report};

/// Smallest probability a test loss takes the logarithm of.
const PROBABILITY_FLOOR: f32 = 1e-7;

/// What the job produced: the model's URL and a digest of its bytes.
pub(crate) struct GbdtOutcome {
    pub(crate) model_url: String,
    pub(crate) model_digest: String,
}

/// One virtual shard's test part, evaluated.
struct ShardEvaluation {
    virtual_shard: u32,
    confusion: Vec<u64>,
    loss_sum: f64,
    count: u64,
}

/// Trains, evaluates and writes a `gbdt` job's model; epoch reports go through `outbox`. `cache` keeps the
/// shards' feature rows between runs.
pub(crate) async fn run_gbdt_job(
    assignment: &ShardAssignment,
    spec: &JobSpec,
    threads: usize,
    cache: Option<ShardCache>,
    outbox: &Outbox,
    worker_id: &str,
) -> anyhow::Result<GbdtOutcome> {
    let num_classes = assignment.class_names.len();
    let transform = crate::features::assignment_transform(assignment)?
        .context("the assignment of a gbdt job carries no feature transform")?;
    let source = FeatureSource::new(open_location(&spec.dataset_url)?, transform.clone(), cache)?;
    let mut shards = Vec::with_capacity(assignment.virtual_shards.len());
    for shard in &assignment.virtual_shards {
        shards.push((shard.index, shard_feature_matrices(&source, shard).await?));
    }
    let class_weights = assignment.class_weights.clone();
    if class_weights.len() != num_classes {
        anyhow::bail!(
            "{} class weights for {num_classes} classes",
            class_weights.len()
        );
    }
    let params = GbdtParams {
        threads: threads.max(1),
        ..Default::default()
    };
    let trained = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let width = transform.output_width();
        let mut train_values = Vec::new();
        let mut labels = Vec::new();
        for (_, matrices) in &shards {
            train_values.extend_from_slice(&matrices.train.values);
            labels.extend_from_slice(&matrices.train.labels);
        }
        let weights: Vec<f32> = labels
            .iter()
            .map(|label| class_weights[*label as usize])
            .collect();
        let train_matrix = FeatureMatrix::new(&train_values, labels.len(), width)?;
        let model = GbdtModel::train(&train_matrix, &labels, &weights, num_classes, &params)?;
        let train_loss = weighted_log_loss(&model, &train_matrix, &labels, &weights)?;
        let mut evaluations = Vec::with_capacity(shards.len());
        for (virtual_shard, matrices) in &shards {
            let test = &matrices.test;
            let matrix = FeatureMatrix::new(&test.values, test.labels.len(), width)?;
            let probabilities = model.predict_probabilities(&matrix)?;
            let mut confusion = vec![0u64; num_classes * num_classes];
            let mut loss_sum = 0.0;
            for (label, row) in test.labels.iter().zip(probabilities.chunks(num_classes)) {
                let predicted = argmax(row);
                confusion[*label as usize * num_classes + predicted] += 1;
                loss_sum -= f64::from(row[*label as usize].max(PROBABILITY_FLOOR)).ln();
            }
            evaluations.push(ShardEvaluation {
                virtual_shard: *virtual_shard,
                confusion,
                loss_sum,
                count: test.labels.len() as u64,
            });
        }
        info!(
            train_objects = labels.len(),
            features = width,
            train_loss,
            "gbdt trained"
        );
        Ok((model.to_bytes()?, transform, train_loss, evaluations))
    })
    .await??;
    let (model_bytes, transform, train_loss, evaluations) = trained;
    for evaluation in evaluations {
        outbox.send(Report::Epoch(EpochReport {
            job_id: assignment.job_id.clone(),
            rank: assignment.rank,
            epoch: 1,
            num_classes: num_classes as u32,
            confusion: evaluation.confusion,
            test_loss_sum: evaluation.loss_sum,
            test_count: evaluation.count,
            train_loss,
            virtual_shard: evaluation.virtual_shard,
            generation: assignment.generation,
            worker_id: worker_id.to_string(),
            misclassified: Vec::new(),
        }));
    }
    let model_digest = format!("{:x}", Sha256::digest(&model_bytes));
    let output = open_location(&assignment.output_url)?;
    output
        .put_bytes(GBDT_MODEL_FILE, Bytes::from(model_bytes))
        .await?;
    // The coordinator adds the job's final metrics to the card once the job is done.
    let card = ModelCard {
        architecture: Architecture::Gbdt,
        classes: assignment.class_names.clone(),
        // The trees read no pixels; serving still decodes each request's image as the job's spec says.
        input: ModelInput::standard(crate::train_settings::resize_mode(spec).name()),
        metrics: serde_json::Value::Null,
        job_id: assignment.job_id.clone(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0),
        weights_file: GBDT_MODEL_FILE.to_string(),
        feature_transform: Some(transform.as_ref().clone()),
        training: None,
    };
    output
        .put_bytes(
            "model-card.json",
            Bytes::from(serde_json::to_vec_pretty(&card)?),
        )
        .await?;
    let model_url = format!(
        "{}/{GBDT_MODEL_FILE}",
        assignment.output_url.trim_end_matches('/')
    );
    info!(model_url, "gbdt model written");
    Ok(GbdtOutcome {
        model_url,
        model_digest,
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (class, value)| {
            if *value > best.1 {
                (class, *value)
            } else {
                best
            }
        })
        .0
}

/// The class-weighted mean log loss of the model's probabilities on its training rows.
fn weighted_log_loss(
    model: &GbdtModel,
    features: &FeatureMatrix<'_>,
    labels: &[u32],
    weights: &[f32],
) -> anyhow::Result<f64> {
    let probabilities = model.predict_probabilities(features)?;
    let (mut loss_sum, mut weight_sum) = (0.0, 0.0);
    for ((row, label), weight) in probabilities
        .chunks(model.num_classes())
        .zip(labels)
        .zip(weights)
    {
        loss_sum -=
            f64::from(*weight) * f64::from(row[*label as usize].max(PROBABILITY_FLOOR)).ln();
        weight_sum += f64::from(*weight);
    }
    Ok(if weight_sum > 0.0 {
        loss_sum / weight_sum
    } else {
        0.0
    })
}

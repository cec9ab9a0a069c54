//! `planktonctl predict`: classify local images with a served model.

use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::json;

use plankton_proto::v1::inference_client::InferenceClient;
use plankton_proto::v1::{ImageInput, PredictRequest};

use crate::OutputFormat;
use crate::connection::Server;
use crate::job_commands::call_error;

pub async fn predict(
    server: &Server,
    images: Vec<PathBuf>,
    model: String,
    top_k: u32,
    output: OutputFormat,
) -> anyhow::Result<()> {
    anyhow::ensure!(!images.is_empty(), "give at least one image file");
    let mut inputs = Vec::with_capacity(images.len());
    for path in &images {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        inputs.push(ImageInput {
            data,
            id: path.display().to_string(),
            ..Default::default()
        });
    }
    let channel = server
        .channel(
            "inference server",
            "is plankton-serve running? set --server or PLANKTON_SERVER",
        )
        .await?;
    let mut client = InferenceClient::new(channel).max_encoding_message_size(64 << 20);
    let response = client
        .predict(PredictRequest {
            model,
            images: inputs,
            top_k,
        })
        .await
        .map_err(|status| call_error("predict", status))?
        .into_inner();
    match output {
        OutputFormat::Json => {
            let predictions: Vec<_> = response
                .predictions
                .iter()
                .map(|prediction| {
                    json!({
                        "image": prediction.id,
                        "error": prediction.error,
                        "top": prediction.top.iter().map(|score| json!({
                            "class": score.class_name, "class_index": score.class_index, "probability": score.probability,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "model": response.model_name, "version": response.model_version, "predictions": predictions,
                }))?
            );
        }
        OutputFormat::Table => {
            println!("model {}:{}", response.model_name, response.model_version);
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            table.set_header(["image", "rank", "class", "probability"]);
            for prediction in &response.predictions {
                if !prediction.error.is_empty() {
                    table.add_row([
                        prediction.id.clone(),
                        "-".into(),
                        format!("error: {}", prediction.error),
                        "-".into(),
                    ]);
                    continue;
                }
                for (rank, score) in prediction.top.iter().enumerate() {
                    let image = if rank == 0 {
                        prediction.id.clone()
                    } else {
                        String::new()
                    };
                    table.add_row([
                        image,
                        (rank + 1).to_string(),
                        score.class_name.clone(),
                        format!("{:.4}", score.probability),
                    ]);
                }
            }
            println!("{table}");
        }
    }
    Ok(())
}

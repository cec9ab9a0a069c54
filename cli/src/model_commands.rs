//! Model registry commands: `models list|get|promote`.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use plankton_security::AuthChannel;
use serde_json::{Value, json};

use crate::connection::Server;

use plankton_proto::v1::model_registry_client::ModelRegistryClient;
use plankton_proto::v1::{GetModelRequest, ListModelsRequest, ModelVersion, PromoteModelRequest};

use crate::OutputFormat;
use crate::job_commands::call_error;

/// A model reference: `name`, `name:VERSION` or `name@ALIAS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelReference {
    pub name: String,
    pub version: u32,
    pub alias: String,
}

impl std::str::FromStr for ModelReference {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some((name, alias)) = text.split_once('@') {
            return Ok(Self {
                name: name.into(),
                version: 0,
                alias: alias.into(),
            });
        }
        if let Some((name, version)) = text.split_once(':') {
            let version = version
                .parse()
                .map_err(|_| format!("{text:?}: version {version:?} is not a number"))?;
            return Ok(Self {
                name: name.into(),
                version,
                alias: String::new(),
            });
        }
        Ok(Self {
            name: text.into(),
            version: 0,
            alias: String::new(),
        })
    }
}

async fn connect(coordinator: &Server) -> anyhow::Result<ModelRegistryClient<AuthChannel>> {
    Ok(ModelRegistryClient::new(
        coordinator.coordinator_channel().await?,
    ))
}

pub fn model_json(model: &ModelVersion) -> Value {
    let metrics = model.test_metrics.clone().unwrap_or_default();
    json!({
        "name": model.name, "version": model.version, "aliases": model.aliases, "job_id": model.job_id,
        "architecture": model.architecture, "classes": model.class_names, "resize_mode": model.resize_mode,
        "accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "weights_url": model.weights_url,
        "card_url": model.card_url, "created_unix_ms": model.created_unix_ms,
    })
}

pub async fn list(
    coordinator: &Server,
    name: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let models = client
        .list_models(ListModelsRequest {
            name: name.unwrap_or_default(),
        })
        .await
        .map_err(|status| call_error("models list", status))?
        .into_inner()
        .models;
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&models.iter().map(model_json).collect::<Vec<_>>())?
        ),
        OutputFormat::Table => {
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            table.set_header([
                "name",
                "version",
                "aliases",
                "architecture",
                "accuracy",
                "macro-F1",
                "job",
            ]);
            for model in &models {
                let metrics = model.test_metrics.clone().unwrap_or_default();
                table.add_row([
                    model.name.clone(),
                    model.version.to_string(),
                    model.aliases.join(","),
                    model.architecture.clone(),
                    format!("{:.3}", metrics.accuracy),
                    format!("{:.3}", metrics.macro_f1),
                    model.job_id.clone(),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

pub async fn get(
    coordinator: &Server,
    reference: ModelReference,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let model = client
        .get_model(GetModelRequest {
            name: reference.name,
            version: reference.version,
            alias: reference.alias,
        })
        .await
        .map_err(|status| call_error("models get", status))?
        .into_inner();
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&model_json(&model))?),
        OutputFormat::Table => {
            let metrics = model.test_metrics.clone().unwrap_or_default();
            println!("model        {}:{}", model.name, model.version);
            println!(
                "aliases      {}",
                if model.aliases.is_empty() {
                    "-".into()
                } else {
                    model.aliases.join(", ")
                }
            );
            println!(
                "architecture {} (input 64x64, {} resize)",
                model.architecture, model.resize_mode
            );
            println!("job          {}", model.job_id);
            println!(
                "metrics      accuracy {:.4}, macro-F1 {:.4}, balanced accuracy {:.4}",
                metrics.accuracy, metrics.macro_f1, metrics.balanced_accuracy
            );
            println!("weights      {}", model.weights_url);
            println!("classes      {}", model.class_names.join(", "));
        }
    }
    Ok(())
}

pub async fn promote(
    coordinator: &Server,
    name: String,
    version: u32,
    alias: String,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let model = client
        .promote_model(PromoteModelRequest {
            name,
            version,
            alias: alias.clone(),
        })
        .await
        .map_err(|status| call_error("models promote", status))?
        .into_inner();
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&model_json(&model))?),
        OutputFormat::Table => println!("{}@{alias} -> version {}", model.name, model.version),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let latest: ModelReference = "flowcam-resnet".parse().unwrap();
        assert_eq!((latest.version, latest.alias.as_str()), (0, ""));
        let pinned: ModelReference = "flowcam-resnet:3".parse().unwrap();
        assert_eq!(pinned.version, 3);
        let aliased: ModelReference = "flowcam-resnet@production".parse().unwrap();
        assert_eq!(aliased.alias, "production");
        assert!("flowcam-resnet:three".parse::<ModelReference>().is_err());
    }
}

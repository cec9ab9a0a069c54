//! Trained models: safetensors export/import and softmax predictions.
use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::batch::ShardData;
use crate::config::{Architecture, IMAGE_LEN};
use crate::error::TrainError;
use crate::model::{Network, sorted_variables};
use crate::training::{EVALUATION_BATCH_SIZE, evaluate_network, images_to_tensor};

/// Softmax probabilities (`count * num_classes`, row per image) of `network` in eval mode.
fn predict_with(
    network: &Network,
    num_classes: usize,
    device: tch::Device,
    images: &[u8],
    count: usize,
) -> Result<Vec<f32>, TrainError> {
    if images.len() != count * IMAGE_LEN {
        return Err(TrainError::InvalidInput(format!(
            "{} bytes for {count} images (expected {} bytes per image)",
            images.len(),
            IMAGE_LEN
        )));
    }
    let mut probabilities = Vec::with_capacity(count * num_classes);
    tch::no_grad(|| -> Result<(), TrainError> {
        for chunk in images.chunks(EVALUATION_BATCH_SIZE * IMAGE_LEN) {
            let chunk_count = chunk.len() / IMAGE_LEN;
            let input = images_to_tensor(chunk, chunk_count, device)?;
            let softmax = network
                .forward_t(&input, false)
                .f_softmax(-1, Kind::Float)?
                .f_to_device(tch::Device::Cpu)?
                .f_contiguous()?;
            let start = probabilities.len();
            probabilities.resize(start + chunk_count * num_classes, 0.0);
            softmax.f_copy_data(&mut probabilities[start..], chunk_count * num_classes)?;
        }
        Ok(())
    })?;
    Ok(probabilities)
}

fn weights_to_safetensors(var_store: &nn::VarStore) -> Result<Vec<u8>, TrainError> {
    let variables = sorted_variables(var_store);
    let mut named_bytes = Vec::with_capacity(variables.len());
    for (name, tensor) in &variables {
        let cpu_tensor = tensor
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let numel = cpu_tensor.numel();
        let mut values = vec![0f32; numel];
        cpu_tensor.f_copy_data(&mut values, numel)?;
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let shape: Vec<usize> = cpu_tensor.size().iter().map(|dim| *dim as usize).collect();
        named_bytes.push((name.clone(), shape, bytes));
    }
    let views = named_bytes
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|error| TrainError::WeightsMismatch {
            architecture: "any".to_string(),
            reason: error.to_string(),
        })?;
    safetensors::tensor::serialize(views, &None).map_err(|error| TrainError::WeightsMismatch {
        architecture: "any".to_string(),
        reason: error.to_string(),
    })
}

/// Loads safetensors `bytes` into `var_store`: every variable must be present with its exact shape
/// and f32 type, and no extra tensor may be present.
fn load_safetensors_into(
    var_store: &nn::VarStore,
    architecture: Architecture,
    bytes: &[u8],
) -> Result<(), TrainError> {
    let mismatch = |reason: String| TrainError::WeightsMismatch {
        architecture: architecture.to_string(),
        reason,
    };
    let file = SafeTensors::deserialize(bytes)
        .map_err(|error| mismatch(format!("not a safetensors file: {error}")))?;
    let variables: HashMap<String, Tensor> = var_store.variables();
    if let Some(unknown) = file
        .names()
        .into_iter()
        .find(|name| !variables.contains_key(name.as_str()))
    {
        return Err(mismatch(format!("unexpected tensor {unknown:?}")));
    }
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, variable) in sorted_variables(var_store) {
            let view = file
                .tensor(&name)
                .map_err(|_| mismatch(format!("tensor {name:?} is missing")))?;
            let expected_shape: Vec<usize> =
                variable.size().iter().map(|dim| *dim as usize).collect();
            if view.shape() != expected_shape.as_slice() || view.dtype() != Dtype::F32 {
                return Err(mismatch(format!(
                    "tensor {name:?} is {:?} {:?}, expected F32 {expected_shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            let dims: Vec<i64> = expected_shape.iter().map(|dim| *dim as i64).collect();
            let source = Tensor::f_from_data_size(view.data(), &dims, Kind::Float)?
                .f_to_device(variable.device())?;
            variable.shallow_clone().f_copy_(&source)?;
        }
        Ok(())
    })
}

/// The result of a training run: the network with its final weights (identical on every rank).
#[derive(Debug)]
pub struct TrainedModel {
    architecture: Architecture,
    num_classes: usize,
    device: tch::Device,
    var_store: nn::VarStore,
    network: Network,
}

impl TrainedModel {
    pub(crate) fn new(
        architecture: Architecture,
        num_classes: usize,
        device: tch::Device,
        var_store: nn::VarStore,
        network: Network,
    ) -> Self {
        TrainedModel {
            architecture,
            num_classes,
            device,
            var_store,
            network,
        }
    }

    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All weights and batch-norm statistics as a safetensors file (f32, PyTorch-style names such as
    /// `layer1.conv1.weight`).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, TrainError> {
        weights_to_safetensors(&self.var_store)
    }

    /// Softmax probabilities (`count * num_classes`) in eval mode.
    pub fn predict_probabilities(
        &self,
        images_u8: &[u8],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        predict_with(
            &self.network,
            self.num_classes,
            self.device,
            images_u8,
            count,
        )
    }

    /// Confusion matrix (`[true][predicted]`) and summed unweighted cross-entropy over `test`.
    pub fn evaluate(&self, test: &ShardData) -> Result<(Vec<u64>, f64), TrainError> {
        test.validate("test", self.num_classes)?;
        evaluate_network(&self.network, self.num_classes, self.device, test)
    }

    /// The model for inference (the same weights).
    pub fn into_inference_model(self) -> InferenceModel {
        InferenceModel {
            num_classes: self.num_classes,
            device: self.device,
            _var_store: self.var_store,
            network: self.network,
        }
    }
}

/// A model loaded for prediction.
#[derive(Debug)]
pub struct InferenceModel {
    num_classes: usize,
    device: tch::Device,
    _var_store: nn::VarStore,
    network: Network,
}

impl InferenceModel {
    /// Loads weights written by [`TrainedModel::to_safetensors`].
    pub fn from_safetensors(
        architecture: Architecture,
        num_classes: usize,
        bytes: &[u8],
        device: tch::Device,
    ) -> Result<Self, TrainError> {
        if num_classes < 2 {
            return Err(TrainError::InvalidConfig(format!(
                "num_classes is {num_classes}, need at least 2"
            )));
        }
        let var_store = nn::VarStore::new(device);
        let network = Network::new(&var_store, architecture, num_classes, 0)?;
        load_safetensors_into(&var_store, architecture, bytes)?;
        Ok(InferenceModel {
            num_classes,
            device,
            _var_store: var_store,
            network,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Softmax probabilities (`count * num_classes`, one row per image) for u8 CHW images.
    pub fn predict_probabilities(
        &self,
        images_u8: &[u8],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        predict_with(
            &self.network,
            self.num_classes,
            self.device,
            images_u8,
            count,
        )
    }
}

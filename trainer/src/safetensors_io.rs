//! Named f32 tensors to and from safetensors bytes: model files and training-state files.
use std::collections::{HashMap, HashSet};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use crate::error::TrainError;

/// The f32 values of `tensor` in logical (NCHW, row-major) order, as little-endian bytes.
pub(crate) fn f32_le_bytes(tensor: &Tensor) -> Result<Vec<u8>, TrainError> {
    let cpu_tensor = tensor
        .f_detach()?
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let numel = cpu_tensor.numel();
    let mut values = vec![0f32; numel];
    cpu_tensor.f_copy_data(&mut values, numel)?;
    Ok(values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect())
}

/// Serializes `tensors` (f32, in the order given) with optional string metadata.
pub(crate) fn serialize(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, TrainError> {
    let serialization_error = |reason: String| TrainError::WeightsMismatch {
        architecture: "any".to_string(),
        reason,
    };
    let mut named_bytes = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let shape: Vec<usize> = tensor.size().iter().map(|dim| *dim as usize).collect();
        named_bytes.push((name.as_str(), shape, f32_le_bytes(tensor)?));
    }
    let views = named_bytes
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (*name, view))
                .map_err(|error| serialization_error(format!("tensor {name:?}: {error}")))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    safetensors::tensor::serialize(views, &metadata)
        .map_err(|error| serialization_error(error.to_string()))
}

/// A parsed safetensors file and its metadata.
pub(crate) struct TensorFile<'data> {
    pub tensors: SafeTensors<'data>,
    pub metadata: HashMap<String, String>,
}

impl<'data> TensorFile<'data> {
    /// Parses `bytes`; `mismatch` builds the error naming what is wrong.
    pub fn parse(
        bytes: &'data [u8],
        mismatch: &dyn Fn(String) -> TrainError,
    ) -> Result<Self, TrainError> {
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|error| mismatch(format!("not a safetensors file: {error}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|error| mismatch(format!("not a safetensors file: {error}")))?;
        Ok(TensorFile {
            tensors,
            metadata: header.metadata().clone().unwrap_or_default(),
        })
    }

    /// The first tensor of the file that is neither in `expected` nor accepted by `ignore`.
    pub fn unexpected_name(
        &self,
        expected: &[(String, Tensor)],
        ignore: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let expected_names: HashSet<&str> =
            expected.iter().map(|(name, _)| name.as_str()).collect();
        let mut names: Vec<&String> = self.tensors.names();
        names.sort();
        names
            .into_iter()
            .find(|name| !expected_names.contains(name.as_str()) && !ignore(name))
            .cloned()
    }

    /// Copies every tensor of `targets` from the file after checking all of them (presence, F32,
    /// shape): on error nothing was copied.
    pub fn copy_into(
        &self,
        targets: &[(String, Tensor)],
        mismatch: &dyn Fn(String) -> TrainError,
    ) -> Result<(), TrainError> {
        let mut views = Vec::with_capacity(targets.len());
        for (name, target) in targets {
            let view = self
                .tensors
                .tensor(name)
                .map_err(|_| mismatch(format!("tensor {name:?} is missing")))?;
            let expected_shape: Vec<usize> =
                target.size().iter().map(|dim| *dim as usize).collect();
            if view.shape() != expected_shape.as_slice() || view.dtype() != Dtype::F32 {
                return Err(mismatch(format!(
                    "tensor {name:?} is {:?} {:?}, expected F32 {expected_shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            views.push(view);
        }
        tch::no_grad(|| -> Result<(), TrainError> {
            for ((_, target), view) in targets.iter().zip(&views) {
                let dims = target.size();
                let source = Tensor::f_from_data_size(view.data(), &dims, Kind::Float)?
                    .f_to_device(target.device())?;
                target.shallow_clone().f_copy_(&source)?;
            }
            Ok(())
        })
    }
}

//! Trained models: safetensors export/import and softmax predictions.
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::batch::ShardData;
use crate::config::{Architecture, IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use crate::data_parallel::{
    EVALUATION_BATCH_SIZE, ShardEvaluation, evaluate_network, images_to_tensor,
};
use crate::error::TrainError;
use crate::model::{FoldedResNet, Network, channels_last, sorted_variables};
use crate::safetensors_io::{self, TensorFile};

/// What runs a forward pass: a network in eval mode, or a ResNet with its batch norms folded for inference.
#[derive(Clone, Copy)]
enum Forward<'model> {
    Network(&'model Network),
    Folded(&'model FoldedResNet),
}

impl Forward<'_> {
    fn logits(self, input: &Tensor) -> Result<Tensor, TrainError> {
        match self {
            Forward::Network(network) => Ok(network.forward_t(input, false)),
            Forward::Folded(network) => network.forward(input),
        }
    }
}

/// Softmax probabilities (`count * num_classes`, row per image) of `network` in eval mode.
fn predict_with(
    network: Forward<'_>,
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
    predict_chunks(network, num_classes, count, |first, chunk_count| {
        images_to_tensor(
            &images[first * IMAGE_LEN..(first + chunk_count) * IMAGE_LEN],
            chunk_count,
            device,
        )
    })
}

/// As [`predict_with`], for images already scaled to the network's input (f32 CHW, u8 / 255).
fn predict_scaled_with(
    network: Forward<'_>,
    num_classes: usize,
    device: tch::Device,
    images: &[f32],
    count: usize,
) -> Result<Vec<f32>, TrainError> {
    if images.len() != count * IMAGE_LEN {
        return Err(TrainError::InvalidInput(format!(
            "{} values for {count} images (expected {} per image)",
            images.len(),
            IMAGE_LEN
        )));
    }
    predict_chunks(network, num_classes, count, |first, chunk_count| {
        let shape = [
            chunk_count as i64,
            IMAGE_CHANNELS as i64,
            IMAGE_SIZE as i64,
            IMAGE_SIZE as i64,
        ];
        let values = &images[first * IMAGE_LEN..(first + chunk_count) * IMAGE_LEN];
        let input = Tensor::f_from_slice(values)?
            .f_view(shape)?
            .f_to_device(device)?;
        channels_last(&input)
    })
}

/// Runs `network` over `count` images in chunks of the evaluation batch size; `chunk_input(first, count)`
/// builds the input tensor of images `first..first + count`.
fn predict_chunks(
    network: Forward<'_>,
    num_classes: usize,
    count: usize,
    chunk_input: impl Fn(usize, usize) -> Result<Tensor, TrainError>,
) -> Result<Vec<f32>, TrainError> {
    let mut probabilities = Vec::with_capacity(count * num_classes);
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut first = 0;
        while first < count {
            let chunk_count = (count - first).min(EVALUATION_BATCH_SIZE);
            let input = chunk_input(first, chunk_count)?;
            let softmax = network
                .logits(&input)?
                .f_softmax(-1, Kind::Float)?
                .f_to_device(tch::Device::Cpu)?
                .f_contiguous()?;
            let start = probabilities.len();
            probabilities.resize(start + chunk_count * num_classes, 0.0);
            softmax.f_copy_data(&mut probabilities[start..], chunk_count * num_classes)?;
            first += chunk_count;
        }
        Ok(())
    })?;
    Ok(probabilities)
}

/// Every variable of `var_store` (sorted by name) as a safetensors model file.
pub(crate) fn weights_to_safetensors(var_store: &nn::VarStore) -> Result<Vec<u8>, TrainError> {
    safetensors_io::serialize(&sorted_variables(var_store), None)
}

/// Loads the model variables of safetensors `bytes` into `variables` (sorted by name): every
/// variable must be present with its exact shape and f32 type; any other tensor is refused unless
/// `ignore` accepts its name (a training-state file's optimizer tensors).
pub(crate) fn load_weights_into(
    variables: &[(String, Tensor)],
    architecture: Architecture,
    bytes: &[u8],
    ignore: impl Fn(&str) -> bool,
) -> Result<(), TrainError> {
    let mismatch = |reason: String| TrainError::WeightsMismatch {
        architecture: architecture.to_string(),
        reason,
    };
    let file = TensorFile::parse(bytes, &mismatch)?;
    if let Some(unknown) = file.unexpected_name(variables, ignore) {
        return Err(mismatch(format!("unexpected tensor {unknown:?}")));
    }
    file.copy_into(variables, &mismatch)
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
            Forward::Network(&self.network),
            self.num_classes,
            self.device,
            images_u8,
            count,
        )
    }

    /// Confusion matrix (`[true][predicted]`), summed unweighted cross-entropy and most confident mistakes over `test`.
    pub fn evaluate(&self, test: &ShardData) -> Result<ShardEvaluation, TrainError> {
        test.validate("test", self.num_classes)?;
        evaluate_network(&self.network, self.num_classes, self.device, test)
    }

    /// The model for inference (the same weights, batch norms folded).
    pub fn into_inference_model(self) -> Result<InferenceModel, TrainError> {
        InferenceModel::new(self.num_classes, self.device, self.var_store, self.network)
    }
}

/// A model loaded for prediction. A ResNet runs with every batch norm folded into the convolution before it
/// (eval-mode statistics; equal to the unfolded network up to float rounding, about 1e-7 on probabilities);
/// [`InferenceModel::without_folding`] keeps the network as trained.
#[derive(Debug)]
pub struct InferenceModel {
    num_classes: usize,
    device: tch::Device,
    _var_store: nn::VarStore,
    network: Network,
    folded: Option<FoldedResNet>,
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
        load_weights_into(&sorted_variables(&var_store), architecture, bytes, |_| {
            false
        })?;
        InferenceModel::new(num_classes, device, var_store, network)
    }

    fn new(
        num_classes: usize,
        device: tch::Device,
        var_store: nn::VarStore,
        network: Network,
    ) -> Result<Self, TrainError> {
        let folded = match &network {
            Network::ResNet(resnet) => Some(FoldedResNet::fold(resnet)?),
            Network::LeNet(_) | Network::WideLeNet(_) => None,
        };
        Ok(InferenceModel {
            num_classes,
            device,
            _var_store: var_store,
            network,
            folded,
        })
    }

    /// The same model running the network exactly as trained (batch norms not folded).
    pub fn without_folding(mut self) -> Self {
        self.folded = None;
        self
    }

    fn forward(&self) -> Forward<'_> {
        match &self.folded {
            Some(folded) => Forward::Folded(folded),
            None => Forward::Network(&self.network),
        }
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
            self.forward(),
            self.num_classes,
            self.device,
            images_u8,
            count,
        )
    }

    /// Softmax probabilities (`count * num_classes`) for images already scaled to the network's input:
    /// f32 CHW, the u8 values divided by 255 (what [`InferenceModel::predict_probabilities`] feeds it).
    pub fn predict_probabilities_scaled(
        &self,
        images: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        predict_scaled_with(self.forward(), self.num_classes, self.device, images, count)
    }
}

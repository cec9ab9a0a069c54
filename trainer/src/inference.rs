//! Trained models: safetensors export/import and softmax predictions.
use tch::nn;
use tch::{Kind, Tensor};

use crate::batch::ShardData;
use crate::config::{Architecture, IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use crate::data_parallel::{
    EVALUATION_BATCH_SIZE, ShardEvaluation, evaluate_network, features_to_tensor, images_to_tensor,
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
    fn logits(self, input: &Tensor, features: Option<&Tensor>) -> Result<Tensor, TrainError> {
        match self {
            Forward::Network(network) => network.forward_t(input, features, false),
            Forward::Folded(network) => network.forward(input, features),
        }
    }
}

/// The transformed features of one prediction call: `width` values per image, row-major (width 0: none).
#[derive(Clone, Copy)]
struct FeatureRows<'values> {
    values: &'values [f32],
    width: usize,
}

impl FeatureRows<'_> {
    /// Checks there are `width` values for each of `count` images, naming what is missing.
    fn check(&self, count: usize) -> Result<(), TrainError> {
        if self.values.len() != count * self.width {
            return Err(TrainError::InvalidInput(
                if self.width > 0 && self.values.is_empty() {
                    format!(
                        "the model needs {} transformed features per image; none were given",
                        self.width
                    )
                } else {
                    format!(
                        "{} feature values for {count} images (the model takes {} per image)",
                        self.values.len(),
                        self.width
                    )
                },
            ));
        }
        Ok(())
    }

    fn chunk(
        &self,
        first: usize,
        count: usize,
        device: tch::Device,
    ) -> Result<Option<Tensor>, TrainError> {
        features_to_tensor(
            &self.values[first * self.width..(first + count) * self.width],
            count,
            self.width,
            device,
        )
    }
}

/// Softmax probabilities (`count * num_classes`, row per image) of `network` in eval mode.
fn predict_with(
    network: Forward<'_>,
    num_classes: usize,
    device: tch::Device,
    images: &[u8],
    features: FeatureRows<'_>,
    count: usize,
) -> Result<Vec<f32>, TrainError> {
    if images.len() != count * IMAGE_LEN {
        return Err(TrainError::InvalidInput(format!(
            "{} bytes for {count} images (expected {} bytes per image)",
            images.len(),
            IMAGE_LEN
        )));
    }
    features.check(count)?;
    predict_chunks(network, num_classes, count, |first, chunk_count| {
        Ok((
            images_to_tensor(
                &images[first * IMAGE_LEN..(first + chunk_count) * IMAGE_LEN],
                chunk_count,
                device,
            )?,
            features.chunk(first, chunk_count, device)?,
        ))
    })
}

/// As [`predict_with`], for images already scaled to the network's input (f32 CHW, u8 / 255).
fn predict_scaled_with(
    network: Forward<'_>,
    num_classes: usize,
    device: tch::Device,
    images: &[f32],
    features: FeatureRows<'_>,
    count: usize,
) -> Result<Vec<f32>, TrainError> {
    if images.len() != count * IMAGE_LEN {
        return Err(TrainError::InvalidInput(format!(
            "{} values for {count} images (expected {} per image)",
            images.len(),
            IMAGE_LEN
        )));
    }
    features.check(count)?;
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
        Ok((
            channels_last(&input)?,
            features.chunk(first, chunk_count, device)?,
        ))
    })
}

/// Runs `network` over `count` images in chunks of the evaluation batch size; `chunk_input(first, count)`
/// builds the input tensors (images, features) of images `first..first + count`.
fn predict_chunks(
    network: Forward<'_>,
    num_classes: usize,
    count: usize,
    chunk_input: impl Fn(usize, usize) -> Result<(Tensor, Option<Tensor>), TrainError>,
) -> Result<Vec<f32>, TrainError> {
    let mut probabilities = Vec::with_capacity(count * num_classes);
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut first = 0;
        while first < count {
            let chunk_count = (count - first).min(EVALUATION_BATCH_SIZE);
            let (input, features) = chunk_input(first, chunk_count)?;
            let softmax = network
                .logits(&input, features.as_ref())?
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
        self.predict_probabilities_with_features(images_u8, &[], count)
    }

    /// [`TrainedModel::predict_probabilities`] with each image's transformed features (row-major,
    /// [`TrainedModel::feature_width`] per image; empty for a model without features).
    pub fn predict_probabilities_with_features(
        &self,
        images_u8: &[u8],
        features: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        predict_with(
            Forward::Network(&self.network),
            self.num_classes,
            self.device,
            images_u8,
            FeatureRows {
                values: features,
                width: self.network.feature_width(),
            },
            count,
        )
    }

    /// Transformed features per image the model takes (0: images only).
    pub fn feature_width(&self) -> usize {
        self.network.feature_width()
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
        if !architecture.is_network() {
            return Err(TrainError::InvalidConfig(format!(
                "{architecture} is not a network: its model is not safetensors weights"
            )));
        }
        let feature_width = if architecture.uses_features() {
            feature_width_of_file(architecture, bytes)?
        } else {
            0
        };
        let var_store = nn::VarStore::new(device);
        let network = Network::new(&var_store, architecture, num_classes, feature_width, 0)?;
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
            Network::Fusion(fusion) => Some(FoldedResNet::fold_fusion(fusion)?),
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

    /// Transformed features per image the model takes (0: images only).
    pub fn feature_width(&self) -> usize {
        self.network.feature_width()
    }

    /// Softmax probabilities (`count * num_classes`, one row per image) for u8 CHW images.
    pub fn predict_probabilities(
        &self,
        images_u8: &[u8],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        self.predict_probabilities_with_features(images_u8, &[], count)
    }

    /// [`InferenceModel::predict_probabilities`] with each image's transformed features (row-major,
    /// [`InferenceModel::feature_width`] per image; must be empty for a model without features).
    pub fn predict_probabilities_with_features(
        &self,
        images_u8: &[u8],
        features: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        predict_with(
            self.forward(),
            self.num_classes,
            self.device,
            images_u8,
            self.feature_rows(features),
            count,
        )
    }

    fn feature_rows<'values>(&self, values: &'values [f32]) -> FeatureRows<'values> {
        FeatureRows {
            values,
            width: self.network.feature_width(),
        }
    }

    /// Softmax probabilities (`count * num_classes`) for images already scaled to the network's input:
    /// f32 CHW, the u8 values divided by 255 (what [`InferenceModel::predict_probabilities`] feeds it).
    pub fn predict_probabilities_scaled(
        &self,
        images: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        self.predict_probabilities_scaled_with_features(images, &[], count)
    }

    /// [`InferenceModel::predict_probabilities_scaled`] with each image's transformed features.
    pub fn predict_probabilities_scaled_with_features(
        &self,
        images: &[f32],
        features: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, TrainError> {
        predict_scaled_with(
            self.forward(),
            self.num_classes,
            self.device,
            images,
            self.feature_rows(features),
            count,
        )
    }
}

/// The feature width a fusion model file was trained with: the input width of `features.fc1.weight`.
fn feature_width_of_file(architecture: Architecture, bytes: &[u8]) -> Result<usize, TrainError> {
    let mismatch = |reason: String| TrainError::WeightsMismatch {
        architecture: architecture.to_string(),
        reason,
    };
    let file = TensorFile::parse(bytes, &mismatch)?;
    let name = "features.fc1.weight";
    let view = file
        .tensors
        .tensor(name)
        .map_err(|_| mismatch(format!("the file has no {name:?}")))?;
    match view.shape() {
        [_, width] if *width > 0 => Ok(*width),
        shape => Err(mismatch(format!(
            "{name:?} has shape {shape:?}, expected [64, F]"
        ))),
    }
}

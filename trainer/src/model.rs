//! The networks (lenet, wide_lenet, resnet, fusion) as tch modules, initialized like PyTorch's defaults.
use tch::nn;
use tch::{Kind, Tensor};

use crate::config::{Architecture, IMAGE_SIZE};
use crate::error::TrainError;
use crate::pytorch_init::initialize_like_pytorch;

/// The number format convolutions and linear layers compute in during a forward pass: f32 as stored, or
/// bf16 on copies of the f32 weights cast inside the autograd graph, so gradients flow back into the f32
/// master weights (what `torch.autocast` does for these ops). Batch norm keeps f32 parameters and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ComputeKind {
    Stored,
    BFloat16,
}

impl ComputeKind {
    /// `conv` (square kernel, no dilation or groups, as every convolution here) at `stride` and `padding`.
    fn conv(self, conv: &nn::Conv2D, input: &Tensor, stride: i64, padding: i64) -> Tensor {
        match self {
            ComputeKind::Stored => input.apply(conv),
            ComputeKind::BFloat16 => {
                let weight = conv.ws.to_kind(Kind::BFloat16);
                let bias = conv.bs.as_ref().map(|bias| bias.to_kind(Kind::BFloat16));
                input.to_kind(Kind::BFloat16).conv2d(
                    &weight,
                    bias.as_ref(),
                    [stride, stride],
                    [padding, padding],
                    [1, 1],
                    1,
                )
            }
        }
    }

    fn linear(self, linear: &nn::Linear, input: &Tensor) -> Tensor {
        match self {
            ComputeKind::Stored => input.apply(linear),
            ComputeKind::BFloat16 => {
                let weight = linear.ws.to_kind(Kind::BFloat16);
                let bias = linear.bs.as_ref().map(|bias| bias.to_kind(Kind::BFloat16));
                input.to_kind(Kind::BFloat16).linear(&weight, bias.as_ref())
            }
        }
    }
}

/// The reference notebook's CNN (Keras `Conv2D` defaults: 'valid' padding, 2x2 max-pools flooring):
/// three 2x2 convolutions of 6, 16 and 16 filters, each followed by ReLU and a 2x2 max-pool
/// (64 -> 63 -> 31 -> 30 -> 15 -> 14 -> 7), then dense 16*7*7 = 784 -> 250 -> 100 -> classes.
#[derive(Debug)]
pub struct LeNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    conv3: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc3: nn::Linear,
}

/// Side of [`LeNet`]'s last feature map: each stage is a 'valid' 2x2 convolution (-1) then a flooring 2x2 pool.
const fn lenet_feature_side(input: i64) -> i64 {
    let mut side = input;
    let mut stage = 0;
    while stage < 3 {
        side = (side - 1) / 2;
        stage += 1;
    }
    side
}

impl LeNet {
    /// Registers the layers under `root` (names match the PyTorch twin in bench/python/torch_train.py).
    pub fn new(root: &nn::Path, num_classes: usize) -> Self {
        let side = lenet_feature_side(IMAGE_SIZE as i64);
        let valid = nn::ConvConfig::default();
        LeNet {
            conv1: nn::conv2d(root / "conv1", 3, 6, 2, valid),
            conv2: nn::conv2d(root / "conv2", 6, 16, 2, valid),
            conv3: nn::conv2d(root / "conv3", 16, 16, 2, valid),
            fc1: nn::linear(root / "fc1", 16 * side * side, 250, Default::default()),
            fc2: nn::linear(root / "fc2", 250, 100, Default::default()),
            fc3: nn::linear(root / "fc3", 100, num_classes as i64, Default::default()),
        }
    }
}

/// The LeNet layout widened: three 3x3 'same' convolutions of 32, 64 and 128 filters, each followed by ReLU
/// and a 2x2 max-pool (64 -> 32 -> 16 -> 8), then dense 128*8*8 = 8192 -> 250 -> 100 -> classes. About 50x the
/// multiply-adds of [`LeNet`] and 12x its parameters; the network the quality and parity benchmarks were
/// first measured on.
#[derive(Debug)]
pub struct WideLeNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    conv3: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc3: nn::Linear,
}

impl WideLeNet {
    /// Registers the layers under `root` (names match the PyTorch twin in bench/python/torch_train.py).
    pub fn new(root: &nn::Path, num_classes: usize) -> Self {
        let padded = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let flattened_features = 128 * (IMAGE_SIZE as i64 / 8) * (IMAGE_SIZE as i64 / 8);
        WideLeNet {
            conv1: nn::conv2d(root / "conv1", 3, 32, 3, padded),
            conv2: nn::conv2d(root / "conv2", 32, 64, 3, padded),
            conv3: nn::conv2d(root / "conv3", 64, 128, 3, padded),
            fc1: nn::linear(root / "fc1", flattened_features, 250, Default::default()),
            fc2: nn::linear(root / "fc2", 250, 100, Default::default()),
            fc3: nn::linear(root / "fc3", 100, num_classes as i64, Default::default()),
        }
    }
}

/// conv (stride 1, `padding`) -> ReLU -> 2x2 max-pool three times: the early segment of the LeNets.
///
/// Computed as conv -> max-pool -> ReLU, which is the same function with the same floats, forward and backward:
/// ReLU is monotonic, so the largest of four values after it is the ReLU of the largest before it, and the
/// gradient reaches the same input (the window's first maximum when it is positive, none otherwise). The ReLU
/// and its backward then touch a quarter of the values (the LeNets train ~1.1x faster on a CPU).
fn three_conv(
    images: &Tensor,
    convolutions: [&nn::Conv2D; 3],
    padding: i64,
    compute: ComputeKind,
) -> Tensor {
    let mut features = images.shallow_clone();
    for convolution in convolutions {
        features = compute
            .conv(convolution, &features, 1, padding)
            .max_pool2d_default(2)
            .relu();
    }
    features
}

/// Flatten, dense -> ReLU -> dense -> ReLU -> dense: the late segment of the LeNets (most of their parameters).
fn three_dense(features: &Tensor, dense: [&nn::Linear; 3], compute: ComputeKind) -> Tensor {
    let hidden = compute.linear(dense[0], &features.flatten(1, -1)).relu();
    let hidden = compute.linear(dense[1], &hidden).relu();
    compute.linear(dense[2], &hidden)
}

impl LeNet {
    fn early_in(&self, images: &Tensor, compute: ComputeKind) -> Tensor {
        three_conv(images, [&self.conv1, &self.conv2, &self.conv3], 0, compute)
    }

    fn late_in(&self, features: &Tensor, compute: ComputeKind) -> Tensor {
        three_dense(features, [&self.fc1, &self.fc2, &self.fc3], compute)
    }
}

impl WideLeNet {
    fn early_in(&self, images: &Tensor, compute: ComputeKind) -> Tensor {
        three_conv(images, [&self.conv1, &self.conv2, &self.conv3], 1, compute)
    }

    fn late_in(&self, features: &Tensor, compute: ComputeKind) -> Tensor {
        three_dense(features, [&self.fc1, &self.fc2, &self.fc3], compute)
    }
}

/// Batch norm's epsilon (PyTorch's default), also used when folding it into a convolution.
const BATCH_NORM_EPS: f64 = 1e-5;

fn batch_norm(path: nn::Path, channels: i64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        eps: BATCH_NORM_EPS,
        ..Default::default()
    };
    nn::batch_norm2d(path, channels, config)
}

fn conv_no_bias(
    path: nn::Path,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: kernel / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(path, in_channels, out_channels, kernel, config)
}

/// A ResNet basic block: two 3x3 conv + batch norm, with a 1x1 projection when the shape changes.
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
    /// Of conv1 and the projection.
    stride: i64,
}

impl BasicBlock {
    fn new(path: nn::Path, in_channels: i64, out_channels: i64, stride: i64) -> Self {
        // Created in the PyTorch twin's order (its initial weights are drawn in creation order).
        let conv1 = conv_no_bias(&path / "conv1", in_channels, out_channels, 3, stride);
        let bn1 = batch_norm(&path / "bn1", out_channels);
        let conv2 = conv_no_bias(&path / "conv2", out_channels, out_channels, 3, 1);
        let bn2 = batch_norm(&path / "bn2", out_channels);
        let downsample = (stride != 1 || in_channels != out_channels).then(|| {
            (
                conv_no_bias(
                    &path / "downsample" / "conv",
                    in_channels,
                    out_channels,
                    1,
                    stride,
                ),
                batch_norm(&path / "downsample" / "bn", out_channels),
            )
        });
        BasicBlock {
            conv1,
            bn1,
            conv2,
            bn2,
            downsample,
            stride,
        }
    }
}

impl BasicBlock {
    fn forward_in(&self, input: &Tensor, train: bool, compute: ComputeKind) -> Tensor {
        let first = compute
            .conv(&self.conv1, input, self.stride, 1)
            .apply_t(&self.bn1, train)
            .relu();
        let residual_branch = compute
            .conv(&self.conv2, &first, 1, 1)
            .apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => compute.conv(conv, input, self.stride, 0).apply_t(bn, train),
            None => input.shallow_clone(),
        };
        (residual_branch + shortcut).relu()
    }
}

/// The convolutional part of the ResNet: 3x3 stride-2 stem (32 ch), four basic blocks 32/64/128/256 (the last
/// three with stride 2), global average pooling to [`RESNET_POOLED_WIDTH`] values per image.
#[derive(Debug)]
struct ResNetTrunk {
    stem_conv: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    layer1: BasicBlock,
    layer2: BasicBlock,
    layer3: BasicBlock,
    layer4: BasicBlock,
}

/// Values per image after the trunk's global average pooling.
const RESNET_POOLED_WIDTH: i64 = 256;

impl ResNetTrunk {
    fn new(root: &nn::Path) -> Self {
        ResNetTrunk {
            stem_conv: conv_no_bias(root / "stem" / "conv", 3, 32, 3, 2),
            stem_bn: batch_norm(root / "stem" / "bn", 32),
            layer1: BasicBlock::new(root / "layer1", 32, 32, 1),
            layer2: BasicBlock::new(root / "layer2", 32, 64, 2),
            layer3: BasicBlock::new(root / "layer3", 64, 128, 2),
            layer4: BasicBlock::new(root / "layer4", 128, 256, 2),
        }
    }

    /// The stem and the first three blocks: most of the trunk's compute, a quarter of its parameters.
    fn early_in(&self, images: &Tensor, train: bool, compute: ComputeKind) -> Tensor {
        let stem = compute
            .conv(&self.stem_conv, images, 2, 1)
            .apply_t(&self.stem_bn, train)
            .relu();
        [&self.layer1, &self.layer2, &self.layer3]
            .into_iter()
            .fold(stem, |features, block| {
                block.forward_in(&features, train, compute)
            })
    }

    /// The last block and the pooling to `[N, 256]`, from [`ResNetTrunk::early_in`]'s output.
    fn late_pooled(&self, early: &Tensor, train: bool, compute: ComputeKind) -> Tensor {
        self.layer4
            .forward_in(early, train, compute)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    }
}

/// A small ResNet for 64x64 inputs: the [`ResNetTrunk`] (stem, four basic blocks, global average pooling),
/// then a linear classifier.
#[derive(Debug)]
pub struct ResNet {
    trunk: ResNetTrunk,
    fc: nn::Linear,
}

impl ResNet {
    /// Registers the layers under `root` (names match the PyTorch twin in bench/python/torch_train.py).
    pub fn new(root: &nn::Path, num_classes: usize) -> Self {
        ResNet {
            trunk: ResNetTrunk::new(root),
            fc: nn::linear(
                root / "fc",
                RESNET_POOLED_WIDTH,
                num_classes as i64,
                Default::default(),
            ),
        }
    }
}

impl ResNet {
    fn late_in(&self, early: &Tensor, train: bool, compute: ComputeKind) -> Tensor {
        compute.linear(&self.fc, &self.trunk.late_pooled(early, train, compute))
    }
}

/// Width of the feature MLP's hidden and output layers.
pub const FEATURE_MLP_WIDTH: i64 = 64;

/// The fusion network: the ResNet trunk on the image (variables named as the resnet's), an MLP over the
/// transformed native features (`features.fc1`: F -> 64, ReLU, `features.fc2`: 64 -> 64, ReLU), the two
/// concatenated (256 + 64) into a linear classifier `fc`.
#[derive(Debug)]
pub struct FusionNet {
    trunk: ResNetTrunk,
    features_fc1: nn::Linear,
    features_fc2: nn::Linear,
    fc: nn::Linear,
    feature_width: usize,
}

impl FusionNet {
    /// Registers the layers under `root` for `feature_width` transformed features per image.
    pub fn new(root: &nn::Path, num_classes: usize, feature_width: usize) -> Self {
        FusionNet {
            trunk: ResNetTrunk::new(root),
            features_fc1: nn::linear(
                root / "features" / "fc1",
                feature_width as i64,
                FEATURE_MLP_WIDTH,
                Default::default(),
            ),
            features_fc2: nn::linear(
                root / "features" / "fc2",
                FEATURE_MLP_WIDTH,
                FEATURE_MLP_WIDTH,
                Default::default(),
            ),
            fc: nn::linear(
                root / "fc",
                RESNET_POOLED_WIDTH + FEATURE_MLP_WIDTH,
                num_classes as i64,
                Default::default(),
            ),
            feature_width,
        }
    }

    /// Logits from the trunk's early output and the images' features `[N, F]`.
    fn late_in(
        &self,
        early: &Tensor,
        features: &Tensor,
        train: bool,
        compute: ComputeKind,
    ) -> Tensor {
        let pooled = self.trunk.late_pooled(early, train, compute);
        let encoded = compute.linear(&self.features_fc1, features).relu();
        let encoded = compute.linear(&self.features_fc2, &encoded).relu();
        let joined = Tensor::cat(
            &[pooled.to_kind(Kind::Float), encoded.to_kind(Kind::Float)],
            1,
        );
        compute.linear(&self.fc, &joined)
    }
}

/// A convolution with the batch norm after it folded in (eval mode): `w * s`, bias `beta - mean * s`, where
/// `s = gamma / sqrt(var + eps)` per output channel. One convolution with bias instead of a convolution and a
/// normalisation pass over its output.
#[derive(Debug)]
struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl FoldedConv {
    fn fold(
        conv: &nn::Conv2D,
        batch_norm: &nn::BatchNorm,
        stride: i64,
        padding: i64,
    ) -> Result<Self, TrainError> {
        let missing =
            || TrainError::InvalidConfig("a batch norm without affine weights".to_string());
        let gamma = batch_norm.ws.as_ref().ok_or_else(missing)?;
        let beta = batch_norm.bs.as_ref().ok_or_else(missing)?;
        let scale = gamma.f_div(
            &batch_norm
                .running_var
                .f_add_scalar(BATCH_NORM_EPS)?
                .f_sqrt()?,
        )?;
        let weight = conv.ws.f_mul(&scale.f_view([-1, 1, 1, 1])?)?;
        let bias = beta.f_sub(&batch_norm.running_mean.f_mul(&scale)?)?;
        Ok(FoldedConv {
            weight: channels_last(&weight)?,
            bias,
            stride,
            padding,
        })
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor, TrainError> {
        Ok(input.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

#[derive(Debug)]
struct FoldedBlock {
    conv1: FoldedConv,
    conv2: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl FoldedBlock {
    fn fold(block: &BasicBlock) -> Result<Self, TrainError> {
        Ok(FoldedBlock {
            conv1: FoldedConv::fold(&block.conv1, &block.bn1, block.stride, 1)?,
            conv2: FoldedConv::fold(&block.conv2, &block.bn2, 1, 1)?,
            downsample: block
                .downsample
                .as_ref()
                .map(|(conv, batch_norm)| FoldedConv::fold(conv, batch_norm, block.stride, 0))
                .transpose()?,
        })
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor, TrainError> {
        let mut residual_branch = self.conv1.forward(input)?;
        let _in_place = residual_branch.f_relu_()?;
        let residual_branch = self.conv2.forward(&residual_branch)?;
        let mut output = match &self.downsample {
            Some(conv) => residual_branch.f_add(&conv.forward(input)?)?,
            None => residual_branch.f_add(input)?,
        };
        let _in_place = output.f_relu_()?;
        Ok(output)
    }
}

/// The feature MLP and classifier of a folded fusion network (detached weights).
#[derive(Debug)]
struct FoldedFusionHead {
    fc1_weight: Tensor,
    fc1_bias: Option<Tensor>,
    fc2_weight: Tensor,
    fc2_bias: Option<Tensor>,
}

fn detached(linear: &nn::Linear) -> Result<(Tensor, Option<Tensor>), TrainError> {
    Ok((
        linear.ws.f_detach()?,
        linear.bs.as_ref().map(Tensor::f_detach).transpose()?,
    ))
}

/// [`ResNet`] (or the trunk of a [`FusionNet`]) for inference only: every batch norm folded into its
/// convolution (eval-mode statistics), in-place ReLUs, channels-last weights. Equal to the eval-mode network up
/// to float rounding.
#[derive(Debug)]
pub(crate) struct FoldedResNet {
    stem: FoldedConv,
    layers: [FoldedBlock; 4],
    fusion: Option<FoldedFusionHead>,
    fc_weight: Tensor,
    fc_bias: Option<Tensor>,
}

impl FoldedResNet {
    fn fold_trunk(
        trunk: &ResNetTrunk,
        fc: &nn::Linear,
        fusion: Option<FoldedFusionHead>,
    ) -> Result<Self, TrainError> {
        tch::no_grad(|| {
            let (fc_weight, fc_bias) = detached(fc)?;
            Ok(FoldedResNet {
                stem: FoldedConv::fold(&trunk.stem_conv, &trunk.stem_bn, 2, 1)?,
                layers: [
                    FoldedBlock::fold(&trunk.layer1)?,
                    FoldedBlock::fold(&trunk.layer2)?,
                    FoldedBlock::fold(&trunk.layer3)?,
                    FoldedBlock::fold(&trunk.layer4)?,
                ],
                fusion,
                fc_weight,
                fc_bias,
            })
        })
    }

    pub(crate) fn fold(network: &ResNet) -> Result<Self, TrainError> {
        Self::fold_trunk(&network.trunk, &network.fc, None)
    }

    pub(crate) fn fold_fusion(network: &FusionNet) -> Result<Self, TrainError> {
        let head = tch::no_grad(|| -> Result<FoldedFusionHead, TrainError> {
            let (fc1_weight, fc1_bias) = detached(&network.features_fc1)?;
            let (fc2_weight, fc2_bias) = detached(&network.features_fc2)?;
            Ok(FoldedFusionHead {
                fc1_weight,
                fc1_bias,
                fc2_weight,
                fc2_bias,
            })
        })?;
        Self::fold_trunk(&network.trunk, &network.fc, Some(head))
    }

    /// Logits of `images` (NCHW, channels-last strides), with their features `[N, F]` for a fusion network.
    pub(crate) fn forward(
        &self,
        images: &Tensor,
        features: Option<&Tensor>,
    ) -> Result<Tensor, TrainError> {
        let mut activations = self.stem.forward(images)?;
        let _in_place = activations.f_relu_()?;
        for layer in &self.layers {
            activations = layer.forward(&activations)?;
        }
        let pooled = activations
            .f_adaptive_avg_pool2d([1, 1])?
            .f_flatten(1, -1)?;
        let classifier_input = match &self.fusion {
            None => pooled,
            Some(head) => {
                let features = features.ok_or_else(|| {
                    TrainError::InvalidInput("the fusion model needs features".to_string())
                })?;
                let encoded = features
                    .f_linear(&head.fc1_weight, head.fc1_bias.as_ref())?
                    .f_relu()?
                    .f_linear(&head.fc2_weight, head.fc2_bias.as_ref())?
                    .f_relu()?;
                Tensor::f_cat(&[pooled, encoded], 1)?
            }
        };
        Ok(classifier_input.f_linear(&self.fc_weight, self.fc_bias.as_ref())?)
    }
}

/// One of the networks, registered in a var store.
#[derive(Debug)]
pub enum Network {
    LeNet(Box<LeNet>),
    WideLeNet(Box<WideLeNet>),
    ResNet(Box<ResNet>),
    Fusion(Box<FusionNet>),
}

impl Network {
    /// Registers the network's variables in `var_store` and initializes them from `seed` exactly as
    /// `torch.manual_seed(seed)` and the PyTorch twin's constructor would (PyTorch's default inits, bit for
    /// bit, on every machine). `feature_width` is the number of transformed features per image of a network
    /// that takes them (ignored by the others).
    pub fn new(
        var_store: &nn::VarStore,
        architecture: Architecture,
        num_classes: usize,
        feature_width: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let root = var_store.root();
        let network = match architecture {
            Architecture::LeNet => Network::LeNet(Box::new(LeNet::new(&root, num_classes))),
            Architecture::WideLeNet => {
                Network::WideLeNet(Box::new(WideLeNet::new(&root, num_classes)))
            }
            Architecture::ResNet => Network::ResNet(Box::new(ResNet::new(&root, num_classes))),
            Architecture::Fusion => {
                if feature_width == 0 {
                    return Err(TrainError::InvalidConfig(
                        "the fusion network needs at least one feature".to_string(),
                    ));
                }
                Network::Fusion(Box::new(FusionNet::new(&root, num_classes, feature_width)))
            }
            Architecture::Gbdt => {
                return Err(TrainError::InvalidConfig(
                    "gbdt is gradient-boosted trees, not a network (plankton-gbdt trains it)"
                        .to_string(),
                ));
            }
        };
        initialize_like_pytorch(var_store, seed)?;
        convert_conv_weights_to_channels_last(var_store)?;
        Ok(network)
    }

    /// Transformed features per image the network takes (0: images only).
    pub fn feature_width(&self) -> usize {
        match self {
            Network::Fusion(network) => network.feature_width,
            Network::LeNet(_) | Network::WideLeNet(_) | Network::ResNet(_) => 0,
        }
    }

    /// Logits of `images` (NCHW) and, for a network that takes them, their features `[N, F]`.
    pub fn forward_t(
        &self,
        images: &Tensor,
        features: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        self.forward_in(images, features, train, ComputeKind::Stored)
    }

    /// A training forward pass with convolutions and linear layers computed as `compute` says; the logits
    /// come back as f32.
    pub(crate) fn forward_train(
        &self,
        images: &Tensor,
        features: Option<&Tensor>,
        compute: ComputeKind,
    ) -> Result<Tensor, TrainError> {
        Ok(self
            .forward_in(images, features, true, compute)?
            .f_to_kind(Kind::Float)?)
    }

    /// A training forward pass cut between its early and late segments: the late segment starts from a leaf
    /// that shares the early output's values, so a backward from the logits stops there (filling the late
    /// parameters' gradients and the leaf's), and [`SplitForward::backward_early`] continues into the early
    /// parameters. Between the two, the late gradients can already travel.
    pub(crate) fn forward_train_split(
        &self,
        images: &Tensor,
        features: Option<&Tensor>,
        compute: ComputeKind,
    ) -> Result<SplitForward, TrainError> {
        let early_output = self.early_in(images, true, compute);
        let late_input = early_output.f_detach()?.f_requires_grad_(true)?;
        let logits = self
            .late_in(&late_input, features, true, compute)?
            .f_to_kind(Kind::Float)?;
        Ok(SplitForward {
            early_output,
            late_input,
            logits,
        })
    }

    /// Whether the parameter named `name` belongs to the late segment ([`Network::forward_train_split`]): the
    /// LeNets' dense layers, the ResNets' last block and classifier (and the fusion network's feature MLP).
    /// These hold most of the parameters and little of the backward compute.
    pub(crate) fn is_late_parameter(&self, name: &str) -> bool {
        let prefixes: &[&str] = match self {
            Network::LeNet(_) | Network::WideLeNet(_) => &["fc1.", "fc2.", "fc3."],
            Network::ResNet(_) => &["layer4.", "fc."],
            Network::Fusion(_) => &["layer4.", "fc.", "features."],
        };
        prefixes.iter().any(|prefix| name.starts_with(prefix))
    }

    fn early_in(&self, images: &Tensor, train: bool, compute: ComputeKind) -> Tensor {
        match self {
            Network::LeNet(network) => network.early_in(images, compute),
            Network::WideLeNet(network) => network.early_in(images, compute),
            Network::ResNet(network) => network.trunk.early_in(images, train, compute),
            Network::Fusion(network) => network.trunk.early_in(images, train, compute),
        }
    }

    fn late_in(
        &self,
        early: &Tensor,
        features: Option<&Tensor>,
        train: bool,
        compute: ComputeKind,
    ) -> Result<Tensor, TrainError> {
        Ok(match self {
            Network::LeNet(network) => network.late_in(early, compute),
            Network::WideLeNet(network) => network.late_in(early, compute),
            Network::ResNet(network) => network.late_in(early, train, compute),
            Network::Fusion(network) => {
                let features = features.ok_or_else(|| {
                    TrainError::InvalidInput("the fusion network needs features".to_string())
                })?;
                network.late_in(early, features, train, compute)
            }
        })
    }

    fn forward_in(
        &self,
        images: &Tensor,
        features: Option<&Tensor>,
        train: bool,
        compute: ComputeKind,
    ) -> Result<Tensor, TrainError> {
        let early = self.early_in(images, train, compute);
        self.late_in(&early, features, train, compute)
    }
}

/// A forward pass cut in two ([`Network::forward_train_split`]).
pub(crate) struct SplitForward {
    /// The early segment's output, still attached to the early parameters' graph.
    early_output: Tensor,
    /// A leaf with the early output's values that the late segment started from.
    late_input: Tensor,
    /// f32 logits.
    pub(crate) logits: Tensor,
}

impl SplitForward {
    /// After a backward from the logits: carries the leaf's gradient on into the early parameters (the
    /// backward of `sum(early_output * leaf_gradient)`, whose gradient at `early_output` is the leaf's).
    pub(crate) fn backward_early(self) -> Result<(), TrainError> {
        let leaf_gradient = self.late_input.grad();
        if !leaf_gradient.defined() {
            return Err(TrainError::InvalidInput(
                "the late segment's backward left no gradient at its input".to_string(),
            ));
        }
        self.early_output
            .f_mul(&leaf_gradient)?
            .f_sum(self.early_output.kind())?
            .f_backward()?;
        Ok(())
    }
}

/// The same values with channels-last (NHWC) strides, still indexed as NCHW: libtorch's CPU
/// convolutions (oneDNN) run markedly faster on this layout (about 1.5x here, see bench/train_bench).
pub fn channels_last(tensor: &Tensor) -> Result<Tensor, TrainError> {
    Ok(tensor
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// Gives every 4-d (convolution) weight channels-last strides. Values and names are unchanged;
/// flattening (`f_contiguous`) and saving still see NCHW order.
fn convert_conv_weights_to_channels_last(var_store: &nn::VarStore) -> Result<(), TrainError> {
    tch::no_grad(|| -> Result<(), TrainError> {
        for (_, tensor) in sorted_variables(var_store) {
            if tensor.dim() == 4 {
                let converted = channels_last(&tensor)?;
                tensor.shallow_clone().f_set_data(&converted)?;
            }
        }
        Ok(())
    })
}

/// The var store's variables sorted by name: the order every rank uses to flatten them.
pub(crate) fn sorted_variables(var_store: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = var_store.variables().into_iter().collect();
    variables.sort_by(|left, right| left.0.cmp(&right.0));
    variables
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The LeNets' early segment as the PyTorch twin writes it: conv -> ReLU -> 2x2 max-pool.
    fn relu_then_pool(images: &Tensor, convolutions: [&nn::Conv2D; 3], padding: i64) -> Tensor {
        let mut features = images.shallow_clone();
        for convolution in convolutions {
            features = ComputeKind::Stored
                .conv(convolution, &features, 1, padding)
                .relu()
                .max_pool2d_default(2);
        }
        features
    }

    /// Logits and every parameter's gradient of `logits.sum()` weighted per class (so each logit matters).
    fn logits_and_gradients(var_store: &nn::VarStore, logits: &Tensor) -> (Tensor, Vec<Tensor>) {
        let class_weights = Tensor::arange(logits.size()[1], (Kind::Float, Device::Cpu)) - 7.5;
        for (_, mut tensor) in sorted_variables(var_store) {
            tensor.zero_grad();
        }
        (logits * class_weights).sum(Kind::Float).backward();
        let gradients = sorted_variables(var_store)
            .into_iter()
            .map(|(_, tensor)| tensor.grad().copy())
            .collect();
        (logits.detach(), gradients)
    }

    #[test]
    fn pooling_before_the_relu_gives_the_twins_floats_forward_and_backward() {
        // Flat regions (equal values in a pooling window: ties) and, through the biases, negative maxima.
        let images = Tensor::rand([6, 3, 64, 64], (Kind::Float, Device::Cpu));
        let _flat = images.narrow(2, 0, 24).fill_(0.25);
        let _dark = images.narrow(3, 40, 24).fill_(0.0);
        for architecture in [Architecture::LeNet, Architecture::WideLeNet] {
            let var_store = nn::VarStore::new(Device::Cpu);
            let network = Network::new(&var_store, architecture, 10, 0, 11).unwrap();
            let (convolutions, padding, late) = match &network {
                Network::LeNet(net) => (
                    [&net.conv1, &net.conv2, &net.conv3],
                    0,
                    [&net.fc1, &net.fc2, &net.fc3],
                ),
                Network::WideLeNet(net) => (
                    [&net.conv1, &net.conv2, &net.conv3],
                    1,
                    [&net.fc1, &net.fc2, &net.fc3],
                ),
                _ => unreachable!(),
            };
            let ours = network.forward_t(&images, None, true).unwrap();
            let twin = three_dense(
                &relu_then_pool(&images, convolutions, padding),
                late,
                ComputeKind::Stored,
            );
            let (our_logits, our_gradients) = logits_and_gradients(&var_store, &ours);
            let (twin_logits, twin_gradients) = logits_and_gradients(&var_store, &twin);
            assert!(
                our_logits.equal(&twin_logits),
                "{architecture:?} logits differ"
            );
            for (index, (ours, twins)) in our_gradients.iter().zip(&twin_gradients).enumerate() {
                assert!(
                    ours.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                    "{architecture:?}: gradient {index} is zero"
                );
                assert!(
                    ours.equal(twins),
                    "{architecture:?}: gradient {index} differs"
                );
            }
        }
    }
}

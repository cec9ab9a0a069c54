//! What a network's passes cost in multiply-adds: the benchmarks' yardstick for how close a run comes to the
//! CPU's arithmetic peak (the roofline).
//!
//! Counted from the network's own weights: each convolution's or linear layer's weight elements times the
//! output positions it is applied at (one per image for a linear layer). Batch norm, ReLU, pooling, the loss and
//! the optimizer are not counted: they are memory-bound and their arithmetic is small next to these.

use tch::{Device, nn};

use crate::config::{Architecture, IMAGE_SIZE};
use crate::error::TrainError;
use crate::model::{Network, sorted_variables};

/// Multiply-adds per image of one forward pass and of one training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassCost {
    /// One forward pass.
    pub forward: u64,
    /// A training step: the forward, then the gradients of every layer's input and weights (each as many
    /// multiply-adds as its forward), except the first layer's input gradient, which nothing needs.
    pub training: u64,
}

impl PassCost {
    /// Floating-point operations (two per multiply-add) per second for `images_per_second` forward passes.
    pub fn forward_flops(&self, images_per_second: f64) -> f64 {
        2.0 * self.forward as f64 * images_per_second
    }

    /// Floating-point operations per second for `images_per_second` images trained.
    pub fn training_flops(&self, images_per_second: f64) -> f64 {
        2.0 * self.training as f64 * images_per_second
    }
}

/// Side of the square map a layer's output covers (1 for a linear layer), by the weight's name.
fn output_side(architecture: Architecture, weight: &str) -> Option<i64> {
    let image = IMAGE_SIZE as i64;
    let layer = weight.strip_suffix(".weight")?;
    let side = match architecture {
        // 'valid' 2x2 convolutions, each map then halved by a flooring pool: 64 -> 63, 31 -> 30, 15 -> 14.
        Architecture::LeNet => match layer {
            "conv1" => image - 1,
            "conv2" => (image - 1) / 2 - 1,
            "conv3" => ((image - 1) / 2 - 1) / 2 - 1,
            "fc1" | "fc2" | "fc3" => 1,
            _ => return None,
        },
        // 'same' 3x3 convolutions at 64, 32 and 16.
        Architecture::WideLeNet => match layer {
            "conv1" => image,
            "conv2" => image / 2,
            "conv3" => image / 4,
            "fc1" | "fc2" | "fc3" => 1,
            _ => return None,
        },
        // The stride-2 stem at 32, then blocks at 32, 16, 8 and 4.
        Architecture::ResNet | Architecture::Fusion => {
            let block = |name: &str| -> Option<i64> {
                match name {
                    "layer1" => Some(image / 2),
                    "layer2" => Some(image / 4),
                    "layer3" => Some(image / 8),
                    "layer4" => Some(image / 16),
                    _ => None,
                }
            };
            match layer {
                "stem.conv" => image / 2,
                "fc" | "features.fc1" | "features.fc2" => 1,
                _ => {
                    let (name, part) = layer.split_once('.')?;
                    if !matches!(part, "conv1" | "conv2" | "downsample.conv") {
                        return None;
                    }
                    block(name)?
                }
            }
        }
        Architecture::Gbdt => return None,
    };
    Some(side)
}

/// Multiply-adds per image of `architecture` with `num_classes` outputs (and `feature_width` features for the
/// fusion network). Errors for `gbdt` (not a network) and for a layer this count does not know, so a new layer
/// cannot go uncounted.
pub fn pass_cost(
    architecture: Architecture,
    num_classes: usize,
    feature_width: usize,
) -> Result<PassCost, TrainError> {
    let var_store = nn::VarStore::new(Device::Cpu);
    Network::new(&var_store, architecture, num_classes, feature_width, 0)?;
    let mut forward = 0u64;
    let mut first_layer = None;
    for (name, tensor) in sorted_variables(&var_store) {
        let dimensions = tensor.dim();
        // Biases and batch-norm parameters: not multiply-adds of a convolution or linear layer.
        if !name.ends_with(".weight") || (dimensions != 2 && dimensions != 4) {
            continue;
        }
        let side = output_side(architecture, &name).ok_or_else(|| {
            TrainError::InvalidConfig(format!(
                "no output size known for {name} of {}",
                architecture.name()
            ))
        })?;
        let cost = tensor.numel() as u64 * (side * side) as u64;
        forward += cost;
        if matches!(name.as_str(), "conv1.weight" | "stem.conv.weight") {
            first_layer = Some(cost);
        }
    }
    let first_layer = first_layer.ok_or_else(|| {
        TrainError::InvalidConfig(format!("{} has no first convolution", architecture.name()))
    })?;
    Ok(PassCost {
        forward,
        training: 3 * forward - first_layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_match_the_layers_worked_out_by_hand() {
        // resnet: the stem 32x32 x 32 x 3x3x3; per block (32, 64, 128, 256 channels at 32, 16, 8, 4) conv1
        // (stride of the block), conv2 and a 1x1 projection where the shape changes; fc 256 -> 40.
        let resnet_convolutions = 32 * 32 * 32 * 27
            + 2 * (32 * 32 * 32 * 32 * 9)
            + (16 * 16 * 64 * 32 * 9 + 16 * 16 * 64 * 64 * 9 + 16 * 16 * 64 * 32)
            + (8 * 8 * 128 * 64 * 9 + 8 * 8 * 128 * 128 * 9 + 8 * 8 * 128 * 64)
            + (4 * 4 * 256 * 128 * 9 + 4 * 4 * 256 * 256 * 9 + 4 * 4 * 256 * 128);
        let resnet = pass_cost(Architecture::ResNet, 40, 0).unwrap();
        assert_eq!(resnet.forward, resnet_convolutions + 256 * 40);
        assert_eq!(resnet.forward, 63_809_536);
        assert_eq!(resnet.training, 3 * resnet.forward - 32 * 32 * 32 * 27);

        // The LeNets: three convolutions (output side, weight elements), then dense flattened -> 250 -> 100 -> 40.
        let lenet_layout = |convolutions: [(u64, u64); 3], flattened: u64| -> u64 {
            let convolution_cost: u64 = convolutions
                .iter()
                .map(|(side, weights)| side * side * weights)
                .sum();
            convolution_cost + flattened * 250 + 250 * 100 + 100 * 40
        };
        // wide_lenet: 3x3 'same' convolutions 3 -> 32 at 64, 32 -> 64 at 32, 64 -> 128 at 16; 128 x 8 x 8 flattened.
        let wide = pass_cost(Architecture::WideLeNet, 40, 0).unwrap();
        assert_eq!(
            wide.forward,
            lenet_layout([(64, 32 * 27), (32, 64 * 288), (16, 128 * 576)], 8192)
        );
        // lenet: 2x2 'valid' convolutions 3 -> 6 at 63, 6 -> 16 at 30, 16 -> 16 at 14; 16 x 7 x 7 flattened.
        let lenet = pass_cost(Architecture::LeNet, 40, 0).unwrap();
        assert_eq!(
            lenet.forward,
            lenet_layout([(63, 6 * 12), (30, 16 * 24), (14, 16 * 64)], 784)
        );
        assert_eq!(lenet.training, 3 * lenet.forward - 63 * 63 * 6 * 12);

        // fusion: the resnet's trunk, the feature MLP (F -> 64 -> 64) and a classifier over 256 + 64 values.
        let fusion = pass_cost(Architecture::Fusion, 40, 58).unwrap();
        assert_eq!(
            fusion.forward,
            resnet_convolutions + 58 * 64 + 64 * 64 + 320 * 40
        );

        assert!(pass_cost(Architecture::Gbdt, 40, 0).is_err());
    }
}

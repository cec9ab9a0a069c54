//! Initial weights drawn exactly as PyTorch draws them: `torch.manual_seed(seed)`, then the module's
//! constructor. PyTorch's CPU generator (a Mersenne Twister, mt19937, seeded with the seed's low 32
//! bits) and its `Tensor.uniform_` transformation for f32 are reproduced here, and the parameters are drawn
//! layer by layer in the order the networks create their layers, the PyTorch twin's construction order
//! (bench/python/torch_train.py), each layer's weight before its bias. So one seed gives the same initial weights, bit for bit, in the cluster
//! and in a PyTorch script that seeds with it — on every machine, and without touching libtorch's global
//! generator (shared by all threads of a process).

use std::collections::HashMap;

use tch::{Kind, Tensor, nn};

use crate::error::TrainError;

const STATE_WORDS: usize = 624;
const SHIFT_WORDS: usize = 397;

/// PyTorch's CPU random generator: the 32-bit Mersenne Twister that `torch.manual_seed` seeds.
struct TorchCpuGenerator {
    state: [u32; STATE_WORDS],
    next: usize,
}

impl TorchCpuGenerator {
    /// The generator `torch.manual_seed(seed)` leaves behind (only the low 32 bits of the seed count).
    fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_WORDS];
        state[0] = seed as u32;
        for index in 1..STATE_WORDS {
            let previous = state[index - 1];
            state[index] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(index as u32);
        }
        TorchCpuGenerator {
            state,
            next: STATE_WORDS,
        }
    }

    fn twist(&mut self) {
        for index in 0..STATE_WORDS {
            let mixed = (self.state[index] & 0x8000_0000)
                | (self.state[(index + 1) % STATE_WORDS] & 0x7fff_ffff);
            let odd_term = if mixed & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[index] =
                self.state[(index + SHIFT_WORDS) % STATE_WORDS] ^ (mixed >> 1) ^ odd_term;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= STATE_WORDS {
            self.twist();
        }
        let mut value = self.state[self.next];
        self.next += 1;
        value ^= value >> 11;
        value ^= (value << 7) & 0x9d2c_5680;
        value ^= (value << 15) & 0xefc6_0000;
        value ^ (value >> 18)
    }

    /// One f32 of `Tensor.uniform_(from, to)` on CPU: the bounds cast to f32, 24 random bits scaled to
    /// [0, 1) in f64, `x * (to - from) + from` in f64, rounded to f32.
    fn uniform_f32(&mut self, from: f64, to: f64) -> f32 {
        let (from, to) = (from as f32, to as f32);
        let unit = f64::from(self.next_u32() & 0x00ff_ffff) / f64::from(1u32 << 24);
        (unit * f64::from(to - from) + f64::from(from)) as f32
    }
}

/// `nn.init.kaiming_uniform_(weight, a=math.sqrt(5))`'s bound, computed in PyTorch's order of f64 operations
/// (about 1/sqrt(fan_in), but not always to the last bit).
fn kaiming_uniform_bound(fan_in: i64) -> f64 {
    let negative_slope = 5f64.sqrt();
    let gain = (2.0 / (1.0 + negative_slope * negative_slope)).sqrt();
    let std = gain / (fan_in as f64).sqrt();
    3f64.sqrt() * std
}

/// One layer's trainable variables, weight before bias: the order PyTorch's constructors draw them in (tch
/// creates a layer's bias first).
struct Layer {
    variables: Vec<(String, Tensor)>,
}

impl Layer {
    /// The fan-in of the layer's conv/linear weight (`None` for a batch norm, whose weight is 1-d).
    fn fan_in(&self) -> Option<i64> {
        self.variables
            .iter()
            .map(|(_, tensor)| tensor.size())
            .find(|dims| dims.len() >= 2)
            .map(|dims| dims.iter().skip(1).product())
    }
}

/// The network's layers in the order it created them, its PyTorch twin's construction order.
fn layers_in_creation_order(var_store: &nn::VarStore) -> Result<Vec<Layer>, TrainError> {
    let name_of: HashMap<usize, String> = var_store
        .variables()
        .into_iter()
        .map(|(name, tensor)| (tensor.data_ptr() as usize, name))
        .collect();
    let mut layers: Vec<(String, Layer)> = Vec::new();
    for tensor in var_store.trainable_variables() {
        let name = name_of
            .get(&(tensor.data_ptr() as usize))
            .cloned()
            .ok_or_else(|| {
                TrainError::InvalidConfig(
                    "a trainable variable is missing from the var store's names".to_string(),
                )
            })?;
        let layer_name = name
            .rsplit_once('.')
            .map_or("", |(layer, _)| layer)
            .to_string();
        match layers.iter_mut().find(|(known, _)| *known == layer_name) {
            Some((_, layer)) => layer.variables.push((name, tensor)),
            None => layers.push((
                layer_name,
                Layer {
                    variables: vec![(name, tensor)],
                },
            )),
        }
    }
    let rank_in_layer = |name: &str| match name.rsplit('.').next() {
        Some("weight") => 0,
        Some("bias") => 1,
        _ => 2,
    };
    Ok(layers
        .into_iter()
        .map(|(_, mut layer)| {
            layer.variables.sort_by_key(|(name, _)| rank_in_layer(name));
            layer
        })
        .collect())
}

/// PyTorch's defaults, drawn as `torch.manual_seed(seed)` followed by the PyTorch twin's constructor draws
/// them, layer after layer in creation order: conv/linear weights `kaiming_uniform_(a=sqrt(5))`, then their
/// biases U(+-1/sqrt(fan_in)); batch-norm weight 1 and bias 0 (no draws). Batch-norm running statistics stay
/// as tch creates them (0 / 1).
pub(crate) fn initialize_like_pytorch(
    var_store: &nn::VarStore,
    seed: u64,
) -> Result<(), TrainError> {
    let layers = layers_in_creation_order(var_store)?;
    let mut generator = TorchCpuGenerator::new(seed);
    tch::no_grad(|| -> Result<(), TrainError> {
        for layer in &layers {
            let fan_in = layer.fan_in();
            for (name, tensor) in &layer.variables {
                let dims = tensor.size();
                let bound = match fan_in {
                    Some(fan_in) if dims.len() >= 2 => Some(kaiming_uniform_bound(fan_in)),
                    Some(fan_in) if name.ends_with("bias") => Some(1.0 / (fan_in as f64).sqrt()),
                    _ => None,
                };
                let mut target = tensor.shallow_clone();
                match bound {
                    Some(bound) => {
                        let values: Vec<f32> = (0..tensor.numel())
                            .map(|_| generator.uniform_f32(-bound, bound))
                            .collect();
                        let source = Tensor::f_from_slice(&values)?.f_view(dims.as_slice())?;
                        target.f_copy_(&source)?;
                    }
                    None if name.ends_with("weight") => {
                        let _ = target.f_fill_(1.0)?;
                    }
                    None => {
                        let _ = target.f_fill_(0.0)?;
                    }
                }
                debug_assert_eq!(tensor.kind(), Kind::Float, "{name}");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;
    use crate::model::Network;

    /// Per parameter of `torch.manual_seed(seed); Model(40)` in PyTorch 2.11 (bench/python/torch_train.py):
    /// the first value's f32 bits and sum((bits as u64) * (index + 1)) over the row-major values, wrapping.
    const PYTORCH_WIDE_LENET_SEED_42: &[(&str, u32, u64)] = &[
        ("conv1.weight", 0x3e16aab1, 0x0002d830929c306a),
        ("conv1.bias", 0xbdba2c22, 0x000000db74341f16),
        ("conv2.weight", 0xbcab6916, 0x04f45448e082ef84),
        ("conv2.bias", 0xbd13d871, 0x000004285f9239ad),
        ("conv3.weight", 0xbd0157cc, 0x4e85091a41b8b898),
        ("conv3.bias", 0xbcdc1896, 0x0000107bdbbd5317),
        ("fc1.weight", 0xbb22f988, 0xa7663a4f6d18cbe5),
        ("fc1.bias", 0xbb8bef06, 0x00003d51735b6cba),
        ("fc2.weight", 0x3d4db176, 0x091077dd6c38a5b1),
        ("fc2.bias", 0x3d45e892, 0x000009ec048bdfac),
        ("fc3.weight", 0x3d912b12, 0x003b8ea1ed9a602d),
        ("fc3.bias", 0xbd8cfe92, 0x000001893269a565),
    ];
    const PYTORCH_RESNET_SEED_7: &[(&str, u32, u64)] = &[
        ("stem.conv.weight", 0x3c5c3a8b, 0x0002cc0e73a5c3f8),
        ("layer1.conv1.weight", 0x3d426b44, 0x013f219923719ae4),
        ("layer1.conv2.weight", 0xbd60e1fd, 0x013b50f19c086fcf),
        ("layer2.conv1.weight", 0xbcc0ac78, 0x04ea73277acf9fe7),
        ("layer2.conv2.weight", 0x3c0494f0, 0x13aa53b2c9943e16),
        (
            "layer2.downsample.conv.weight",
            0xbe29f8ed,
            0x00100ec1fc3564cc,
        ),
        ("layer3.conv1.weight", 0x3cae96c8, 0x4ec23cf8e1b184a6),
        ("layer3.conv2.weight", 0x3cce66ec, 0x39c6b3443d29118f),
        (
            "layer3.downsample.conv.weight",
            0x3cbd5f08,
            0x00fb704fd60e380a,
        ),
        ("layer4.conv1.weight", 0xbc89254c, 0xe91c9977c6129f63),
        ("layer4.conv2.weight", 0x3b07454b, 0xa065b2dad4513482),
        (
            "layer4.downsample.conv.weight",
            0x3cbb37c3,
            0x0f9a457b84cb6c8c,
        ),
        ("fc.weight", 0xbc6a49c8, 0x01851ba3118d7f7a),
        ("fc.bias", 0x3d1e543c, 0x000001739af122e2),
    ];
    const PYTORCH_LENET_SEED_3: &[(&str, u32, u64)] = &[
        ("conv1.weight", 0xbe928a96, 0x0000054b90ab577c),
        ("conv1.bias", 0xbe061774, 0x000000058f09f40a),
        ("conv2.weight", 0x3d3e8ccd, 0x000093467e1cb1d9),
        ("conv2.bias", 0xbd6a5ad2, 0x00000042c160da69),
        ("conv3.weight", 0x3d5e5d20, 0x0003cb24189236fc),
        ("conv3.bias", 0xbd443708, 0x00000041fbf53a06),
        ("fc1.weight", 0x3cf9a638, 0x2d44b63648a70f6d),
        ("fc1.bias", 0x3c9f9590, 0x00003c9d95b497d1),
        ("fc2.weight", 0x3c651ef7, 0x09139bfbdcfc9556),
        ("fc2.bias", 0xbd31d59c, 0x00000a4a0621ca68),
        ("fc3.weight", 0x3d479a3a, 0x003b87c7f507fa7b),
        ("fc3.bias", 0x3bdff9cd, 0x000001a4e41ce21a),
    ];

    fn assert_matches_pytorch(
        architecture: Architecture,
        seed: u64,
        expected: &[(&str, u32, u64)],
    ) {
        let var_store = nn::VarStore::new(tch::Device::Cpu);
        let _network = Network::new(&var_store, architecture, 40, 0, seed).unwrap();
        let variables = var_store.variables();
        for (name, first_bits, weighted_bit_sum) in expected {
            let values = Vec::<f32>::try_from(
                variables[*name]
                    .contiguous()
                    .flatten(0, -1)
                    .to_kind(Kind::Float),
            )
            .unwrap();
            let sum = values.iter().enumerate().fold(0u64, |sum, (index, value)| {
                sum.wrapping_add(u64::from(value.to_bits()).wrapping_mul(index as u64 + 1))
            });
            assert_eq!(
                (values[0].to_bits(), sum),
                (*first_bits, *weighted_bit_sum),
                "{architecture:?} seed {seed}: {name} differs from PyTorch's"
            );
        }
        for (name, tensor) in variables.iter().filter(|(name, _)| name.contains("bn")) {
            let fill = if name.ends_with("weight") || name.ends_with("running_var") {
                1.0
            } else {
                0.0
            };
            let all_equal = tensor.eq(fill).all().int64_value(&[]) == 1;
            assert!(all_equal, "{name} should be filled with {fill}");
        }
    }

    #[test]
    fn wide_lenet_starts_from_pytorchs_weights() {
        assert_matches_pytorch(Architecture::WideLeNet, 42, PYTORCH_WIDE_LENET_SEED_42);
    }

    #[test]
    fn resnet_starts_from_pytorchs_weights() {
        assert_matches_pytorch(Architecture::ResNet, 7, PYTORCH_RESNET_SEED_7);
    }

    #[test]
    fn lenet_starts_from_pytorchs_weights() {
        assert_matches_pytorch(Architecture::LeNet, 3, PYTORCH_LENET_SEED_3);
    }

    #[test]
    fn only_the_seeds_low_32_bits_count_as_in_torch_manual_seed() {
        let mut low = TorchCpuGenerator::new(42);
        let mut high = TorchCpuGenerator::new((1 << 40) | 42);
        for _ in 0..1000 {
            assert_eq!(low.next_u32(), high.next_u32());
        }
    }
}

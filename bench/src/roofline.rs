//! The CPU's arithmetic peak as libtorch reaches it, measured in the same process and run as the figures it is
//! compared with: the faster of a large matrix product and a large 3x3 convolution (oneDNN's convolutions beat
//! MKL's matrix product on some CPUs, e.g. 131 against 101-103 GFLOP/s in f32 on one AMD EPYC Zen 4 core).

use std::time::Instant;

use plankton_trainer::model::channels_last;
use tch::{Device, Kind, Tensor};

/// The best of 7 timings of `work` after 2 warm-ups, in seconds.
fn best_seconds(work: impl Fn()) -> f64 {
    work();
    work();
    (0..7)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The two rates the peak is the faster of, in floating-point operations per second.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// A 1024 x 1024 matrix product.
    pub matmul: f64,
    /// A 3x3 convolution of 512 to 512 channels on 64 8x8 maps (channels-last, as our networks run).
    pub convolution: f64,
}

impl Peak {
    /// The faster of the two.
    pub fn flops(&self) -> f64 {
        self.matmul.max(self.convolution)
    }

    /// E.g. `132.9 GFLOP/s (matrix product 96.1, 3x3 convolution 132.9)`.
    pub fn describe(&self) -> String {
        format!(
            "{:.1} GFLOP/s (matrix product {:.1}, 3x3 convolution {:.1})",
            self.flops() / 1e9,
            self.matmul / 1e9,
            self.convolution / 1e9
        )
    }
}

/// The [`Peak`] in `kind` (f32 or bf16) at libtorch's current thread count.
pub fn peak(kind: Kind) -> anyhow::Result<Peak> {
    const SIDE: i64 = 1024;
    let left = Tensor::rand([SIDE, SIDE], (Kind::Float, Device::Cpu)).to_kind(kind);
    let right = Tensor::rand([SIDE, SIDE], (Kind::Float, Device::Cpu)).to_kind(kind);
    let matmul = 2.0 * (SIDE * SIDE * SIDE) as f64
        / best_seconds(|| {
            let _ = left.matmul(&right);
        });
    let (images, channels, side) = (64i64, 512i64, 8i64);
    let input = channels_last(
        &Tensor::rand([images, channels, side, side], (Kind::Float, Device::Cpu)).to_kind(kind),
    )?;
    let weight = channels_last(
        &Tensor::rand([channels, channels, 3, 3], (Kind::Float, Device::Cpu)).to_kind(kind),
    )?;
    let convolution = tch::no_grad(|| {
        2.0 * (images * side * side * channels * channels * 9) as f64
            / best_seconds(|| {
                let _ = input.conv2d(&weight, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
            })
    });
    Ok(Peak {
        matmul,
        convolution,
    })
}

/// `flops` as GFLOP/s with its share of `peak_flops`, e.g. `103.2 GFLOP/s (78% of peak)`.
pub fn describe(flops: f64, peak_flops: f64) -> String {
    format!(
        "{:.1} GFLOP/s ({:.0}% of peak)",
        flops / 1e9,
        100.0 * flops / peak_flops
    )
}

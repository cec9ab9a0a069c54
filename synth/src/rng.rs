//! Deterministic per-object random streams and the few distributions the generator samples.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Stream tags keep the draws of one object independent between uses (image, metadata, features).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Image = 1,
    Meta = 2,
    Missing = 3,
    Plan = 4,
    Sample = 5,
}

/// A ChaCha8 generator keyed by (dataset seed, object id, stream), so any object renders alone.
pub(crate) fn keyed_rng(seed: u64, key: u64, stream: Stream) -> ChaCha8Rng {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    seed_bytes[8..16].copy_from_slice(&key.to_le_bytes());
    seed_bytes[16..24].copy_from_slice(&(stream as u64).to_le_bytes());
    seed_bytes[24..32].copy_from_slice(b"plankton");
    ChaCha8Rng::from_seed(seed_bytes)
}

/// Uniform in `[low, high)`.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, low: f32, high: f32) -> f32 {
    low + (high - low) * rng.random::<f32>()
}

/// True with probability `probability`.
pub(crate) fn chance(rng: &mut ChaCha8Rng, probability: f32) -> bool {
    rng.random::<f32>() < probability
}

/// Standard normal draw (Box-Muller).
pub(crate) fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let radius_draw = rng.random::<f32>().max(1e-7);
    let angle_draw = rng.random::<f32>();
    (-2.0 * radius_draw.ln()).sqrt() * (std::f32::consts::TAU * angle_draw).cos()
}

/// Log-normal draw with the given median and log-space standard deviation.
pub(crate) fn log_normal(rng: &mut ChaCha8Rng, median: f32, sigma: f32) -> f32 {
    median * (sigma * standard_normal(rng)).exp()
}

/// A fast xorshift stream for per-pixel noise, seeded from the object's ChaCha stream.
pub(crate) struct PixelNoise {
    state: u64,
}

impl PixelNoise {
    pub(crate) fn new(rng: &mut ChaCha8Rng) -> Self {
        Self {
            state: rng.random::<u64>() | 1,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// Approximately standard-normal noise (sum of three uniforms, unit variance).
    pub(crate) fn next_normal(&mut self) -> f32 {
        let bits = self.next_u64();
        let first = (bits & 0x1f_ffff) as f32 / 2_097_152.0;
        let second = ((bits >> 21) & 0x1f_ffff) as f32 / 2_097_152.0;
        let third = ((bits >> 42) & 0x1f_ffff) as f32 / 2_097_152.0;
        (first + second + third - 1.5) * 2.0
    }
}

/// A stateless hash of integer pixel coordinates to `[0, 1)`, for textures.
pub(crate) fn hash01(x: i32, y: i32, salt: u32) -> f32 {
    let mut hash =
        (x as u32).wrapping_mul(0x9E37_79B1) ^ (y as u32).wrapping_mul(0x85EB_CA77) ^ salt;
    hash ^= hash >> 15;
    hash = hash.wrapping_mul(0x2C1B_3C6D);
    hash ^= hash >> 12;
    hash = hash.wrapping_mul(0x297A_2D39);
    hash ^= hash >> 15;
    (hash >> 8) as f32 / 16_777_216.0
}

//! Collectives between workers: ring all-reduce over TCP on CPU, NCCL behind a feature.
//!
//! A ring's connections are authenticated with the job's ring secret and optionally encrypted with TLS
//! ([`RingSecurity`], [`RingAllReduce::establish_secured`]).
//!
//! Every collective is synchronous and blocking (the trainer calls it from a libtorch thread). All ranks must
//! call the same operations in the same order with buffers of the same length; a mismatch is detected and
//! reported. After any failure a ring is poisoned: every later operation fails at once.
//!
//! Fault tolerance builds on three things: a ring belongs to one *generation* of a job (re-forming after a
//! member is lost starts the next one, and leftovers of the old ring are rejected); a [`RingAbort`] ends a
//! formation or a blocked operation from another thread (the watchdog's and the coordinator's lever when a
//! peer is stalled or lost) with [`CollectiveError::Aborted`]; and an error about a peer names it
//! ([`CollectiveError::peer_rank`]).
#![cfg_attr(not(feature = "nccl"), forbid(unsafe_code))]
#![cfg_attr(feature = "nccl", deny(unsafe_code))]

mod abort;
mod error;
mod listener;
mod ring;
mod security;
mod tls;
mod transport;
mod wire;

#[cfg(feature = "nccl")]
#[allow(unsafe_code)]
pub mod nccl;

pub use abort::RingAbort;
pub use error::{CollectiveError, Result};
pub use listener::RingListener;
pub use ring::{RingAllReduce, RingConfig};
pub use security::RingSecurity;

/// The number format an all-reduce sends values in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GradientCompression {
    /// f32 on the wire: the sum is exact up to f32 addition order (identical on every rank).
    #[default]
    None,
    /// bf16 on the wire (half the bytes), accumulated in f32: each hop of the reduce-scatter rounds its
    /// partial sum to bf16 once, and the final sums are bf16 values, identical on every rank. The error is
    /// bounded by about `world_size` roundings of relative size 2^-8 (half an ulp of bf16's 8-bit significand)
    /// of the partial sums.
    Bf16,
}

impl GradientCompression {
    /// Bytes one value takes on the wire.
    pub fn wire_bytes_per_value(self) -> usize {
        match self {
            GradientCompression::None => 4,
            GradientCompression::Bf16 => 2,
        }
    }

    /// The lowercase name used in configs and CLIs.
    pub fn name(self) -> &'static str {
        match self {
            GradientCompression::None => "none",
            GradientCompression::Bf16 => "bf16",
        }
    }
}

/// A group of data-parallel ranks that reduce gradients together.
pub trait Collective: Send {
    /// This process's rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `buffer` on every rank by the element-wise sum of all ranks' buffers.
    fn all_reduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), CollectiveError>;
    /// [`Collective::all_reduce_sum`] with the values sent as `compression` says; every rank ends with
    /// identical values. A collective without a compressed wire format sums exactly, as `all_reduce_sum`.
    fn all_reduce_sum_compressed(
        &mut self,
        buffer: &mut [f32],
        compression: GradientCompression,
    ) -> Result<(), CollectiveError> {
        let _exact_instead = compression;
        self.all_reduce_sum(buffer)
    }
    /// Replaces `buffer` on every rank by the buffer of rank `root`.
    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), CollectiveError>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
}

/// The collective of a job that runs on one worker: world size 1, every operation a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _buffer: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn broadcast(&mut self, _buffer: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root != 0 {
            return Err(CollectiveError::InvalidRoot {
                root,
                world_size: 1,
            });
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
}

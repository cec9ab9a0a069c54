//! Faults injected on purpose, for tests and the recovery benchmark: a worker that dies (or hangs) at a chosen
//! step of its first generation, before, during or after the step's all-reduce.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plankton_collective::{Collective, CollectiveError, GradientCompression, RingAbort};

/// Where in the step the fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// The rank dies before it sends anything of the step's all-reduce of its control values (the late
    /// segment's gradients, overlapped with the backward, have already travelled).
    BeforeAllReduce,
    /// The rank dies in the middle of the all-reduce (its peers are mid-exchange).
    DuringAllReduce,
    /// The all-reduce completes everywhere, then the rank dies before applying the step.
    AfterAllReduce,
    /// The rank hangs inside the all-reduce (alive, heart-beating, but never finishing) until aborted.
    Stall,
    /// The rank's loss (and so its gradients) becomes NaN at optimizer step `global_step`; it stays alive.
    NonFiniteLoss,
}

/// "Rank `rank` of generation 0 fails at global step `global_step` (0-based count of the plain all-reduces
/// that carry a step's control values) at `point`."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectedFault {
    pub rank: u32,
    pub global_step: u64,
    pub point: FaultPoint,
}

/// The message of the error an injected crash unwinds with (the worker then vanishes without reporting).
const INJECTED_CRASH: &str = "injected crash";

/// Longest an injected stall hangs when nobody aborts it.
const MAX_STALL: Duration = Duration::from_secs(600);

/// Wraps a collective and fires `fault` at its all-reduce number `fault.global_step`.
pub struct FaultInjectingCollective {
    inner: Box<dyn Collective>,
    fault: InjectedFault,
    all_reduces: u64,
    abort: RingAbort,
    /// Set when the injected crash fired: the worker must vanish, not report a ring fault.
    crashed: Arc<AtomicBool>,
}

impl FaultInjectingCollective {
    pub fn new(
        inner: Box<dyn Collective>,
        fault: InjectedFault,
        abort: RingAbort,
        crashed: Arc<AtomicBool>,
    ) -> Self {
        FaultInjectingCollective {
            inner,
            fault,
            all_reduces: 0,
            abort,
            crashed,
        }
    }

    fn crash(&self) -> CollectiveError {
        self.crashed.store(true, Ordering::SeqCst);
        CollectiveError::InvalidSetup {
            reason: INJECTED_CRASH.to_string(),
        }
    }
}

impl Collective for FaultInjectingCollective {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn all_reduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), CollectiveError> {
        let index = self.all_reduces;
        self.all_reduces += 1;
        if index != self.fault.global_step {
            return self.inner.all_reduce_sum(buffer);
        }
        match self.fault.point {
            FaultPoint::BeforeAllReduce => Err(self.crash()),
            FaultPoint::DuringAllReduce => {
                // Half a buffer: the peers start exchanging, then see a broken operation.
                let half = buffer.len() / 2;
                let _ = self.inner.all_reduce_sum(&mut buffer[..half]);
                Err(self.crash())
            }
            FaultPoint::AfterAllReduce => {
                self.inner.all_reduce_sum(buffer)?;
                Err(self.crash())
            }
            // Injected in the trainer (see `TrainConfig::inject_non_finite_at_step`).
            FaultPoint::NonFiniteLoss => self.inner.all_reduce_sum(buffer),
            FaultPoint::Stall => {
                let started = Instant::now();
                while !self.abort.is_aborted() && started.elapsed() < MAX_STALL {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(CollectiveError::Aborted {
                    reason: self
                        .abort
                        .reason()
                        .unwrap_or_else(|| "injected stall ended".into()),
                })
            }
        }
    }

    /// Not counted: gradient-only all-reduces (a compressed step's gradients, the late segment's gradients
    /// overlapped with the backward) go with the step's plain all-reduce of its control values, the one per step
    /// where faults are injected.
    fn all_reduce_sum_compressed(
        &mut self,
        buffer: &mut [f32],
        compression: GradientCompression,
    ) -> Result<(), CollectiveError> {
        self.inner.all_reduce_sum_compressed(buffer, compression)
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        self.inner.broadcast(buffer, root)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.inner.barrier()
    }
}

//! NCCL all-reduce between GPUs (feature `nccl`): the crate's only `unsafe`, each block with its invariant.
//!
//! CUDA and NCCL are loaded at run time (cudarc `dynamic-loading`), so this builds on machines without CUDA;
//! a missing library surfaces as [`CollectiveError::Nccl`] when a communicator is created, not as a panic.
//! NCCL has no per-operation timeout: a dead or stalled peer blocks the GPU stream. A watchdog ends that with
//! [`NcclAllReduce::abort_handle`]: [`NcclAbortHandle::abort`] calls `ncclCommAbort` from its own thread, the
//! kernels in flight stop, and the blocked call returns [`CollectiveError::Aborted`].
//!
//! `ncclCommAbort` also frees the communicator, so the handle lives behind a mutex ([`SharedCommunicator`]):
//! every NCCL call holds it while it enqueues (not while the stream runs), and the abort swaps the handle out
//! under it, so no call can reach a freed communicator. An abort therefore waits for an enqueue in progress;
//! enqueueing on a blocking communicator returns once the work is queued, which the operations here (one
//! collective per synchronised call) never make wait on the GPU.

use std::ffi::{c_char, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut};
use cudarc::nccl::{result as nccl_result, sys as nccl_sys};

use crate::Collective;
use crate::abort::lock;
use crate::error::{CollectiveError, Result};

/// Size of an NCCL unique id: rank 0 (or the coordinator) creates it, every rank needs the same bytes.
pub const UNIQUE_ID_BYTES: usize = 128;

/// Creates the id of a new NCCL clique, to be handed to every rank (rank 0 / coordinator side).
pub fn new_unique_id() -> Result<Vec<u8>> {
    let unique_id = with_library_guard("get_unique_id", 0, 0, || {
        nccl_result::get_uniqueid()
            .map_err(|nccl_error| nccl_failure("get_unique_id", 0, 0, &nccl_error))
    })?;
    // `c_char` is i8 or u8 depending on the target; the id is opaque bytes either way.
    Ok(unique_id.internal.iter().map(|&byte| byte as u8).collect())
}

/// One rank of an NCCL communicator on one GPU.
#[derive(Debug)]
pub struct NcclAllReduce {
    communicator: Arc<SharedCommunicator>,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
    /// Device copy of host buffers reduced through [`Collective`]; reused while the length stays the same.
    staging: Option<CudaSlice<f32>>,
}

/// Aborts an [`NcclAllReduce`] from another thread: a watchdog's lever on a rank stuck in a collective (a peer
/// stalled or lost). Cheap to clone; outliving the communicator is fine (the abort is then a no-op).
#[derive(Debug, Clone)]
pub struct NcclAbortHandle {
    communicator: Arc<SharedCommunicator>,
}

impl NcclAbortHandle {
    /// Calls `ncclCommAbort`: collectives in flight stop, the call blocked in one returns
    /// [`CollectiveError::Aborted`] with `reason`, and so does every later call. Only the first abort acts.
    pub fn abort(&self, reason: impl Into<String>) -> Result<()> {
        self.communicator.abort(reason.into())
    }

    pub fn is_aborted(&self) -> bool {
        self.communicator.aborted_reason().is_some()
    }
}

/// The communicator of one rank, shared by the rank and its abort handles.
#[derive(Debug)]
struct SharedCommunicator {
    state: Mutex<CommunicatorState>,
    rank: usize,
    world_size: usize,
}

#[derive(Debug)]
enum CommunicatorState {
    Live(LiveCommunicator),
    /// Released by `ncclCommAbort` (an abort handle, or the drop of the rank).
    Aborted {
        reason: String,
    },
}

#[derive(Debug)]
struct LiveCommunicator(nccl_sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread provided calls on it are not concurrent. It is only
// reached through `SharedCommunicator::state`, whose mutex serialises every call, `ncclCommAbort` included.
unsafe impl Send for LiveCommunicator {}

impl SharedCommunicator {
    /// Runs `call` on the live communicator while holding the lock, so an abort cannot free it meanwhile.
    fn with_live<T>(&self, call: impl FnOnce(nccl_sys::ncclComm_t) -> Result<T>) -> Result<T> {
        let state = lock(&self.state);
        match &*state {
            CommunicatorState::Live(live) => call(live.0),
            CommunicatorState::Aborted { reason } => Err(CollectiveError::Aborted {
                reason: reason.clone(),
            }),
        }
    }

    fn aborted_reason(&self) -> Option<String> {
        match &*lock(&self.state) {
            CommunicatorState::Live(_) => None,
            CommunicatorState::Aborted { reason } => Some(reason.clone()),
        }
    }

    /// Releases the communicator with `ncclCommAbort` unless that already happened.
    fn abort(&self, reason: String) -> Result<()> {
        let mut state = lock(&self.state);
        let CommunicatorState::Live(live) = &*state else {
            return Ok(());
        };
        let communicator = live.0;
        *state = CommunicatorState::Aborted { reason };
        with_library_guard("abort", self.rank, self.world_size, || {
            // SAFETY: the handle was created by `comm_init_rank` and was still live (state `Live`); the state
            // now says `Aborted` and the lock is held, so this is its only release and no later call can reach
            // it. NCCL allows aborting a communicator while another thread waits on a stream running its
            // kernels.
            unsafe { nccl_result::comm_abort(communicator) }
                .map(|_| ())
                .map_err(|nccl_error| {
                    nccl_failure("abort", self.rank, self.world_size, &nccl_error)
                })
        })
    }
}

impl NcclAllReduce {
    /// Joins the NCCL clique of `unique_id` as `rank` of `world_size` on GPU `device_ordinal`. Blocks until
    /// every rank has joined.
    pub fn new(
        unique_id: &[u8],
        rank: usize,
        world_size: usize,
        device_ordinal: usize,
    ) -> Result<Self> {
        let setup_failure = |detail: String| CollectiveError::Nccl {
            operation: "init",
            rank,
            world_size,
            detail,
        };
        if unique_id.len() != UNIQUE_ID_BYTES {
            return Err(setup_failure(format!(
                "unique id has {} bytes, NCCL needs {UNIQUE_ID_BYTES}",
                unique_id.len()
            )));
        }
        if rank >= world_size {
            return Err(setup_failure(format!(
                "rank {rank} is out of range for world size {world_size}"
            )));
        }
        let world_size_c = i32::try_from(world_size)
            .map_err(|_| setup_failure("world size too large".to_string()))?;
        let rank_c =
            i32::try_from(rank).map_err(|_| setup_failure("rank too large".to_string()))?;
        let mut internal: [c_char; UNIQUE_ID_BYTES] = [0; UNIQUE_ID_BYTES];
        for (destination, &byte) in internal.iter_mut().zip(unique_id) {
            *destination = byte as c_char;
        }
        let clique_id = nccl_sys::ncclUniqueId { internal };
        with_library_guard("init", rank, world_size, || {
            let context = CudaContext::new(device_ordinal).map_err(|driver_error| {
                setup_failure(format!("opening GPU {device_ordinal}: {driver_error}"))
            })?;
            let stream = context.new_stream().map_err(|driver_error| {
                setup_failure(format!("creating a stream: {driver_error}"))
            })?;
            // ncclCommInitRank binds the communicator to the thread's current device.
            context.bind_to_thread().map_err(|driver_error| {
                setup_failure(format!("binding GPU {device_ordinal}: {driver_error}"))
            })?;
            let mut communicator: nccl_sys::ncclComm_t = std::ptr::null_mut();
            // SAFETY: `communicator` is a valid out-pointer for the duration of the call; the id is 128 bytes
            // as NCCL requires; rank < world_size was checked above.
            unsafe {
                nccl_result::comm_init_rank(&mut communicator, world_size_c, clique_id, rank_c)
            }
            .map_err(|nccl_error| nccl_failure("init", rank, world_size, &nccl_error))?;
            Ok(NcclAllReduce {
                communicator: Arc::new(SharedCommunicator {
                    state: Mutex::new(CommunicatorState::Live(LiveCommunicator(communicator))),
                    rank,
                    world_size,
                }),
                stream,
                rank,
                world_size,
                staging: None,
            })
        })
    }

    /// A handle that aborts this communicator from another thread.
    pub fn abort_handle(&self) -> NcclAbortHandle {
        NcclAbortHandle {
            communicator: Arc::clone(&self.communicator),
        }
    }

    /// Sums `len` f32 at `device_ptr` across ranks, in place, enqueued on `cuda_stream` (a raw `cudaStream_t`,
    /// 0 for the legacy default stream); the caller synchronises that stream before reading the result.
    /// For gradients already on the GPU (tch's `data_ptr()`).
    ///
    /// The caller guarantees: `device_ptr` points to at least `len` f32 in memory of this communicator's
    /// device that stays allocated until the stream has run the reduction, and `cuda_stream` is a live stream
    /// of the same device.
    pub fn all_reduce_sum_device(
        &self,
        device_ptr: u64,
        len: usize,
        cuda_stream: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.communicator.with_live(|communicator| {
            // SAFETY: per this method's contract the pointer covers `len` f32 on this device and the stream is
            // live; in-place reduction (send == receive buffer) is supported by NCCL; `with_live` holds the
            // communicator live for the call.
            unsafe {
                nccl_result::all_reduce(
                    device_ptr as *const c_void,
                    device_ptr as *mut c_void,
                    len,
                    nccl_sys::ncclDataType_t::ncclFloat32,
                    nccl_sys::ncclRedOp_t::ncclSum,
                    communicator,
                    cuda_stream as nccl_sys::cudaStream_t,
                )
            }
            .map(|_| ())
            .map_err(|nccl_error| {
                nccl_failure("all_reduce", self.rank, self.world_size, &nccl_error)
            })
        })
    }

    /// [`Self::copy_through_device`], reporting an abort (before or during the call) as
    /// [`CollectiveError::Aborted`] rather than as whatever error the aborted stream produced.
    fn through_device(
        &mut self,
        operation: &'static str,
        buffer: &mut [f32],
        device_operation: impl FnOnce(
            nccl_sys::ncclComm_t,
            u64,
            usize,
            nccl_sys::cudaStream_t,
        ) -> Result<()>,
    ) -> Result<()> {
        if let Some(reason) = self.communicator.aborted_reason() {
            return Err(CollectiveError::Aborted { reason });
        }
        let outcome = self.copy_through_device(operation, buffer, device_operation);
        match self.communicator.aborted_reason() {
            Some(reason) => Err(CollectiveError::Aborted { reason }),
            None => outcome,
        }
    }

    /// Copies `buffer` to the device, runs `device_operation` on the copy (communicator, device pointer,
    /// stream) holding the communicator live, copies the result back and waits for it.
    fn copy_through_device(
        &mut self,
        operation: &'static str,
        buffer: &mut [f32],
        device_operation: impl FnOnce(
            nccl_sys::ncclComm_t,
            u64,
            usize,
            nccl_sys::cudaStream_t,
        ) -> Result<()>,
    ) -> Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let (rank, world_size) = (self.rank, self.world_size);
        let driver_failure = |detail: String| CollectiveError::Nccl {
            operation,
            rank,
            world_size,
            detail,
        };
        let stream = Arc::clone(&self.stream);
        if self
            .staging
            .as_ref()
            .is_none_or(|staging| staging.len() != buffer.len())
        {
            self.staging = None;
            let fresh = stream
                .alloc_zeros::<f32>(buffer.len())
                .map_err(|driver_error| {
                    driver_failure(format!("allocating {} f32: {driver_error}", buffer.len()))
                })?;
            self.staging = Some(fresh);
        }
        let Some(staging) = self.staging.as_mut() else {
            return Err(driver_failure("no staging buffer".to_string()));
        };
        stream
            .memcpy_htod(&*buffer, staging)
            .map_err(|driver_error| {
                driver_failure(format!("copying to the device: {driver_error}"))
            })?;
        {
            // The guard records the reduction's use of `staging` on the stream when dropped.
            let (device_ptr, _use_record) = staging.device_ptr_mut(&stream);
            // Only the enqueue holds the communicator's lock; an abort can come while the stream runs.
            self.communicator.with_live(|communicator| {
                device_operation(
                    communicator,
                    device_ptr,
                    buffer.len(),
                    stream.cu_stream() as nccl_sys::cudaStream_t,
                )
            })?;
        }
        stream
            .memcpy_dtoh(staging, buffer)
            .map_err(|driver_error| {
                driver_failure(format!("copying to the host: {driver_error}"))
            })?;
        stream
            .synchronize()
            .map_err(|driver_error| driver_failure(format!("synchronising: {driver_error}")))
    }
}

impl Collective for NcclAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), CollectiveError> {
        let (rank, world_size) = (self.rank, self.world_size);
        self.through_device(
            "all_reduce",
            buffer,
            |communicator, device_ptr, len, stream| {
                // SAFETY: `device_ptr` is the staging slice of exactly `len` f32 allocated on this communicator's
                // device, kept alive by `self.staging` until after the stream is synchronised; `stream` is ours.
                unsafe {
                    nccl_result::all_reduce(
                        device_ptr as *const c_void,
                        device_ptr as *mut c_void,
                        len,
                        nccl_sys::ncclDataType_t::ncclFloat32,
                        nccl_sys::ncclRedOp_t::ncclSum,
                        communicator,
                        stream,
                    )
                }
                .map(|_| ())
                .map_err(|nccl_error| nccl_failure("all_reduce", rank, world_size, &nccl_error))
            },
        )
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world_size {
            return Err(CollectiveError::InvalidRoot {
                root,
                world_size: self.world_size,
            });
        }
        let (rank, world_size) = (self.rank, self.world_size);
        let root_c = root as i32; // root < world_size, which fits in i32 (checked in `new`).
        self.through_device(
            "broadcast",
            buffer,
            |communicator, device_ptr, len, stream| {
                // SAFETY: as in `all_reduce_sum`: the staging slice holds `len` f32 on our device and outlives the
                // synchronised stream; in-place broadcast is supported by NCCL.
                unsafe {
                    nccl_result::broadcast(
                        device_ptr as *const c_void,
                        device_ptr as *mut c_void,
                        len,
                        nccl_sys::ncclDataType_t::ncclFloat32,
                        root_c,
                        communicator,
                        stream,
                    )
                }
                .map(|_| ())
                .map_err(|nccl_error| nccl_failure("broadcast", rank, world_size, &nccl_error))
            },
        )
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        // A one-element all-reduce completes on a rank only once every rank has contributed.
        let mut token = [0.0f32];
        self.all_reduce_sum(&mut token)
    }
}

impl Drop for NcclAllReduce {
    fn drop(&mut self) {
        // Abort rather than destroy: destroy waits for peers, which may be dead. A no-op after an abort handle.
        if let Err(abort_error) = self
            .communicator
            .abort("the communicator was dropped".to_string())
        {
            tracing::warn!(rank = self.rank, %abort_error, "aborting the nccl communicator failed");
        }
    }
}

fn nccl_failure(
    operation: &'static str,
    rank: usize,
    world_size: usize,
    nccl_error: &nccl_result::NcclError,
) -> CollectiveError {
    CollectiveError::Nccl {
        operation,
        rank,
        world_size,
        detail: format!("{:?}", nccl_error.0),
    }
}

/// cudarc panics when the CUDA or NCCL library cannot be loaded; turns that into an error.
fn with_library_guard<T>(
    operation: &'static str,
    rank: usize,
    world_size: usize,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(CollectiveError::Nccl {
            operation,
            rank,
            world_size,
            detail: format!("CUDA/NCCL unavailable: {message}"),
        })
    })
}

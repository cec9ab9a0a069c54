//! glibc malloc settings for the processes that run libtorch: freed tensor buffers stay in the heap for reuse.
//!
//! A training step (or a batched forward pass) frees its activations and allocates the same sizes again in the
//! next. By default glibc serves large allocations with fresh `mmap`s that it unmaps on free, and trims the
//! heap's free top above 128 KiB, so every step faults its activation pages in again and the kernel zeroes each
//! one (7-8% of a LeNet training step in a profile on a 2-core EPYC). [`keep_freed_memory_for_reuse`] raises
//! both thresholds: allocations up to 32 MiB (glibc's largest mmap threshold) come from the heap, and freed
//! memory stays there. The resident set then stays at the process's peak instead of breathing with every step.
#![allow(unsafe_code)]

/// glibc's largest `M_MMAP_THRESHOLD` on 64-bit targets (larger allocations are always mapped).
pub const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// The trim threshold: the largest `M_TRIM_THRESHOLD` mallopt takes (freed memory stays).
pub const TRIM_THRESHOLD_BYTES: i32 = i32::MAX;
/// [`keep_freed_memory_for_reuse`]'s settings as `GLIBC_TUNABLES` entries, for processes it cannot reach (a
/// benchmark's PyTorch reference); the Makefile exports the same.
pub const GLIBC_TUNABLES_ENTRIES: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647";

/// What [`keep_freed_memory_for_reuse`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MallocTuning {
    /// Both thresholds set.
    Applied,
    /// `GLIBC_TUNABLES` already names an mmap or trim threshold: the operator's choice is kept.
    LeftToGlibcTunables,
    /// Not glibc (or glibc refused a setting): nothing changed.
    Unsupported,
}

/// Sets glibc's mmap threshold to 32 MiB and its trim threshold to 2 GiB, unless `GLIBC_TUNABLES` already sets
/// either (the same effect as [`GLIBC_TUNABLES_ENTRIES`]). Call it at the start of `main`, before the
/// allocations it should affect.
pub fn keep_freed_memory_for_reuse() -> MallocTuning {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains("mmap_threshold") || tunables.contains("trim_threshold") {
        return MallocTuning::LeftToGlibcTunables;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> MallocTuning {
    // SAFETY: mallopt only changes malloc's parameters; glibc takes its own lock for it.
    let applied = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    };
    if applied {
        MallocTuning::Applied
    } else {
        MallocTuning::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> MallocTuning {
    MallocTuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn thread_page_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        usage.ru_minflt
    }

    #[test]
    fn the_tunables_entries_say_what_mallopt_sets() {
        assert_eq!(
            GLIBC_TUNABLES_ENTRIES,
            format!(
                "glibc.malloc.mmap_threshold={MMAP_THRESHOLD_BYTES}:glibc.malloc.trim_threshold={TRIM_THRESHOLD_BYTES}"
            )
        );
        let makefile =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Makefile")).unwrap();
        assert!(
            makefile.contains(&format!(
                "export GLIBC_TUNABLES := glibc.malloc.hugetlb=1:{GLIBC_TUNABLES_ENTRIES}"
            )),
            "the Makefile exports other malloc settings than the workers set"
        );
    }

    #[test]
    fn freed_step_buffers_are_reused_without_faulting_pages_in_again() {
        // Applied here, or by glibc at start-up when GLIBC_TUNABLES names the thresholds (as the Makefile's does).
        let tuning = keep_freed_memory_for_reuse();
        assert_ne!(tuning, MallocTuning::Unsupported);
        // A training thread (its own malloc arena) allocating, filling and freeing a step's activations again
        // and again; the sizes vary as a network's layers do.
        let faults_per_step = std::thread::spawn(|| {
            let step = || {
                let buffers: Vec<Vec<u8>> = [6usize << 20, 3 << 20, 1 << 20, 5 << 20]
                    .into_iter()
                    .map(|size| vec![1u8; size])
                    .collect();
                std::hint::black_box(buffers);
            };
            step();
            step();
            let before = thread_page_faults();
            for _ in 0..10 {
                step();
            }
            (thread_page_faults() - before) / 10
        })
        .join()
        .unwrap();
        // 15 MiB of fresh pages would be ~3,800 faults of 4 KiB (or ~8 of 2 MiB huge pages) per step.
        assert!(
            faults_per_step <= 4,
            "{faults_per_step} page faults per step"
        );
    }
}

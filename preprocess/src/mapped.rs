//! A read-only memory map of a shard record file, whose resident pages can be dropped and counted.
//!
//! The only unsafe code of the crate. Invariants it relies on:
//! - The mapped file is never modified or truncated while mapped: record files are written to a temporary
//!   name and renamed into place, never rewritten in place; replacing one (rename) leaves the mapped inode
//!   intact. A file truncated by someone else would make later reads fault (SIGBUS), as with any mmap.
//! - `MADV_DONTNEED` on a read-only file mapping only drops this process's page-table entries: the next read
//!   faults the same bytes back in from the page cache or the file, so slices handed out earlier stay valid
//!   and keep their contents.
//! - The map is private and read-only (`Mmap`), so no write through it can ever be lost by dropping pages.

use std::fs::File;
use std::io;

use memmap2::{Mmap, UncheckedAdvice};

/// A whole file mapped read-only.
#[derive(Debug)]
pub(crate) struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    /// Maps `file` (at its current length) read-only.
    pub(crate) fn map(file: &File) -> io::Result<Self> {
        // SAFETY: the module's invariants: the file is not modified or truncated while mapped.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(file)? };
        Ok(MappedFile { map })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Drops the pages of `range` (byte offsets, widened to whole pages) from this process's resident set.
    pub(crate) fn release(&self, start: usize, length: usize) -> io::Result<()> {
        let page = page_size();
        let aligned_start = start / page * page;
        let end = (start + length).min(self.map.len());
        if end <= aligned_start {
            return Ok(());
        }
        // SAFETY: read-only file-backed map: dropped pages fault back in with the same contents (module
        // invariants), so no slice handed out by `bytes` changes.
        #[allow(unsafe_code)]
        unsafe {
            self.map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                aligned_start,
                end - aligned_start,
            )
        }
    }

    /// Bytes of the map in this process's resident set now: the `Rss` of its mapping in `/proc/self/smaps`
    /// (Linux; `None` elsewhere). Unlike `mincore`, which reports the page cache, this counts only pages
    /// mapped into this process, the ones the cap releases.
    pub(crate) fn resident_bytes(&self) -> Option<usize> {
        let start = self.map.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut in_mapping = false;
        for line in smaps.lines() {
            let first_field = line.split_whitespace().next().unwrap_or("");
            if let Some((low, high)) = first_field.split_once('-')
                && let (Ok(low), Ok(high)) = (
                    usize::from_str_radix(low, 16),
                    usize::from_str_radix(high, 16),
                )
            {
                in_mapping = low <= start && start < high;
                continue;
            }
            if in_mapping && let Some(rest) = line.strip_prefix("Rss:") {
                let kilobytes: usize = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                return Some(kilobytes * 1024);
            }
        }
        None
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|size| *size > 0)
        .unwrap_or(4096)
}

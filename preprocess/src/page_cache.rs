//! Positioned reads from a file whose pages in the kernel's page cache are capped: after every
//! `max_cached_bytes` read, the kernel is advised to drop the file's clean cached pages
//! (`POSIX_FADV_DONTNEED`), so later reads come from the disk. The reader maps nothing, so its own resident
//! set holds only the caller's buffers, whatever the order of reads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A file read at offsets into the caller's buffers, with what it keeps in the page cache capped.
#[derive(Debug)]
pub struct CappedFile {
    file: File,
    /// Bytes read between two advices to drop the file's cached pages (0: never advised).
    max_cached_bytes: usize,
    /// Bytes read since the last advice.
    read_since_release: AtomicUsize,
    /// Times the file's cached pages were dropped.
    releases: AtomicU64,
}

impl CappedFile {
    /// Reads of `file` keep at most about `max_cached_bytes` of it in the page cache (0: no cap).
    pub fn new(file: File, max_cached_bytes: usize) -> Self {
        CappedFile {
            file,
            max_cached_bytes,
            read_since_release: AtomicUsize::new(0),
            releases: AtomicU64::new(0),
        }
    }

    /// The file, e.g. to write to it at offsets.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Appends `length` bytes read at `offset` to `out`; on an error `out` is left as it was. Past the cap,
    /// the file's cached pages are dropped first.
    pub fn read_into(&self, offset: u64, length: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.max_cached_bytes > 0 {
            let read = self.read_since_release.fetch_add(length, Ordering::Relaxed) + length;
            if read > self.max_cached_bytes {
                self.read_since_release.store(length, Ordering::Relaxed);
                self.drop_cached_pages();
            }
        }
        let start = out.len();
        out.resize(start + length, 0);
        self.file
            .read_exact_at(&mut out[start..], offset)
            .inspect_err(|_| out.truncate(start))
    }

    /// Advises the kernel to drop the file's clean cached pages. Failing to only costs memory, never
    /// correctness.
    pub fn drop_cached_pages(&self) {
        self.releases.fetch_add(1, Ordering::Relaxed);
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed);
    }

    /// Times the file's cached pages were dropped.
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Relaxed)
    }
}

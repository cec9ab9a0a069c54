//! Reload on change: a background task that re-reads a few files every poll interval and hands their new
//! contents to a reload function when any of them changed.
//!
//! Changes are detected by content digest rather than mtime: a certificate rewritten within the same
//! timestamp tick, or a Kubernetes Secret whose symlinks are swapped to files with old mtimes, is still seen.
//! The files are small (PEM, tokens), so reading them once a second costs nothing.
//!
//! New contents are applied once they have settled: the same digest on two consecutive polls. A file rewritten
//! in place (truncated, then written) or a certificate and key replaced one after the other is never applied
//! half-written, at the cost of one more poll interval before a change takes effect.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::SecurityError;

/// How often reloading stores and certificates look at their files unless told otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Digest of the contents of a list of files, to tell whether any of them changed.
pub(crate) type ContentsDigest = [u8; 32];

pub(crate) fn digest_contents(contents: &[Vec<u8>]) -> ContentsDigest {
    let mut hasher = Sha256::new();
    for file_contents in contents {
        hasher.update((file_contents.len() as u64).to_le_bytes());
        hasher.update(file_contents);
    }
    hasher.finalize().into()
}

/// Reads every file, naming the first that cannot be read.
pub(crate) fn read_files(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, SecurityError> {
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|source| SecurityError::read_file(path, source)))
        .collect()
}

/// The tokio runtime a reload task is spawned on; an error naming `what` outside of one.
pub(crate) fn current_runtime(what: &'static str) -> Result<tokio::runtime::Handle, SecurityError> {
    tokio::runtime::Handle::try_current().map_err(|_| SecurityError::NoRuntime { what })
}

/// Spawns the task that polls `paths` every `poll_interval` and calls `reload(target, contents)` when their
/// contents differ from those last seen (initially `loaded_digest`, the digest of what `target` was built from).
///
/// The task holds only a weak reference: it ends at its next poll once every strong reference is dropped.
/// A file that cannot be read, or contents that `reload` rejects, are logged once per change and the target
/// keeps what it has.
pub(crate) fn spawn_reload_task<T, F>(
    runtime: &tokio::runtime::Handle,
    target: &Arc<T>,
    paths: Vec<PathBuf>,
    loaded_digest: ContentsDigest,
    poll_interval: Duration,
    reload: F,
) where
    T: Send + Sync + 'static,
    F: Fn(&T, &[Vec<u8>]) -> Result<(), SecurityError> + Send + Sync + 'static,
{
    let weak_target: Weak<T> = Arc::downgrade(target);
    let reload = Arc::new(reload);
    runtime.spawn(async move {
        let mut watch = WatchState {
            applied: Some(loaded_digest),
            candidate: None,
        };
        let mut ticker = tokio::time::interval(poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(target) = weak_target.upgrade() else {
                return;
            };
            let paths = paths.clone();
            let reload = reload.clone();
            let poll = tokio::task::spawn_blocking(move || {
                poll_files_once(target.as_ref(), &paths, watch, reload.as_ref())
            });
            match poll.await {
                Ok(next) => watch = next,
                Err(join_error) => tracing::error!(%join_error, "file reload task failed"),
            }
        }
    });
}

/// What a reload task has seen of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WatchState {
    /// Digest of the contents the target was last built from or handed; None after a file could not be read,
    /// so that the next readable contents are handed over even if they are unchanged.
    applied: Option<ContentsDigest>,
    /// Digest of changed contents seen on the previous poll and not yet applied: they are handed over when the
    /// next poll sees them again (settled), not while a writer may still be in the middle of them.
    candidate: Option<ContentsDigest>,
}

/// One poll: reads the files and hands them to `reload` once changed contents have settled.
fn poll_files_once<T, F>(target: &T, paths: &[PathBuf], watch: WatchState, reload: &F) -> WatchState
where
    F: Fn(&T, &[Vec<u8>]) -> Result<(), SecurityError>,
{
    let contents = match read_files(paths) {
        Ok(contents) => contents,
        Err(error) => {
            // Logged once, when a file goes missing; a rotation that replaces files may race with this read.
            if watch.applied.is_some() {
                tracing::warn!(%error, "cannot read a watched file; keeping the loaded contents");
            }
            return WatchState {
                applied: None,
                candidate: None,
            };
        }
    };
    let digest = digest_contents(&contents);
    if watch.applied == Some(digest) {
        return WatchState {
            applied: watch.applied,
            candidate: None,
        };
    }
    if watch.candidate != Some(digest) {
        return WatchState {
            applied: watch.applied,
            candidate: Some(digest),
        };
    }
    let files = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match reload(target, &contents) {
        Ok(()) => tracing::info!(%files, "reloaded changed files"),
        Err(error) => {
            tracing::error!(%files, %error, "changed files are invalid; keeping the previous ones")
        }
    }
    WatchState {
        applied: Some(digest),
        candidate: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every set of contents it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<u8>>>);

    fn record(recorder: &Recorder, contents: &[Vec<u8>]) -> Result<(), SecurityError> {
        recorder.0.lock().unwrap().push(contents[0].clone());
        Ok(())
    }

    #[test]
    fn changed_contents_are_applied_only_once_they_settle() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("watched");
        std::fs::write(&path, "first").unwrap();
        let paths = vec![path.clone()];
        let recorder = Recorder::default();
        let mut watch = WatchState {
            applied: Some(digest_contents(&[b"first".to_vec()])),
            candidate: None,
        };
        let poll =
            |watch: &mut WatchState| *watch = poll_files_once(&recorder, &paths, *watch, &record);

        poll(&mut watch);
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "unchanged contents were handed over"
        );

        // A writer that truncated the file and has not written it yet: seen once, never applied.
        std::fs::write(&path, "").unwrap();
        poll(&mut watch);
        std::fs::write(&path, "second").unwrap();
        poll(&mut watch);
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "unsettled contents were handed over"
        );
        poll(&mut watch);
        assert_eq!(*recorder.0.lock().unwrap(), vec![b"second".to_vec()]);
        poll(&mut watch);
        assert_eq!(
            recorder.0.lock().unwrap().len(),
            1,
            "settled contents were handed over twice"
        );

        // A file that goes missing and comes back unchanged is handed over again once settled.
        std::fs::remove_file(&path).unwrap();
        poll(&mut watch);
        std::fs::write(&path, "second").unwrap();
        poll(&mut watch);
        poll(&mut watch);
        assert_eq!(recorder.0.lock().unwrap().len(), 2);
    }
}

//! [`RingAbort`]: the watchdog's handle on a ring, to end its formation or a blocked operation from another thread.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Aborts one ring from any thread: while it is being established (`establish` returns
/// [`CollectiveError::Aborted`](crate::CollectiveError::Aborted) within a poll interval) or once it is
/// established (its connections are shut down, so a blocked all-reduce, broadcast or barrier returns `Aborted`
/// at once and the ring is poisoned).
///
/// Clones share one state. Use a fresh one for every `establish` call (every ring generation): once aborted it
/// stays aborted. The worker hands a clone to whatever watches the ring (a stalled-step watchdog, the
/// coordinator's report that a member is lost).
#[derive(Clone, Debug, Default)]
pub struct RingAbort {
    shared: Arc<AbortState>,
}

#[derive(Debug, Default)]
struct AbortState {
    aborted: AtomicBool,
    /// The first reason given; later ones are ignored.
    reason: Mutex<Option<String>>,
    /// Clones of the established ring's streams, shut down by `abort`; removed again when the ring is dropped
    /// (a clone keeps the socket open, which would hide the ring's death from its neighbours).
    streams: Mutex<Vec<RegisteredStream>>,
    next_registration: AtomicU64,
}

#[derive(Debug)]
struct RegisteredStream {
    registration: u64,
    stream: TcpStream,
}

impl RingAbort {
    pub fn new() -> Self {
        Self::default()
    }

    /// Aborts the ring: the first reason is kept; shuts down every registered connection. Idempotent.
    pub fn abort(&self, reason: impl Into<String>) {
        {
            let mut kept_reason = lock(&self.shared.reason);
            if kept_reason.is_none() {
                *kept_reason = Some(reason.into());
            }
        }
        // Set before taking `streams`, so a stream registered concurrently is either seen here or sees the flag.
        self.shared.aborted.store(true, Ordering::SeqCst);
        for registered in lock(&self.shared.streams).iter() {
            let _ = registered.stream.shutdown(Shutdown::Both);
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Why the ring was aborted; `None` while it is not.
    pub fn reason(&self) -> Option<String> {
        if !self.is_aborted() {
            return None;
        }
        lock(&self.shared.reason).clone()
    }

    /// The [`CollectiveError::Aborted`](crate::CollectiveError::Aborted) to report, with the abort's reason.
    pub(crate) fn error(&self) -> crate::CollectiveError {
        crate::CollectiveError::Aborted {
            reason: self
                .reason()
                .unwrap_or_else(|| "aborted without a reason".to_string()),
        }
    }

    /// Registers clones of an established ring's streams, shut down by a later `abort` (at once if the ring
    /// is already aborted). The registration ends when the returned guard is dropped.
    pub(crate) fn register(&self, streams: Vec<TcpStream>) -> AbortRegistration {
        let registration = self
            .shared
            .next_registration
            .fetch_add(1, Ordering::Relaxed);
        let mut registered = lock(&self.shared.streams);
        for stream in streams {
            registered.push(RegisteredStream {
                registration,
                stream,
            });
        }
        if self.is_aborted() {
            for registered_stream in registered.iter() {
                let _ = registered_stream.stream.shutdown(Shutdown::Both);
            }
        }
        AbortRegistration {
            abort: self.clone(),
            registration,
        }
    }
}

/// Removes a ring's streams from its [`RingAbort`] when the ring is dropped, closing the clones.
#[derive(Debug)]
pub(crate) struct AbortRegistration {
    abort: RingAbort,
    registration: u64,
}

impl Drop for AbortRegistration {
    fn drop(&mut self) {
        lock(&self.abort.shared.streams)
            .retain(|registered| registered.registration != self.registration);
    }
}

/// A panic while holding one of these locks leaves nothing half-updated, so a poisoned lock is still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn the_first_reason_wins_and_clones_share_the_state() {
        let abort = RingAbort::new();
        assert!(!abort.is_aborted());
        assert_eq!(abort.reason(), None);
        let watchdog = abort.clone();
        watchdog.abort("member lost");
        abort.abort("second reason");
        assert!(abort.is_aborted());
        assert_eq!(abort.reason().as_deref(), Some("member lost"));
    }

    #[test]
    fn abort_shuts_down_registered_streams_and_dropping_the_registration_releases_them() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let abort = RingAbort::new();
        let registration = abort.register(vec![server.try_clone().expect("clone")]);
        assert_eq!(lock(&abort.shared.streams).len(), 1);
        abort.abort("test");
        let mut byte = [0u8; 1];
        // The server side was shut down: the client reads end-of-stream.
        assert_eq!((&client).read(&mut byte).expect("read"), 0);
        drop(registration);
        assert!(lock(&abort.shared.streams).is_empty());
    }
}

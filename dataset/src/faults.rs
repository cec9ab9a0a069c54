//! A store wrapper that fails reads on purpose: a test and bench tool to check that callers survive transient
//! store faults (throttling, dropped connections) without losing data. Not meant for production paths.
//!
//! ```
//! # use std::sync::Arc;
//! # use plankton_dataset::faults::{FaultInjectingStore, InjectedFault};
//! let memory: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
//! // Every object fails its first two reads with a 503-like error.
//! let faulty = Arc::new(FaultInjectingStore::new(memory, 2).with_fault(InjectedFault::ServiceUnavailable));
//! // Build a location over it: `StoreLocation::with_store(faulty.clone())` or `StoreLocation::new(...)`.
//! assert_eq!(faulty.injected_faults(), 0);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The `store` name of injected errors.
const STORE_NAME: &str = "FaultInjectingStore";

/// What an injected fault looks like to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InjectedFault {
    /// An `object_store::Error::Generic` saying "503 Service Unavailable" (S3 throttling looks like this).
    #[default]
    ServiceUnavailable,
    /// A "connection reset by peer" `std::io::Error` inside an `object_store::Error::Generic`. For `get` and
    /// `get_opts` the request succeeds and the body stream fails, as when a connection drops mid-transfer.
    ConnectionReset,
}

/// Wraps any store and fails the first `failures_per_object` reads (`get`, `get_opts`, `get_range`,
/// `get_ranges`) of each object path; `head`, `list` and writes pass through untouched. Counts the faults it
/// injected and the reads it saw.
#[derive(Debug)]
pub struct FaultInjectingStore {
    inner: Arc<dyn ObjectStore>,
    failures_per_object: u32,
    fault: InjectedFault,
    per_byte_range: bool,
    failed_reads_by_key: Mutex<HashMap<String, u32>>,
    injected_faults: AtomicU64,
    reads: AtomicU64,
}

impl FaultInjectingStore {
    /// Fails the first `failures_per_object` reads of each object of `inner` with [`InjectedFault::default`].
    pub fn new(inner: Arc<dyn ObjectStore>, failures_per_object: u32) -> Self {
        FaultInjectingStore {
            inner,
            failures_per_object,
            fault: InjectedFault::default(),
            per_byte_range: false,
            failed_reads_by_key: Mutex::new(HashMap::new()),
            injected_faults: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// Injects `fault` instead of the default one.
    pub fn with_fault(mut self, fault: InjectedFault) -> Self {
        self.fault = fault;
        self
    }

    /// Gives each distinct byte range of an object its own budget of failures, so that every member of a zip
    /// archive read with ranged requests fails its first reads too.
    pub fn per_byte_range(mut self) -> Self {
        self.per_byte_range = true;
        self
    }

    /// Faults injected so far.
    pub fn injected_faults(&self) -> u64 {
        self.injected_faults.load(Ordering::Relaxed)
    }

    /// Reads seen so far, failed or passed through.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Counts a read of `location` (bytes `range`, if any) and says whether it must fail.
    fn should_fail(&self, location: &Path, range: Option<String>) -> bool {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let key = match range {
            Some(range) if self.per_byte_range => format!("{location}#{range}"),
            _ => location.to_string(),
        };
        // A poisoned lock only means a panic elsewhere; the counts are still usable.
        let mut failed_reads_by_key = self
            .failed_reads_by_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let failed_reads = failed_reads_by_key.entry(key).or_insert(0);
        if *failed_reads >= self.failures_per_object {
            return false;
        }
        *failed_reads += 1;
        self.injected_faults.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn injected_error(&self, location: &Path) -> object_store::Error {
        let source: Box<dyn std::error::Error + Send + Sync> = match self.fault {
            InjectedFault::ServiceUnavailable => {
                format!("503 Service Unavailable: SlowDown (injected fault reading {location})")
                    .into()
            }
            InjectedFault::ConnectionReset => Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("connection reset by peer (injected fault reading {location})"),
            )),
        };
        object_store::Error::Generic {
            store: STORE_NAME,
            source,
        }
    }
}

impl fmt::Display for FaultInjectingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_NAME}({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultInjectingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get(&self, location: &Path) -> object_store::Result<GetResult> {
        self.get_opts(location, GetOptions::default()).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            return self.inner.get_opts(location, options).await;
        }
        let range = options.range.as_ref().map(|range| format!("{range:?}"));
        if !self.should_fail(location, range) {
            return self.inner.get_opts(location, options).await;
        }
        match self.fault {
            InjectedFault::ServiceUnavailable => Err(self.injected_error(location)),
            InjectedFault::ConnectionReset => {
                let result = self.inner.get_opts(location, options).await?;
                let error = self.injected_error(location);
                let failing_body = futures::stream::once(async move { Err(error) }).boxed();
                Ok(GetResult {
                    payload: GetResultPayload::Stream(failing_body),
                    ..result
                })
            }
        }
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        if self.should_fail(location, Some(format!("{range:?}"))) {
            return Err(self.injected_error(location));
        }
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        if self.should_fail(location, Some(format!("{ranges:?}"))) {
            return Err(self.injected_error(location));
        }
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.rename_if_not_exists(from, to).await
    }
}

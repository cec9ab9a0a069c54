//! Opens a dataset root or output location given as a path or URL (file, s3, gs, az, memory), and reads
//! and writes its objects, retrying transient store errors ([`FetchRetry`], [`is_transient`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};

use crate::cloud::{self, StoreKind, StoreOperation, StoreOptions};
use crate::error::DatasetError;

/// An object store and a prefix inside it: the root of a dataset or of an output location.
///
/// Every read and write through its methods retries transient store errors as `retry` says.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of the location inside `store` (empty for a local directory, which is the store's root).
    pub prefix: Path,
    /// The location as a URL, used in messages (`file:///data/flowcam`, `s3://bucket/flowcam`, ...).
    pub url: String,
    /// How reads and writes retry transient store errors.
    pub retry: FetchRetry,
    /// The kind of store, for messages that say what to fix.
    pub kind: StoreKind,
    /// True when no setting gave this cloud store credentials, so they come from the cloud's instance
    /// metadata service; a failure to get them then is reported as [`DatasetError::MissingCredentials`].
    pub credentials_from_metadata: bool,
    /// Set once a request showed the bucket exists, so that "not found" needs no check of the bucket.
    bucket_exists: Arc<AtomicBool>,
}

/// How a read (or write) of one object retries transient store errors: exponential backoff with jitter,
/// bounded in attempts and in total time. Errors that are not transient ([`is_transient`]) are never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRetry {
    /// Attempts in all, the first one included (1 means no retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled before each next one.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// No retry starts once this much time has passed since the first attempt (or would pass while waiting).
    pub max_elapsed: Duration,
}

impl Default for FetchRetry {
    /// 6 attempts, waits of 100 ms doubling up to 3 s (about 3 s of waiting in all), at most 30 s in all.
    fn default() -> Self {
        FetchRetry {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

/// The last error of an operation that kept failing transiently until [`FetchRetry`] gave up. Carried as the
/// source of an [`object_store::Error::Generic`] (store `retry`) so that callers keep one error type.
#[derive(Debug)]
pub struct RetriesExhausted {
    pub attempts: u32,
    pub elapsed: Duration,
    pub last_error: object_store::Error,
}

impl std::fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gave up after {} attempts in {:.1} s, last error: {}",
            self.attempts,
            self.elapsed.as_secs_f64(),
            self.last_error
        )
    }
}

impl std::error::Error for RetriesExhausted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last_error)
    }
}

impl FetchRetry {
    /// One attempt, no retry.
    pub fn none() -> Self {
        FetchRetry {
            max_attempts: 1,
            ..FetchRetry::default()
        }
    }

    /// Runs `operation` until it succeeds, fails with an error that is not transient (returned as is), or
    /// the attempts or the time run out (the last error is returned inside [`RetriesExhausted`]).
    /// `object` names what is read, for logs.
    pub async fn run<T, Operation, Attempt>(
        &self,
        object: &str,
        mut operation: Operation,
    ) -> object_store::Result<T>
    where
        Operation: FnMut() -> Attempt,
        Attempt: Future<Output = object_store::Result<T>>,
    {
        let mut attempts = RetryAttempts::new(*self);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => attempts.wait_before_retry(object, error).await?,
            }
        }
    }
}

/// The attempts of one retried operation so far.
struct RetryAttempts {
    policy: FetchRetry,
    started: Instant,
    attempts_failed: u32,
    backoff: Duration,
}

impl RetryAttempts {
    fn new(policy: FetchRetry) -> Self {
        RetryAttempts {
            policy,
            started: Instant::now(),
            attempts_failed: 0,
            backoff: policy.initial_backoff,
        }
    }

    /// After an attempt failed with `error`: waits and returns `Ok` when another attempt should be made,
    /// else returns the error to give up with.
    async fn wait_before_retry(
        &mut self,
        object: &str,
        error: object_store::Error,
    ) -> object_store::Result<()> {
        if !is_transient(&error) {
            return Err(error);
        }
        self.attempts_failed += 1;
        let remaining_attempts = self
            .policy
            .max_attempts
            .max(1)
            .saturating_sub(self.attempts_failed);
        let delay = jittered(self.backoff);
        let elapsed = self.started.elapsed();
        if remaining_attempts == 0 || elapsed + delay > self.policy.max_elapsed {
            tracing::warn!(object, attempts = self.attempts_failed, seconds = elapsed.as_secs_f64(), %error, "giving up on a transiently failing store request");
            return Err(object_store::Error::Generic {
                store: "retry",
                source: Box::new(RetriesExhausted {
                    attempts: self.attempts_failed,
                    elapsed,
                    last_error: error,
                }),
            });
        }
        tracing::debug!(object, remaining_attempts, delay_ms = delay.as_millis() as u64, %error, "retrying a store request after a transient error");
        tokio::time::sleep(delay).await;
        self.backoff = self.backoff.saturating_mul(2).min(self.policy.max_backoff);
        Ok(())
    }
}

/// A wait between half of `backoff` and all of it, so that many clients throttled together spread out.
fn jittered(backoff: Duration) -> Duration {
    use rand::Rng;
    let half = backoff / 2;
    let jitter_nanos =
        rand::rng().random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_nanos(jitter_nanos)
}

/// Markers (lowercase) of transient failures in error messages, for errors that carry no typed cause:
/// throttling and server errors (S3 `SlowDown`, HTTP 429/5xx), dropped connections, timeouts, and failures
/// to refresh credentials.
const TRANSIENT_MESSAGE_MARKERS: &[&str] = &[
    "status code: 429",
    "status code: 5",
    "too many requests",
    "service unavailable",
    "serviceunavailable",
    "slow down",
    "slowdown",
    "throttl",
    "internal error",
    "internalerror",
    "bad gateway",
    "gateway timeout",
    "requesttimeout",
    "timed out",
    "timeout",
    "connection reset",
    "connection closed",
    "connection aborted",
    "connection refused",
    "broken pipe",
    "temporarily unavailable",
    "unexpected eof",
    "incomplete message",
    "error sending request",
    "credential",
    "token request",
];

/// True when `error` may go away if the request is simply made again: a network error, a dropped
/// connection, a timeout, throttling or a server error (HTTP 429, 5xx), a failure to obtain or refresh
/// credentials. "Not found", "permission denied", bad paths and the like are not transient, nor is an error
/// that already went through a [`FetchRetry`].
pub fn is_transient(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::Generic { source, .. } => is_transient_cause(source.as_ref()),
        // Expired or refreshing credentials show as 401 until the refresh lands.
        object_store::Error::Unauthenticated { .. } => true,
        _ => false,
    }
}

fn is_transient_cause(cause: &(dyn std::error::Error + 'static)) -> bool {
    let mut messages = String::new();
    let mut current = Some(cause);
    while let Some(error) = current {
        if error.downcast_ref::<RetriesExhausted>().is_some() {
            return false;
        }
        if let Some(io_error) = error.downcast_ref::<std::io::Error>()
            && is_transient_io(io_error.kind())
        {
            return true;
        }
        if let Some(http_error) = error.downcast_ref::<HttpError>()
            && matches!(
                http_error.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        {
            return true;
        }
        messages.push_str(&error.to_string().to_lowercase());
        messages.push('\n');
        current = error.source();
    }
    TRANSIENT_MESSAGE_MARKERS
        .iter()
        .any(|marker| messages.contains(marker))
}

fn is_transient_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionRefused
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::TimedOut
            | ErrorKind::Interrupted
            | ErrorKind::UnexpectedEof
            | ErrorKind::WouldBlock
    )
}

/// The error of the last attempt when `error` is a [`RetriesExhausted`], else `error`.
fn last_attempt_error(error: &object_store::Error) -> &object_store::Error {
    if let object_store::Error::Generic { source, .. } = error
        && let Some(exhausted) = source.downcast_ref::<RetriesExhausted>()
    {
        return &exhausted.last_error;
    }
    error
}

/// In-memory stores shared process-wide by name, so that a writer and a reader of `memory://name` meet.
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn shared_memory_store(name: &str) -> Arc<InMemory> {
    // A poisoned lock only means another thread panicked while inserting; the map is still usable.
    let mut stores = memory_stores()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// Opens `url`: a plain path or `file://` (directory created if missing), `s3://bucket/prefix`,
/// `gs://bucket/prefix`, `az://container/prefix` (credentials and endpoints from the environment, see
/// [`crate::cloud`]), or `memory://name/prefix` (an in-memory store shared process-wide by `name`).
pub fn open_location(url: &str) -> Result<StoreLocation, DatasetError> {
    open_location_with(url, &StoreOptions::from_environment())
}

/// Opens `url` as [`open_location`] does, a cloud store with the settings `options` gives.
pub fn open_location_with(
    url: &str,
    options: &StoreOptions,
) -> Result<StoreLocation, DatasetError> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(invalid(url, "empty location"));
    }
    if !trimmed.contains("://") {
        return open_local_directory(url, PathBuf::from(trimmed));
    }
    let parsed = url::Url::parse(trimmed).map_err(|error| invalid(url, &error.to_string()))?;
    let prefix = Path::from_url_path(parsed.path().trim_matches('/'))
        .map_err(|error| invalid(url, &format!("bad path: {error}")))?;
    let url_without_slash = trimmed.trim_end_matches('/').to_string();
    match parsed.scheme() {
        "file" => {
            let directory = parsed
                .to_file_path()
                .map_err(|()| invalid(url, "file URL is not an absolute local path"))?;
            open_local_directory(url, directory)
        }
        "memory" => {
            let name = parsed.host_str().unwrap_or_default();
            if name.is_empty() {
                return Err(invalid(
                    url,
                    "memory URL needs a store name: memory://name/prefix",
                ));
            }
            Ok(StoreLocation::new(
                shared_memory_store(name),
                prefix,
                url_without_slash,
            ))
        }
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
            let bucket = bucket_of(url, &parsed)?;
            let kind = StoreKind::of_url(trimmed);
            let built = cloud::build_cloud_store(url, kind, bucket, options)?;
            let mut location = StoreLocation::new(built.store, prefix, url_without_slash);
            location.credentials_from_metadata = built.credentials_from_metadata;
            Ok(location)
        }
        other => Err(invalid(
            url,
            &format!(
                "unsupported scheme '{other}' (use a path, file://, s3://, gs://, az:// or memory://)"
            ),
        )),
    }
}

fn invalid(url: &str, reason: &str) -> DatasetError {
    DatasetError::InvalidLocation {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

fn bucket_of<'a>(url: &str, parsed: &'a url::Url) -> Result<&'a str, DatasetError> {
    match parsed.host_str() {
        Some(bucket) if !bucket.is_empty() => Ok(bucket),
        _ => Err(invalid(url, "URL has no bucket or container name")),
    }
}

fn open_local_directory(url: &str, directory: PathBuf) -> Result<StoreLocation, DatasetError> {
    std::fs::create_dir_all(&directory).map_err(|source| DatasetError::Io {
        path: directory.clone(),
        source,
    })?;
    let canonical_directory = directory
        .canonicalize()
        .map_err(|source| DatasetError::Io {
            path: directory.clone(),
            source,
        })?;
    let store = LocalFileSystem::new_with_prefix(&canonical_directory).map_err(|source| {
        DatasetError::OpenStore {
            url: url.to_string(),
            source,
        }
    })?;
    let file_url = url::Url::from_directory_path(&canonical_directory)
        .map(|file_url| file_url.to_string().trim_end_matches('/').to_string())
        .unwrap_or_else(|()| url.to_string());
    Ok(StoreLocation::new(
        Arc::new(store),
        Path::default(),
        file_url,
    ))
}

impl StoreLocation {
    /// The location `prefix` of `store`, named `url` in messages, with the default [`FetchRetry`].
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, url: impl Into<String>) -> Self {
        let url = url.into();
        StoreLocation {
            kind: StoreKind::of_url(&url),
            store,
            prefix,
            url,
            retry: FetchRetry::default(),
            credentials_from_metadata: false,
            bucket_exists: Arc::new(AtomicBool::new(false)),
        }
    }

    /// This location with reads and writes retried as `retry` says.
    pub fn with_retry(mut self, retry: FetchRetry) -> Self {
        self.retry = retry;
        self
    }

    /// The same prefix, URL and retry policy over another store, e.g. a wrapper of this one
    /// ([`crate::faults::FaultInjectingStore`]).
    pub fn with_store(&self, store: Arc<dyn ObjectStore>) -> Self {
        StoreLocation {
            store,
            ..self.clone()
        }
    }

    /// The object path of `relative` (`/`-separated, e.g. `imgs/123.jpg`) under this location.
    pub fn child(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.child(part))
    }

    /// `relative` as a URL under this location, for messages.
    pub fn object_url(&self, relative: &str) -> String {
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            relative.trim_start_matches('/')
        )
    }

    /// A location for the sub-folder `relative` of this one, in the same store.
    pub fn sub_location(&self, relative: &str) -> StoreLocation {
        StoreLocation {
            store: self.store.clone(),
            prefix: self.child(relative),
            url: self.object_url(relative),
            ..self.clone()
        }
    }

    /// Runs one store request (`operation` on the object `relative`) under [`Self::retry`], mapping its error
    /// with [`Self::store_error`]. A missing credential fails at once: retrying cannot bring one.
    async fn retrying<T, Request, Attempt>(
        &self,
        relative: &str,
        operation: StoreOperation,
        mut request: Request,
    ) -> Result<T, DatasetError>
    where
        Request: FnMut() -> Attempt,
        Attempt: Future<Output = object_store::Result<T>>,
    {
        let object_url = self.object_url(relative);
        let mut attempts = RetryAttempts::new(self.retry);
        loop {
            let error = match request().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let final_error = if self.is_missing_credentials(&error) {
                error
            } else {
                match attempts.wait_before_retry(&object_url, error).await {
                    Ok(()) => continue,
                    Err(error) => error,
                }
            };
            return Err(self.store_error(operation, object_url, final_error).await);
        }
    }

    /// True when `error` is the failure of a cloud store with no configured credentials to get some from the
    /// instance metadata service.
    fn is_missing_credentials(&self, error: &object_store::Error) -> bool {
        self.credentials_from_metadata && cloud::is_metadata_credential_failure(error)
    }

    /// The error of `operation` on `object_url` that failed with `error`, saying what to fix where the
    /// store's answer tells: [`DatasetError::MissingCredentials`], [`DatasetError::BucketNotFound`] (checked
    /// with one listing when the store only said "not found"), [`DatasetError::PermissionDenied`],
    /// [`DatasetError::NotFound`], else [`DatasetError::Store`].
    pub async fn store_error(
        &self,
        operation: StoreOperation,
        object_url: String,
        error: object_store::Error,
    ) -> DatasetError {
        if self.is_missing_credentials(&error) {
            return DatasetError::MissingCredentials {
                url: self.url.clone(),
                store: self.kind.name(),
                settings: self.kind.credential_settings(),
                detail: format!(
                    "none is set, and the instance metadata service gave none: {}",
                    cloud::short_cause(&error)
                ),
            };
        }
        if self.kind.is_cloud() {
            let not_found = matches!(error, object_store::Error::NotFound { .. })
                || (operation == StoreOperation::List
                    && cloud::error_chain_text(&error).contains("404 not found"));
            let bucket_missing =
                cloud::says_bucket_missing(&error) || (not_found && self.bucket_is_missing().await);
            if bucket_missing {
                return DatasetError::BucketNotFound {
                    store: self.kind.name(),
                    bucket_word: self.kind.bucket_word(),
                    bucket: self.bucket().unwrap_or_default(),
                    object: object_url,
                };
            }
        }
        match last_attempt_error(&error) {
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => {
                return DatasetError::PermissionDenied {
                    operation,
                    object: object_url,
                    reason: cloud::short_cause(source.as_ref()),
                };
            }
            _ => {}
        }
        DatasetError::from_store(object_url, error)
    }

    /// The bucket (container) of a cloud location.
    pub fn bucket(&self) -> Option<String> {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|parsed| parsed.host_str().map(str::to_string))
    }

    /// True when one listing under this location says its bucket does not exist. Remembers a bucket seen.
    async fn bucket_is_missing(&self) -> bool {
        if self.bucket_exists.load(Ordering::Relaxed) {
            return false;
        }
        match self.store.list(Some(&self.prefix)).next().await {
            None | Some(Ok(_)) => {
                self.bucket_exists.store(true, Ordering::Relaxed);
                false
            }
            Some(Err(error)) => {
                matches!(error, object_store::Error::NotFound { .. })
                    || cloud::says_bucket_missing(&error)
                    || cloud::error_chain_text(&error).contains("404 not found")
            }
        }
    }

    /// Reads the whole object `relative` (a connection dropped while the body streams is retried too).
    pub async fn get_bytes(&self, relative: &str) -> Result<Bytes, DatasetError> {
        let path = self.child(relative);
        self.retrying(relative, StoreOperation::Read, || async {
            self.store.get(&path).await?.bytes().await
        })
        .await
    }

    /// Reads bytes `range` of the object `relative`.
    pub async fn get_range(
        &self,
        relative: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, DatasetError> {
        let path = self.child(relative);
        self.retrying(relative, StoreOperation::Read, || {
            self.store.get_range(&path, range.clone())
        })
        .await
    }

    /// Metadata of the object `relative` (size, e-tag, last modified), with one HEAD request.
    pub async fn head(&self, relative: &str) -> Result<ObjectMeta, DatasetError> {
        let path = self.child(relative);
        self.retrying(relative, StoreOperation::ReadMetadata, || {
            self.store.head(&path)
        })
        .await
    }

    /// Size in bytes of the object `relative`.
    pub async fn size_of(&self, relative: &str) -> Result<u64, DatasetError> {
        Ok(self.head(relative).await?.size)
    }

    /// True when the object `relative` exists.
    pub async fn exists(&self, relative: &str) -> Result<bool, DatasetError> {
        match self.size_of(relative).await {
            Ok(_) => Ok(true),
            Err(DatasetError::NotFound { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Calls `visit` with every object under the folder `relative`, in the store's listing order. A listing
    /// interrupted by a transient error resumes after the last object seen (each resume is one attempt).
    pub async fn for_each_object(
        &self,
        relative: &str,
        mut visit: impl FnMut(ObjectMeta),
    ) -> Result<(), DatasetError> {
        let folder = self.child(relative);
        let object_url = self.object_url(relative);
        let mut attempts = RetryAttempts::new(self.retry);
        let mut last_seen: Option<Path> = None;
        'listing: loop {
            let mut listing = match &last_seen {
                Some(offset) => self.store.list_with_offset(Some(&folder), offset),
                None => self.store.list(Some(&folder)),
            };
            while let Some(listed) = listing.next().await {
                match listed {
                    Ok(object) => {
                        last_seen = Some(object.location.clone());
                        visit(object);
                    }
                    Err(error) => {
                        let final_error = if self.is_missing_credentials(&error) {
                            error
                        } else {
                            match attempts.wait_before_retry(&object_url, error).await {
                                Ok(()) => continue 'listing,
                                Err(error) => error,
                            }
                        };
                        return Err(self
                            .store_error(StoreOperation::List, object_url, final_error)
                            .await);
                    }
                }
            }
            return Ok(());
        }
    }

    /// Writes (or replaces) the object `relative`.
    pub async fn put_bytes(&self, relative: &str, bytes: Bytes) -> Result<(), DatasetError> {
        let path = self.child(relative);
        self.retrying(relative, StoreOperation::Write, || {
            self.store.put(&path, bytes.clone().into())
        })
        .await?;
        Ok(())
    }
}

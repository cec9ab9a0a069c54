//! Opens a dataset root or output location given as a path or URL (file, s3, gs, az, memory).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;

use crate::error::DatasetError;

/// An object store and a prefix inside it: the root of a dataset or of an output location.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of the location inside `store` (empty for a local directory, which is the store's root).
    pub prefix: Path,
    /// The location as a URL, used in messages (`file:///data/flowcam`, `s3://bucket/flowcam`, ...).
    pub url: String,
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
/// `gs://bucket/prefix`, `az://container/prefix` (credentials and endpoints from the environment),
/// or `memory://name/prefix` (an in-memory store shared process-wide by `name`).
pub fn open_location(url: &str) -> Result<StoreLocation, DatasetError> {
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
            Ok(StoreLocation {
                store: shared_memory_store(name),
                prefix,
                url: url_without_slash,
            })
        }
        "s3" | "s3a" => {
            let bucket = bucket_of(url, &parsed)?;
            cloud_location(
                url,
                AmazonS3Builder::from_env().with_bucket_name(bucket).build(),
                prefix,
                url_without_slash,
            )
        }
        "gs" => {
            let bucket = bucket_of(url, &parsed)?;
            cloud_location(
                url,
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build(),
                prefix,
                url_without_slash,
            )
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let container = bucket_of(url, &parsed)?;
            cloud_location(
                url,
                MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .build(),
                prefix,
                url_without_slash,
            )
        }
        other => Err(invalid(
            url,
            &format!(
                "unsupported scheme '{other}' (use a path, file://, s3://, gs://, az:// or memory://)"
            ),
        )),
    }
}

/// Wraps a cloud store built from the environment (or its build error, naming the URL).
fn cloud_location<Store: ObjectStore>(
    url: &str,
    built: object_store::Result<Store>,
    prefix: Path,
    url_without_slash: String,
) -> Result<StoreLocation, DatasetError> {
    let store = built.map_err(|source| DatasetError::OpenStore {
        url: url.to_string(),
        source,
    })?;
    Ok(StoreLocation {
        store: Arc::new(store),
        prefix,
        url: url_without_slash,
    })
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
    Ok(StoreLocation {
        store: Arc::new(store),
        prefix: Path::default(),
        url: file_url,
    })
}

impl StoreLocation {
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
        }
    }

    /// Reads the whole object `relative`.
    pub async fn get_bytes(&self, relative: &str) -> Result<Bytes, DatasetError> {
        let path = self.child(relative);
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|source| DatasetError::from_store(self.object_url(relative), source))?;
        result
            .bytes()
            .await
            .map_err(|source| DatasetError::from_store(self.object_url(relative), source))
    }

    /// Reads bytes `range` of the object `relative`.
    pub async fn get_range(
        &self,
        relative: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, DatasetError> {
        self.store
            .get_range(&self.child(relative), range)
            .await
            .map_err(|source| DatasetError::from_store(self.object_url(relative), source))
    }

    /// Size in bytes of the object `relative`.
    pub async fn size_of(&self, relative: &str) -> Result<u64, DatasetError> {
        let meta = self
            .store
            .head(&self.child(relative))
            .await
            .map_err(|source| DatasetError::from_store(self.object_url(relative), source))?;
        Ok(meta.size)
    }

    /// True when the object `relative` exists.
    pub async fn exists(&self, relative: &str) -> Result<bool, DatasetError> {
        match self.size_of(relative).await {
            Ok(_) => Ok(true),
            Err(DatasetError::NotFound { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Writes (or replaces) the object `relative`.
    pub async fn put_bytes(&self, relative: &str, bytes: Bytes) -> Result<(), DatasetError> {
        self.store
            .put(&self.child(relative), bytes.into())
            .await
            .map_err(|source| DatasetError::from_store(self.object_url(relative), source))?;
        Ok(())
    }
}

//! Loaded models cached by (name, version), the server's default model and its alias watch.
//!
//! Only versions the registry knows are loaded (every reference is resolved there first). Loads of one model
//! name run one at a time, and a version whose load failed is not tried again before its backoff ends
//! (`initial`, doubling per consecutive failure up to `max`): requests and the alias watch meanwhile get the
//! last failure at once, the old version keeps serving, and every real attempt that fails is logged (model,
//! version, cause) and counted in `plankton_serve_model_load_failures_total`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use plankton_dataset::{FeatureTransform, open_location};
use plankton_gbdt::GbdtModel;
use plankton_preprocess::{PreprocessConfig, ResizeMode};
use plankton_proto::v1::ModelVersion;
use plankton_trainer::{Architecture, InferenceModel, ModelCard};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::engine::{BatchingConfig, InferenceEngine, ServedModel};
use crate::error::{ServeError, ServeResult};
use crate::metrics::{ModelLabels, ModelVersionLabels, ServeMetrics};
use crate::model_ref::{ModelReference, VersionSelector};
use crate::registry::RegistryClient;

/// A model ready to answer: its registry entry, its preprocessing and its inference thread.
#[derive(Debug)]
pub struct LoadedModel {
    pub entry: ModelVersion,
    pub architecture: Architecture,
    /// Class names in output order.
    pub class_names: Vec<String>,
    /// Exactly the preprocessing the model was trained with (resize mode), plus the size limits.
    pub preprocess: PreprocessConfig,
    /// For a model that takes native features: the transform of its card, applied to each request's raw values.
    pub feature_transform: Option<Arc<FeatureTransform>>,
    pub engine: InferenceEngine,
}

impl LoadedModel {
    /// `name:version`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.entry.name, self.entry.version)
    }
}

type ModelKey = (String, u32);

/// How long a version whose load failed waits before the next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBackoff {
    /// After the first failure.
    pub initial: std::time::Duration,
    /// The longest wait, however many failures.
    pub max: std::time::Duration,
}

impl Default for LoadBackoff {
    fn default() -> Self {
        LoadBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl LoadBackoff {
    /// The wait after `consecutive_failures` (>= 1) failures in a row.
    pub fn after(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// The recent failures of one version.
#[derive(Clone, Debug)]
struct LoadFailure {
    consecutive_failures: u32,
    retry_at: Instant,
    reason: String,
}

/// Loaded models and resolved references, shared by every request.
#[derive(Debug)]
pub struct ModelStore {
    registry: RegistryClient,
    batching: BatchingConfig,
    image_limits: PreprocessConfig,
    metrics: ServeMetrics,
    default_reference: ModelReference,
    default_model: RwLock<Option<Arc<LoadedModel>>>,
    /// One cell per (name, version): concurrent requests for a model being loaded wait on the same load.
    loaded: Mutex<HashMap<ModelKey, Arc<OnceCell<Arc<LoadedModel>>>>>,
    /// Keys from least to most recently used, for eviction beyond `cache_capacity`.
    recency: Mutex<VecDeque<ModelKey>>,
    cache_capacity: usize,
    /// Moving references (latest, aliases) named by requests, re-resolved after `resolution_ttl`.
    resolutions: Mutex<HashMap<ModelReference, (Instant, ModelVersion)>>,
    resolution_ttl: Duration,
    load_backoff: LoadBackoff,
    /// Versions whose last load failed, until one succeeds.
    load_failures: Mutex<HashMap<ModelKey, LoadFailure>>,
    /// One gate per model name: its loads run one at a time.
    load_gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked mid-update of a cache; the maps stay structurally valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a [`ModelStore`] loads and keeps models.
#[derive(Clone, Debug)]
pub struct ModelStoreConfig {
    pub batching: BatchingConfig,
    /// Per-image size limits (the resize mode comes from each model).
    pub image_limits: PreprocessConfig,
    /// Models kept loaded at most (the default model is never evicted).
    pub cache_capacity: usize,
    /// How long a moving reference (latest, alias) named by a request stays resolved.
    pub resolution_ttl: Duration,
    pub load_backoff: LoadBackoff,
}

impl ModelStore {
    pub fn new(
        registry: RegistryClient,
        default_reference: ModelReference,
        metrics: ServeMetrics,
        config: ModelStoreConfig,
    ) -> Self {
        let ModelStoreConfig {
            batching,
            image_limits,
            cache_capacity,
            resolution_ttl,
            load_backoff,
        } = config;
        ModelStore {
            registry,
            batching,
            image_limits,
            metrics,
            default_reference,
            default_model: RwLock::new(None),
            loaded: Mutex::new(HashMap::new()),
            recency: Mutex::new(VecDeque::new()),
            cache_capacity: cache_capacity.max(1),
            resolutions: Mutex::new(HashMap::new()),
            resolution_ttl,
            load_backoff,
            load_failures: Mutex::new(HashMap::new()),
            load_gates: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_reference(&self) -> &ModelReference {
        &self.default_reference
    }

    pub fn batching(&self) -> &BatchingConfig {
        &self.batching
    }

    /// The default model, once loaded.
    pub fn default_model(&self) -> Option<Arc<LoadedModel>> {
        self.default_model
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The model a request's `model` field names ("" = the default model).
    pub async fn model_for(&self, model_text: &str) -> ServeResult<Arc<LoadedModel>> {
        if model_text.trim().is_empty() {
            return self
                .default_model()
                .ok_or_else(|| ServeError::NotReady(self.default_reference.to_string()));
        }
        let reference: ModelReference = model_text.parse()?;
        if reference == self.default_reference
            && let Some(default_model) = self.default_model()
        {
            return Ok(default_model);
        }
        if let VersionSelector::Version(version) = reference.selector
            && let Some(cached) = self.cached(&(reference.name.clone(), version))
        {
            return Ok(cached);
        }
        let entry = self.resolve_cached(&reference).await?;
        self.load(entry).await
    }

    fn cached(&self, key: &ModelKey) -> Option<Arc<LoadedModel>> {
        let cell = lock(&self.loaded).get(key).cloned()?;
        let model = cell.get().cloned()?;
        self.touch(key);
        Some(model)
    }

    async fn resolve_cached(&self, reference: &ModelReference) -> ServeResult<ModelVersion> {
        if reference.is_moving()
            && let Some((resolved_at, entry)) = lock(&self.resolutions).get(reference)
            && resolved_at.elapsed() < self.resolution_ttl
        {
            return Ok(entry.clone());
        }
        let entry = self.registry.resolve(reference).await?;
        if reference.is_moving() {
            lock(&self.resolutions).insert(reference.clone(), (Instant::now(), entry.clone()));
        }
        Ok(entry)
    }

    /// The loaded model of (name, version), if it is loaded; never starts a load.
    pub fn loaded_model(&self, name: &str, version: u32) -> Option<Arc<LoadedModel>> {
        let key: ModelKey = (name.to_string(), version);
        let cell = lock(&self.loaded).get(&key).cloned()?;
        cell.get().cloned()
    }

    /// The registry entry `reference` points at (cached for moving references like a request's).
    pub async fn resolve(&self, reference: &ModelReference) -> ServeResult<ModelVersion> {
        self.resolve_cached(reference).await
    }

    /// The loaded model of a registry entry, loading it (once, however many requests ask) if needed; a
    /// version in its failure backoff answers the last failure without an attempt.
    pub async fn load(&self, entry: ModelVersion) -> ServeResult<Arc<LoadedModel>> {
        let key: ModelKey = (entry.name.clone(), entry.version);
        let cell = lock(&self.loaded).entry(key.clone()).or_default().clone();
        if let Some(model) = cell.get() {
            let model = model.clone();
            self.touch(&key);
            return Ok(model);
        }
        self.check_backoff(&key)?;
        let gate = lock(&self.load_gates)
            .entry(entry.name.clone())
            .or_default()
            .clone();
        let _one_load_per_name = gate.lock().await;
        // Another request may have loaded it, or failed, while this one waited at the gate.
        if cell.get().is_none() {
            self.check_backoff(&key)?;
        }
        let loaded = cell
            .get_or_try_init(|| {
                load_model(
                    entry,
                    self.batching.clone(),
                    self.image_limits.clone(),
                    &self.metrics,
                )
            })
            .await;
        let model = match loaded {
            Ok(model) => model.clone(),
            Err(error) => return Err(self.record_load_failure(&key, error)),
        };
        lock(&self.load_failures).remove(&key);
        self.touch(&key);
        self.evict_beyond_capacity();
        Ok(model)
    }

    /// Fails with the last failure while `key` is in its backoff.
    fn check_backoff(&self, key: &ModelKey) -> ServeResult<()> {
        let failures = lock(&self.load_failures);
        let Some(failure) = failures.get(key) else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= failure.retry_at {
            return Ok(());
        }
        Err(ServeError::LoadBackoff {
            model: format!("{}:{}", key.0, key.1),
            reason: failure.reason.clone(),
            retry_in: failure.retry_at - now,
        })
    }

    /// Counts, logs and remembers a failed load attempt; returns the error to answer with.
    fn record_load_failure(&self, key: &ModelKey, error: ServeError) -> ServeError {
        let reason = match &error {
            ServeError::ModelLoad { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        let consecutive_failures = lock(&self.load_failures)
            .get(key)
            .map_or(0, |failure| failure.consecutive_failures)
            + 1;
        let retry_in = self.load_backoff.after(consecutive_failures);
        lock(&self.load_failures).insert(
            key.clone(),
            LoadFailure {
                consecutive_failures,
                retry_at: Instant::now() + retry_in,
                reason: reason.clone(),
            },
        );
        self.metrics
            .model_load_failures
            .get_or_create(&ModelVersionLabels {
                model: key.0.clone(),
                version: key.1.to_string(),
            })
            .inc();
        warn!(
            model = %key.0,
            version = key.1,
            cause = %reason,
            consecutive_failures,
            retry_in = ?retry_in,
            "model load failed"
        );
        error
    }

    fn touch(&self, key: &ModelKey) {
        let mut recency = lock(&self.recency);
        recency.retain(|known| known != key);
        recency.push_back(key.clone());
    }

    /// Forgets the least recently used models beyond the capacity (never the default model). Requests
    /// holding one keep it alive until they finish.
    fn evict_beyond_capacity(&self) {
        let default_key = self
            .default_model()
            .map(|model| (model.entry.name.clone(), model.entry.version));
        let mut recency = lock(&self.recency);
        let mut loaded = lock(&self.loaded);
        while recency.len() > self.cache_capacity {
            let Some(position) = recency
                .iter()
                .position(|key| Some(key) != default_key.as_ref())
            else {
                break;
            };
            if let Some(evicted) = recency.remove(position) {
                loaded.remove(&evicted);
                info!(model = %format!("{}:{}", evicted.0, evicted.1), "model evicted from the cache");
            }
        }
    }

    /// Resolves the default reference in the registry and swaps the default model when it points at a
    /// new version. Returns the newly swapped-in model, `None` when nothing changed.
    pub async fn refresh_default(&self) -> ServeResult<Option<Arc<LoadedModel>>> {
        let entry = self.registry.resolve(&self.default_reference).await?;
        debug!(reference = %self.default_reference, version = entry.version, "default reference resolved");
        if let Some(current) = self.default_model()
            && current.entry.version == entry.version
        {
            return Ok(None);
        }
        let model = self.load(entry).await?;
        let previous = self
            .default_model
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(model.clone());
        let model_labels = ModelLabels {
            model: model.entry.name.clone(),
        };
        self.metrics
            .loaded_model_version
            .get_or_create(&model_labels)
            .set(i64::from(model.entry.version));
        info!(
            reference = %self.default_reference,
            previous_version = previous.map(|old| old.entry.version),
            version = model.entry.version,
            "default model swapped in"
        );
        Ok(Some(model))
    }
}

/// Splits `url` into its parent location and the file name.
fn split_object_url<'url>(
    url: &'url str,
    what: &str,
    model: &str,
) -> ServeResult<(&'url str, &'url str)> {
    match url.trim().rsplit_once('/') {
        Some((parent, file_name)) if !parent.is_empty() && !file_name.is_empty() => {
            Ok((parent, file_name))
        }
        _ => Err(ServeError::ModelLoad {
            model: model.to_string(),
            reason: format!("{what} URL {url:?} has no file name"),
        }),
    }
}

async fn read_object(url: &str, what: &str, model: &str) -> ServeResult<bytes::Bytes> {
    let (parent, file_name) = split_object_url(url, what, model)?;
    let load_error = |reason: String| ServeError::ModelLoad {
        model: model.to_string(),
        reason,
    };
    let location = open_location(parent).map_err(|error| load_error(format!("{what}: {error}")))?;
    location
        .get_bytes(file_name)
        .await
        .map_err(|error| load_error(format!("{what}: {error}")))
}

/// Reads the weights (and the card when the entry names one), checks that card and registry agree, and
/// starts the model's inference thread.
async fn load_model(
    entry: ModelVersion,
    batching: BatchingConfig,
    image_limits: PreprocessConfig,
    metrics: &ServeMetrics,
) -> ServeResult<Arc<LoadedModel>> {
    let label = format!("{}:{}", entry.name, entry.version);
    let load_error = |reason: String| ServeError::ModelLoad {
        model: label.clone(),
        reason,
    };
    let card: Option<ModelCard> = if entry.card_url.trim().is_empty() {
        None
    } else {
        let card_bytes = read_object(&entry.card_url, "model card", &label).await?;
        Some(
            serde_json::from_slice(&card_bytes)
                .map_err(|error| load_error(format!("model card {}: {error}", entry.card_url)))?,
        )
    };
    let architecture_text = match (&card, entry.architecture.trim()) {
        (_, text) if !text.is_empty() => text.to_string(),
        (Some(card), _) => card.architecture.name().to_string(),
        (None, _) => {
            return Err(load_error(
                "the registry entry names no architecture and no card".to_string(),
            ));
        }
    };
    let architecture: Architecture = architecture_text
        .parse()
        .map_err(|error| load_error(format!("architecture: {error}")))?;
    let class_names = if entry.class_names.is_empty() {
        card.as_ref()
            .map(|card| card.classes.clone())
            .unwrap_or_default()
    } else {
        entry.class_names.clone()
    };
    let resize_text = if entry.resize_mode.trim().is_empty() {
        card.as_ref()
            .map(|card| card.input.resize_mode.clone())
            .unwrap_or_default()
    } else {
        entry.resize_mode.clone()
    };
    if let Some(card) = &card {
        if card.architecture != architecture {
            return Err(load_error(format!(
                "the card says architecture {}, the registry {architecture}",
                card.architecture
            )));
        }
        if card.classes != class_names {
            return Err(load_error(
                "the card's class names differ from the registry entry's".to_string(),
            ));
        }
        if card.input.resize_mode != resize_text {
            return Err(load_error(format!(
                "the card says resize mode {:?}, the registry {resize_text:?}",
                card.input.resize_mode
            )));
        }
    }
    if class_names.len() < 2 {
        return Err(load_error(format!(
            "{} class names, need at least 2",
            class_names.len()
        )));
    }
    let resize_mode = ResizeMode::from_name(&resize_text).ok_or_else(|| {
        load_error(format!(
            "unknown resize mode {resize_text:?} (expected stretch or pad_to_square)"
        ))
    })?;
    let feature_transform = match card
        .as_ref()
        .and_then(|card| card.feature_transform.clone())
    {
        Some(transform) => {
            transform
                .validate()
                .map_err(|reason| load_error(format!("the card's feature transform: {reason}")))?;
            Some(Arc::new(transform))
        }
        None if architecture.uses_features() => {
            return Err(load_error(format!(
                "model {architecture} takes native features, but {} has no feature transform",
                if entry.card_url.trim().is_empty() {
                    "the registry entry names no model card, so it".to_string()
                } else {
                    format!("its card {}", entry.card_url)
                }
            )));
        }
        None => None,
    };
    let expected_feature_width = feature_transform
        .as_ref()
        .filter(|_| architecture.uses_features())
        .map_or(0, |transform| transform.output_width());
    let weights = read_object(&entry.weights_url, "weights", &label).await?;
    let num_classes = class_names.len();
    let device = tch::Device::cuda_if_available();
    let engine = if architecture == Architecture::Gbdt {
        InferenceEngine::start(
            label.clone(),
            num_classes,
            batching,
            metrics.engine_metrics(),
            move || -> Result<ServedModel, String> {
                let model = GbdtModel::from_bytes(&weights).map_err(|error| error.to_string())?;
                if model.num_features() != expected_feature_width {
                    return Err(format!(
                        "the trees read {} features per object, the card's transform gives {expected_feature_width}",
                        model.num_features()
                    ));
                }
                Ok(model.into())
            },
        )
        .await?
    } else {
        InferenceEngine::start(
        label.clone(),
        num_classes,
        batching,
        metrics.engine_metrics(),
        move || {
            let model =
                InferenceModel::from_safetensors(architecture, num_classes, &weights, device)?;
            if model.feature_width() != expected_feature_width {
                return Err(plankton_trainer::TrainError::InvalidConfig(format!(
                    "the weights take {} features per image, the card's transform gives {expected_feature_width}",
                    model.feature_width()
                )));
            }
            Ok(model)
        },
    )
    .await?
    };
    Ok(Arc::new(LoadedModel {
        entry,
        architecture,
        class_names,
        preprocess: PreprocessConfig {
            resize_mode,
            ..image_limits
        },
        feature_transform: feature_transform.filter(|_| architecture.uses_features()),
        engine,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_backoff_doubles_per_failure_up_to_its_maximum() {
        let backoff = LoadBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
        };
        let waits: Vec<Duration> = (1..=6).map(|failures| backoff.after(failures)).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 3000, 3000, 3000].map(Duration::from_millis)
        );
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(3));
    }
}

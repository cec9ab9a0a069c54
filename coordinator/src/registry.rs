//! The model registry: every succeeded job's model as a numbered version of a name, with movable aliases.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tracing::info;

use plankton_proto::v1::{Job, JobPhase, ModelVersion, ResizeMode};

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::state::unix_ms_now;
use crate::store::StateStore;

/// Versions by (name, version); aliases live inside the versions they point at.
pub struct ModelRegistry {
    versions: Mutex<BTreeMap<(String, u32), ModelVersion>>,
    store: Arc<StateStore>,
}

/// The registry name of a job's model: the job's name, else `flowcam-<architecture>`.
pub fn model_name_for(job: &Job) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    if spec.name.trim().is_empty() {
        format!("flowcam-{}", spec.model)
    } else {
        spec.name.trim().to_string()
    }
}

impl ModelRegistry {
    pub fn load(store: Arc<StateStore>) -> CoordinatorResult<Self> {
        let versions = store
            .load_models()?
            .into_iter()
            .map(|model| ((model.name.clone(), model.version), model))
            .collect();
        Ok(Self {
            versions: Mutex::new(versions),
            store,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u32), ModelVersion>> {
        self.versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a succeeded job's model as the next version of its name.
    pub fn register_job_model(&self, job: &Job) -> CoordinatorResult<ModelVersion> {
        let mut versions = self.lock();
        self.register_locked(&mut versions, job)
    }

    /// Registers the model of every succeeded job with a model URL that has no version yet: the jobs whose
    /// coordinator stopped between recording the success and registering the model. Jobs are taken in the
    /// order they finished, so versions number as they would have. Idempotent: a second call registers nothing.
    pub fn repair_missing(&self, jobs: &[Job]) -> CoordinatorResult<Vec<ModelVersion>> {
        let mut versions = self.lock();
        let mut registered_job_ids: HashSet<String> = versions
            .values()
            .map(|model| model.job_id.clone())
            .collect();
        let mut succeeded_with_model: Vec<&Job> = jobs
            .iter()
            .filter(|job| job.phase() == JobPhase::Succeeded && !job.model_url.is_empty())
            .collect();
        succeeded_with_model.sort_by(|first, second| {
            (first.finished_unix_ms, &first.id).cmp(&(second.finished_unix_ms, &second.id))
        });
        let mut repaired = Vec::new();
        for job in succeeded_with_model {
            // `insert` is false for a job already registered (or listed twice in `jobs`).
            if !registered_job_ids.insert(job.id.clone()) {
                continue;
            }
            let model = self.register_locked(&mut versions, job)?;
            info!(
                name = model.name,
                version = model.version,
                job_id = job.id,
                "model of a succeeded job registered on repair"
            );
            repaired.push(model);
        }
        Ok(repaired)
    }

    /// Saves the next version of the job's model name, then adds it to `versions` (the held lock).
    fn register_locked(
        &self,
        versions: &mut BTreeMap<(String, u32), ModelVersion>,
        job: &Job,
    ) -> CoordinatorResult<ModelVersion> {
        let spec = job.spec.clone().unwrap_or_default();
        let name = model_name_for(job);
        let version = versions
            .keys()
            .filter(|(existing, _)| *existing == name)
            .map(|(_, version)| *version)
            .max()
            .unwrap_or(0)
            + 1;
        let card_url = match job.model_url.rsplit_once('/') {
            Some((folder, _)) => format!("{folder}/model-card.json"),
            None => "model-card.json".to_string(),
        };
        let model = ModelVersion {
            name: name.clone(),
            version,
            job_id: job.id.clone(),
            architecture: spec.model.clone(),
            class_names: job.class_names.clone(),
            resize_mode: match spec.resize_mode() {
                ResizeMode::ResizeStretch => "stretch".into(),
                ResizeMode::ResizePadToSquare => "pad_to_square".into(),
            },
            test_metrics: job.epochs.last().cloned(),
            weights_url: job.model_url.clone(),
            card_url,
            aliases: Vec::new(),
            created_unix_ms: unix_ms_now(),
        };
        self.store.save_model(&model)?;
        versions.insert((name.clone(), version), model.clone());
        info!(name, version, job_id = job.id, "model registered");
        Ok(model)
    }

    pub fn list(&self, name: &str) -> Vec<ModelVersion> {
        self.lock()
            .values()
            .filter(|model| name.is_empty() || model.name == name)
            .cloned()
            .collect()
    }

    /// By version, by alias, or the latest version when neither is given.
    pub fn get(&self, name: &str, version: u32, alias: &str) -> CoordinatorResult<ModelVersion> {
        let versions = self.lock();
        let mut of_name = versions
            .values()
            .filter(|model| model.name == name)
            .peekable();
        if of_name.peek().is_none() {
            return Err(CoordinatorError::ModelNotFound(format!(
                "no model named {name:?}"
            )));
        }
        let found = if version > 0 {
            of_name.find(|model| model.version == version)
        } else if !alias.is_empty() {
            of_name.find(|model| model.aliases.iter().any(|existing| existing == alias))
        } else {
            of_name.last()
        };
        found.cloned().ok_or_else(|| {
            CoordinatorError::ModelNotFound(if version > 0 {
                format!("model {name:?} has no version {version}")
            } else {
                format!("model {name:?} has no alias {alias:?}")
            })
        })
    }

    /// Moves `alias` of `name` to `version` (removing it from the version it pointed at).
    pub fn promote(
        &self,
        name: &str,
        version: u32,
        alias: &str,
    ) -> CoordinatorResult<ModelVersion> {
        let alias = alias.trim();
        if alias.is_empty()
            || alias
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(CoordinatorError::InvalidSpec(format!(
                "alias {alias:?} must be letters, digits, '-' or '_'"
            )));
        }
        let mut versions = self.lock();
        if !versions.contains_key(&(name.to_string(), version)) {
            return Err(CoordinatorError::ModelNotFound(format!(
                "model {name:?} has no version {version}"
            )));
        }
        // The versions the alias joins or leaves, as they will be: stored in one transaction, so the alias
        // never points at two versions or at none; the in-memory map follows only once that committed.
        let mut changed = Vec::new();
        for ((model_name, model_version), model) in versions.iter() {
            if model_name != name {
                continue;
            }
            let had_alias = model.aliases.iter().any(|existing| existing == alias);
            if *model_version == version && !had_alias {
                let mut gaining = model.clone();
                gaining.aliases.push(alias.to_string());
                changed.push(gaining);
            } else if *model_version != version && had_alias {
                let mut losing = model.clone();
                losing.aliases.retain(|existing| existing != alias);
                changed.push(losing);
            }
        }
        self.store.save_models(&changed)?;
        for model in changed {
            versions.insert((model.name.clone(), model.version), model);
        }
        info!(name, version, alias, "alias moved");
        Ok(versions[&(name.to_string(), version)].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plankton_proto::v1::JobSpec;

    fn succeeded_job(id: &str, name: &str) -> Job {
        Job {
            id: id.into(),
            spec: Some(JobSpec {
                name: name.into(),
                model: "lenet".into(),
                ..Default::default()
            }),
            phase: JobPhase::Succeeded as i32,
            model_url: format!("memory://models/{id}/model.safetensors"),
            class_names: vec!["a".into(), "b".into()],
            ..Default::default()
        }
    }

    fn finished_job(id: &str, phase: JobPhase, finished_unix_ms: i64) -> Job {
        let mut job = succeeded_job(id, "");
        job.set_phase(phase);
        job.finished_unix_ms = finished_unix_ms;
        job
    }

    #[test]
    fn repair_registers_each_succeeded_job_without_a_version_once_in_finish_order() {
        let store = Arc::new(StateStore::in_memory().unwrap());
        let registry = ModelRegistry::load(store.clone()).unwrap();
        let registered = finished_job("job-1", JobPhase::Succeeded, 100);
        registry.register_job_model(&registered).unwrap();
        let failed = finished_job("job-failed", JobPhase::Failed, 150);
        let mut without_model = finished_job("job-without-model", JobPhase::Succeeded, 160);
        without_model.model_url.clear();
        let finished_last = finished_job("job-3", JobPhase::Succeeded, 300);
        let finished_first = finished_job("job-2", JobPhase::Succeeded, 200);
        let jobs = vec![
            registered,
            failed,
            without_model,
            finished_last.clone(),
            finished_first,
            finished_last,
        ];

        let repaired = registry.repair_missing(&jobs).unwrap();
        let repaired_versions: Vec<(&str, u32)> = repaired
            .iter()
            .map(|model| (model.job_id.as_str(), model.version))
            .collect();
        assert_eq!(repaired_versions, [("job-2", 2), ("job-3", 3)]);
        assert!(
            registry.repair_missing(&jobs).unwrap().is_empty(),
            "idempotent"
        );

        let reloaded = ModelRegistry::load(store).unwrap();
        assert_eq!(reloaded.list("flowcam-lenet").len(), 3, "repairs persisted");
        assert!(reloaded.repair_missing(&jobs).unwrap().is_empty());
    }

    #[test]
    fn versions_count_up_aliases_move_and_everything_persists() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(state_dir.path()).unwrap());
        let registry = ModelRegistry::load(store).unwrap();
        let first = registry
            .register_job_model(&succeeded_job("job-1", ""))
            .unwrap();
        let second = registry
            .register_job_model(&succeeded_job("job-2", ""))
            .unwrap();
        assert_eq!(
            (first.name.as_str(), first.version, second.version),
            ("flowcam-lenet", 1, 2)
        );
        assert_eq!(first.card_url, "memory://models/job-1/model-card.json");

        registry.promote("flowcam-lenet", 1, "production").unwrap();
        assert_eq!(
            registry
                .get("flowcam-lenet", 0, "production")
                .unwrap()
                .version,
            1
        );
        registry.promote("flowcam-lenet", 2, "production").unwrap();
        assert_eq!(
            registry
                .get("flowcam-lenet", 0, "production")
                .unwrap()
                .version,
            2
        );
        assert!(
            registry
                .get("flowcam-lenet", 1, "")
                .unwrap()
                .aliases
                .is_empty(),
            "alias left version 1"
        );
        assert_eq!(
            registry.get("flowcam-lenet", 0, "").unwrap().version,
            2,
            "latest by default"
        );
        assert!(matches!(
            registry.get("flowcam-lenet", 9, ""),
            Err(CoordinatorError::ModelNotFound(_))
        ));
        assert!(matches!(
            registry.get("nope", 0, ""),
            Err(CoordinatorError::ModelNotFound(_))
        ));
        assert!(registry.promote("flowcam-lenet", 2, "bad alias!").is_err());
        drop(registry);

        let reopened =
            ModelRegistry::load(Arc::new(StateStore::open(state_dir.path()).unwrap())).unwrap();
        assert_eq!(reopened.list("").len(), 2);
        assert_eq!(
            reopened
                .get("flowcam-lenet", 0, "production")
                .unwrap()
                .version,
            2
        );
    }
}

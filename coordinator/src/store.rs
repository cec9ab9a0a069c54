//! The embedded state store (redb): jobs and registered models persist across coordinator restarts.

use std::path::Path;

use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};

use crate::error::{CoordinatorError, CoordinatorResult};
use plankton_proto::v1::{Job, ModelVersion};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Key: `name` NUL `version` as 10 zero-padded digits, so versions sort numerically.
const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");

/// Jobs keyed by id and model versions keyed by name and version, stored as encoded protobuf messages.
pub struct StateStore {
    database: Database,
}

impl StateStore {
    /// Opens (or creates) `coordinator.redb` in `state_dir`.
    pub fn open(state_dir: &Path) -> CoordinatorResult<Self> {
        std::fs::create_dir_all(state_dir).map_err(|error| {
            CoordinatorError::Store(format!("creating {}: {error}", state_dir.display()))
        })?;
        let path = state_dir.join("coordinator.redb");
        let database = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                CoordinatorError::StoreLocked(path.display().to_string())
            }
            other => other.into(),
        })?;
        Self::with_database(database)
    }

    /// A store that lives in memory only (embedded defaults without a state directory).
    pub fn in_memory() -> CoordinatorResult<Self> {
        let database =
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::with_database(database)
    }

    fn with_database(database: Database) -> CoordinatorResult<Self> {
        let write = database.begin_write()?;
        write.open_table(JOBS)?;
        write.open_table(MODELS)?;
        write.commit()?;
        Ok(Self { database })
    }

    pub fn save(&self, job: &Job) -> CoordinatorResult<()> {
        let write = self.database.begin_write()?;
        {
            let mut table = write.open_table(JOBS)?;
            table.insert(job.id.as_str(), job.encode_to_vec().as_slice())?;
        }
        write.commit()?;
        Ok(())
    }

    pub fn load_all(&self) -> CoordinatorResult<Vec<Job>> {
        let read = self.database.begin_read()?;
        let table = read.open_table(JOBS)?;
        let mut jobs = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let job = Job::decode(value.value()).map_err(|error| {
                CoordinatorError::Store(format!("job {}: undecodable record: {error}", key.value()))
            })?;
            jobs.push(job);
        }
        Ok(jobs)
    }

    pub fn save_model(&self, model: &ModelVersion) -> CoordinatorResult<()> {
        self.save_models(std::slice::from_ref(model))
    }

    /// Saves `models` in one transaction: all of them or, on any error, none.
    pub fn save_models(&self, models: &[ModelVersion]) -> CoordinatorResult<()> {
        if models.is_empty() {
            return Ok(());
        }
        let write = self.database.begin_write()?;
        {
            let mut table = write.open_table(MODELS)?;
            for model in models {
                let key = model_key(&model.name, model.version);
                table.insert(key.as_str(), model.encode_to_vec().as_slice())?;
            }
        }
        // Dropping `write` without committing (an early return above) aborts the transaction.
        write.commit()?;
        Ok(())
    }

    pub fn load_models(&self) -> CoordinatorResult<Vec<ModelVersion>> {
        let read = self.database.begin_read()?;
        let table = read.open_table(MODELS)?;
        let mut models = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let model = ModelVersion::decode(value.value()).map_err(|error| {
                CoordinatorError::Store(format!(
                    "model {}: undecodable record: {error}",
                    key.value()
                ))
            })?;
            models.push(model);
        }
        Ok(models)
    }
}

fn model_key(name: &str, version: u32) -> String {
    format!("{name}\0{version:010}")
}

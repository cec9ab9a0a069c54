//! Training checkpoints in the object store: `<output>/checkpoints/step-<global step>/` holds the trainer's
//! opaque `state.safetensors` and a `manifest.json` written last, so a checkpoint is visible only when complete.
//!
//! A folder without a manifest (an interrupted or ongoing write), with a manifest that does not parse, or whose
//! state object is missing or not of the recorded size is *incomplete*: never listed, never the latest.
//! [`read_checkpoint`] also checks the state's SHA-256 before handing it out.
#![forbid(unsafe_code)]

pub mod error;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use plankton_dataset::{DatasetError, StoreLocation, open_location};

pub use error::{CheckpointError, CheckpointResult};

/// The manifest format this crate writes; manifests of a newer format are refused.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Folder of a job's output location that holds its checkpoints.
pub const CHECKPOINTS_FOLDER: &str = "checkpoints";
/// The manifest of a checkpoint, written last: its presence makes the checkpoint visible.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The trainer's state (weights, optimizer, ...), opaque to this crate.
pub const STATE_FILE: &str = "state.safetensors";

/// What a checkpoint is: the training position it captures and the state object it vouches for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckpointManifest {
    pub format_version: u32,
    pub job_id: String,
    /// Optimizer steps completed.
    pub global_step: u64,
    /// Epochs completed and evaluated.
    pub epoch: u32,
    pub steps_per_epoch: u64,
    pub architecture: String,
    pub class_names: Vec<String>,
    /// Name of the state object inside the checkpoint folder.
    pub state_file: String,
    pub state_bytes: u64,
    /// Lowercase hex SHA-256 of the state object.
    pub state_sha256: String,
    pub created_unix_ms: i64,
}

/// A complete checkpoint: its folder and manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointRef {
    /// The step folder, e.g. `s3://bucket/models/job-1/checkpoints/step-0000001200`.
    pub url: String,
    pub manifest: CheckpointManifest,
}

/// The folder name of the checkpoint at `global_step`: `step-` and the step zero-padded to 10 digits.
pub fn step_folder_name(global_step: u64) -> String {
    format!("step-{global_step:010}")
}

/// The global step of a folder named by [`step_folder_name`]; `None` for any other name.
fn parse_step_folder_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes `state` and then the manifest under `<output_url>/checkpoints/step-<global_step>/`.
///
/// `format_version`, `state_file`, `state_bytes` and `state_sha256` of `manifest` are filled in here, and
/// `created_unix_ms` when it is 0. Rewriting an existing step first withdraws its manifest, so no reader
/// ever pairs an old manifest with a new state.
pub async fn write_checkpoint(
    output_url: &str,
    mut manifest: CheckpointManifest,
    state: Bytes,
) -> CheckpointResult<CheckpointRef> {
    let folder =
        checkpoints_location(output_url)?.sub_location(&step_folder_name(manifest.global_step));
    let state_object = folder.object_url(STATE_FILE);
    manifest.format_version = CHECKPOINT_FORMAT_VERSION;
    manifest.state_file = STATE_FILE.to_string();
    manifest.state_bytes = state.len() as u64;
    manifest.state_sha256 = sha256_hex(state.clone(), &state_object).await?;
    if manifest.created_unix_ms == 0 {
        manifest.created_unix_ms = unix_ms_now();
    }
    let manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|error| CheckpointError::BadManifest {
            object: folder.object_url(MANIFEST_FILE),
            reason: error.to_string(),
        })?;

    delete_if_exists(&folder, MANIFEST_FILE).await?;
    folder.put_bytes(STATE_FILE, state).await?;
    folder
        .put_bytes(MANIFEST_FILE, Bytes::from(manifest_json))
        .await?;
    info!(
        url = folder.url,
        global_step = manifest.global_step,
        epoch = manifest.epoch,
        state_bytes = manifest.state_bytes,
        "checkpoint written"
    );
    Ok(CheckpointRef {
        url: folder.url,
        manifest,
    })
}

/// The complete checkpoints under `<output_url>/checkpoints/`, oldest (lowest step) first.
pub async fn list_checkpoints(output_url: &str) -> CheckpointResult<Vec<CheckpointRef>> {
    let checkpoints = checkpoints_location(output_url)?;
    let folders = scan_step_folders(&checkpoints).await?;
    Ok(folders
        .into_iter()
        .filter_map(|folder| match folder.state {
            FolderState::Complete(manifest) => Some(CheckpointRef {
                url: folder.location.url,
                manifest,
            }),
            FolderState::Incomplete(_) => None,
        })
        .collect())
}

/// The complete checkpoint with the highest step, if any.
pub async fn latest_checkpoint(output_url: &str) -> CheckpointResult<Option<CheckpointRef>> {
    Ok(list_checkpoints(output_url).await?.pop())
}

/// Reads the checkpoint folder `checkpoint_url` (a [`CheckpointRef::url`]): its manifest and its state, after
/// checking the state's size and SHA-256 against the manifest.
pub async fn read_checkpoint(
    checkpoint_url: &str,
) -> CheckpointResult<(CheckpointManifest, Bytes)> {
    let folder = open_checkpoint_folder(checkpoint_url)?;
    let manifest = read_manifest(&folder).await?;
    let state_object = folder.object_url(&manifest.state_file);
    let state = match folder.get_bytes(&manifest.state_file).await {
        Ok(state) => state,
        Err(error) if error.is_not_found() => {
            return Err(CheckpointError::Incomplete {
                url: folder.url.clone(),
                object: state_object,
            });
        }
        Err(error) => return Err(error.into()),
    };
    let actual_bytes = state.len() as u64;
    if actual_bytes != manifest.state_bytes {
        return Err(CheckpointError::SizeMismatch {
            object: state_object,
            expected: manifest.state_bytes,
            actual: actual_bytes,
        });
    }
    let actual_sha256 = sha256_hex(state.clone(), &state_object).await?;
    if actual_sha256 != manifest.state_sha256 {
        return Err(CheckpointError::DigestMismatch {
            object: state_object,
            expected: manifest.state_sha256,
            actual: actual_sha256,
        });
    }
    Ok((manifest, state))
}

/// Deletes the oldest complete checkpoints beyond the newest `keep` (manifest first, then the rest of the
/// folder), and incomplete leftovers of steps older than the newest complete checkpoint (incomplete folders
/// of newer steps may be writes in progress and stay). `keep` is literal: 0 deletes every complete checkpoint.
/// Returns how many step folders were removed.
pub async fn prune_checkpoints(output_url: &str, keep: usize) -> CheckpointResult<usize> {
    let checkpoints = checkpoints_location(output_url)?;
    let folders = scan_step_folders(&checkpoints).await?;
    let complete_count = folders.iter().filter(|folder| folder.is_complete()).count();
    let newest_complete_step = folders
        .iter()
        .filter(|folder| folder.is_complete())
        .map(|folder| folder.global_step)
        .max();
    let mut complete_left_to_delete = complete_count.saturating_sub(keep);
    let mut removed_folders = 0;
    for folder in &folders {
        match &folder.state {
            FolderState::Complete(manifest) => {
                if complete_left_to_delete == 0 {
                    continue;
                }
                complete_left_to_delete -= 1;
                // Manifest first: from here on the checkpoint is invisible, whatever happens next.
                delete_if_exists(&folder.location, MANIFEST_FILE).await?;
                delete_if_exists(&folder.location, &manifest.state_file).await?;
                delete_folder_contents(&folder.location).await?;
                removed_folders += 1;
                info!(
                    url = folder.location.url,
                    global_step = folder.global_step,
                    "checkpoint pruned"
                );
            }
            FolderState::Incomplete(reason) => {
                let older_than_newest_complete =
                    newest_complete_step.is_some_and(|newest| folder.global_step < newest);
                if !older_than_newest_complete {
                    continue;
                }
                let deleted_objects = delete_folder_contents(&folder.location).await?;
                if deleted_objects > 0 {
                    removed_folders += 1;
                    info!(
                        url = folder.location.url,
                        reason, deleted_objects, "incomplete checkpoint leftover removed"
                    );
                }
            }
        }
    }
    Ok(removed_folders)
}

// ------------------------------------------------------------------ folders

/// `<output_url>/checkpoints`.
fn checkpoints_location(output_url: &str) -> CheckpointResult<StoreLocation> {
    Ok(open_location(output_url)?.sub_location(CHECKPOINTS_FOLDER))
}

/// Opens a checkpoint folder through its parent, so that reading a local folder that does not exist reports
/// it missing instead of creating it (opening a local location creates its directory).
fn open_checkpoint_folder(checkpoint_url: &str) -> CheckpointResult<StoreLocation> {
    let trimmed = checkpoint_url.trim().trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, folder_name))
            if !folder_name.is_empty()
                && !parent.is_empty()
                && !parent.ends_with(':')
                && !parent.ends_with('/') =>
        {
            Ok(open_location(parent)?.sub_location(folder_name))
        }
        _ => Ok(open_location(checkpoint_url)?),
    }
}

enum FolderState {
    Complete(CheckpointManifest),
    /// Why the folder is not a complete checkpoint.
    Incomplete(String),
}

struct StepFolder {
    global_step: u64,
    location: StoreLocation,
    state: FolderState,
}

impl StepFolder {
    fn is_complete(&self) -> bool {
        matches!(self.state, FolderState::Complete(_))
    }
}

/// Every `step-*` folder under `checkpoints`, complete or not, lowest step first.
async fn scan_step_folders(checkpoints: &StoreLocation) -> CheckpointResult<Vec<StepFolder>> {
    let listing = checkpoints
        .store
        .list_with_delimiter(Some(&checkpoints.prefix))
        .await
        .map_err(|source| DatasetError::from_store(checkpoints.url.clone(), source));
    let listing = match listing {
        Ok(listing) => listing,
        Err(error) if error.is_not_found() => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    let mut folders = Vec::new();
    for folder_prefix in listing.common_prefixes {
        let Some(folder_name) = folder_prefix.filename() else {
            continue;
        };
        let Some(global_step) = parse_step_folder_name(folder_name) else {
            continue;
        };
        let location = checkpoints.sub_location(folder_name);
        let state = inspect_folder(&location, global_step).await?;
        if let FolderState::Incomplete(reason) = &state {
            debug!(url = location.url, reason, "incomplete checkpoint folder");
        }
        folders.push(StepFolder {
            global_step,
            location,
            state,
        });
    }
    folders.sort_by_key(|folder| folder.global_step);
    Ok(folders)
}

/// Whether `folder` holds a complete checkpoint of `global_step`; store failures other than "not found" are
/// errors, so an unreachable store never reads as "no checkpoints".
async fn inspect_folder(folder: &StoreLocation, global_step: u64) -> CheckpointResult<FolderState> {
    let manifest = match read_manifest(folder).await {
        Ok(manifest) => manifest,
        Err(CheckpointError::Incomplete { .. }) => {
            return Ok(FolderState::Incomplete("no manifest".into()));
        }
        Err(CheckpointError::BadManifest { object, reason }) => {
            warn!(object, reason, "unreadable checkpoint manifest");
            return Ok(FolderState::Incomplete(format!("bad manifest: {reason}")));
        }
        Err(other) => return Err(other),
    };
    if manifest.global_step != global_step {
        return Ok(FolderState::Incomplete(format!(
            "manifest records step {}, the folder is step {global_step}",
            manifest.global_step
        )));
    }
    match folder.size_of(&manifest.state_file).await {
        Ok(size) if size == manifest.state_bytes => Ok(FolderState::Complete(manifest)),
        Ok(size) => Ok(FolderState::Incomplete(format!(
            "state is {size} bytes, the manifest records {}",
            manifest.state_bytes
        ))),
        Err(error) if error.is_not_found() => {
            Ok(FolderState::Incomplete("state object missing".into()))
        }
        Err(error) => Err(error.into()),
    }
}

/// Reads and checks `manifest.json` of `folder`; a missing manifest is [`CheckpointError::Incomplete`].
async fn read_manifest(folder: &StoreLocation) -> CheckpointResult<CheckpointManifest> {
    let object = folder.object_url(MANIFEST_FILE);
    let manifest_bytes = match folder.get_bytes(MANIFEST_FILE).await {
        Ok(manifest_bytes) => manifest_bytes,
        Err(error) if error.is_not_found() => {
            return Err(CheckpointError::Incomplete {
                url: folder.url.clone(),
                object,
            });
        }
        Err(error) => return Err(error.into()),
    };
    let manifest: CheckpointManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|error| CheckpointError::BadManifest {
            object: object.clone(),
            reason: error.to_string(),
        })?;
    if manifest.format_version == 0 || manifest.format_version > CHECKPOINT_FORMAT_VERSION {
        return Err(CheckpointError::BadManifest {
            object,
            reason: format!(
                "format version {} (this build reads 1 to {CHECKPOINT_FORMAT_VERSION})",
                manifest.format_version
            ),
        });
    }
    let state_file_is_plain_name = !manifest.state_file.is_empty()
        && !manifest.state_file.contains('/')
        && manifest.state_file != "."
        && manifest.state_file != "..";
    if !state_file_is_plain_name {
        return Err(CheckpointError::BadManifest {
            object,
            reason: format!(
                "state file {:?} is not a file name inside the checkpoint folder",
                manifest.state_file
            ),
        });
    }
    Ok(manifest)
}

// ------------------------------------------------------------------ objects

async fn delete_if_exists(folder: &StoreLocation, relative: &str) -> CheckpointResult<()> {
    match folder.store.delete(&folder.child(relative)).await {
        Ok(()) => Ok(()),
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(DatasetError::from_store(folder.object_url(relative), source).into()),
    }
}

/// Deletes every object under `folder`; returns how many there were.
async fn delete_folder_contents(folder: &StoreLocation) -> CheckpointResult<usize> {
    let mut objects: Vec<object_store::ObjectMeta> = Vec::new();
    folder
        .for_each_object("", |object| objects.push(object))
        .await?;
    for object in &objects {
        match folder.store.delete(&object.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                let relative: Vec<String> = object
                    .location
                    .prefix_match(&folder.prefix)
                    .map(|parts| parts.map(|part| part.as_ref().to_string()).collect())
                    .unwrap_or_default();
                let object_url = folder.object_url(&relative.join("/"));
                return Err(DatasetError::from_store(object_url, source).into());
            }
        }
    }
    Ok(objects.len())
}

/// Lowercase hex SHA-256 of `bytes`, computed off the async threads (a state can be hundreds of MB).
async fn sha256_hex(bytes: Bytes, object: &str) -> CheckpointResult<String> {
    tokio::task::spawn_blocking(move || {
        let digest = Sha256::digest(&bytes);
        digest
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    })
    .await
    .map_err(|error| CheckpointError::Hashing {
        object: object.to_string(),
        reason: error.to_string(),
    })
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_folder_names_round_trip_and_sort() {
        assert_eq!(step_folder_name(42), "step-0000000042");
        assert_eq!(parse_step_folder_name("step-0000000042"), Some(42));
        assert_eq!(parse_step_folder_name("step-+42"), None);
        assert_eq!(parse_step_folder_name("step-"), None);
        assert_eq!(parse_step_folder_name("stage-0000000042"), None);
        assert!(step_folder_name(9) < step_folder_name(10));
    }
}

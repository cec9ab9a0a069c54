//! Checkpoints against a local directory (file://) and the process-wide in-memory store (memory://).

use bytes::Bytes;
use plankton_checkpoint::{
    CheckpointError, CheckpointManifest, latest_checkpoint, list_checkpoints, prune_checkpoints,
    read_checkpoint, step_folder_name, write_checkpoint,
};
use plankton_dataset::open_location;

fn manifest_at(global_step: u64) -> CheckpointManifest {
    CheckpointManifest {
        format_version: 0,
        job_id: "job-1".into(),
        global_step,
        epoch: (global_step / 10) as u32,
        steps_per_epoch: 10,
        architecture: "lenet".into(),
        class_names: vec!["a".into(), "b".into()],
        state_file: String::new(),
        state_bytes: 0,
        state_sha256: String::new(),
        created_unix_ms: 0,
    }
}

fn state_at(global_step: u64) -> Bytes {
    Bytes::from(format!("weights after step {global_step}").repeat(100))
}

fn steps(checkpoints: &[plankton_checkpoint::CheckpointRef]) -> Vec<u64> {
    checkpoints
        .iter()
        .map(|checkpoint| checkpoint.manifest.global_step)
        .collect()
}

#[tokio::test]
async fn write_three_keep_two_in_a_local_directory() -> anyhow::Result<()> {
    let output_dir = tempfile::tempdir()?;
    let output_url = format!("file://{}", output_dir.path().display());
    for global_step in [10, 20, 30] {
        write_checkpoint(&output_url, manifest_at(global_step), state_at(global_step)).await?;
    }
    assert_eq!(steps(&list_checkpoints(&output_url).await?), [10, 20, 30]);

    assert_eq!(prune_checkpoints(&output_url, 2).await?, 1);
    let kept = list_checkpoints(&output_url).await?;
    assert_eq!(steps(&kept), [20, 30]);
    assert!(kept[1].url.ends_with("/checkpoints/step-0000000030"));
    assert_eq!(prune_checkpoints(&output_url, 2).await?, 0, "idempotent");

    let (manifest, state) = read_checkpoint(&kept[1].url).await?;
    assert_eq!(manifest, kept[1].manifest);
    assert_eq!(state, state_at(30));
    assert_eq!(manifest.state_bytes, state_at(30).len() as u64);
    assert_eq!(manifest.state_sha256.len(), 64);
    assert_eq!(manifest.format_version, 1);
    assert!(manifest.created_unix_ms > 0);
    Ok(())
}

#[tokio::test]
async fn an_interrupted_write_is_never_listed_and_old_leftovers_are_pruned() -> anyhow::Result<()> {
    let output_url = "memory://checkpoint-tests/interrupted/job-1";
    let output = open_location(output_url)?;
    write_checkpoint(output_url, manifest_at(10), state_at(10)).await?;
    // State written, manifest never: before and after the complete checkpoint.
    for global_step in [5, 50] {
        let folder = format!("checkpoints/{}", step_folder_name(global_step));
        output
            .put_bytes(
                &format!("{folder}/state.safetensors"),
                state_at(global_step),
            )
            .await?;
    }

    assert_eq!(steps(&list_checkpoints(output_url).await?), [10]);
    let latest = latest_checkpoint(output_url)
        .await?
        .expect("a complete one");
    assert_eq!(latest.manifest.global_step, 10);
    let missing = read_checkpoint(&format!(
        "{output_url}/checkpoints/{}",
        step_folder_name(50)
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(missing, CheckpointError::Incomplete { ref object, .. } if object.ends_with("step-0000000050/manifest.json")),
        "{missing}"
    );

    // The leftover older than the newest complete checkpoint goes; the newer one may be a write in progress.
    assert_eq!(prune_checkpoints(output_url, 2).await?, 1);
    assert!(
        !output
            .exists("checkpoints/step-0000000005/state.safetensors")
            .await?
    );
    assert!(
        output
            .exists("checkpoints/step-0000000050/state.safetensors")
            .await?
    );
    assert_eq!(steps(&list_checkpoints(output_url).await?), [10]);
    Ok(())
}

#[tokio::test]
async fn a_truncated_or_corrupted_state_is_refused_naming_the_object() -> anyhow::Result<()> {
    let output_url = "memory://checkpoint-tests/corrupted/job-1";
    let output = open_location(output_url)?;
    let truncated = write_checkpoint(output_url, manifest_at(10), state_at(10)).await?;
    let corrupted = write_checkpoint(output_url, manifest_at(20), state_at(20)).await?;
    output
        .put_bytes(
            "checkpoints/step-0000000010/state.safetensors",
            state_at(10).slice(..100),
        )
        .await?;
    let mut flipped = state_at(20).to_vec();
    flipped[7] ^= 0xff;
    output
        .put_bytes(
            "checkpoints/step-0000000020/state.safetensors",
            Bytes::from(flipped),
        )
        .await?;

    let size_error = read_checkpoint(&truncated.url).await.unwrap_err();
    assert!(
        matches!(
            size_error,
            CheckpointError::SizeMismatch { actual: 100, .. }
        ),
        "{size_error}"
    );
    assert!(
        size_error
            .to_string()
            .contains("step-0000000010/state.safetensors"),
        "{size_error}"
    );
    let digest_error = read_checkpoint(&corrupted.url).await.unwrap_err();
    assert!(
        matches!(digest_error, CheckpointError::DigestMismatch { .. }),
        "{digest_error}"
    );
    assert!(
        digest_error
            .to_string()
            .contains("step-0000000020/state.safetensors"),
        "{digest_error}"
    );

    // A truncated state is not a complete checkpoint (listing checks sizes, not digests).
    assert_eq!(steps(&list_checkpoints(output_url).await?), [20]);
    Ok(())
}

#[tokio::test]
async fn latest_is_the_highest_step_whatever_the_write_order() -> anyhow::Result<()> {
    let output_url = "memory://checkpoint-tests/latest/job-1";
    assert_eq!(latest_checkpoint(output_url).await?, None, "none yet");
    for global_step in [300, 9, 10_000_000_000, 20] {
        write_checkpoint(output_url, manifest_at(global_step), state_at(global_step)).await?;
    }
    let latest = latest_checkpoint(output_url).await?.expect("four written");
    assert_eq!(latest.manifest.global_step, 10_000_000_000);
    assert_eq!(
        steps(&list_checkpoints(output_url).await?),
        [9, 20, 300, 10_000_000_000]
    );

    // Rewriting a step replaces it whole.
    let rewritten =
        write_checkpoint(output_url, manifest_at(20), Bytes::from_static(b"new")).await?;
    assert_eq!(
        read_checkpoint(&rewritten.url).await?.1,
        Bytes::from_static(b"new")
    );
    Ok(())
}

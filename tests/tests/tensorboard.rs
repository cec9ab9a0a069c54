//! TensorBoard event files: after a job, `<output>/tensorboard/` holds rank 0's step scalars and the
//! coordinator's epoch evaluations, and TensorBoard's own reader (EventAccumulator) loads them. Steps are global
//! optimizer steps numbered from 1; an epoch's evaluation sits at its last step (`epoch * steps_per_epoch`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use plankton_proto::v1::JobSpec;
use plankton_tests::{TestCluster, synth_dataset};

/// Every scalar tag of the event files in `folder` and its steps, as TensorBoard's EventAccumulator reads them.
fn read_with_tensorboard(folder: &Path) -> BTreeMap<String, Vec<i64>> {
    let python = plankton_tests::project_tool(".venv-tensorboard", "python");
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
accumulator.Reload()
print(json.dumps({tag: [event.step for event in accumulator.Scalars(tag)]
                  for tag in accumulator.Tags()["scalars"]}))
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script])
        .arg(folder)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "EventAccumulator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON object of tags")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_writes_event_files_tensorboard_reads() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 400, 47, false).await?;
    let cluster = TestCluster::start(2).await?;
    let epochs = 2;
    let finished = cluster
        .run_job(JobSpec {
            dataset_url: dataset_url.clone(),
            world_size: 2,
            model: "lenet".into(),
            epochs,
            batch_size: 16,
            threads_per_worker: 1,
            ..Default::default()
        })
        .await?;
    cluster.shutdown().await?;

    let folder = data
        .path()
        .join("models")
        .join(&finished.id)
        .join("tensorboard");
    let mut names: Vec<String> = std::fs::read_dir(&folder)?
        .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    for writer in ["coordinator", "rank0"] {
        assert!(
            names
                .iter()
                .any(|name| name.starts_with("events.out.tfevents.")
                    && name.ends_with(&format!(".{writer}"))),
            "no event file of {writer}: {names:?}"
        );
    }

    // The coordinator's last rewrite runs in the background: it may land just after the job ends.
    let started = Instant::now();
    let scalars = loop {
        let scalars = read_with_tensorboard(&folder);
        let evaluated = scalars.get("eval/macro_f1").map_or(0, Vec::len);
        if evaluated == epochs as usize || started.elapsed() > Duration::from_secs(30) {
            break scalars;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let global_step = finished.global_step as i64;
    assert!(global_step > 0);
    let every_step: Vec<i64> = (1..=global_step).collect();
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/images_per_second",
        "time/step_seconds",
    ] {
        assert_eq!(scalars.get(tag), Some(&every_step), "{tag}: {scalars:?}");
    }
    let epoch_ends: Vec<i64> = (1..=i64::from(epochs))
        .map(|epoch| epoch * finished.steps_per_epoch as i64)
        .collect();
    assert_eq!(*epoch_ends.last().unwrap(), global_step);
    for tag in [
        "eval/accuracy",
        "eval/macro_f1",
        "eval/biological_macro_f1",
        "eval/weighted_f1",
        "eval/balanced_accuracy",
        "eval/test_loss",
        "train/epoch_loss",
    ] {
        assert_eq!(scalars.get(tag), Some(&epoch_ends), "{tag}: {scalars:?}");
    }
    assert!(!finished.class_names.is_empty());
    for class_name in &finished.class_names {
        let tag = format!("eval_f1/{class_name}");
        assert_eq!(scalars.get(&tag), Some(&epoch_ends), "{tag}: {scalars:?}");
    }
    Ok(())
}

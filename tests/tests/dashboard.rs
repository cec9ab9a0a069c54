//! The web dashboard and the job report in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `tests/browser/`): the browser watches a job train on a secure cluster, then opens the
//! finished job's report with the network off. Screenshots land in `target/screenshots/` for people to look at.

use std::path::{Path, PathBuf};
use std::process::Command;

use plankton_proto::v1::JobSpec;
use plankton_security::Role;
use plankton_tests::access::test_client_flags;
use plankton_tests::{
    TestCluster, free_local_address, synth_dataset, test_credentials, workspace_root,
};

const EPOCHS: u32 = 5;

fn browser_dir() -> PathBuf {
    workspace_root().join("tests").join("browser")
}

fn screenshots_dir() -> PathBuf {
    workspace_root().join("target").join("screenshots")
}

/// Runs a script of `tests/browser/` with `node`; panics with its output unless every check passed.
fn run_browser_script(script: &str, variables: &[(&str, String)]) {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing from tests/browser/node_modules: run scripts/setup.sh (make test does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "chromium is missing: run scripts/setup.sh (make test does), or set CHROMIUM to a Chromium binary"
    );
    let output = Command::new("node")
        .arg(script)
        .current_dir(browser_dir())
        .envs(
            variables
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        )
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{script}:\n{stdout}");
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_a_job_live_and_its_report_opens_offline() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 1200, 31, false).await?;
    let dashboard_address = free_local_address();
    let cluster = TestCluster::start_configured(
        2,
        None,
        |config| config.dashboard_listen = Some(dashboard_address),
        |_, _| {},
    )
    .await?;
    // Epochs long enough (a few seconds) for the browser to load the page before the last one.
    let job = cluster
        .submit(JobSpec {
            dataset_url: dataset_url.clone(),
            world_size: 2,
            model: "resnet".into(),
            epochs: EPOCHS,
            batch_size: 16,
            threads_per_worker: 1,
            ..Default::default()
        })
        .await?;
    let classes = job.class_names.len();
    let credentials = test_credentials();
    let browser = {
        let variables = vec![
            ("DASHBOARD_URL", format!("https://{dashboard_address}")),
            ("SERVER_CERT", credentials.server_cert.display().to_string()),
            ("VIEWER_TOKEN", credentials.token(Role::Viewer).to_string()),
            (
                "OPERATOR_TOKEN",
                credentials.token(Role::Operator).to_string(),
            ),
            ("CLIENT_TOKEN", credentials.token(Role::Client).to_string()),
            ("JOB_ID", job.id.clone()),
            ("CLASSES", classes.to_string()),
            ("EPOCHS", EPOCHS.to_string()),
            ("SCREENSHOTS", screenshots_dir().display().to_string()),
        ];
        tokio::task::spawn_blocking(move || run_browser_script("dashboard.mjs", &variables))
    };
    browser.await?;
    let finished = cluster
        .wait_finished(&job.id, std::time::Duration::from_secs(60))
        .await?;
    assert_eq!(finished.epochs.len(), EPOCHS as usize);
    assert!(
        !finished.loss_curve.is_empty() && !finished.misclassified.is_empty(),
        "the job records its loss curve ({} points) and mistakes ({})",
        finished.loss_curve.len(),
        finished.misclassified.len()
    );
    assert_eq!(
        finished.train_class_counts.iter().sum::<u64>(),
        finished.train_objects
    );

    // The report written next to the model, opened with the network off.
    let written = data.path().join("models").join(&job.id).join("report.html");
    assert!(written.exists(), "{} was not written", written.display());
    let report_variables = |report: &Path| {
        vec![
            ("REPORT", report.display().to_string()),
            ("CLASSES", classes.to_string()),
            ("SCREENSHOTS", screenshots_dir().display().to_string()),
        ]
    };
    let variables = report_variables(&written);
    tokio::task::spawn_blocking(move || run_browser_script("report.mjs", &variables)).await?;

    // `planktonctl report` fetches the same report with a viewer's token.
    let fetched = data.path().join("fetched-report.html");
    let mut arguments = vec!["--coordinator".to_string(), cluster.coordinator_url.clone()];
    arguments.extend(test_client_flags(Role::Viewer));
    arguments.extend([
        "report".into(),
        job.id.clone(),
        "--out".into(),
        fetched.display().to_string(),
    ]);
    let output = tokio::process::Command::new(plankton_tests::binary("planktonctl")?)
        .args(&arguments)
        .output()
        .await?;
    assert!(
        output.status.success(),
        "planktonctl report failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let html = std::fs::read_to_string(&fetched)?;
    for section in [
        "spec",
        "data",
        "curves",
        "per-class",
        "confusion",
        "misclassified",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{section}\"")),
            "planktonctl's report lacks {section}"
        );
    }
    cluster.shutdown().await?;
    Ok(())
}

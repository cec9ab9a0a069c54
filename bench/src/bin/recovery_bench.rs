//! What a fault costs a training job, measured on a cluster of OS processes (coordinator + 3 workers on
//! 127.0.0.1) in one run: a worker killed mid-epoch (detection, kill -> next step, steps lost, wall time and
//! macro-F1 vs an undisturbed run), the coordinator killed and restarted (did the ring keep training?), and
//! the anchor: TorchElastic/Ray-style recovery, every worker restarted from the last epoch checkpoint,
//! measured with our own cancel + `ResumeJob` on the same spec.
//!
//! `make bench-recovery` (`cargo build --release --bins`, then
//! `cargo run --release -p plankton-bench --bin recovery_bench`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use plankton_security::AuthChannel;

use plankton_proto::v1::job_service_client::JobServiceClient;
use plankton_proto::v1::{
    CancelJobRequest, GetJobRequest, Job, JobPhase, JobSpec, ListWorkersRequest, LrSchedule,
    Recovery, ResumeJobRequest, SubmitJobRequest,
};
use plankton_tests::{ProcessCluster, synth_dataset, test_timeouts};

/// How long any one job may take before the benchmark calls it hung.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// GetJob polling period while waiting for a fault point (progress arrives every 500 ms per rank).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Parser, Debug)]
#[command(
    about = "Fault recovery: worker kill, coordinator kill, and the restart-from-epoch-checkpoint anchor"
)]
struct Options {
    /// Objects in the synthetic dataset (80% train). 4,000 keeps the whole run near 5 minutes on 2 cores.
    #[arg(long, default_value_t = 4000)]
    objects: u64,
    /// Worker processes, and the jobs' world size.
    #[arg(long, default_value_t = 3)]
    workers: u32,
    #[arg(long, default_value_t = 4)]
    epochs: u32,
    /// Images per step and per worker.
    #[arg(long, default_value_t = 32)]
    batch: u32,
    #[arg(long, default_value = "wide_lenet")]
    model: String,
    /// Faults are injected once training is this far into epoch 2.
    #[arg(long, default_value_t = 0.5)]
    fault_at: f64,
    /// How long the coordinator stays down.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    coordinator_down: Duration,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> Result<()> {
    require_cluster_binaries()?;
    let options = Options::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(options))
}

/// The coordinator and worker binaries `ProcessCluster` starts sit next to this program in `target/release`.
fn require_cluster_binaries() -> Result<()> {
    for name in ["plankton-coordinator", "plankton-worker"] {
        plankton_tests::binary(name).context("build them: cargo build --release --bins")?;
    }
    Ok(())
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn seconds(milliseconds: i64) -> f64 {
    milliseconds as f64 / 1000.0
}

fn final_macro_f1(job: &Job) -> f64 {
    job.epochs
        .last()
        .map_or(f64::NAN, |metrics| metrics.macro_f1)
}

fn wall_seconds(job: &Job) -> f64 {
    seconds(job.finished_unix_ms - job.created_unix_ms)
}

/// A `GetJob` answer and when it arrived.
#[derive(Clone)]
struct Observation {
    at: Instant,
    unix_ms: i64,
    job: Job,
}

struct Bench {
    options: Options,
    dataset_url: String,
    cluster: ProcessCluster,
    client: Option<JobServiceClient<AuthChannel>>,
}

impl Bench {
    fn spec(&self, name: &str) -> JobSpec {
        JobSpec {
            name: name.into(),
            dataset_url: self.dataset_url.clone(),
            world_size: self.options.workers,
            model: self.options.model.clone(),
            epochs: self.options.epochs,
            batch_size: self.options.batch,
            lr_schedule: LrSchedule::Cosine as i32,
            threads_per_worker: 1,
            seed: self.options.seed,
            ..Default::default()
        }
    }

    /// A client of the coordinator, connecting again after a failed call (the coordinator may have restarted).
    async fn client(&mut self) -> Result<&mut JobServiceClient<AuthChannel>> {
        if self.client.is_none() {
            let client = self
                .cluster
                .access
                .jobs()
                .await
                .context("connecting to the coordinator")?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just set"))
    }

    async fn get(&mut self, job_id: &str) -> Result<Job> {
        let request = GetJobRequest {
            job_id: job_id.into(),
        };
        let answer = self.client().await?.get_job(request).await;
        match answer {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                self.client = None;
                Err(status).context("GetJob")
            }
        }
    }

    async fn observe(&mut self, job_id: &str) -> Result<Observation> {
        let job = self.get(job_id).await?;
        Ok(Observation {
            at: Instant::now(),
            unix_ms: unix_ms_now(),
            job,
        })
    }

    async fn submit(&mut self, spec: JobSpec) -> Result<Job> {
        let request = SubmitJobRequest { spec: Some(spec) };
        Ok(self.client().await?.submit_job(request).await?.into_inner())
    }

    /// The job's state once it ends; an error carrying the processes' logs unless it succeeded.
    async fn finish(&mut self, job_id: &str) -> Result<Job> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let job = match self.get(job_id).await {
                Ok(job) => job,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("  (GetJob failed, retrying: {error:#})");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match job.phase() {
                JobPhase::Succeeded => return Ok(job),
                JobPhase::Failed | JobPhase::Cancelled => {
                    bail!(
                        "job {job_id} ({}) ended {:?}: {}\n{}",
                        job.spec.as_ref().map_or("", |spec| spec.name.as_str()),
                        job.phase(),
                        job.message,
                        self.cluster.logs()
                    )
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "job {job_id} still {:?} after {JOB_TIMEOUT:?} (global step {}): {}\n{}",
                    job.phase(),
                    job.global_step,
                    job.message,
                    self.cluster.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the job until `reached` holds; fails (with the logs) if it ends first or takes too long.
    async fn wait_until(
        &mut self,
        job_id: &str,
        what: &str,
        reached: impl Fn(&Job) -> bool,
    ) -> Result<Observation> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let observation = self.observe(job_id).await?;
            if reached(&observation.job) {
                return Ok(observation);
            }
            let phase = observation.job.phase();
            if plankton_coordinator::state::is_terminal(phase) || Instant::now() >= deadline {
                bail!(
                    "job {job_id} never reached {what}: {phase:?} at global step {}: {}\n{}",
                    observation.job.global_step,
                    observation.job.message,
                    self.cluster.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Training is `fault_at` of the way into epoch 2.
    fn in_epoch_2(&self) -> impl Fn(&Job) -> bool + use<> {
        let fault_at = self.options.fault_at;
        move |job: &Job| {
            let steps_per_epoch = job.steps_per_epoch;
            steps_per_epoch > 0
                && job.phase() == JobPhase::Training
                && job.global_step >= steps_per_epoch + (steps_per_epoch as f64 * fault_at) as u64
        }
    }

    /// Waits until `wanted` live workers are idle (a killed worker stays listed until it times out).
    async fn wait_for_idle_workers(&mut self, wanted: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let live_within_ms = 2 * test_timeouts().heartbeat_interval.as_millis() as i64 + 500;
        loop {
            let workers = self
                .client()
                .await?
                .list_workers(ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            let now = unix_ms_now();
            let idle = workers
                .iter()
                .filter(|worker| {
                    worker.current_job.is_empty()
                        && now - worker.last_heartbeat_unix_ms <= live_within_ms
                })
                .count();
            if idle >= wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {idle} of {wanted} workers idle after 60 s: {workers:?}\n{}",
                    self.cluster.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process index of a worker id (`--name proc-worker-<index>` starts it).
    fn process_of(&self, worker_id: &str) -> Option<usize> {
        (0..self.cluster.workers.len())
            .find(|index| worker_id.starts_with(&format!("proc-worker-{index}-")))
    }
}

struct WorkerKill {
    step_at_kill: u64,
    steps_per_epoch: u64,
    victim: String,
    recovery: Recovery,
    recoveries: usize,
    detection_s: f64,
    formed_s: f64,
    kill_to_next_step_s: f64,
    job: Job,
}

struct CoordinatorKill {
    step_at_kill: u64,
    rate_before: f64,
    down_s: f64,
    first_answer_s: f64,
    fresh_step: u64,
    fresh_after_s: f64,
    job: Job,
}

impl CoordinatorKill {
    fn steps_while_down(&self) -> u64 {
        self.fresh_step.saturating_sub(self.step_at_kill)
    }

    /// Training time missing over the outage: the time from kill to the first fresh report, less the steps
    /// trained in it at the rate measured before the kill.
    fn implied_stall_s(&self) -> f64 {
        (self.fresh_after_s - self.steps_while_down() as f64 / self.rate_before).max(0.0)
    }
}

struct Anchor {
    step_at_cancel: u64,
    checkpoint_step: u64,
    recovery: Recovery,
    steps_lost: u64,
    cancel_to_next_step_s: f64,
    job: Job,
}

async fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    let timeouts = test_timeouts();
    println!(
        "recovery_bench: {} x {}, {} objects, {} epochs, batch {} per worker, 1 thread per worker",
        options.workers, options.model, options.objects, options.epochs, options.batch
    );
    println!(
        "coordinator timeouts (ProcessCluster): worker timeout {:?}, heartbeat interval {:?} (a broken ring is \
         detected after 3 intervals = {:?}), replacement wait {:?}",
        timeouts.worker_timeout,
        timeouts.heartbeat_interval,
        timeouts.heartbeat_interval * 3,
        timeouts.replacement_wait
    );
    println!("binaries: {}", plankton_tests::binaries_dir().display());

    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    let generation_started = Instant::now();
    synth_dataset(&dataset_url, options.objects, options.seed, false).await?;
    println!(
        "dataset: {} synthetic objects in {:.1} s",
        options.objects,
        generation_started.elapsed().as_secs_f64()
    );
    let cluster = ProcessCluster::start(options.workers as usize, &[]).await?;
    let mut bench = Bench {
        options,
        dataset_url,
        cluster,
        client: None,
    };

    let result = measure(&mut bench).await;
    let shutdown = bench.cluster.shutdown().await;
    print_table(&bench.options, &result?);
    println!("\ntotal run time {:.0} s", started.elapsed().as_secs_f64());
    shutdown
}

/// Every figure of one run.
struct Measurements {
    /// The undisturbed reference, run first and again last (the machine is shared: the pair shows how much
    /// its speed moved during the run).
    undisturbed_first: Job,
    undisturbed_last: Job,
    worker_kill: WorkerKill,
    coordinator_kill: CoordinatorKill,
    anchor: Anchor,
}

impl Measurements {
    fn undisturbed_wall_seconds(&self) -> f64 {
        (wall_seconds(&self.undisturbed_first) + wall_seconds(&self.undisturbed_last)) / 2.0
    }
}

/// The 1-minute load average, to judge how much the shared machine disturbed a figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

async fn undisturbed_run(bench: &mut Bench, name: &str) -> Result<Job> {
    println!("\n== {name}");
    bench
        .wait_for_idle_workers(bench.options.workers as usize)
        .await?;
    let submitted = bench.submit(bench.spec(name)).await?;
    let job = bench.finish(&submitted.id).await?;
    println!(
        "  {} steps/epoch, wall {:.1} s, macro-F1 {:.3} (load average {})",
        job.steps_per_epoch,
        wall_seconds(&job),
        final_macro_f1(&job),
        load_average()
    );
    Ok(job)
}

async fn measure(bench: &mut Bench) -> Result<Measurements> {
    let undisturbed = undisturbed_run(bench, "undisturbed").await?;

    println!("\n== 1. worker kill -9 mid-epoch 2");
    let worker_kill = worker_kill(bench).await?;
    println!(
        "  killed {} at global step {} (epoch 2 is steps {}..{})",
        worker_kill.victim,
        worker_kill.step_at_kill,
        worker_kill.steps_per_epoch + 1,
        2 * worker_kill.steps_per_epoch
    );
    println!(
        "  detected after {:.2} s, new generation formed after {:.2} s, next step after {:.2} s",
        worker_kill.detection_s, worker_kill.formed_s, worker_kill.kill_to_next_step_s
    );
    println!(
        "  resumed from step {} ({}, world size {}), steps lost {}; recoveries {}",
        worker_kill.recovery.resumed_from_step,
        worker_kill.recovery.state_source,
        worker_kill.recovery.world_size,
        worker_kill.recovery.steps_lost,
        worker_kill.recoveries
    );
    println!(
        "  wall {:.1} s vs undisturbed {:.1} s; macro-F1 {:.3} vs {:.3} (load average {})",
        wall_seconds(&worker_kill.job),
        wall_seconds(&undisturbed),
        final_macro_f1(&worker_kill.job),
        final_macro_f1(&undisturbed),
        load_average()
    );

    println!(
        "\n== 2. coordinator kill -9 mid-epoch 2, restarted after {:?}",
        bench.options.coordinator_down
    );
    let coordinator_kill = coordinator_kill(bench).await?;
    println!(
        "  killed at global step {} (training at {:.2} steps/s); restarted coordinator answered {:.2} s after \
         the kill",
        coordinator_kill.step_at_kill,
        coordinator_kill.rate_before,
        coordinator_kill.first_answer_s
    );
    println!(
        "  first report past the kill: global step {} at {:.2} s after the kill => {} steps trained across the \
         outage ({:.2} steps/s), implied stall {:.2} s (resolution ~0.5 s: ranks report every 500 ms)",
        coordinator_kill.fresh_step,
        coordinator_kill.fresh_after_s,
        coordinator_kill.steps_while_down(),
        coordinator_kill.steps_while_down() as f64 / coordinator_kill.fresh_after_s,
        coordinator_kill.implied_stall_s()
    );
    println!(
        "  finished {:?} in generation {} with {} recoveries, wall {:.1} s, macro-F1 {:.3} (load average {})",
        coordinator_kill.job.phase(),
        coordinator_kill.job.generation,
        coordinator_kill.job.recoveries.len(),
        wall_seconds(&coordinator_kill.job),
        final_macro_f1(&coordinator_kill.job),
        load_average()
    );
    for recovery in &coordinator_kill.job.recoveries {
        println!("  recovery: {recovery:?}");
    }

    println!(
        "\n== 3. anchor: cancel mid-epoch 2 (every worker stops), ResumeJob from the epoch checkpoint"
    );
    let anchor = anchor(bench).await?;
    println!(
        "  cancelled at global step {}; latest checkpoint at step {}; resumed from step {} ({})",
        anchor.step_at_cancel,
        anchor.checkpoint_step,
        anchor.recovery.resumed_from_step,
        anchor.recovery.state_source
    );
    println!(
        "  steps lost {} (coordinator's record: {}), cancel -> next step {:.2} s; wall {:.1} s (including the \
         resume), macro-F1 {:.3} (load average {})",
        anchor.steps_lost,
        anchor.recovery.steps_lost,
        anchor.cancel_to_next_step_s,
        wall_seconds(&anchor.job),
        final_macro_f1(&anchor.job),
        load_average()
    );

    let undisturbed_last = undisturbed_run(bench, "undisturbed, again at the end").await?;
    Ok(Measurements {
        undisturbed_first: undisturbed,
        undisturbed_last,
        worker_kill,
        coordinator_kill,
        anchor,
    })
}

async fn worker_kill(bench: &mut Bench) -> Result<WorkerKill> {
    bench
        .wait_for_idle_workers(bench.options.workers as usize)
        .await?;
    let submitted = bench.submit(bench.spec("worker-kill")).await?;
    let at_fault = bench
        .wait_until(&submitted.id, "mid-epoch 2", bench.in_epoch_2())
        .await?;
    // Rank 1: a rank that holds state like every other, but not rank 0, which writes checkpoints.
    let victim = at_fault
        .job
        .workers
        .iter()
        .find(|worker| worker.rank == 1)
        .map(|worker| worker.worker_id.clone())
        .context("no rank 1 in the job's progress")?;
    let victim_process = bench
        .process_of(&victim)
        .with_context(|| format!("no process for worker {victim}"))?;
    let kill_unix_ms = unix_ms_now();
    bench.cluster.kill_worker(victim_process).await?;

    let job = bench.finish(&submitted.id).await?;
    let recovery = job
        .recoveries
        .iter()
        .find(|recovery| recovery.fault)
        .cloned()
        .with_context(|| {
            format!(
                "the job succeeded without a fault recovery: {:?}",
                job.recoveries
            )
        })?;
    anyhow::ensure!(
        recovery.resumed_unix_ms > 0,
        "the recovery never recorded a resumed step: {recovery:?}"
    );
    Ok(WorkerKill {
        step_at_kill: at_fault.job.global_step,
        steps_per_epoch: at_fault.job.steps_per_epoch,
        victim,
        detection_s: seconds(recovery.detected_unix_ms - kill_unix_ms),
        formed_s: seconds(recovery.formed_unix_ms - kill_unix_ms),
        kill_to_next_step_s: seconds(recovery.resumed_unix_ms - kill_unix_ms),
        recoveries: job.recoveries.len(),
        recovery,
        job,
    })
}

async fn coordinator_kill(bench: &mut Bench) -> Result<CoordinatorKill> {
    // The killed worker's process is gone: start another so the job gets all its workers again.
    bench.cluster.add_worker()?;
    bench
        .wait_for_idle_workers(bench.options.workers as usize)
        .await?;
    let submitted = bench.submit(bench.spec("coordinator-kill")).await?;
    // The training rate is measured from a few steps into epoch 2, after epoch 1's evaluation.
    let epoch_2_started = bench
        .wait_until(&submitted.id, "epoch 2", |job| {
            job.phase() == JobPhase::Training
                && job.steps_per_epoch > 0
                && job.global_step >= job.steps_per_epoch + 3
        })
        .await?;
    let at_kill = bench
        .wait_until(&submitted.id, "mid-epoch 2", bench.in_epoch_2())
        .await?;
    let rate_before = (at_kill.job.global_step - epoch_2_started.job.global_step) as f64
        / (at_kill.at - epoch_2_started.at).as_secs_f64();
    // Measured from the last answer before the kill: the steps it reports were trained by then.
    let last_seen: Observation = at_kill;
    bench.cluster.kill_coordinator().await?;
    bench.client = None;
    tokio::time::sleep(bench.options.coordinator_down).await;
    bench.cluster.restart_coordinator()?;
    let down_s = last_seen.at.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_answer: Option<Observation> = None;
    let fresh = loop {
        match bench.observe(&submitted.id).await {
            Ok(observation) => {
                if first_answer.is_none() {
                    first_answer = Some(observation.clone());
                }
                if observation.job.global_step > last_seen.job.global_step
                    || plankton_coordinator::state::is_terminal(observation.job.phase())
                {
                    break observation;
                }
            }
            Err(_) if Instant::now() < deadline => {}
            Err(error) => {
                return Err(error).context(format!(
                    "the restarted coordinator did not answer within 60 s\n{}",
                    bench.cluster.logs()
                ));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no progress past global step {} within 60 s of the coordinator's restart\n{}",
                last_seen.job.global_step,
                bench.cluster.logs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let first_answer = first_answer.expect("set with the first answer");
    let job = bench.finish(&submitted.id).await?;
    Ok(CoordinatorKill {
        step_at_kill: last_seen.job.global_step,
        rate_before,
        down_s,
        first_answer_s: (first_answer.at - last_seen.at).as_secs_f64(),
        fresh_step: fresh.job.global_step,
        fresh_after_s: seconds(fresh.unix_ms - last_seen.unix_ms),
        job,
    })
}

async fn anchor(bench: &mut Bench) -> Result<Anchor> {
    bench
        .wait_for_idle_workers(bench.options.workers as usize)
        .await?;
    // Checkpoints only at epoch ends, as TorchElastic/Ray users typically save them.
    let spec = JobSpec {
        checkpoint_every_steps: 0,
        ..bench.spec("anchor")
    };
    let submitted = bench.submit(spec).await?;
    let in_epoch_2 = bench.in_epoch_2();
    bench
        .wait_until(
            &submitted.id,
            "mid-epoch 2 with the epoch 1 checkpoint",
            |job| {
                in_epoch_2(job)
                    && job
                        .checkpoints
                        .iter()
                        .any(|checkpoint| checkpoint.epoch >= 1)
            },
        )
        .await?;
    let cancel_unix_ms = unix_ms_now();
    let cancelled = bench
        .client()
        .await?
        .cancel_job(CancelJobRequest {
            job_id: submitted.id.clone(),
        })
        .await?
        .into_inner();
    let checkpoint_step = cancelled
        .checkpoints
        .last()
        .map(|checkpoint| checkpoint.global_step)
        .context("no checkpoint at cancel")?;
    bench
        .client()
        .await?
        .resume_job(ResumeJobRequest {
            job_id: submitted.id.clone(),
        })
        .await?;
    let job = bench.finish(&submitted.id).await?;
    let recovery = job
        .recoveries
        .last()
        .cloned()
        .context("the resume left no recovery record")?;
    anyhow::ensure!(
        recovery.resumed_unix_ms > 0,
        "the resume never recorded a resumed step: {recovery:?}"
    );
    Ok(Anchor {
        step_at_cancel: cancelled.global_step,
        checkpoint_step,
        steps_lost: cancelled
            .global_step
            .saturating_sub(recovery.resumed_from_step),
        cancel_to_next_step_s: seconds(recovery.resumed_unix_ms - cancel_unix_ms),
        recovery,
        job,
    })
}

fn print_table(options: &Options, measurements: &Measurements) {
    let Measurements {
        undisturbed_first,
        undisturbed_last,
        worker_kill,
        coordinator_kill,
        anchor,
    } = measurements;
    let timeouts = test_timeouts();
    let recovery_goal_s = (timeouts.worker_timeout + Duration::from_secs(5)).as_secs_f64();
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    let our_steps_lost = worker_kill.recovery.steps_lost;
    let work_ratio = if our_steps_lost == 0 {
        format!("{} vs 0 (ours lost nothing)", anchor.steps_lost)
    } else {
        format!("{:.0}x", anchor.steps_lost as f64 / our_steps_lost as f64)
    };
    let undisturbed_wall = measurements.undisturbed_wall_seconds();
    let wall_overhead = wall_seconds(&worker_kill.job) - undisturbed_wall;
    let anchor_wall_overhead = wall_seconds(&anchor.job) - undisturbed_wall;
    let coordinator_clean =
        coordinator_kill.job.generation == 0 && coordinator_kill.job.recoveries.is_empty();

    println!(
        "\n## Recovery ({} x {} processes, {} epochs of {} steps, batch {} per worker; worker timeout {:?}, \
         heartbeat {:?}, replacement wait {:?})\n",
        options.workers,
        options.model,
        options.epochs,
        undisturbed_first.steps_per_epoch,
        options.batch,
        timeouts.worker_timeout,
        timeouts.heartbeat_interval,
        timeouts.replacement_wait
    );
    println!("| figure | ours | anchor / reference | goal |");
    println!("|---|---|---|---|");
    println!(
        "| worker kill -9: detection (kill -> detected) | {:.2} s | | |",
        worker_kill.detection_s
    );
    println!(
        "| worker kill -9: recovery (kill -> next completed step) | {:.2} s | restart from epoch checkpoint: \
         cancel -> next step {:.2} s (no detection) | < worker timeout + 5 s = {recovery_goal_s:.0} s: {} |",
        worker_kill.kill_to_next_step_s,
        anchor.cancel_to_next_step_s,
        verdict(worker_kill.kill_to_next_step_s < recovery_goal_s)
    );
    println!(
        "| worker kill -9: steps lost | {} | {} (step {} -> checkpoint {}) | <= 1: {} |",
        our_steps_lost,
        anchor.steps_lost,
        anchor.step_at_cancel,
        anchor.recovery.resumed_from_step,
        verdict(our_steps_lost <= 1)
    );
    println!("| work lost, anchor / ours | | **{work_ratio}** | |");
    println!(
        "| job wall time vs undisturbed {undisturbed_wall:.1} s (first {:.1} s, last {:.1} s) | worker killed \
         {:.1} s ({:+.1} s; {} workers after the kill) | cancelled + resumed {:.1} s ({:+.1} s) | |",
        wall_seconds(undisturbed_first),
        wall_seconds(undisturbed_last),
        wall_seconds(&worker_kill.job),
        wall_overhead,
        worker_kill.recovery.world_size,
        wall_seconds(&anchor.job),
        anchor_wall_overhead
    );
    println!(
        "| final macro-F1, worker killed vs undisturbed | {:.3} | undisturbed {:.3}; anchor (resumed) {:.3} | |",
        final_macro_f1(&worker_kill.job),
        final_macro_f1(undisturbed_first),
        final_macro_f1(&anchor.job)
    );
    let same_weights = |job: &Job| {
        if job.weights_digest.is_empty() {
            "no digest"
        } else if job.weights_digest == undisturbed_first.weights_digest {
            "identical"
        } else {
            "different"
        }
    };
    println!(
        "| final weights vs the undisturbed run's (digest) | worker killed: {}; coordinator killed: {} | \
         cancelled + resumed: {} | |",
        same_weights(&worker_kill.job),
        same_weights(&coordinator_kill.job),
        same_weights(&anchor.job)
    );
    println!(
        "| coordinator kill -9, down {:.1} s: steps trained across the outage | {} in {:.1} s (before: {:.2} \
         steps/s) | | > 0: {} |",
        coordinator_kill.down_s,
        coordinator_kill.steps_while_down(),
        coordinator_kill.fresh_after_s,
        coordinator_kill.rate_before,
        verdict(coordinator_kill.steps_while_down() > 0)
    );
    println!(
        "| coordinator restart: implied stall (+-0.5 s); generation, recoveries at the end | {:.2} s; {}, {} | \
         | zero stall (generation 0, no recovery): {} |",
        coordinator_kill.implied_stall_s(),
        coordinator_kill.job.generation,
        coordinator_kill.job.recoveries.len(),
        verdict(coordinator_clean)
    );
}

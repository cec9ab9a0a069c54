//! The pool of registered workers: who is alive, who is idle, and the assignment each one is waiting for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::info;

use plankton_proto::v1::ShardAssignment;

/// A registered worker as the coordinator sees it.
pub(crate) struct WorkerEntry {
    pub name: String,
    pub peer_address: String,
    pub threads: u32,
    pub has_gpu: bool,
    pub last_seen: Instant,
    pub last_seen_unix_ms: i64,
    /// The job the worker holds. Set when it is assigned; cleared only when the worker says it is idle.
    pub current_job: Option<String>,
    pub pending_assignment: Option<ShardAssignment>,
    pub assignment_ready: Arc<Notify>,
    /// When the worker last took an assignment (its idle heartbeats right after are in flight, not news).
    pub assignment_taken: Option<Instant>,
    /// Generation from the worker's last heartbeat.
    pub generation: u32,
    pub rank: Option<u32>,
    /// Secret of this registration (see [`WorkerPool::worker_of_session`]).
    session_token: String,
    /// Every (generation, rank) the worker was given in its current job: its reports must name one of them.
    memberships: Vec<Membership>,
}

/// A place a worker was given in a job's ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Membership {
    pub job_id: String,
    pub generation: u32,
    pub rank: u32,
}

impl WorkerEntry {
    pub fn new(name: &str, peer_address: &str, threads: u32, has_gpu: bool) -> Self {
        WorkerEntry {
            name: name.to_string(),
            peer_address: peer_address.to_string(),
            threads,
            has_gpu,
            last_seen: Instant::now(),
            last_seen_unix_ms: crate::state::unix_ms_now(),
            current_job: None,
            pending_assignment: None,
            assignment_ready: Arc::new(Notify::new()),
            assignment_taken: None,
            generation: 0,
            rank: None,
            session_token: plankton_security::generate_token(),
            memberships: Vec::new(),
        }
    }

    pub fn session_token(&self) -> &str {
        &self.session_token
    }

    /// Records a place in a job's ring; places in other jobs are forgotten.
    pub fn add_membership(&mut self, job_id: &str, generation: u32, rank: u32) {
        self.memberships
            .retain(|membership| membership.job_id == job_id);
        let membership = Membership {
            job_id: job_id.to_string(),
            generation,
            rank,
        };
        if !self.memberships.contains(&membership) {
            self.memberships.push(membership);
        }
    }

    /// Whether the worker was given `rank` in `generation` of `job_id`.
    pub fn holds(&self, job_id: &str, generation: u32, rank: u32) -> bool {
        self.memberships.iter().any(|membership| {
            membership.job_id == job_id
                && membership.generation == generation
                && membership.rank == rank
        })
    }

    /// Whether the worker was given any place in `job_id`.
    pub fn holds_job(&self, job_id: &str) -> bool {
        self.memberships
            .iter()
            .any(|membership| membership.job_id == job_id)
    }

    pub fn touch(&mut self) {
        self.last_seen = Instant::now();
        self.last_seen_unix_ms = crate::state::unix_ms_now();
    }

    pub fn is_alive(&self, worker_timeout: Duration) -> bool {
        self.last_seen.elapsed() < worker_timeout
    }

    pub fn is_idle(&self, worker_timeout: Duration) -> bool {
        self.current_job.is_none()
            && self.pending_assignment.is_none()
            && self.is_alive(worker_timeout)
    }

    /// Hands `assignment` to the worker's next `NextAssignment` poll.
    pub fn assign(&mut self, assignment: ShardAssignment) {
        self.current_job = Some(assignment.job_id.clone());
        self.rank = Some(assignment.rank);
        self.generation = assignment.generation;
        self.add_membership(&assignment.job_id, assignment.generation, assignment.rank);
        self.pending_assignment = Some(assignment);
        self.assignment_ready.notify_one();
    }

    /// Applies a heartbeat's claim of what the worker runs: an idle worker is idle unless an assignment is on
    /// its way to it.
    pub fn observe_heartbeat(&mut self, job_id: &str, generation: u32, grace: Duration) {
        self.touch();
        if job_id.is_empty() {
            let assignment_in_flight = self.pending_assignment.is_some()
                || self
                    .assignment_taken
                    .is_some_and(|taken| taken.elapsed() < grace);
            if !assignment_in_flight && self.current_job.is_some() {
                info!(worker = self.name, "worker reports it is idle");
                self.current_job = None;
                self.rank = None;
            }
        } else {
            self.generation = generation;
        }
    }
}

/// Registered workers by id.
#[derive(Default)]
pub(crate) struct WorkerPool {
    pub workers: HashMap<String, WorkerEntry>,
}

impl WorkerPool {
    /// Registers a worker; `previous_worker_id` is honoured when free (a worker re-registering after a
    /// coordinator restart keeps its identity, so running jobs recognise it).
    pub fn register(
        &mut self,
        name: &str,
        peer_address: &str,
        threads: u32,
        has_gpu: bool,
        previous_worker_id: &str,
    ) -> String {
        let worker_id = if !previous_worker_id.is_empty()
            && is_valid_worker_id(previous_worker_id)
            && !self.workers.contains_key(previous_worker_id)
        {
            previous_worker_id.to_string()
        } else {
            loop {
                let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
                let candidate = format!("{}-{suffix}", sanitize(name));
                if !self.workers.contains_key(&candidate) {
                    break candidate;
                }
            }
        };
        self.workers.insert(
            worker_id.clone(),
            WorkerEntry::new(name, peer_address, threads, has_gpu),
        );
        info!(
            worker_id,
            peer_address, threads, has_gpu, "worker registered"
        );
        worker_id
    }

    /// The worker whose registration `session_token` belongs to. Every registration is compared, in constant
    /// time, so the answer's timing says nothing about the token.
    pub fn worker_of_session(&self, session_token: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for (worker_id, worker) in &self.workers {
            let equal = worker.session_token.len() == session_token.len()
                && bool::from(
                    worker
                        .session_token
                        .as_bytes()
                        .ct_eq(session_token.as_bytes()),
                );
            if equal {
                found = Some(worker_id.clone());
            }
        }
        found
    }

    /// Idle live workers, sorted by id.
    pub fn idle(&self, worker_timeout: Duration) -> Vec<String> {
        let mut idle: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, worker)| worker.is_idle(worker_timeout))
            .map(|(worker_id, _)| worker_id.clone())
            .collect();
        idle.sort();
        idle
    }
}

fn is_valid_worker_id(worker_id: &str) -> bool {
    worker_id.len() <= 64
        && worker_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed: String = cleaned.chars().take(40).collect();
    if trimmed.is_empty() {
        "worker".into()
    } else {
        trimmed
    }
}

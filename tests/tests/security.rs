//! A secure cluster as an attacker and as its users meet it: every RPC of every service against every role,
//! forged worker reports, a NaN gradient, grpcurl over TLS, plaintext refused.

use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

use plankton_proto::v1::worker_control_client::WorkerControlClient;
use plankton_proto::v1::{DoneReport, EpochReport, JobPhase, JobSpec, RegisterRequest};
use plankton_security::{Role, rule_for};
use plankton_tests::access::test_server_security;
use plankton_tests::{Access, TestCluster, synth_dataset, test_credentials};
use plankton_worker::{FaultPoint, InjectedFault};

/// Sends and receives protobuf bytes as they are: one empty message calls any method with its default request.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        destination: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        destination.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        source: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(source.copy_to_bytes(source.remaining()).to_vec()))
    }
}

/// Calls `path` with a default request as `caller`; the status code of the answer (OK for a stream that is
/// still open after a second).
async fn call(caller: &Access, path: &str) -> anyhow::Result<Code> {
    let mut grpc = tonic::client::Grpc::new(caller.channel().await?);
    grpc.ready().await?;
    let request = tonic::Request::new(tokio_stream::once(Vec::new()));
    let path = PathAndQuery::from_str(path)?;
    Ok(match grpc.streaming(request, path, RawCodec).await {
        Err(status) => status.code(),
        Ok(response) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Ok(Err(status)) => status.code(),
                Ok(Ok(_)) | Err(_) => Code::Ok,
            }
        }
    })
}

/// Every method of every service in the proto descriptor sets, as `/package.Service/Method`.
fn every_method() -> Vec<(String, String)> {
    let mut methods = Vec::new();
    for descriptor_set in [
        plankton_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let files = prost_types::FileDescriptorSet::decode(descriptor_set).expect("descriptor set");
        for file in files.file {
            for service in &file.service {
                let service_name = format!("{}.{}", file.package(), service.name());
                if plankton_security::policy::UNSERVED_SERVICES.contains(&service_name.as_str()) {
                    continue;
                }
                for method in &service.method {
                    methods.push((
                        service_name.clone(),
                        format!("/{service_name}/{}", method.name()),
                    ));
                }
            }
        }
    }
    for reflection in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
        methods.push((
            format!("{reflection}.ServerReflection"),
            format!("/{reflection}.ServerReflection/ServerReflectionInfo"),
        ));
    }
    methods
}

fn is_auth_failure(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_of_every_service_answers_each_role_by_the_policy() -> anyhow::Result<()> {
    let cluster = TestCluster::start(0).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let inference_url = format!("https://{}", listener.local_addr()?);
    let config = plankton_serve::ServeConfig {
        listen_address: listener.local_addr()?,
        security: test_server_security(),
        coordinator_url: cluster.coordinator_url.clone(),
        coordinator_security: test_credentials().client_security(Role::Viewer),
        model: "no-such-model".into(),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let inference = tokio::spawn(plankton_serve::serve(config, listener, shutdown.clone()));

    let mut checked = 0;
    let mut failures = Vec::new();
    for (service, path) in every_method() {
        let rule = rule_for(&path).unwrap_or_else(|| {
            panic!("{path} has no access rule: add one to plankton_security::policy")
        });
        let servers: &[&str] = match service.as_str() {
            "plankton.v1.Inference" | "inference.GRPCInferenceService" => &[inference_url.as_str()],
            "plankton.v1.JobService"
            | "plankton.v1.ModelRegistry"
            | "plankton.v1.WorkerControl" => &[cluster.coordinator_url.as_str()],
            // Health and reflection: on both servers.
            _ => &[cluster.coordinator_url.as_str(), inference_url.as_str()],
        };
        for server in servers {
            let anonymous = Access::as_role(server, Role::Admin).with_token(None);
            let forged = anonymous.with_token(Some("not-a-token".into()));
            for (who, caller, expected_refusal) in [
                ("no token", &anonymous, Code::Unauthenticated),
                ("an unknown token", &forged, Code::Unauthenticated),
            ] {
                let code = call(caller, &path).await?;
                let ok = if rule.public {
                    !is_auth_failure(code)
                } else {
                    code == expected_refusal
                };
                if !ok {
                    failures.push(format!("{path} on {server} with {who}: {code:?}"));
                }
                checked += 1;
            }
            for role in Role::ALL {
                let code = call(&Access::as_role(server, role), &path).await?;
                let allowed = rule.public || rule.allows(role);
                let ok = if allowed {
                    !is_auth_failure(code)
                } else {
                    code == Code::PermissionDenied
                };
                if !ok {
                    failures.push(format!(
                        "{path} on {server} as {}: {code:?} (allowed: {allowed})",
                        role.as_str()
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} calls broke the policy:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Spot checks that do not read the policy table: what each role must never do.
    let coordinator = &cluster.coordinator_url;
    for (role, path) in [
        (Role::Viewer, "/plankton.v1.JobService/SubmitJob"),
        (Role::Worker, "/plankton.v1.JobService/CancelJob"),
        (Role::Client, "/plankton.v1.JobService/ListJobs"),
        (Role::Operator, "/plankton.v1.WorkerControl/ReportDone"),
        (Role::Viewer, "/plankton.v1.ModelRegistry/PromoteModel"),
    ] {
        assert_eq!(
            call(&Access::as_role(coordinator, role), path).await?,
            Code::PermissionDenied,
            "{path} as {role:?}"
        );
    }
    assert_eq!(
        call(
            &Access::as_role(&inference_url, Role::Operator),
            "/plankton.v1.Inference/Predict"
        )
        .await?,
        Code::PermissionDenied
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), inference).await???;
    cluster.shutdown().await
}

/// `request` carrying the session token of a worker registration.
fn with_session<T>(message: T, session_token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        plankton_proto::WORKER_SESSION_METADATA,
        session_token.parse().expect("ASCII token"),
    );
    request
}

fn small_job(dataset_url: &str, world_size: u32) -> JobSpec {
    JobSpec {
        dataset_url: dataset_url.into(),
        world_size,
        model: "lenet".into(),
        epochs: 1,
        batch_size: 16,
        threads_per_worker: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_reports_and_registrations_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 400, 29, false).await?;
    let cluster = TestCluster::start(1).await?;

    // Callers without the worker role cannot register, so they cannot take a shard.
    let register = RegisterRequest {
        worker_name: "rogue".into(),
        peer_address: "203.0.113.7:1".into(),
        threads: 1,
        ..Default::default()
    };
    for role in [Role::Operator, Role::Viewer, Role::Client] {
        let channel = Access::as_role(&cluster.coordinator_url, role)
            .channel()
            .await?;
        let refused = WorkerControlClient::new(channel)
            .register(register.clone())
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{role:?}: {refused}"
        );
    }

    let job = cluster.submit(small_job(&dataset_url, 1)).await?;
    // Once the real worker holds rank 0, a second holder of the worker role registers and forges its reports.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let running = loop {
        let seen = cluster.get(&job.id).await?;
        if matches!(seen.phase(), JobPhase::Loading | JobPhase::Training)
            && !seen.workers.is_empty()
        {
            break seen;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "job never started: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let real_worker = running.workers[0].worker_id.clone();
    let channel = Access::as_role(&cluster.coordinator_url, Role::Worker)
        .channel()
        .await?;
    let mut rogue = WorkerControlClient::new(channel);
    let registration = rogue.register(register).await?.into_inner();
    let session = registration.session_token;
    let forged_done = DoneReport {
        job_id: job.id.clone(),
        rank: 0,
        ok: false,
        error: "forged failure".into(),
        model_url: "file:///tmp/evil/model.safetensors".into(),
        generation: 0,
        worker_id: real_worker.clone(),
        ..Default::default()
    };
    // Naming the real worker, with the rogue's own session.
    let refused = rogue
        .report_done(with_session(forged_done.clone(), &session))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    // Naming itself, for a rank it does not hold.
    let as_itself = DoneReport {
        worker_id: registration.worker_id.clone(),
        ..forged_done.clone()
    };
    let refused = rogue
        .report_done(with_session(as_itself, &session))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let forged_epoch = EpochReport {
        job_id: job.id.clone(),
        rank: 0,
        epoch: 1,
        num_classes: 2,
        confusion: vec![100, 0, 0, 100],
        test_count: 200,
        worker_id: registration.worker_id.clone(),
        ..Default::default()
    };
    let refused = rogue
        .report_epoch(with_session(forged_epoch, &session))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    // A session token that no registration issued.
    let refused = rogue
        .report_done(with_session(forged_done, "0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused}");

    let finished = cluster
        .wait_finished(&job.id, Duration::from_secs(300))
        .await?;
    assert_eq!(
        finished.phase(),
        JobPhase::Succeeded,
        "{}",
        finished.message
    );
    assert_eq!(finished.epochs.len(), 1);
    assert!(
        finished.epochs[0].confusion.len() > 4,
        "the real evaluation, not the forged 2x2 one"
    );
    assert!(
        finished.model_url.starts_with(&dataset_url) && !finished.model_url.contains("evil"),
        "{}",
        finished.model_url
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nan_gradient_on_one_rank_fails_the_job_naming_the_rank() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/security-nan";
    synth_dataset(dataset_url, 400, 31, false).await?;
    let fault = InjectedFault {
        rank: 1,
        global_step: 2,
        point: FaultPoint::NonFiniteLoss,
    };
    let cluster = TestCluster::start_with(2, None, |_, config| config.fault = Some(fault)).await?;
    let job = cluster.submit(small_job(dataset_url, 2)).await?;
    let finished = cluster
        .wait_finished(&job.id, Duration::from_secs(300))
        .await?;
    assert_eq!(finished.phase(), JobPhase::Failed, "{}", finished.message);
    assert!(
        finished.message.contains("step 2")
            && finished.message.contains("rank(s) [1]")
            && finished.message.contains("not finite"),
        "{}",
        finished.message
    );
    assert!(
        finished.recoveries.is_empty(),
        "not a ring fault: {:?}",
        finished.recoveries
    );
    assert!(
        finished.model_url.is_empty(),
        "no model from non-finite weights"
    );
    cluster.shutdown().await
}

/// grpcurl 1.8.6 from the project's tools (scripts/setup.sh installs it).
fn grpcurl() -> std::path::PathBuf {
    plankton_tests::project_tool(".venv-tools", "grpcurl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_lists_and_calls_over_tls_with_a_token_and_plaintext_is_refused()
-> anyhow::Result<()> {
    let cluster = TestCluster::start(0).await?;
    let credentials = test_credentials();
    let address = cluster
        .coordinator_url
        .trim_start_matches("https://")
        .to_string();
    let run = |arguments: Vec<String>| {
        let output = std::process::Command::new(grpcurl())
            .args(&arguments)
            .output()
            .expect("grpcurl runs");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let ca = credentials.ca_cert.display().to_string();
    let bearer = |role: Role| format!("authorization: Bearer {}", credentials.token(role));
    let (listed, services) = run(vec![
        "-cacert".into(),
        ca.clone(),
        "-H".into(),
        bearer(Role::Viewer),
        address.clone(),
        "list".into(),
    ]);
    assert!(
        listed
            && services.contains("plankton.v1.JobService")
            && services.contains("plankton.v1.WorkerControl"),
        "{services}"
    );
    for service in services.lines().filter(|line| !line.trim().is_empty()) {
        let (described, description) = run(vec![
            "-cacert".into(),
            ca.clone(),
            "-H".into(),
            bearer(Role::Viewer),
            address.clone(),
            "describe".into(),
            service.trim().to_string(),
        ]);
        assert!(
            described && description.contains("service"),
            "describe {service}: {description}"
        );
    }
    let (called, jobs) = run(vec![
        "-cacert".into(),
        ca.clone(),
        "-H".into(),
        bearer(Role::Viewer),
        "-d".into(),
        "{}".into(),
        address.clone(),
        "plankton.v1.JobService/ListJobs".into(),
    ]);
    assert!(called, "{jobs}");
    let (submitted, denied) = run(vec![
        "-cacert".into(),
        ca.clone(),
        "-H".into(),
        bearer(Role::Viewer),
        "-d".into(),
        "{}".into(),
        address.clone(),
        "plankton.v1.JobService/SubmitJob".into(),
    ]);
    assert!(
        !submitted && denied.contains("PermissionDenied"),
        "{denied}"
    );
    let (anonymous, unauthenticated) =
        run(vec!["-cacert".into(), ca, address.clone(), "list".into()]);
    assert!(
        !anonymous && unauthenticated.contains("Unauthenticated"),
        "{unauthenticated}"
    );
    let (plaintext, refused) = run(vec![
        "-plaintext".into(),
        "-H".into(),
        bearer(Role::Viewer),
        address.clone(),
        "list".into(),
    ]);
    assert!(
        !plaintext,
        "a plaintext client must be refused by a TLS server: {refused}"
    );

    // A plaintext tonic client too.
    let plaintext_client = Access::as_role(&format!("http://{address}"), Role::Viewer);
    let code = call(&plaintext_client, "/plankton.v1.JobService/ListJobs").await;
    assert!(!matches!(code, Ok(Code::Ok)), "{code:?}");
    cluster.shutdown().await
}

/// Writes one length-prefixed protobuf message of the ring handshake.
async fn write_frame(
    stream: &mut tokio::net::TcpStream,
    message: &impl Message,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let body = message.encode_to_vec();
    stream.write_all(&(body.len() as u32).to_le_bytes()).await?;
    stream.write_all(&body).await
}

/// Pretends to be rank `claimed_rank` of `job_id` at a worker's ring port, with a made-up proof; true when the
/// worker closed the connection (refused it).
async fn forge_ring_hello(address: &str, job_id: &str, claimed_rank: u32) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let hello = plankton_proto::v1::PeerHello {
        protocol_version: 3,
        job_id: job_id.into(),
        rank: claimed_rank,
        world_size: 2,
        generation: 0,
        nonce: vec![7; 32],
        authenticated: true,
    };
    if write_frame(&mut stream, &hello).await.is_err() {
        return true;
    }
    // The worker answers with its ack (and its own proof) once its ring formation reads the hello; the forger,
    // without the key, answers with a made-up proof.
    let mut length = [0u8; 4];
    if stream.read_exact(&mut length).await.is_err() {
        return true;
    }
    let mut body = vec![0u8; u32::from_le_bytes(length) as usize];
    if stream.read_exact(&mut body).await.is_err() {
        return true;
    }
    let ack = plankton_proto::v1::PeerHelloAck::decode(body.as_slice()).expect("an ack");
    if !ack.accepted {
        return true;
    }
    let forged = plankton_proto::v1::PeerProof {
        proof: vec![0xAB; 32],
    };
    let _ = write_frame(&mut stream, &forged).await;
    // The worker must end the connection.
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    closed.unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rogue_and_silent_ring_peers_are_refused_and_the_real_ring_trains() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/security-rogue-ring";
    synth_dataset(dataset_url, 600, 37, false).await?;
    let cluster = TestCluster::start(2).await?;
    let workers = cluster
        .client()
        .await?
        .list_workers(plankton_proto::v1::ListWorkersRequest {})
        .await?
        .into_inner()
        .workers;
    let addresses: Vec<String> = workers
        .iter()
        .map(|worker| worker.peer_address.clone())
        .collect();
    // Silent connections, opened before the job and held through it.
    let mut silent = Vec::new();
    for address in &addresses {
        silent.push(tokio::net::TcpStream::connect(address).await?);
    }
    let job = cluster.submit(small_job(dataset_url, 2)).await?;
    // Forged hellos for every rank at every worker, sent while the workers load: the ring's formation reads
    // them (with the silent ones) and must refuse every one without waiting on them.
    let mut forgeries = Vec::new();
    for address in &addresses {
        for claimed_rank in 0..2 {
            let (address, job_id) = (address.clone(), job.id.clone());
            forgeries.push(tokio::spawn(async move {
                forge_ring_hello(&address, &job_id, claimed_rank).await
            }));
        }
    }
    let finished = cluster
        .wait_finished(&job.id, Duration::from_secs(300))
        .await?;
    assert_eq!(
        finished.phase(),
        JobPhase::Succeeded,
        "{}",
        finished.message
    );
    assert_eq!(
        finished.generation, 0,
        "the real ring formed once: {:?}",
        finished.recoveries
    );
    let mut refused = 0;
    for forgery in forgeries {
        if forgery.is_finished() && forgery.await? {
            refused += 1;
        }
    }
    assert!(
        refused >= 1,
        "the forged hellos reached the ring's formation and were refused"
    );
    drop(silent);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_trains_over_a_tls_ring() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/security-tls-ring";
    synth_dataset(dataset_url, 400, 41, false).await?;
    let cluster =
        TestCluster::start_configured(2, None, |config| config.ring_tls = true, |_, _| {}).await?;
    let finished = cluster.run_job(small_job(dataset_url, 2)).await?;
    assert_eq!(finished.generation, 0);
    assert!(
        !finished.weights_digest.is_empty(),
        "both ranks ended with the same weights"
    );
    cluster.shutdown().await
}

//! The deployment in deploy/ checked offline against the Kubernetes API schemas and the cluster's own
//! binaries: every kustomization renders and validates, every pod follows the restricted Pod Security profile
//! with resources and probes, GPUs are asked for the right way, every flag and PLANKTON_* variable the
//! manifests use is one the binaries know (`--help`), the Containerfile ships what the roles need, every role
//! serves /metrics on a port the ServiceMonitor scrapes, and the Grafana dashboard queries only the series the
//! metric sources declare (read from the Rust files, nothing run).
//! Needs kubectl (built-in kustomize) and .venv-tools (scripts/setup.sh: kubernetes-validate, PyYAML).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The Kubernetes version the manifests are validated against (the oldest we support).
const KUBERNETES_VERSION: &str = "1.31.0";
/// Kinds without a schema in kubernetes-validate (custom resources of the optional components).
const CUSTOM_RESOURCE_KINDS: [&str; 3] = ["ServiceMonitor", "Certificate", "Issuer"];
/// The binaries the image ships and the manifests run.
const BINARIES: [&str; 4] = [
    "plankton-coordinator",
    "plankton-worker",
    "plankton-serve",
    "planktonctl",
];
/// PLANKTON_* variables read outside clap (so not in `--help`), each with the file that reads it.
const VARIABLES_OUTSIDE_HELP: [(&str, &str); 1] = [("PLANKTON_LOG_FORMAT", "common/src/lib.rs")];
/// The worker's ring port and the plaintext ports only the monitoring namespace may reach.
const RING_PORT: i64 = 7071;
const MONITORING_PORTS: [i64; 2] = [8080, 9090];
const GPU_RESOURCE: &str = "nvidia.com/gpu";

fn workspace_root() -> PathBuf {
    plankton_tests::workspace_root()
}

fn read_workspace_file(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// A tool of .venv-tools (kubernetes-validate, PyYAML's python); the test fails (never skips) when missing.
fn venv_tool(name: &str) -> PathBuf {
    plankton_tests::project_tool(".venv-tools", name)
}

/// kubectl from the project's .tools/bin, else from PATH.
fn kubectl() -> PathBuf {
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(workspace_root().join(".tools/bin"))
        .chain(std::env::split_paths(&search_path))
        .map(|folder| folder.join("kubectl"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "kubectl is not on PATH: install kubectl 1.27+ (its built-in kustomize renders deploy/k8s), \
                 then run scripts/setup.sh for the other tools of these checks"
            )
        })
}

/// Runs a command with `stdin`, returning (success, stdout, stderr).
fn run_with_input(command: &mut Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {description}: {error}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("running {description}: {error}"));
    writer
        .join()
        .expect("stdin writer thread")
        .unwrap_or_else(|error| panic!("writing to {description}: {error}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One rendered kustomization: its YAML and its objects (as JSON, converted by PyYAML).
struct Render {
    name: String,
    yaml: String,
    objects: Vec<Value>,
}

fn render(name: &str, directory: &Path) -> Render {
    let (rendered, yaml, stderr) =
        run_with_input(Command::new(kubectl()).arg("kustomize").arg(directory), "");
    assert!(rendered, "`kubectl kustomize {name}` failed:\n{stderr}");
    let to_json = "import json, sys, yaml\n\
                   json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let (converted, json, stderr) = run_with_input(
        Command::new(venv_tool("python")).args(["-c", to_json]),
        &yaml,
    );
    assert!(
        converted,
        "converting the render of {name} to JSON failed:\n{stderr}"
    );
    let objects: Vec<Value> = serde_json::from_str(&json).expect("PyYAML's JSON");
    assert!(!objects.is_empty(), "{name} renders no object");
    Render {
        name: name.to_owned(),
        yaml,
        objects,
    }
}

/// Every kustomization: the base, both overlays, the training Job, and the CPU overlay with both optional
/// components (composed in a scratch kustomization under target/, since kustomize refuses absolute paths).
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let root = workspace_root();
        let mut renders: Vec<Render> = [
            "deploy/k8s/base",
            "deploy/k8s/overlays/cpu",
            "deploy/k8s/overlays/gpu",
            "deploy/k8s/jobs",
        ]
        .iter()
        .map(|relative| render(relative, &root.join(relative)))
        .collect();
        let scratch_parent = root.join("target");
        std::fs::create_dir_all(&scratch_parent).expect("target/");
        let scratch = tempfile::Builder::new()
            .prefix("deploy-components-")
            .tempdir_in(&scratch_parent)
            .expect("scratch kustomization folder");
        std::fs::write(
            scratch.path().join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - ../../deploy/k8s/overlays/cpu\n\
             components:\n  - ../../deploy/k8s/components/servicemonitor\n  - ../../deploy/k8s/components/cert-manager\n",
        )
        .expect("writing the scratch kustomization");
        renders.push(render(
            "deploy/k8s/overlays/cpu + components/servicemonitor + components/cert-manager",
            scratch.path(),
        ));
        renders
    })
}

fn render_named(name: &str) -> &'static Render {
    renders()
        .iter()
        .find(|render| render.name == name)
        .unwrap_or_else(|| panic!("no render named {name}"))
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("?")
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("?")
}

fn object_label(object: &Value) -> String {
    format!("{}/{}", kind(object), name(object))
}

/// The pod spec of a workload, and whether it runs for good (probes required) or to completion.
fn pod_spec(object: &Value) -> Option<(&Value, bool)> {
    match kind(object) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            Some((&object["spec"]["template"]["spec"], true))
        }
        "Job" => Some((&object["spec"]["template"]["spec"], false)),
        "CronJob" => Some((
            &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            false,
        )),
        "Pod" => Some((&object["spec"], true)),
        _ => None,
    }
}

fn pod_labels(object: &Value) -> &Value {
    match kind(object) {
        "Pod" => &object["metadata"]["labels"],
        "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
        _ => &object["spec"]["template"]["metadata"]["labels"],
    }
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// (is an init container, container) of a pod spec.
fn containers(spec: &Value) -> impl Iterator<Item = (bool, &Value)> {
    array(&spec["initContainers"])
        .iter()
        .map(|container| (true, container))
        .chain(
            array(&spec["containers"])
                .iter()
                .map(|container| (false, container)),
        )
}

/// Which of our binaries a container runs (its command's first word).
fn binary_of(container: &Value) -> Option<&str> {
    let program = array(&container["command"]).first()?.as_str()?;
    Some(program.rsplit('/').next().unwrap_or(program))
}

fn arguments(container: &Value) -> Vec<&str> {
    let command = array(&container["command"]).iter().skip(1);
    command
        .chain(array(&container["args"]).iter())
        .filter_map(Value::as_str)
        .collect()
}

/// The value of `--flag=value` or `--flag value` in a container's arguments.
fn flag_value<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let arguments = arguments(container);
    let prefix = format!("{flag}=");
    arguments.iter().enumerate().find_map(|(index, argument)| {
        if let Some(value) = argument.strip_prefix(&prefix) {
            Some(value)
        } else if *argument == flag {
            arguments.get(index + 1).copied()
        } else {
            None
        }
    })
}

fn port_of_address(address: &str) -> Option<i64> {
    address.rsplit(':').next()?.parse().ok()
}

/// A quantity or port as a string, whether YAML made it a number or a string.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A container's port, by number or by the name of one of its ports.
fn resolve_port(container: &Value, port: &Value) -> Option<i64> {
    match port {
        Value::Number(number) => number.as_i64(),
        Value::String(port_name) => array(&container["ports"])
            .iter()
            .find(|declared| declared["name"].as_str() == Some(port_name))
            .and_then(|declared| declared["containerPort"].as_i64()),
        _ => None,
    }
}

/// A setting of the container's securityContext, else of its pod's (the container's wins).
fn effective<'a>(container: &'a Value, spec: &'a Value, field: &str) -> &'a Value {
    let own = &container["securityContext"][field];
    if own.is_null() {
        &spec["securityContext"][field]
    } else {
        own
    }
}

fn matches_selector(labels: &Value, selector: &Value) -> bool {
    let Some(selector) = selector.as_object() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(key, value)| &labels[key] == value)
}

/// A LabelSelector (`matchLabels` and `matchExpressions`, as in ServiceMonitors and NetworkPolicies) against
/// labels; an empty selector selects nothing here (ours always name what they select).
fn label_selector_matches(labels: &Value, selector: &Value) -> bool {
    let match_labels = selector["matchLabels"].as_object();
    let expressions = array(&selector["matchExpressions"]);
    if match_labels.is_none_or(|match_labels| match_labels.is_empty()) && expressions.is_empty() {
        return false;
    }
    let labels_match = match_labels
        .into_iter()
        .flatten()
        .all(|(key, value)| &labels[key] == value);
    let expressions_match = expressions.iter().all(|expression| {
        let value = &labels[expression["key"].as_str().unwrap_or("")];
        let listed = array(&expression["values"]).contains(value);
        match expression["operator"].as_str() {
            Some("In") => listed,
            Some("NotIn") => !listed,
            Some("Exists") => !value.is_null(),
            Some("DoesNotExist") => value.is_null(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

fn assert_no_violations(what: &str, violations: &[String]) {
    assert!(
        violations.is_empty(),
        "{what}: {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

#[test]
fn every_kustomization_renders_and_validates_against_the_kubernetes_schemas() {
    let validator = venv_tool("kubernetes-validate");
    for render in renders() {
        let (valid, stdout, stderr) = run_with_input(
            Command::new(&validator).args([
                "--kubernetes-version",
                KUBERNETES_VERSION,
                "--strict",
                "--quiet",
                "-",
            ]),
            &render.yaml,
        );
        let report = format!("{stdout}{stderr}");
        assert!(
            valid,
            "{} does not validate against Kubernetes {KUBERNETES_VERSION} (strict):\n{report}",
            render.name
        );
        for line in report.lines().filter(|line| !line.trim().is_empty()) {
            let about_a_custom_resource = line.starts_with("WARN")
                && CUSTOM_RESOURCE_KINDS
                    .iter()
                    .any(|custom_kind| line.contains(&format!("kind {custom_kind} ")));
            assert!(
                about_a_custom_resource,
                "{}: kubernetes-validate reports: {line}",
                render.name
            );
        }
        for object in &render.objects {
            assert!(
                object["metadata"]["namespace"].as_str() == Some("plankton")
                    || kind(object) == "Namespace",
                "{}: {} must be in namespace plankton (metadata.namespace)",
                render.name,
                object_label(object)
            );
        }
    }
}

#[test]
fn every_container_runs_restricted_with_resources_and_probes() {
    let mut checked_containers = 0;
    let mut violations = Vec::new();
    for render in renders() {
        let has_namespace = render
            .objects
            .iter()
            .any(|object| kind(object) == "Namespace");
        if has_namespace {
            let namespace = render
                .objects
                .iter()
                .find(|object| kind(object) == "Namespace")
                .expect("namespace");
            if namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] != "restricted"
            {
                violations.push(format!(
                    "{}: {}: metadata.labels[pod-security.kubernetes.io/enforce] must be restricted",
                    render.name,
                    object_label(namespace)
                ));
            }
        }
        for object in &render.objects {
            let Some((spec, long_running)) = pod_spec(object) else {
                continue;
            };
            let pod = format!("{}: {}", render.name, object_label(object));
            for host_field in ["hostNetwork", "hostPID", "hostIPC"] {
                if spec[host_field] == true {
                    violations.push(format!("{pod}: spec.{host_field} must not be true"));
                }
            }
            if spec["automountServiceAccountToken"] != false {
                violations.push(format!(
                    "{pod}: spec.automountServiceAccountToken must be false (no role calls the Kubernetes API)"
                ));
            }
            if binary_of_pod(spec) == Some("plankton-worker")
                && spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30) < 60
            {
                violations.push(format!(
                    "{pod}: spec.terminationGracePeriodSeconds must be at least 60 for workers"
                ));
            }
            for (is_init, container) in containers(spec) {
                checked_containers += 1;
                let which = format!(
                    "{pod} {} {}",
                    if is_init {
                        "initContainer"
                    } else {
                        "container"
                    },
                    container["name"].as_str().unwrap_or("?")
                );
                violations.extend(security_violations(&which, container, spec));
                violations.extend(resource_violations(&which, container));
                if long_running && !is_init {
                    violations.extend(probe_violations(&which, container));
                }
            }
        }
    }
    assert!(
        checked_containers >= 3,
        "found only {checked_containers} containers in the renders"
    );
    assert_no_violations("pod security, resources and probes", &violations);
}

fn binary_of_pod(spec: &Value) -> Option<&str> {
    array(&spec["containers"]).first().and_then(binary_of)
}

fn security_violations(which: &str, container: &Value, spec: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let context = &container["securityContext"];
    if effective(container, spec, "runAsNonRoot") != true {
        violations.push(format!(
            "{which}: securityContext.runAsNonRoot must be true"
        ));
    }
    if effective(container, spec, "runAsUser").as_i64() == Some(0) {
        violations.push(format!("{which}: securityContext.runAsUser must not be 0"));
    }
    if context["readOnlyRootFilesystem"] != true {
        violations.push(format!(
            "{which}: securityContext.readOnlyRootFilesystem must be true"
        ));
    }
    if context["allowPrivilegeEscalation"] != false {
        violations.push(format!(
            "{which}: securityContext.allowPrivilegeEscalation must be false"
        ));
    }
    if context["privileged"] == true {
        violations.push(format!(
            "{which}: securityContext.privileged must not be true"
        ));
    }
    if !array(&context["capabilities"]["drop"])
        .iter()
        .any(|capability| capability == "ALL")
    {
        violations.push(format!(
            "{which}: securityContext.capabilities.drop must contain ALL"
        ));
    }
    if !array(&context["capabilities"]["add"]).is_empty() {
        violations.push(format!(
            "{which}: securityContext.capabilities.add must be empty"
        ));
    }
    if effective(container, spec, "seccompProfile")["type"] != "RuntimeDefault" {
        violations.push(format!(
            "{which}: securityContext.seccompProfile.type must be RuntimeDefault"
        ));
    }
    // A read-only root filesystem needs a writable /tmp.
    let writable_tmp = array(&container["volumeMounts"])
        .iter()
        .any(|mount| mount["mountPath"] == "/tmp" && mount["readOnly"] != true);
    if !writable_tmp {
        violations.push(format!(
            "{which}: volumeMounts must mount a writable volume (emptyDir) at /tmp"
        ));
    }
    violations
}

fn resource_violations(which: &str, container: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    for section in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            if scalar(&container["resources"][section][resource]).is_none() {
                violations.push(format!(
                    "{which}: resources.{section}.{resource} must be set"
                ));
            }
        }
    }
    violations
}

fn probe_violations(which: &str, container: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let health_port = flag_value(container, "--health-listen").and_then(port_of_address);
    for probe_field in ["livenessProbe", "readinessProbe"] {
        let probe = &container[probe_field];
        if !probe.is_object() {
            violations.push(format!("{which}: {probe_field} must be set"));
            continue;
        }
        // Probes go to the plaintext health port (`--health-listen`): the gRPC ports speak TLS only.
        let probe_port = ["grpc", "tcpSocket", "httpGet"]
            .iter()
            .find_map(|handler| probe.get(*handler).map(|handler| &handler["port"]))
            .and_then(|port| resolve_port(container, port));
        if health_port.is_none() || probe_port != health_port {
            violations.push(format!(
                "{which}: {probe_field} must probe the --health-listen port ({health_port:?}), not {probe_port:?}"
            ));
        }
    }
    if !container["readinessProbe"]["grpc"].is_object() {
        violations.push(format!(
            "{which}: readinessProbe must be a native gRPC probe (grpc.health.v1 SERVING = ready)"
        ));
    }
    violations
}

#[test]
fn gpu_overlay_asks_for_gpus_in_worker_limits_only_and_the_others_never() {
    let mut violations = Vec::new();
    let mut gpu_workers = 0;
    for render in renders() {
        let is_gpu_overlay = render.name == "deploy/k8s/overlays/gpu";
        for object in &render.objects {
            let Some((spec, _)) = pod_spec(object) else {
                continue;
            };
            for (_, container) in containers(spec) {
                let which = format!(
                    "{}: {} container {}",
                    render.name,
                    object_label(object),
                    container["name"].as_str().unwrap_or("?")
                );
                if !container["resources"]["requests"][GPU_RESOURCE].is_null() {
                    violations.push(format!(
                        "{which}: resources.requests.{GPU_RESOURCE} must not be set (extended resources go in limits)"
                    ));
                }
                let gpu_limit = scalar(&container["resources"]["limits"][GPU_RESOURCE]);
                let is_worker = binary_of(container) == Some("plankton-worker");
                if is_gpu_overlay && is_worker {
                    gpu_workers += 1;
                    if gpu_limit.as_deref() != Some("1") {
                        violations.push(format!(
                            "{which}: resources.limits.{GPU_RESOURCE} must be 1, not {gpu_limit:?}"
                        ));
                    }
                    violations.extend(gpu_placement_violations(&which, spec));
                    if !variable_names(render, container)
                        .iter()
                        .any(|variable| variable == "NCCL_SOCKET_IFNAME")
                    {
                        violations.push(format!(
                            "{which}: env/envFrom must set NCCL_SOCKET_IFNAME (the pod interface)"
                        ));
                    }
                } else if let Some(limit) = gpu_limit {
                    violations.push(format!(
                        "{which}: resources.limits.{GPU_RESOURCE} must not be set (found {limit})"
                    ));
                }
            }
        }
    }
    assert!(
        gpu_workers >= 1,
        "the gpu overlay renders no plankton-worker container"
    );
    assert!(
        !render_named("deploy/k8s/overlays/cpu")
            .yaml
            .contains(GPU_RESOURCE),
        "deploy/k8s/overlays/cpu must not mention {GPU_RESOURCE} at all"
    );
    assert_no_violations("GPU requests", &violations);
}

fn gpu_placement_violations(which: &str, spec: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let selects_nodes = spec["nodeSelector"]
        .as_object()
        .is_some_and(|selector| !selector.is_empty());
    if !selects_nodes {
        violations.push(format!("{which}: spec.nodeSelector must select GPU nodes"));
    }
    if !array(&spec["tolerations"])
        .iter()
        .any(|toleration| toleration["key"] == GPU_RESOURCE)
    {
        violations.push(format!(
            "{which}: spec.tolerations must tolerate the {GPU_RESOURCE} taint"
        ));
    }
    let one_per_node = array(
        &spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
    )
    .iter()
    .any(|term| term["topologyKey"] == "kubernetes.io/hostname");
    if !one_per_node {
        violations.push(format!(
            "{which}: spec.affinity.podAntiAffinity must require one worker per node (topologyKey kubernetes.io/hostname)"
        ));
    }
    violations
}

/// Names of the variables a container gets from `env` and from rendered ConfigMaps through `envFrom`.
fn variable_names(render: &Render, container: &Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = array(&container["env"])
        .iter()
        .filter_map(|variable| variable["name"].as_str().map(str::to_owned))
        .collect();
    for source in array(&container["envFrom"]) {
        let Some(config_map) = source["configMapRef"]["name"].as_str() else {
            continue;
        };
        let data = render
            .objects
            .iter()
            .find(|object| kind(object) == "ConfigMap" && name(object) == config_map)
            .and_then(|object| object["data"].as_object());
        names.extend(data.into_iter().flat_map(|data| data.keys().cloned()));
    }
    names
}

/// What `<binary> [subcommand] --help` lists: long and short flags, and environment variables.
#[derive(Default)]
struct Help {
    flags: BTreeSet<String>,
    variables: BTreeSet<String>,
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    for word in text
        .split(|character: char| character.is_whitespace() || character == '[' || character == ',')
    {
        let word = word.trim_end_matches(|character: char| !character.is_ascii_alphanumeric());
        let is_long_flag = word.starts_with("--") && word.len() > 2;
        let is_short_flag =
            word.len() == 2 && word.starts_with('-') && word.as_bytes()[1].is_ascii_alphabetic();
        if is_long_flag || is_short_flag {
            help.flags.insert(word.to_owned());
        }
    }
    for (position, _) in text.match_indices("[env: ") {
        let variable: String = text[position + "[env: ".len()..]
            .chars()
            .take_while(|character| {
                character.is_ascii_uppercase() || character.is_ascii_digit() || *character == '_'
            })
            .collect();
        help.variables.insert(variable);
    }
    help
}

fn help_text(binary: &str, subcommand: Option<&str>) -> String {
    let path = plankton_tests::binary(binary).unwrap_or_else(|error| panic!("{error:#}"));
    let mut command = Command::new(&path);
    command.args(subcommand).arg("--help");
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {binary} --help: {error}"));
    assert!(
        output.status.success(),
        "`{binary} {} --help` failed",
        subcommand.unwrap_or("")
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `--help` of every binary, and of every planktonctl subcommand ("planktonctl submit").
fn helps() -> &'static BTreeMap<String, Help> {
    static HELPS: OnceLock<BTreeMap<String, Help>> = OnceLock::new();
    HELPS.get_or_init(|| {
        let mut helps = BTreeMap::new();
        for binary in BINARIES {
            let text = help_text(binary, None);
            if binary == "planktonctl" {
                for subcommand in subcommands(&text) {
                    helps.insert(
                        format!("{binary} {subcommand}"),
                        parse_help(&help_text(binary, Some(&subcommand))),
                    );
                }
            }
            helps.insert(binary.to_owned(), parse_help(&text));
        }
        helps
    })
}

/// The names listed under "Commands:" in a clap help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|subcommand| *subcommand != "help")
        .map(str::to_owned)
        .collect()
}

fn variable_is_known(variable: &str, known_variables: &BTreeSet<String>) -> bool {
    known_variables.contains(variable)
        || VARIABLES_OUTSIDE_HELP
            .iter()
            .any(|(outside, _)| *outside == variable)
}

/// Words `PLANKTON_X` in a text (not the `PLANKTON_*` pattern).
fn plankton_variables_in(text: &str) -> BTreeSet<String> {
    text.match_indices("PLANKTON_")
        .filter(|(position, _)| {
            *position == 0 || !text.as_bytes()[position - 1].is_ascii_alphanumeric()
        })
        .map(|(position, _)| {
            text[position..]
                .chars()
                .take_while(|character| {
                    character.is_ascii_uppercase()
                        || character.is_ascii_digit()
                        || *character == '_'
                })
                .collect::<String>()
        })
        .filter(|variable| variable.len() > "PLANKTON_".len())
        .collect()
}

#[test]
fn every_flag_and_plankton_variable_of_the_manifests_is_known_to_its_binary() {
    let helps = helps();
    for (variable, reader) in VARIABLES_OUTSIDE_HELP {
        assert!(
            read_workspace_file(reader).contains(variable),
            "{variable} is allowed outside --help because {reader} reads it, but it no longer does"
        );
    }
    let mut violations = Vec::new();
    let mut checked_flags = 0;
    for render in renders() {
        let config_maps: BTreeMap<&str, &Value> = render
            .objects
            .iter()
            .filter(|object| kind(object) == "ConfigMap")
            .map(|object| (name(object), &object["data"]))
            .collect();
        for object in &render.objects {
            let Some((spec, _)) = pod_spec(object) else {
                continue;
            };
            for (_, container) in containers(spec) {
                let which = format!(
                    "{}: {} container {}",
                    render.name,
                    object_label(object),
                    container["name"].as_str().unwrap_or("?")
                );
                let Some(binary) = binary_of(container).filter(|binary| BINARIES.contains(binary))
                else {
                    violations.push(format!("{which}: command[0] must be one of {BINARIES:?}"));
                    continue;
                };
                let arguments = arguments(container);
                let help = &helps[binary];
                // planktonctl: flags before the subcommand are its own, after it the subcommand's; the
                // environment is read for both.
                let subcommand_position = arguments
                    .iter()
                    .position(|argument| !argument.starts_with('-'));
                let subcommand = match subcommand_position {
                    Some(position) if binary == "planktonctl" => {
                        let key = format!("{binary} {}", arguments[position]);
                        let Some(subcommand_help) = helps.get(&key) else {
                            violations
                                .push(format!("{which}: `{key}` is not a command of {binary}"));
                            continue;
                        };
                        Some((position, key, subcommand_help))
                    }
                    _ => None,
                };
                for (index, argument) in arguments.iter().enumerate() {
                    if !argument.starts_with('-') {
                        continue;
                    }
                    let flag = argument.split('=').next().unwrap_or(argument);
                    let (help_key, flags) = match &subcommand {
                        Some((position, key, subcommand_help)) if index > *position => {
                            (key.as_str(), &subcommand_help.flags)
                        }
                        _ => (binary, &help.flags),
                    };
                    checked_flags += 1;
                    if !flags.contains(flag) {
                        violations.push(format!(
                            "{which}: args flag {flag} is not in `{help_key} --help`"
                        ));
                    }
                }
                let mut known_variables = help.variables.clone();
                if let Some((_, _, subcommand_help)) = &subcommand {
                    known_variables.extend(subcommand_help.variables.iter().cloned());
                }
                let mut variables: Vec<(String, String)> = array(&container["env"])
                    .iter()
                    .filter_map(|variable| variable["name"].as_str())
                    .map(|variable| (variable.to_owned(), "env".to_owned()))
                    .collect();
                for source in array(&container["envFrom"]) {
                    let Some(config_map) = source["configMapRef"]["name"].as_str() else {
                        continue;
                    };
                    let Some(data) = config_maps.get(config_map) else {
                        violations.push(format!(
                            "{which}: envFrom configMapRef {config_map} is not rendered"
                        ));
                        continue;
                    };
                    for key in data.as_object().into_iter().flat_map(|data| data.keys()) {
                        variables.push((key.clone(), format!("envFrom ConfigMap {config_map}")));
                    }
                }
                for (variable, origin) in variables {
                    if variable.starts_with("PLANKTON_")
                        && !variable_is_known(&variable, &known_variables)
                    {
                        violations.push(format!("{which}: {origin} sets {variable}, which `{binary} --help` does not list"));
                    }
                }
                if binary == "plankton-worker" {
                    violations.extend(advertise_host_violations(&which, container));
                }
            }
        }
    }
    assert!(
        checked_flags >= 10,
        "only {checked_flags} flags found in the manifests"
    );
    // Every PLANKTON_* word anywhere under deploy/ (comments, README, Containerfile) names a real variable.
    let every_variable: BTreeSet<String> = helps
        .values()
        .flat_map(|help| help.variables.iter().cloned())
        .collect();
    for file in files_under(&workspace_root().join("deploy")) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for variable in plankton_variables_in(&text) {
            if !variable_is_known(&variable, &every_variable) {
                violations.push(format!(
                    "{}: {variable} is not a variable of any binary",
                    file.display()
                ));
            }
        }
    }
    assert_no_violations("flags and PLANKTON_* variables", &violations);
}

/// The worker advertises its pod IP: `--advertise-host=$(VAR)` with VAR from the downward API.
fn advertise_host_violations(which: &str, container: &Value) -> Vec<String> {
    let Some(advertised) = flag_value(container, "--advertise-host") else {
        return vec![format!(
            "{which}: args must set --advertise-host (ring peers dial it)"
        )];
    };
    let variable = advertised
        .strip_prefix("$(")
        .and_then(|rest| rest.strip_suffix(')'));
    let from_pod_ip = variable.is_some_and(|variable| {
        array(&container["env"]).iter().any(|entry| {
            entry["name"] == variable
                && entry["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        })
    });
    if from_pod_ip {
        Vec::new()
    } else {
        vec![format!(
            "{which}: --advertise-host={advertised} must be $(VAR) with env VAR from fieldRef status.podIP"
        )]
    }
}

fn files_under(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(folder).unwrap_or_else(|error| panic!("{}: {error}", folder.display()))
    {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn services_and_network_policies_match_the_pods() {
    let mut violations = Vec::new();
    for render in renders() {
        let workloads: Vec<&Value> = render
            .objects
            .iter()
            .filter(|object| pod_spec(object).is_some())
            .collect();
        for service in render
            .objects
            .iter()
            .filter(|object| kind(object) == "Service")
        {
            let which = format!("{}: {}", render.name, object_label(service));
            let selected: Vec<&&Value> = workloads
                .iter()
                .filter(|workload| {
                    matches_selector(pod_labels(workload), &service["spec"]["selector"])
                })
                .collect();
            if selected.is_empty() {
                violations.push(format!("{which}: spec.selector selects no pod template"));
            }
            for port in array(&service["spec"]["ports"]) {
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                let served = selected.iter().any(|workload| {
                    let (spec, _) = pod_spec(workload).expect("a workload");
                    array(&spec["containers"]).iter().any(|container| {
                        resolve_port(container, target).is_some_and(|resolved| {
                            array(&container["ports"])
                                .iter()
                                .any(|declared| declared["containerPort"] == resolved)
                        })
                    })
                });
                if !served {
                    violations.push(format!("{which}: spec.ports targetPort {target} is no port of the selected containers"));
                }
            }
        }
        for workload in workloads
            .iter()
            .filter(|workload| kind(workload) == "StatefulSet")
        {
            let service_name = workload["spec"]["serviceName"].as_str().unwrap_or("");
            let governing = render
                .objects
                .iter()
                .find(|object| kind(object) == "Service" && name(object) == service_name);
            let is_worker = name(workload) == "plankton-worker";
            match governing {
                None => violations.push(format!(
                    "{}: {}: spec.serviceName {service_name:?} is no rendered Service",
                    render.name,
                    object_label(workload)
                )),
                Some(service) if is_worker && service["spec"]["clusterIP"] != "None" => violations.push(format!(
                    "{}: {}: the workers' Service must be headless (spec.clusterIP: None) for stable pod DNS",
                    render.name,
                    object_label(service)
                )),
                Some(_) => {}
            }
        }
        for monitor in render
            .objects
            .iter()
            .filter(|object| kind(object) == "ServiceMonitor")
        {
            let selected: Vec<&Value> = render
                .objects
                .iter()
                .filter(|service| {
                    kind(service) == "Service"
                        && label_selector_matches(
                            &service["metadata"]["labels"],
                            &monitor["spec"]["selector"],
                        )
                })
                .collect();
            let scraped = !selected.is_empty()
                && array(&monitor["spec"]["endpoints"]).iter().all(|endpoint| {
                    selected.iter().any(|service| {
                        array(&service["spec"]["ports"])
                            .iter()
                            .any(|port| port["name"] == endpoint["port"])
                    })
                });
            if !scraped {
                violations.push(format!(
                    "{}: {}: spec.selector and endpoints[].port must name a rendered Service and its port",
                    render.name,
                    object_label(monitor)
                ));
            }
        }
        violations.extend(network_policy_violations(render));
    }
    assert_no_violations("Services and NetworkPolicies", &violations);
}

/// A default-deny ingress policy exists when any policy does; the ring port admits workers only; the
/// plaintext health and metrics ports only the monitoring namespace; a rule for every port (NCCL's
/// ephemeral ports, GPU overlay) only workers.
fn network_policy_violations(render: &Render) -> Vec<String> {
    let policies: Vec<&Value> = render
        .objects
        .iter()
        .filter(|object| kind(object) == "NetworkPolicy")
        .collect();
    if policies.is_empty() {
        return Vec::new();
    }
    let mut violations = Vec::new();
    let default_deny = policies.iter().any(|policy| {
        policy["spec"]["podSelector"]
            .as_object()
            .is_some_and(|selector| selector.is_empty())
            && array(&policy["spec"]["ingress"]).is_empty()
    });
    if !default_deny {
        violations.push(format!(
            "{}: no default-deny ingress NetworkPolicy (podSelector: {{}}, no ingress rules)",
            render.name
        ));
    }
    let only_workers = |sources: &[Value]| {
        !sources.is_empty()
            && sources.iter().all(|source| {
                source["namespaceSelector"].is_null()
                    && source["ipBlock"].is_null()
                    && source["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                        == "worker"
            })
    };
    let only_monitoring = |sources: &[Value]| {
        !sources.is_empty()
            && sources.iter().all(|source| {
                source["podSelector"].is_null()
                    && source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                        == "monitoring"
            })
    };
    for policy in policies {
        for (index, rule) in array(&policy["spec"]["ingress"]).iter().enumerate() {
            let which = format!(
                "{}: {} spec.ingress[{index}]",
                render.name,
                object_label(policy)
            );
            let sources = array(&rule["from"]);
            let ports: Vec<i64> = array(&rule["ports"])
                .iter()
                .filter_map(|port| port["port"].as_i64())
                .collect();
            if ports.is_empty() {
                if !only_workers(sources) {
                    violations.push(format!(
                        "{which}: a rule for every port must admit worker pods only"
                    ));
                }
                continue;
            }
            if ports.contains(&RING_PORT) && !only_workers(sources) {
                violations.push(format!(
                    "{which}: the ring port {RING_PORT} must admit worker pods only"
                ));
            }
            if ports.iter().any(|port| MONITORING_PORTS.contains(port)) && !only_monitoring(sources)
            {
                violations.push(format!(
                    "{which}: the health/metrics ports {MONITORING_PORTS:?} must admit the monitoring namespace only"
                ));
            }
        }
    }
    violations
}

#[test]
fn secrets_are_referenced_never_committed_and_documented() {
    let deploy_readme = read_workspace_file("deploy/README.md");
    let mut referenced = BTreeSet::new();
    let mut violations = Vec::new();
    for render in renders() {
        for object in &render.objects {
            if kind(object) == "Secret" {
                violations.push(format!(
                    "{}: {} is rendered: Secrets are created by hand or cert-manager, never committed",
                    render.name,
                    object_label(object)
                ));
            }
            let Some((spec, _)) = pod_spec(object) else {
                continue;
            };
            for volume in array(&spec["volumes"]) {
                if let Some(secret) = volume["secret"]["secretName"].as_str() {
                    referenced.insert(secret.to_owned());
                }
            }
            for (_, container) in containers(spec) {
                for source in array(&container["envFrom"]) {
                    if let Some(secret) = source["secretRef"]["name"].as_str() {
                        referenced.insert(secret.to_owned());
                    }
                }
                for variable in array(&container["env"]) {
                    if let Some(secret) = variable["valueFrom"]["secretKeyRef"]["name"].as_str() {
                        referenced.insert(secret.to_owned());
                    }
                }
            }
        }
    }
    assert!(
        !referenced.is_empty(),
        "no pod references a Secret (TLS, tokens)"
    );
    for secret in &referenced {
        if !deploy_readme.contains(secret.as_str()) {
            violations.push(format!("Secret {secret} is referenced by a pod but deploy/README.md never says how to create it"));
        }
    }
    assert_no_violations("Secrets", &violations);
}

#[test]
fn training_job_file_uses_submit_fields_and_fits_the_cpu_cluster() {
    let jobs = render_named("deploy/k8s/jobs");
    let job_json = jobs
        .objects
        .iter()
        .filter(|object| kind(object) == "ConfigMap")
        .find_map(|object| object["data"]["job.json"].as_str())
        .expect("deploy/k8s/jobs renders a ConfigMap with data[job.json]");
    let job: serde_json::Map<String, Value> =
        serde_json::from_str(job_json).expect("data[job.json] of deploy/k8s/jobs is a JSON object");
    let submit = helps()
        .get("planktonctl submit")
        .expect("planktonctl submit --help");
    for field in job.keys() {
        let flag = format!("--{}", field.replace('_', "-"));
        assert!(
            submit.flags.contains(&flag),
            "deploy/k8s/jobs ConfigMap data[job.json]: field {field} is no `planktonctl submit` flag ({flag})"
        );
    }
    let job_pod = jobs
        .objects
        .iter()
        .find(|object| kind(object) == "Job")
        .expect("deploy/k8s/jobs renders a Job");
    let (spec, _) = pod_spec(job_pod).expect("the Job's pod");
    let container = &array(&spec["containers"])[0];
    let arguments = arguments(container);
    assert_eq!(
        binary_of(container),
        Some("planktonctl"),
        "Job/{}: command must be planktonctl",
        name(job_pod)
    );
    assert!(
        arguments.starts_with(&["submit"])
            && arguments.contains(&"--watch")
            && flag_value(container, "-f") == Some("/job/job.json"),
        "Job/{}: args must be `submit -f /job/job.json --watch`, not {arguments:?}",
        name(job_pod)
    );
    assert!(
        spec["restartPolicy"] == "Never" && job_pod["spec"]["backoffLimit"] == 0,
        "Job/{}: a retried pod would submit a second training job: restartPolicy Never and backoffLimit 0",
        name(job_pod)
    );

    // The job fits the CPU demo cluster: an allowed dataset, no more ranks than workers, the served model.
    let cpu = render_named("deploy/k8s/overlays/cpu");
    let coordinator_settings = cpu
        .objects
        .iter()
        .find(|object| {
            kind(object) == "ConfigMap" && name(object).starts_with("plankton-coordinator")
        })
        .expect("deploy/k8s/overlays/cpu renders the coordinator's ConfigMap");
    let allowed = coordinator_settings["data"]["PLANKTON_ALLOW_DATASET"]
        .as_str()
        .unwrap_or("");
    let dataset = job["dataset"].as_str().unwrap_or("");
    assert!(
        allowed
            .split(',')
            .any(|prefix| !prefix.is_empty() && dataset.starts_with(prefix.trim())),
        "job.json dataset {dataset} is not under the cpu overlay's PLANKTON_ALLOW_DATASET {allowed}"
    );
    let workers = cpu
        .objects
        .iter()
        .find(|object| kind(object) == "StatefulSet" && name(object) == "plankton-worker")
        .and_then(|workers| workers["spec"]["replicas"].as_i64())
        .expect("StatefulSet/plankton-worker spec.replicas in the cpu overlay");
    let world_size = job["world_size"].as_i64().unwrap_or(0);
    assert!(
        (1..=workers).contains(&world_size),
        "job.json world_size {world_size} must be 1..={workers} (the cpu overlay's workers)"
    );
    let served = cpu
        .objects
        .iter()
        .find(|object| kind(object) == "ConfigMap" && name(object).starts_with("plankton-serve"))
        .and_then(|settings| settings["data"]["PLANKTON_MODEL"].as_str())
        .expect("the cpu overlay's plankton-serve ConfigMap sets PLANKTON_MODEL");
    let served_name = served.split(['@', ':']).next().unwrap_or("");
    assert_eq!(
        job["name"].as_str(),
        Some(served_name),
        "job.json name (the registered model) must be the model plankton-serve serves ({served})"
    );
}

#[test]
fn containerfile_ships_every_binary_and_libtorch_library_the_roles_need() {
    let containerfile = read_workspace_file("deploy/Containerfile");
    // Instructions with their continuation lines joined, comments dropped.
    let instructions: Vec<String> = containerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ")
        .lines()
        .map(str::to_owned)
        .collect();
    let runtime_start = instructions
        .iter()
        .position(|line| line.starts_with("FROM ") && line.contains("debian:bookworm-slim"))
        .expect("deploy/Containerfile: a runtime stage FROM debian:bookworm-slim");
    let runtime = &instructions[runtime_start..];
    let build = &instructions[..runtime_start];
    assert!(
        build
            .iter()
            .any(|line| line.starts_with("FROM ") && line.contains("rust:1.95-bookworm")),
        "deploy/Containerfile: the build stage must be FROM rust:1.95-bookworm"
    );

    // The binaries: those of the README's role commands, and those the manifests run.
    let readme = read_workspace_file("README.md");
    let mut needed: BTreeSet<String> = readme
        .lines()
        .map(str::trim_start)
        .filter_map(|line| line.split_whitespace().next())
        .map(|word| word.rsplit('/').next().unwrap_or(word))
        .filter(|word| BINARIES.contains(word))
        .map(str::to_owned)
        .collect();
    for render in renders() {
        for object in &render.objects {
            if let Some((spec, _)) = pod_spec(object) {
                needed.extend(
                    containers(spec)
                        .filter_map(|(_, container)| binary_of(container))
                        .map(str::to_owned),
                );
            }
        }
    }
    for binary in BINARIES {
        assert!(
            needed.contains(binary),
            "neither README.md's role commands nor the manifests run {binary}"
        );
    }
    let cargo_build = build
        .iter()
        .find(|line| line.contains("cargo build"))
        .expect("deploy/Containerfile: a `cargo build` step");
    for binary in &needed {
        assert!(
            cargo_build.contains(&format!("-p {binary}")),
            "deploy/Containerfile: `cargo build` must build -p {binary}"
        );
        let copied = runtime.iter().any(|line| {
            line.starts_with("COPY ")
                && line.contains(binary.as_str())
                && line.trim_end().ends_with("/usr/local/bin/")
        });
        assert!(
            copied,
            "deploy/Containerfile: the runtime stage must COPY {binary} into /usr/local/bin/"
        );
    }

    // The libtorch libraries the built binaries load (ldd), whatever links them.
    let mut libraries = BTreeSet::new();
    for binary in [
        "plankton-coordinator",
        "plankton-worker",
        "plankton-serve",
        "planktonctl",
    ] {
        let path = plankton_tests::binary(binary).unwrap_or_else(|error| panic!("{error:#}"));
        let output = Command::new("ldd")
            .arg(&path)
            .output()
            .expect("running ldd");
        assert!(output.status.success(), "ldd {} failed", path.display());
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut parts = line.split("=>");
            let (Some(soname), Some(resolved)) = (parts.next(), parts.next()) else {
                continue;
            };
            if resolved.contains(".libtorch/") {
                libraries.insert(soname.trim().to_owned());
            }
        }
    }
    assert!(
        libraries.contains("libtorch_cpu.so") && libraries.contains("libc10.so"),
        "ldd finds no libtorch_cpu.so/libc10.so from .libtorch in the binaries: {libraries:?}"
    );
    let staging = build.join("\n");
    for library in &libraries {
        assert!(
            staging.contains(library.as_str()),
            "deploy/Containerfile: the binaries load {library} (ldd) but the build stage never stages it for the runtime"
        );
    }
    assert!(
        runtime
            .iter()
            .any(|line| line.starts_with("COPY --from=build") && line.contains("/opt/libtorch")),
        "deploy/Containerfile: the runtime stage must COPY the staged /opt/libtorch"
    );
    assert!(
        runtime.iter().any(|line| line.starts_with("ENV ")
            && line.contains("LD_LIBRARY_PATH=/opt/libtorch/torch/lib")),
        "deploy/Containerfile: the runtime stage must set LD_LIBRARY_PATH to /opt/libtorch/torch/lib"
    );

    // The same libtorch as scripts/setup.sh installs, and the user the manifests run as.
    let setup = read_workspace_file("scripts/setup.sh");
    for variable in [
        "TORCH_VERSION",
        "CUDA_RUNTIME_VERSION",
        "CUDA_CUPTI_VERSION",
    ] {
        let in_setup = setup
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{variable}=")))
            .unwrap_or_else(|| panic!("scripts/setup.sh sets no {variable}"));
        assert!(
            build
                .iter()
                .any(|line| line == &format!("ARG {variable}={in_setup}")),
            "deploy/Containerfile: ARG {variable} must be {in_setup}, as in scripts/setup.sh"
        );
    }
    assert!(
        cargo_build.contains("plankton-coordinator/nccl")
            && cargo_build.contains("plankton-worker/nccl"),
        "deploy/Containerfile: the cu130 variant must build the coordinator and the worker with the nccl feature"
    );
    let user = runtime
        .iter()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("deploy/Containerfile: the runtime stage sets USER");
    let uid: i64 = user
        .split(':')
        .next()
        .and_then(|uid| uid.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("deploy/Containerfile: USER {user} must be numeric (runAsNonRoot checks it)")
        });
    assert_ne!(uid, 0, "deploy/Containerfile: USER must not be root");
    for render in renders() {
        for object in &render.objects {
            if let Some((spec, _)) = pod_spec(object) {
                for (_, container) in containers(spec) {
                    let run_as = effective(container, spec, "runAsUser").as_i64();
                    assert!(
                        run_as.is_none() || run_as == Some(uid),
                        "{}: {} securityContext.runAsUser {run_as:?} differs from the image's USER {uid}",
                        render.name,
                        object_label(object)
                    );
                }
            }
        }
    }
    let makefile = read_workspace_file("Makefile");
    assert!(
        makefile.lines().any(|line| line.starts_with("image:"))
            && makefile.contains("deploy/build-image.sh"),
        "Makefile: an `image` target running deploy/build-image.sh"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Metrics: every role serves /metrics on a port its Service names and the ServiceMonitor scrapes, and the
// Grafana dashboard queries only series the binaries expose.

/// The roles serving Prometheus `/metrics` (`--metrics-listen`), and the files declaring their metrics.
const METRIC_ROLES: [(&str, &str); 3] = [
    ("plankton-coordinator", "coordinator/src/telemetry.rs"),
    ("plankton-worker", "worker/src/telemetry.rs"),
    ("plankton-serve", "serve/src/metrics.rs"),
];
const DASHBOARD: &str = "deploy/grafana/plankton-cluster.json";

/// The address a container serves `/metrics` on: `--metrics-listen`, else PLANKTON_METRICS_LISTEN from its
/// `env` or a rendered ConfigMap of its `envFrom`.
fn metrics_address(render: &Render, container: &Value) -> Option<String> {
    if let Some(address) = flag_value(container, "--metrics-listen") {
        return Some(address.to_owned());
    }
    let variable = "PLANKTON_METRICS_LISTEN";
    let from_env = array(&container["env"])
        .iter()
        .find(|entry| entry["name"] == variable)
        .and_then(|entry| entry["value"].as_str());
    let from_config_maps = || {
        array(&container["envFrom"]).iter().find_map(|source| {
            let config_map = source["configMapRef"]["name"].as_str()?;
            render
                .objects
                .iter()
                .find(|object| kind(object) == "ConfigMap" && name(object) == config_map)
                .and_then(|object| object["data"][variable].as_str())
        })
    };
    from_env.or_else(from_config_maps).map(str::to_owned)
}

/// Whether `policy` admits the monitoring namespace to `port` of the pods it selects.
fn admits_monitoring(policy: &Value, port: i64) -> bool {
    array(&policy["spec"]["ingress"]).iter().any(|rule| {
        let from_monitoring = array(&rule["from"]).iter().any(|source| {
            source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                == "monitoring"
        });
        from_monitoring
            && array(&rule["ports"])
                .iter()
                .any(|allowed| allowed["port"].as_i64() == Some(port))
    })
}

/// For each role of [`METRIC_ROLES`] in `render`: the metrics address, a declared container port, a Service
/// port reaching it, a NetworkPolicy admitting the monitoring namespace to it and, when the render has
/// ServiceMonitors, one selecting that Service with an endpoint on that port.
fn metrics_violations(render: &Render) -> Vec<String> {
    let mut violations = Vec::new();
    let has_policies = render
        .objects
        .iter()
        .any(|object| kind(object) == "NetworkPolicy");
    let monitors: Vec<&Value> = render
        .objects
        .iter()
        .filter(|object| kind(object) == "ServiceMonitor")
        .collect();
    for (binary, _) in METRIC_ROLES {
        let Some(workload) = render.objects.iter().find(|object| {
            pod_spec(object).is_some_and(|(spec, long_running)| {
                long_running && binary_of_pod(spec) == Some(binary)
            })
        }) else {
            violations.push(format!("{}: no workload runs {binary}", render.name));
            continue;
        };
        let which = format!("{}: {}", render.name, object_label(workload));
        let (spec, _) = pod_spec(workload).expect("a workload");
        let container = &array(&spec["containers"])[0];
        let Some(address) = metrics_address(render, container) else {
            violations.push(format!(
                "{which}: {binary} serves no metrics: set --metrics-listen (or PLANKTON_METRICS_LISTEN)"
            ));
            continue;
        };
        let Some(port) = port_of_address(&address) else {
            violations.push(format!("{which}: metrics address {address} has no port"));
            continue;
        };
        let Some(declared) = array(&container["ports"])
            .iter()
            .find(|declared| declared["containerPort"].as_i64() == Some(port))
        else {
            violations.push(format!(
                "{which}: the metrics port {port} ({address}) is not among the container's ports"
            ));
            continue;
        };
        let labels = pod_labels(workload);
        // Service ports (with their Service) whose target is the metrics port.
        let service_ports: Vec<(&Value, &Value)> = render
            .objects
            .iter()
            .filter(|service| {
                kind(service) == "Service" && matches_selector(labels, &service["spec"]["selector"])
            })
            .flat_map(|service| {
                array(&service["spec"]["ports"])
                    .iter()
                    .map(move |service_port| (service, service_port))
            })
            .filter(|(_, service_port)| {
                let target = if service_port["targetPort"].is_null() {
                    &service_port["port"]
                } else {
                    &service_port["targetPort"]
                };
                resolve_port(container, target) == Some(port)
            })
            .collect();
        if service_ports.is_empty() {
            violations.push(format!(
                "{which}: no Service selecting its pods has a port targeting the metrics port {port} ({})",
                declared["name"].as_str().unwrap_or("unnamed")
            ));
        }
        if has_policies {
            let admitted = render.objects.iter().any(|policy| {
                kind(policy) == "NetworkPolicy"
                    && label_selector_matches(labels, &policy["spec"]["podSelector"])
                    && admits_monitoring(policy, port)
            });
            if !admitted {
                violations.push(format!(
                    "{which}: no NetworkPolicy admits the monitoring namespace to the metrics port {port}"
                ));
            }
        }
        if monitors.is_empty() {
            continue;
        }
        let scraped = service_ports.iter().any(|(service, service_port)| {
            monitors.iter().any(|monitor| {
                label_selector_matches(&service["metadata"]["labels"], &monitor["spec"]["selector"])
                    && array(&monitor["spec"]["endpoints"]).iter().any(|endpoint| {
                        !service_port["name"].is_null() && endpoint["port"] == service_port["name"]
                    })
            })
        });
        if !scraped {
            violations.push(format!(
                "{which}: no ServiceMonitor selects a Service of its pods with an endpoint on the metrics port {port}"
            ));
        }
    }
    violations
}

#[test]
fn every_role_serves_metrics_that_the_service_monitor_scrapes() {
    let mut violations = Vec::new();
    for render in renders()
        .iter()
        .filter(|render| render.name != "deploy/k8s/jobs")
    {
        violations.extend(metrics_violations(render));
    }
    assert!(
        renders().iter().any(|render| render
            .objects
            .iter()
            .any(|object| kind(object) == "ServiceMonitor")),
        "no render holds a ServiceMonitor (components/servicemonitor)"
    );
    assert_no_violations("metrics ports and scraping", &violations);
}

/// The kind of a prometheus_client metric, which decides the series it exposes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// The series names (as in PromQL) a metrics file exposes, each with its metric family's name.
///
/// Read from the source, nothing is run: the prefix is the file's one `Registry::with_prefix("...")`, and
/// every `registry.register("name", "help", metric)` or `registered!("name", "help", metric)` call is a
/// family `<prefix>_<name>`. Its type comes from the metric expression, or, when that is a variable
/// (`jobs.clone()`), from the variable's `let`: an expression naming the type `Histogram` is a histogram
/// (series `_bucket`, `_sum`, `_count`), else one naming `Counter` is a counter (series `_total`, as
/// OpenMetrics names them), else one naming `Gauge` is a gauge (the family name itself). Label structs
/// (`Family::<PhaseLabels, Counter>`) do not confuse this: only the exact type names count. Any other way of
/// registering fails the test, so that a new one is taught here rather than silently missed.
fn exposed_series(relative: &str) -> BTreeMap<String, String> {
    let source = read_workspace_file(relative);
    for unsupported in ["register_with_unit", "sub_registry", "register_collector"] {
        assert!(
            !source.contains(unsupported),
            "{relative}: `{unsupported}` is used; teach exposed_series (tests/tests/deploy.rs) its names"
        );
    }
    let prefixes: Vec<&str> = source
        .match_indices("Registry::with_prefix(\"")
        .map(|(position, marker)| {
            let rest = &source[position + marker.len()..];
            &rest[..rest.find('"').expect("the prefix's closing quote")]
        })
        .collect();
    let [prefix] = prefixes.as_slice() else {
        panic!("{relative}: expected one Registry::with_prefix(\"...\"), found {prefixes:?}");
    };
    let mut series = BTreeMap::new();
    for call in ["registry.register(", "registered!("] {
        for (position, _) in source.match_indices(call) {
            let arguments = source[position + call.len()..].trim_start();
            if arguments.starts_with('$') {
                continue; // the body of the registered! macro
            }
            let line = source[..position].lines().count();
            let (metric_name, rest) = string_literal(arguments)
                .unwrap_or_else(|| panic!("{relative}:{line}: {call} without a literal name"));
            let (_help, rest) = rest
                .trim_start()
                .strip_prefix(',')
                .and_then(|rest| string_literal(rest.trim_start()))
                .unwrap_or_else(|| {
                    panic!("{relative}:{line}: {call}\"{metric_name}\" without a literal help")
                });
            let metric = rest.trim_start().strip_prefix(',').unwrap_or_else(|| {
                panic!("{relative}:{line}: {call}\"{metric_name}\", ...: no metric argument")
            });
            let metric = until_depth_zero(metric, ')')
                .trim()
                .trim_end_matches(',')
                .trim();
            let expression = match metric.strip_suffix(".clone()").unwrap_or(metric) {
                variable if is_identifier(variable) => let_expression(&source[..position], variable)
                    .unwrap_or_else(|| {
                        panic!("{relative}:{line}: \"{metric_name}\" registers {variable}, which has no `let {variable} = ...;` before")
                    }),
                _ => metric,
            };
            let metric_type = metric_type(expression).unwrap_or_else(|| {
                panic!("{relative}:{line}: cannot tell the type of \"{metric_name}\" from `{expression}` (no Counter, Gauge or Histogram)")
            });
            let family = format!("{prefix}_{metric_name}");
            let suffixes: &[&str] = match metric_type {
                MetricType::Counter => &["_total"],
                MetricType::Gauge => &[""],
                MetricType::Histogram => &["_bucket", "_sum", "_count"],
            };
            for suffix in suffixes {
                series.insert(format!("{family}{suffix}"), family.clone());
            }
        }
    }
    series
}

/// A Rust string literal at the start of `text` (escapes kept as written), and what follows it.
fn string_literal(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix('"')?;
    let mut escaped = false;
    for (index, character) in body.char_indices() {
        match character {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((&body[..index], &body[index + 1..])),
            _ => {}
        }
    }
    None
}

/// `text` up to the first `end` outside brackets and string literals.
fn until_depth_zero(text: &str, end: char) -> &str {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        if in_string {
            match character {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match character {
            '"' => in_string = true,
            _ if character == end && depth == 0 => return &text[..index],
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    text
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
}

/// The expression of the last `let [mut] variable = ...;` in `before`.
fn let_expression<'a>(before: &'a str, variable: &str) -> Option<&'a str> {
    ["let ", "let mut "]
        .iter()
        .filter_map(|keyword| {
            let pattern = format!("{keyword}{variable} =");
            before
                .rmatch_indices(&pattern)
                .next()
                .map(|(position, _)| position + pattern.len())
        })
        .max()
        .map(|start| until_depth_zero(&before[start..], ';'))
}

fn metric_type(expression: &str) -> Option<MetricType> {
    let names: BTreeSet<&str> = expression
        .split(|character: char| !character.is_ascii_alphanumeric() && character != '_')
        .collect();
    [
        ("Histogram", MetricType::Histogram),
        ("Counter", MetricType::Counter),
        ("Gauge", MetricType::Gauge),
    ]
    .into_iter()
    .find(|(type_name, _)| names.contains(type_name))
    .map(|(_, metric_type)| metric_type)
}

/// PromQL words that are not metric names: aggregation operators, binary operators and modifiers (a
/// function is any name followed by `(`).
const PROMQL_KEYWORDS: [&str; 20] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
];
/// Modifiers followed by a parenthesized label list (optional for group_left/group_right).
const PROMQL_LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: string literals, label matchers `{...}`, ranges `[...]`,
/// label lists (`by (...)`), numbers, Grafana variables, functions and keywords removed.
fn metric_names_in(expression: &str) -> Vec<String> {
    let characters: Vec<char> = expression.chars().collect();
    let mut names = Vec::new();
    let mut index = 0;
    let skip_balanced = |mut index: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while index < characters.len() {
            match characters[index] {
                '"' | '\'' | '`' => {
                    let quote = characters[index];
                    index += 1;
                    while index < characters.len() && characters[index] != quote {
                        index += if characters[index] == '\\' { 2 } else { 1 };
                    }
                }
                character if character == open => depth += 1,
                character if character == close => {
                    depth -= 1;
                    if depth == 0 {
                        return index + 1;
                    }
                }
                _ => {}
            }
            index += 1;
        }
        index
    };
    let next_non_space = |mut index: usize| {
        while index < characters.len() && characters[index].is_whitespace() {
            index += 1;
        }
        index
    };
    while index < characters.len() {
        let character = characters[index];
        if matches!(character, '"' | '\'' | '`') {
            index += 1;
            while index < characters.len() && characters[index] != character {
                index += if characters[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
        } else if character == '{' {
            index = skip_balanced(index, '{', '}');
        } else if character == '[' {
            index = skip_balanced(index, '[', ']');
        } else if character.is_ascii_digit() || character == '.' || character == '$' {
            // A number (0.99, 1e9), a duration (5m) or a Grafana variable ($__range).
            index += 1;
            while index < characters.len()
                && (characters[index].is_ascii_alphanumeric()
                    || matches!(characters[index], '_' | '.'))
            {
                index += 1;
            }
        } else if character.is_ascii_alphabetic() || character == '_' || character == ':' {
            let start = index;
            while index < characters.len()
                && (characters[index].is_ascii_alphanumeric()
                    || matches!(characters[index], '_' | ':'))
            {
                index += 1;
            }
            let word: String = characters[start..index].iter().collect();
            let after = next_non_space(index);
            let is_call = characters.get(after) == Some(&'(');
            if PROMQL_LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                if is_call {
                    index = skip_balanced(after, '(', ')');
                }
            } else if !is_call && !PROMQL_KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            index += 1;
        }
    }
    names
}

/// Every panel of a dashboard, those inside rows included.
fn dashboard_panels(panels: &Value) -> Vec<&Value> {
    array(panels)
        .iter()
        .flat_map(|panel| std::iter::once(panel).chain(dashboard_panels(&panel["panels"])))
        .collect()
}

#[test]
fn dashboard_queries_only_metrics_the_binaries_expose() {
    // The series of the three roles, from their sources; a check of the parser on a few we know.
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    for (binary, source) in METRIC_ROLES {
        let series = exposed_series(source);
        assert!(
            series.len() >= 5,
            "{source}: only {} series found for {binary}: {series:?}",
            series.len()
        );
        known.extend(series);
    }
    for expected in [
        "plankton_coordinator_jobs",
        "plankton_coordinator_jobs_submitted_total",
        "plankton_worker_step_seconds_total",
        "plankton_worker_loss",
        "plankton_serve_requests_total",
        "plankton_serve_request_latency_seconds_bucket",
        "plankton_serve_batch_size_count",
    ] {
        assert!(
            known.contains_key(expected),
            "exposed_series misreads the metric sources: no {expected} in {:?}",
            known.keys().collect::<Vec<_>>()
        );
    }

    let text = read_workspace_file(DASHBOARD);
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{DASHBOARD} is no JSON: {error}"));
    let mut violations = Vec::new();
    if dashboard["schemaVersion"].as_i64().unwrap_or(0) < 36 {
        violations.push(format!(
            "schemaVersion must be 36 or later (Grafana 9+ datasource references), not {}",
            dashboard["schemaVersion"]
        ));
    }
    let variables = array(&dashboard["templating"]["list"]);
    let has_datasource_variable = variables.iter().any(|variable| {
        variable["name"] == "datasource"
            && variable["type"] == "datasource"
            && variable["query"] == "prometheus"
    });
    if !has_datasource_variable {
        violations.push(
            "templating.list must hold a variable `datasource` of type datasource, query prometheus"
                .to_owned(),
        );
    }
    let uses_variable = |datasource: &Value| {
        datasource["uid"] == "${datasource}" && datasource["type"] == "prometheus"
    };
    // (where, PromQL) of every query: panel targets and query variables (label_values(metric, label) and
    // query_result(expr) are Grafana's, around PromQL).
    let mut queries: Vec<(String, String)> = Vec::new();
    for variable in variables
        .iter()
        .filter(|variable| variable["type"] == "query")
    {
        let which = format!("variable {}", variable["name"]);
        if !uses_variable(&variable["datasource"]) {
            violations.push(format!(
                "{which}: datasource must be {{type: prometheus, uid: ${{datasource}}}}"
            ));
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or("");
        let promql = if let Some(arguments) = query.strip_prefix("label_values(") {
            let arguments = arguments.strip_suffix(')').unwrap_or(arguments);
            match arguments.rsplit_once(',') {
                Some((selector, _label)) => selector.to_owned(),
                None => String::new(), // label_values(label): every series
            }
        } else if let Some(expression) = query.strip_prefix("query_result(") {
            expression
                .strip_suffix(')')
                .unwrap_or(expression)
                .to_owned()
        } else {
            query.to_owned()
        };
        queries.push((which, promql));
    }
    let panels = dashboard_panels(&dashboard["panels"]);
    let mut panel_ids = BTreeSet::new();
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        let which = format!("panel \"{title}\" (id {})", panel["id"]);
        if !panel_ids.insert(panel["id"].to_string()) {
            violations.push(format!("{which}: its id is not unique"));
        }
        if !panel["gridPos"].is_object() {
            violations.push(format!("{which}: no gridPos"));
        }
        if !uses_variable(&panel["datasource"]) {
            violations.push(format!(
                "{which}: datasource must be {{type: prometheus, uid: ${{datasource}}}}"
            ));
        }
        let targets = array(&panel["targets"]);
        if targets.is_empty() {
            violations.push(format!("{which}: no targets"));
        }
        for target in targets {
            let which = format!("{which} target {}", target["refId"].as_str().unwrap_or("?"));
            if !uses_variable(&target["datasource"]) {
                violations.push(format!(
                    "{which}: datasource must be {{type: prometheus, uid: ${{datasource}}}}"
                ));
            }
            match target["expr"].as_str() {
                Some(expression) if !expression.trim().is_empty() => {
                    queries.push((which, expression.to_owned()));
                }
                _ => violations.push(format!("{which}: no PromQL expr")),
            }
        }
    }
    let mut roles_shown = BTreeSet::new();
    for (which, promql) in &queries {
        let names = metric_names_in(promql);
        if names.is_empty() && !which.starts_with("variable") {
            violations.push(format!("{which}: `{promql}` selects no metric"));
        }
        for metric in names {
            match known.get(&metric) {
                Some(family) => {
                    roles_shown.insert(family.split('_').take(2).collect::<Vec<_>>().join("_"));
                }
                None => violations.push(format!(
                    "{which}: `{metric}` is no series the binaries expose (in `{promql}`)"
                )),
            }
        }
    }
    for prefix in ["plankton_coordinator", "plankton_worker", "plankton_serve"] {
        if !roles_shown.contains(prefix) {
            violations.push(format!("no panel shows a {prefix}_* metric"));
        }
    }
    if !violations.is_empty() {
        violations.push(format!(
            "(the series exposed, from {}: {})",
            METRIC_ROLES.map(|(_, source)| source).join(", "),
            known.keys().cloned().collect::<Vec<_>>().join(" ")
        ));
    }
    assert_no_violations(DASHBOARD, &violations);
    assert!(
        read_workspace_file("deploy/README.md").contains("grafana/plankton-cluster.json"),
        "deploy/README.md must say how to import {DASHBOARD}"
    );
}

#[test]
fn promql_metric_names_skip_functions_labels_and_keywords() {
    assert_eq!(
        metric_names_in(
            "histogram_quantile(0.99, sum by (method, le) (rate(a_bucket{x=~\"$ns\", code!=\"0\"}[$__rate_interval])))"
        ),
        ["a_bucket"]
    );
    assert_eq!(
        metric_names_in(
            "sum by (phase) (rate(b_total[5m])) / ignoring(phase) group_left sum(rate(c_total[5m])) * 1e9"
        ),
        ["b_total", "c_total"]
    );
    assert_eq!(
        metric_names_in("max without(pod) (d) > bool 0 or on() vector(0)"),
        ["d"]
    );
}

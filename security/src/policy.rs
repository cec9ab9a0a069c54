//! The access policy of every RPC of every service, keyed by gRPC path (`/package.Service/Method`).
//!
//! A method without a rule is refused to everyone, so an RPC added without a rule can never be called; a test
//! checks this table against the compiled protos in both directions.

use crate::Role;
use crate::Role::{Admin, Client, Operator, Viewer, Worker};

/// Who may call one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRule {
    /// `/package.Service/Method`, as in the HTTP/2 `:path` of a gRPC request.
    pub path: &'static str,
    /// Roles allowed to call it (admin is in every list).
    pub allowed: &'static [Role],
    /// Changes state: every call is written to the audit log, allowed or not.
    pub mutating: bool,
    /// Needs no token at all (health checks for Kubernetes probes).
    pub public: bool,
}

impl AccessRule {
    pub fn allows(&self, role: Role) -> bool {
        self.allowed.contains(&role)
    }
}

const EVERY_ROLE: &[Role] = &Role::ALL;
const READERS: &[Role] = &[Viewer, Operator, Admin];
const OPERATORS: &[Role] = &[Operator, Admin];
const WORKERS: &[Role] = &[Worker, Admin];
const INFERENCE_CLIENTS: &[Role] = &[Client, Admin];

const fn read(path: &'static str, allowed: &'static [Role]) -> AccessRule {
    AccessRule {
        path,
        allowed,
        mutating: false,
        public: false,
    }
}

const fn mutate(path: &'static str, allowed: &'static [Role]) -> AccessRule {
    AccessRule {
        path,
        allowed,
        mutating: true,
        public: false,
    }
}

const fn public(path: &'static str) -> AccessRule {
    AccessRule {
        path,
        allowed: EVERY_ROLE,
        mutating: false,
        public: true,
    }
}

static RULES: &[AccessRule] = &[
    // Coordinator: jobs and workers.
    mutate("/plankton.v1.JobService/SubmitJob", OPERATORS),
    mutate("/plankton.v1.JobService/CancelJob", OPERATORS),
    mutate("/plankton.v1.JobService/ResumeJob", OPERATORS),
    read("/plankton.v1.JobService/GetJob", READERS),
    read("/plankton.v1.JobService/ListJobs", READERS),
    read("/plankton.v1.JobService/WatchJob", READERS),
    read("/plankton.v1.JobService/ListWorkers", READERS),
    read("/plankton.v1.JobService/GetJobReport", READERS),
    // Coordinator: model registry. The inference server reads it with a viewer token; inference clients may not.
    mutate("/plankton.v1.ModelRegistry/PromoteModel", OPERATORS),
    read("/plankton.v1.ModelRegistry/ListModels", READERS),
    read("/plankton.v1.ModelRegistry/GetModel", READERS),
    // Coordinator: training workers.
    mutate("/plankton.v1.WorkerControl/Register", WORKERS),
    mutate("/plankton.v1.WorkerControl/Heartbeat", WORKERS),
    mutate("/plankton.v1.WorkerControl/NextAssignment", WORKERS),
    mutate("/plankton.v1.WorkerControl/ReportProgress", WORKERS),
    mutate("/plankton.v1.WorkerControl/ReportEpoch", WORKERS),
    mutate("/plankton.v1.WorkerControl/ReportDone", WORKERS),
    mutate("/plankton.v1.WorkerControl/ReportGenerationEnd", WORKERS),
    mutate("/plankton.v1.WorkerControl/ReportCheckpoint", WORKERS),
    // Inference server.
    read("/plankton.v1.Inference/Predict", INFERENCE_CLIENTS),
    read("/plankton.v1.Inference/PredictStream", INFERENCE_CLIENTS),
    read("/plankton.v1.Inference/GetModelInfo", INFERENCE_CLIENTS),
    // Inference server: the Open Inference Protocol (KServe v2 / Triton).
    read(
        "/inference.GRPCInferenceService/ServerLive",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ServerReady",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ModelReady",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ServerMetadata",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ModelMetadata",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ModelInfer",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        INFERENCE_CLIENTS,
    ),
    // Triton's other extensions of the protocol: not served, so an inference client gets UNIMPLEMENTED (not
    // PERMISSION_DENIED) and a Triton client can tell the feature is missing.
    read(
        "/inference.GRPCInferenceService/ModelConfig",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/ModelStatistics",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/RepositoryIndex",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/SystemSharedMemoryStatus",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/SystemSharedMemoryRegister",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/SystemSharedMemoryUnregister",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/CudaSharedMemoryStatus",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/CudaSharedMemoryRegister",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/CudaSharedMemoryUnregister",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/TraceSetting",
        INFERENCE_CLIENTS,
    ),
    read(
        "/inference.GRPCInferenceService/LogSettings",
        INFERENCE_CLIENTS,
    ),
    // Every server.
    public("/grpc.health.v1.Health/Check"),
    public("/grpc.health.v1.Health/Watch"),
    read(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        EVERY_ROLE,
    ),
    read(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        EVERY_ROLE,
    ),
];

/// Services of the plankton protos that are documentation of a non-gRPC protocol and are never served:
/// they have no rules, so a server that mistakenly exposed them would refuse every call.
pub const UNSERVED_SERVICES: &[&str] = &["plankton.v1.PeerService"];

/// The rule of the RPC at `path` (`/package.Service/Method`); None: nobody may call it.
pub fn rule_for(path: &str) -> Option<&'static AccessRule> {
    RULES.iter().find(|rule| rule.path == path)
}

/// Every rule.
pub fn all_rules() -> &'static [AccessRule] {
    RULES
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every `/package.Service/Method` of the compiled plankton protos.
    fn proto_method_paths() -> BTreeSet<String> {
        let descriptors =
            prost_types::FileDescriptorSet::decode(plankton_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths = BTreeSet::new();
        for file in &descriptors.file {
            for service in &file.service {
                let service_name = format!("{}.{}", file.package(), service.name());
                if UNSERVED_SERVICES.contains(&service_name.as_str()) {
                    continue;
                }
                for method in &service.method {
                    paths.insert(format!("/{service_name}/{}", method.name()));
                }
            }
        }
        paths
    }

    #[test]
    fn every_rpc_of_the_protos_has_a_rule_and_every_plankton_rule_an_rpc() {
        let proto_paths = proto_method_paths();
        assert!(
            proto_paths.len() >= 21,
            "descriptor set looks incomplete: {proto_paths:?}"
        );
        let without_rule: Vec<_> = proto_paths
            .iter()
            .filter(|path| rule_for(path).is_none())
            .collect();
        assert!(
            without_rule.is_empty(),
            "RPCs without an access rule in policy.rs: {without_rule:?}"
        );
        let without_rpc: Vec<_> = RULES
            .iter()
            .map(|rule| rule.path)
            .filter(|path| path.starts_with("/plankton.") && !proto_paths.contains(*path))
            .collect();
        assert!(
            without_rpc.is_empty(),
            "access rules naming no RPC of the protos: {without_rpc:?}"
        );
    }

    #[test]
    fn rules_are_unique_and_admin_may_call_everything() {
        let unique_paths: BTreeSet<_> = RULES.iter().map(|rule| rule.path).collect();
        assert_eq!(unique_paths.len(), RULES.len(), "a path has two rules");
        for rule in RULES {
            assert!(rule.allows(Admin), "admin may not call {}", rule.path);
            assert!(
                !(rule.public && rule.mutating),
                "{} is public and mutating",
                rule.path
            );
        }
    }

    #[test]
    fn roles_get_what_their_job_needs() {
        let allows = |path: &str, role: Role| rule_for(path).unwrap().allows(role);
        assert!(allows("/plankton.v1.JobService/SubmitJob", Operator));
        assert!(!allows("/plankton.v1.JobService/SubmitJob", Viewer));
        assert!(allows("/plankton.v1.ModelRegistry/GetModel", Viewer));
        assert!(!allows("/plankton.v1.ModelRegistry/GetModel", Client));
        assert!(!allows("/plankton.v1.WorkerControl/Heartbeat", Operator));
        assert!(allows("/plankton.v1.Inference/Predict", Client));
        assert!(!allows("/plankton.v1.Inference/Predict", Viewer));
        assert!(allows("/inference.GRPCInferenceService/ModelInfer", Client));
        assert!(!allows(
            "/inference.GRPCInferenceService/ModelInfer",
            Worker
        ));
        assert!(!allows(
            "/inference.GRPCInferenceService/ModelMetadata",
            Viewer
        ));
        assert!(rule_for("/grpc.health.v1.Health/Check").unwrap().public);
        assert!(rule_for("/plankton.v1.PeerService/Hello").is_none());
        assert!(rule_for("/plankton.v1.JobService/DropDatabase").is_none());
    }
}

//! Refuses a submitted job spec that would read or write outside the storage the operator allowed, or make the
//! coordinator allocate without bound, before anything is read or allocated for it.
//!
//! Locations are compared as written, segment by segment: a `.` or `..` segment (also percent-encoded), a
//! backslash, a relative path, a query or a control character is refused, never resolved. Symbolic links are
//! not followed here: a link inside an allowed folder that points out of it is the operator's to avoid.

use plankton_proto::v1::{
    Augmentation, ClassWeighting, GradientCompression, JobSpec, LossFunction, LossNormalization,
    LrSchedule, NonFinitePolicy, OptimizerKind, Precision, ResizeMode,
};

use crate::error::{CoordinatorError, CoordinatorResult};

/// Largest `world_size` a [`JobPolicy`] allows unless configured otherwise.
pub const DEFAULT_MAX_WORLD_SIZE: u32 = 256;
/// Largest `world_size` any policy allows; the planner checks it too, whoever calls it.
pub const WORLD_SIZE_HARD_LIMIT: u32 = 65_536;
/// Largest per-worker `batch_size`.
pub const MAX_BATCH_SIZE: u32 = 65_536;
/// Largest `epochs`.
pub const MAX_EPOCHS: u32 = 100_000;
/// Largest `threads_per_worker`.
pub const MAX_THREADS_PER_WORKER: u32 = 1_024;
/// Largest `keep_checkpoints` (each one is a full copy of the training state).
pub const MAX_KEEP_CHECKPOINTS: u32 = 1_000;
/// Largest `max_recoveries` (every recovery is kept in the job's record).
pub const MAX_RECOVERIES: u32 = 10_000;
/// Longest `name`, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest location (`dataset_url`, `output_url`, `init_from`), in characters.
pub const MAX_LOCATION_CHARS: usize = 4_096;

/// Where jobs may read and write, and how large they may be. Prefixes are locations as a job spec gives them
/// (`/data/plankton`, `file:///data/plankton`, `s3://bucket/plankton`); a location is under a prefix when it has
/// the same scheme and bucket and the prefix's path segments begin its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPolicy {
    /// Datasets must lie under one of these (the coordinator's `--allow-dataset`); none allows no dataset.
    pub dataset_prefixes: Vec<String>,
    /// Outputs must lie under one of these (`--allow-output`); with none, under the job's dataset folder.
    pub output_prefixes: Vec<String>,
    /// Largest `world_size` (`--max-world-size`), at most [`WORLD_SIZE_HARD_LIMIT`].
    pub max_world_size: u32,
}

impl Default for JobPolicy {
    /// No prefix (every dataset is refused until the operator allows some), world size up to 256.
    fn default() -> Self {
        JobPolicy {
            dataset_prefixes: Vec::new(),
            output_prefixes: Vec::new(),
            max_world_size: DEFAULT_MAX_WORLD_SIZE,
        }
    }
}

impl JobPolicy {
    /// Checks the configured prefixes and world size, so a typo stops the coordinator at start-up instead of
    /// refusing every job. The error names the offending flag.
    pub fn check(&self) -> Result<(), String> {
        for (flag, prefixes) in [
            ("--allow-dataset", &self.dataset_prefixes),
            ("--allow-output", &self.output_prefixes),
        ] {
            for prefix in prefixes {
                parse_location(prefix).map_err(|reason| format!("{flag} {prefix}: {reason}"))?;
            }
        }
        if !(1..=WORLD_SIZE_HARD_LIMIT).contains(&self.max_world_size) {
            return Err(format!(
                "--max-world-size {} must be in 1..={WORLD_SIZE_HARD_LIMIT}",
                self.max_world_size
            ));
        }
        Ok(())
    }
}

/// Refuses a spec whose locations lie outside `policy` or whose sizes are out of bounds. Reads nothing and
/// allocates nothing in proportion to the spec; call it before `normalize_spec` and `plan_job`. Zero-valued
/// fields (filled with defaults later) pass.
pub fn validate_spec(spec: &JobSpec, policy: &JobPolicy) -> CoordinatorResult<()> {
    check_sizes(spec, policy)?;
    check_enums(spec)?;
    check_loss(spec)?;
    check_locations(spec, policy)
}

fn invalid_field(field: &str, message: String) -> CoordinatorError {
    CoordinatorError::InvalidField {
        field: field.to_string(),
        message,
    }
}

fn check_sizes(spec: &JobSpec, policy: &JobPolicy) -> CoordinatorResult<()> {
    let max_world_size = policy.max_world_size.min(WORLD_SIZE_HARD_LIMIT);
    if !(1..=max_world_size).contains(&spec.world_size) {
        return Err(invalid_field(
            "spec.world_size",
            format!(
                "{} is outside 1..={max_world_size} (the coordinator's --max-world-size)",
                spec.world_size
            ),
        ));
    }
    let upper_bounds: [(&str, u32, u32, &str); 5] = [
        (
            "spec.batch_size",
            spec.batch_size,
            MAX_BATCH_SIZE,
            "per worker",
        ),
        ("spec.epochs", spec.epochs, MAX_EPOCHS, ""),
        (
            "spec.threads_per_worker",
            spec.threads_per_worker,
            MAX_THREADS_PER_WORKER,
            "",
        ),
        (
            "spec.keep_checkpoints",
            spec.keep_checkpoints,
            MAX_KEEP_CHECKPOINTS,
            "each is a full copy of the training state",
        ),
        (
            "spec.max_recoveries",
            spec.max_recoveries,
            MAX_RECOVERIES,
            "",
        ),
    ];
    for (field, value, bound, note) in upper_bounds {
        if value > bound {
            let note = if note.is_empty() {
                String::new()
            } else {
                format!("; {note}")
            };
            return Err(invalid_field(
                field,
                format!("{value} is larger than {bound}, the most allowed{note}"),
            ));
        }
    }
    let name_chars = spec.name.chars().count();
    if name_chars > MAX_NAME_CHARS {
        return Err(invalid_field(
            "spec.name",
            format!("{name_chars} characters; at most {MAX_NAME_CHARS} allowed"),
        ));
    }
    Ok(())
}

/// Refuses enum values this coordinator does not know (a newer client's), instead of silently using the default.
fn check_enums(spec: &JobSpec) -> CoordinatorResult<()> {
    let known = [
        (
            "spec.class_weighting",
            spec.class_weighting,
            ClassWeighting::try_from(spec.class_weighting).is_ok(),
        ),
        (
            "spec.optimizer",
            spec.optimizer,
            OptimizerKind::try_from(spec.optimizer).is_ok(),
        ),
        (
            "spec.lr_schedule",
            spec.lr_schedule,
            LrSchedule::try_from(spec.lr_schedule).is_ok(),
        ),
        (
            "spec.augmentation",
            spec.augmentation,
            Augmentation::try_from(spec.augmentation).is_ok(),
        ),
        (
            "spec.resize_mode",
            spec.resize_mode,
            ResizeMode::try_from(spec.resize_mode).is_ok(),
        ),
        (
            "spec.non_finite_policy",
            spec.non_finite_policy,
            NonFinitePolicy::try_from(spec.non_finite_policy).is_ok(),
        ),
        (
            "spec.loss_normalization",
            spec.loss_normalization,
            LossNormalization::try_from(spec.loss_normalization).is_ok(),
        ),
        (
            "spec.gradient_compression",
            spec.gradient_compression,
            GradientCompression::try_from(spec.gradient_compression).is_ok(),
        ),
        (
            "spec.precision",
            spec.precision,
            Precision::try_from(spec.precision).is_ok(),
        ),
        (
            "spec.loss",
            spec.loss,
            LossFunction::try_from(spec.loss).is_ok(),
        ),
    ];
    for (field, value, is_known) in known {
        if !is_known {
            return Err(invalid_field(
                field,
                format!("{value} is not a value this coordinator knows"),
            ));
        }
    }
    Ok(())
}

/// `logit_tau` is finite and positive (0 stands for the default), and only set with the logit-adjusted loss.
fn check_loss(spec: &JobSpec) -> CoordinatorResult<()> {
    let tau = spec.logit_tau;
    if !(tau.is_finite() && tau >= 0.0) {
        return Err(invalid_field(
            "spec.logit_tau",
            format!("{tau} is not a finite positive number"),
        ));
    }
    let logit_adjusted = spec.loss == LossFunction::LogitAdjusted as i32;
    if tau != 0.0 && !logit_adjusted {
        return Err(invalid_field(
            "spec.logit_tau",
            format!("{tau} is set but the loss is not logit_adjusted"),
        ));
    }
    Ok(())
}

fn check_locations(spec: &JobSpec, policy: &JobPolicy) -> CoordinatorResult<()> {
    let dataset_url = spec.dataset_url.trim();
    let dataset =
        parse_location(dataset_url).map_err(|reason| invalid_field("spec.dataset_url", reason))?;
    let dataset_prefixes = parse_prefixes(&policy.dataset_prefixes);
    if dataset_prefixes.is_empty() {
        return Err(invalid_field(
            "spec.dataset_url",
            "this coordinator allows no dataset location; start it with --allow-dataset PREFIX \
             (e.g. --allow-dataset file:///data/plankton)"
                .into(),
        ));
    }
    if !dataset.is_under_any(&dataset_prefixes) {
        return Err(invalid_field(
            "spec.dataset_url",
            format!(
                "{dataset_url} is outside the allowed dataset locations ({})",
                policy.dataset_prefixes.join(", ")
            ),
        ));
    }

    let output_prefixes = parse_prefixes(&policy.output_prefixes);
    let output_url = spec.output_url.trim();
    if !output_url.is_empty() {
        let output = parse_location(output_url)
            .map_err(|reason| invalid_field("spec.output_url", reason))?;
        if output_prefixes.is_empty() {
            if !output.is_under(&dataset) {
                return Err(invalid_field(
                    "spec.output_url",
                    format!(
                        "{output_url} is outside the dataset folder {dataset_url} (no --allow-output prefix is \
                         configured, so outputs must lie under the job's dataset)"
                    ),
                ));
            }
        } else if !output.is_under_any(&output_prefixes) {
            return Err(invalid_field(
                "spec.output_url",
                format!(
                    "{output_url} is outside the allowed output locations ({})",
                    policy.output_prefixes.join(", ")
                ),
            ));
        }
    }

    let init_from = spec.init_from.trim();
    if !init_from.is_empty() {
        let initial_weights =
            parse_location(init_from).map_err(|reason| invalid_field("spec.init_from", reason))?;
        let allowed = initial_weights.is_under_any(&dataset_prefixes)
            || initial_weights.is_under_any(&output_prefixes);
        if !allowed {
            let prefixes: Vec<&str> = policy
                .dataset_prefixes
                .iter()
                .chain(&policy.output_prefixes)
                .map(String::as_str)
                .collect();
            return Err(invalid_field(
                "spec.init_from",
                format!(
                    "{init_from} is outside the allowed dataset and output locations ({})",
                    prefixes.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The configured prefixes that parse ([`JobPolicy::check`] reports the others at start-up).
fn parse_prefixes(prefixes: &[String]) -> Vec<StorageLocation> {
    prefixes
        .iter()
        .filter_map(|prefix| parse_location(prefix).ok())
        .collect()
}

/// A location reduced to what decides where it points: the store kind, the bucket (or memory store name;
/// empty for the local file system) and the decoded path segments.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StorageLocation {
    scheme: &'static str,
    bucket: String,
    segments: Vec<String>,
}

impl StorageLocation {
    fn is_under(&self, prefix: &StorageLocation) -> bool {
        self.scheme == prefix.scheme
            && self.bucket == prefix.bucket
            && self.segments.starts_with(&prefix.segments)
    }

    fn is_under_any(&self, prefixes: &[StorageLocation]) -> bool {
        prefixes.iter().any(|prefix| self.is_under(prefix))
    }
}

/// Parses a location in the forms `plankton_dataset::open_location` opens: an absolute path, `file:///path`,
/// `s3://bucket/path` (or `s3a://`), `gs://bucket/path`, `az://container/path` (or `azure://`, `abfs://`,
/// `abfss://`) and `memory://name/path`. Refuses rather than resolves anything that could make the path mean
/// something other than it reads. The error is the reason, for a message after the field name.
fn parse_location(text: &str) -> Result<StorageLocation, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty".into());
    }
    let chars = text.chars().count();
    if chars > MAX_LOCATION_CHARS {
        return Err(format!(
            "is {chars} characters long; at most {MAX_LOCATION_CHARS} allowed"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if text.contains('\\') {
        return Err(format!("{text}: backslashes are not allowed in a location"));
    }
    if text.contains('?') || text.contains('#') {
        return Err(format!(
            "{text}: a location may not have a query (?) or fragment (#)"
        ));
    }
    let Some((scheme_text, rest)) = text.split_once("://") else {
        return parse_plain_path(text);
    };
    let scheme = match scheme_text.to_ascii_lowercase().as_str() {
        "file" => "file",
        "memory" => "memory",
        "s3" | "s3a" => "s3",
        "gs" => "gs",
        "az" | "azure" | "abfs" | "abfss" => "az",
        _ => {
            return Err(format!(
                "{text}: unsupported scheme '{scheme_text}' (use an absolute path, file://, s3://, gs://, az:// or memory://)"
            ));
        }
    };
    let (bucket, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    let bucket = if scheme == "file" {
        if !bucket.is_empty() && !bucket.eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "{text}: a file URL names no host: file:///absolute/path"
            ));
        }
        String::new()
    } else {
        check_bucket(text, bucket)?;
        bucket.to_string()
    };
    let segments = path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| decode_segment(text, segment))
        .collect::<Result<Vec<String>, String>>()?;
    Ok(StorageLocation {
        scheme,
        bucket,
        segments,
    })
}

/// An absolute local path, taken literally (no percent-decoding, as the dataset crate opens it).
fn parse_plain_path(text: &str) -> Result<StorageLocation, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "{text}: a relative path is not allowed; give an absolute path or a URL"
        ));
    }
    if text.contains('%') {
        return Err(format!(
            "{text}: a plain path may not contain '%'; write it as a file:// URL"
        ));
    }
    let mut segments = Vec::new();
    for segment in text.split('/').filter(|segment| !segment.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(format!(
                "{text}: '.' and '..' path segments are not allowed"
            ));
        }
        segments.push(segment.to_string());
    }
    Ok(StorageLocation {
        scheme: "file",
        bucket: String::new(),
        segments,
    })
}

/// A bucket, container or memory store name: not empty, letters, digits, `.`, `-` and `_` only.
fn check_bucket(text: &str, bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err(format!(
            "{text}: no bucket, container or store name (scheme://bucket/path)"
        ));
    }
    let allowed =
        |character: char| character.is_ascii_alphanumeric() || matches!(character, '.' | '-' | '_');
    if !bucket.chars().all(allowed) || bucket.chars().all(|character| character == '.') {
        return Err(format!(
            "{text}: bucket '{bucket}' may hold only letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Percent-decodes one path segment of a URL and refuses one that is, or hides, a dot segment or a separator.
fn decode_segment(text: &str, segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'%' {
            decoded.push(bytes[index]);
            index += 1;
            continue;
        }
        let escaped = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        let Some(byte) = escaped else {
            return Err(format!("{text}: bad percent-escape in '{segment}'"));
        };
        decoded.push(byte);
        index += 3;
    }
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Err(format!("{text}: '{segment}' does not decode to UTF-8"));
    };
    if decoded == "." || decoded == ".." {
        return Err(format!(
            "{text}: '.' and '..' path segments are not allowed (also percent-encoded)"
        ));
    }
    if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
        return Err(format!(
            "{text}: '{segment}' decodes to a separator or control character"
        ));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(datasets: &[&str], outputs: &[&str]) -> JobPolicy {
        JobPolicy {
            dataset_prefixes: datasets.iter().map(|prefix| prefix.to_string()).collect(),
            output_prefixes: outputs.iter().map(|prefix| prefix.to_string()).collect(),
            ..JobPolicy::default()
        }
    }

    fn spec(dataset_url: &str) -> JobSpec {
        JobSpec {
            dataset_url: dataset_url.into(),
            world_size: 2,
            ..JobSpec::default()
        }
    }

    fn with_output(dataset_url: &str, output_url: &str) -> JobSpec {
        JobSpec {
            output_url: output_url.into(),
            ..spec(dataset_url)
        }
    }

    /// The refusal's field and message, or "ok".
    fn outcome(spec: &JobSpec, policy: &JobPolicy) -> String {
        match validate_spec(spec, policy) {
            Ok(()) => "ok".into(),
            Err(CoordinatorError::InvalidField { field, message }) => format!("{field}: {message}"),
            Err(other) => panic!("not an InvalidField error: {other}"),
        }
    }

    fn assert_refused(spec: &JobSpec, policy: &JobPolicy, field: &str, needle: &str) {
        let text = outcome(spec, policy);
        assert!(
            text.starts_with(&format!("{field}: ")) && text.contains(needle),
            "expected {field} refused with {needle:?}, got: {text}"
        );
    }

    #[test]
    fn with_no_prefix_configured_every_dataset_is_refused_naming_the_flag() {
        assert_refused(
            &spec("file:///data/plankton/d1"),
            &JobPolicy::default(),
            "spec.dataset_url",
            "--allow-dataset PREFIX",
        );
    }

    #[test]
    fn datasets_under_a_prefix_are_allowed_in_every_accepted_form() {
        let policy = policy(
            &[
                "file:///data/plankton",
                "s3://lab-bucket/plankton/",
                "gs://gcs-bucket",
                "az://container/x",
                "memory://tests",
            ],
            &[],
        );
        for url in [
            "file:///data/plankton",
            "file:///data/plankton/d1/",
            "file://localhost/data/plankton/d1",
            "/data/plankton/d1",
            "  /data//plankton/d1  ",
            "file:///data/%70lankton/d1",
            "s3://lab-bucket/plankton/d1",
            "S3A://lab-bucket/plankton/d1",
            "gs://gcs-bucket/anything",
            "azure://container/x/y",
            "memory://tests/d1",
        ] {
            assert_eq!(outcome(&spec(url), &policy), "ok", "{url}");
        }
    }

    #[test]
    fn a_dataset_outside_every_prefix_is_refused_listing_them() {
        let policy = policy(&["file:///data/plankton/", "s3://lab-bucket/plankton"], &[]);
        assert_eq!(
            outcome(&spec("file:///etc"), &policy),
            "spec.dataset_url: file:///etc is outside the allowed dataset locations \
             (file:///data/plankton/, s3://lab-bucket/plankton)"
        );
        assert_refused(
            &spec("/home/user/data"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
        assert_refused(
            &spec("file:///data"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
    }

    #[test]
    fn prefixes_match_whole_path_segments_only() {
        let policy = policy(&["file:///data/plankton"], &[]);
        assert_refused(
            &spec("file:///data/plankton-evil"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
        assert_refused(
            &spec("/data/planktonx/d1"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
        assert_eq!(outcome(&spec("/data/plankton/evil"), &policy), "ok");
    }

    #[test]
    fn dot_segments_are_refused_not_resolved_also_when_percent_encoded() {
        let policy = policy(&["file:///data/plankton"], &["file:///out"]);
        for url in [
            "file:///data/plankton/../../etc",
            "/data/plankton/../etc",
            "/data/plankton/./d1",
            "file:///data/plankton/%2e%2e/%2E%2E/etc",
            "file:///data/plankton/.%2e/etc",
            "file:///data/plankton/%2e/d1",
            "s3://bucket/plankton/../x",
        ] {
            assert_refused(
                &spec(url),
                &policy,
                "spec.dataset_url",
                "'..' path segments",
            );
        }
        assert_refused(
            &with_output("/data/plankton/d1", "file:///out/%2e%2e/etc"),
            &policy,
            "spec.output_url",
            "'..' path segments",
        );
    }

    #[test]
    fn backslashes_queries_separators_and_bad_escapes_are_refused() {
        let policy = policy(&["file:///data/plankton"], &[]);
        for (url, needle) in [
            ("file:///data/plankton\\..\\etc", "backslashes"),
            ("/data/plankton\\d1", "backslashes"),
            ("file:///data/plankton/%5c..", "separator"),
            ("file:///data/plankton/a%2f..%2f..%2fetc", "separator"),
            ("file:///data/plankton/%00", "control character"),
            ("file:///data/plankton/d1\n", "ok-trimmed"),
            ("file:///data/pl\nankton/d1", "control character"),
            ("file:///data/plankton/%zz", "percent-escape"),
            ("file:///data/plankton/%2", "percent-escape"),
            ("file:///data/plankton/d1?x=1", "query"),
            ("file:///data/plankton/d1#top", "fragment"),
            ("/data/plankton/%2e%2e", "may not contain '%'"),
        ] {
            if needle == "ok-trimmed" {
                assert_eq!(outcome(&spec(url), &policy), "ok", "{url:?}");
            } else {
                assert_refused(&spec(url), &policy, "spec.dataset_url", needle);
            }
        }
    }

    #[test]
    fn relative_paths_hosts_empty_buckets_and_unknown_schemes_are_refused() {
        let policy = policy(&["file:///data/plankton", "s3://bucket"], &[]);
        for (url, needle) in [
            ("data/plankton/d1", "relative path"),
            ("./d1", "relative path"),
            ("file:data/plankton", "relative path"),
            ("", "is empty"),
            ("   ", "is empty"),
            ("file://evil-host/data/plankton", "names no host"),
            ("s3:///plankton", "no bucket"),
            ("s3://", "no bucket"),
            ("s3://user@bucket/x", "may hold only"),
            ("s3://bucket:9000/x", "may hold only"),
            ("http://example.com/data", "unsupported scheme 'http'"),
            ("ftp://bucket/x", "unsupported scheme"),
        ] {
            assert_refused(&spec(url), &policy, "spec.dataset_url", needle);
        }
        let long_url = format!("file:///data/plankton/{}", "a".repeat(MAX_LOCATION_CHARS));
        assert_refused(
            &spec(&long_url),
            &policy,
            "spec.dataset_url",
            "at most 4096",
        );
    }

    #[test]
    fn buckets_and_schemes_must_match() {
        let policy = policy(&["s3://lab-bucket/plankton"], &[]);
        assert_refused(
            &spec("s3://other-bucket/plankton/d1"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
        assert_refused(
            &spec("gs://lab-bucket/plankton/d1"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
        assert_refused(
            &spec("file:///lab-bucket/plankton/d1"),
            &policy,
            "spec.dataset_url",
            "outside",
        );
    }

    #[test]
    fn without_output_prefixes_outputs_must_lie_under_the_dataset() {
        let policy = policy(&["file:///data/plankton"], &[]);
        assert_eq!(outcome(&spec("/data/plankton/d1"), &policy), "ok");
        assert_eq!(
            outcome(
                &with_output("/data/plankton/d1", "file:///data/plankton/d1/models/mine"),
                &policy
            ),
            "ok"
        );
        assert_eq!(
            outcome(&with_output("file:///data/plankton/d1", "/etc/x"), &policy),
            "spec.output_url: /etc/x is outside the dataset folder file:///data/plankton/d1 (no --allow-output \
             prefix is configured, so outputs must lie under the job's dataset)"
        );
        assert_refused(
            &with_output("/data/plankton/d1", "/data/plankton/d2/models"),
            &policy,
            "spec.output_url",
            "outside the dataset folder",
        );
        assert_refused(
            &with_output("/data/plankton/d1", "/data/plankton/d1-evil"),
            &policy,
            "spec.output_url",
            "outside the dataset folder",
        );
        assert_refused(
            &with_output("/data/plankton/d1", "models/mine"),
            &policy,
            "spec.output_url",
            "relative path",
        );
    }

    #[test]
    fn with_output_prefixes_outputs_must_lie_under_one() {
        let policy = policy(
            &["file:///data/plankton"],
            &["file:///data/models/", "s3://out"],
        );
        assert_eq!(
            outcome(
                &with_output("/data/plankton/d1", "/data/models/job"),
                &policy
            ),
            "ok"
        );
        assert_eq!(
            outcome(&with_output("/data/plankton/d1", "s3://out/job"), &policy),
            "ok"
        );
        assert_eq!(
            outcome(&with_output("/data/plankton/d1", "file:///etc/x"), &policy),
            "spec.output_url: file:///etc/x is outside the allowed output locations (file:///data/models/, s3://out)"
        );
        assert_refused(
            &with_output("/data/plankton/d1", "/data/plankton/d1/models"),
            &policy,
            "spec.output_url",
            "outside the allowed output locations",
        );
    }

    #[test]
    fn init_from_must_lie_under_a_dataset_or_output_prefix() {
        let policy = policy(&["file:///data/plankton"], &["s3://out/models"]);
        let fine_tune = |init_from: &str| JobSpec {
            init_from: init_from.into(),
            ..spec("/data/plankton/d1")
        };
        assert_eq!(
            outcome(
                &fine_tune("s3://out/models/job-1/checkpoints/step-40"),
                &policy
            ),
            "ok"
        );
        assert_eq!(
            outcome(
                &fine_tune("/data/plankton/d2/models/job-2/checkpoints/step-9"),
                &policy
            ),
            "ok"
        );
        assert_eq!(
            outcome(&fine_tune("/root/.ssh"), &policy),
            "spec.init_from: /root/.ssh is outside the allowed dataset and output locations \
             (file:///data/plankton, s3://out/models)"
        );
        assert_refused(
            &fine_tune("s3://out/models/%2E%2E/x"),
            &policy,
            "spec.init_from",
            "'..' path segments",
        );
    }

    #[test]
    fn world_size_is_bounded_by_the_policy() {
        let mut policy = policy(&["file:///data/plankton"], &[]);
        let sized = |world_size: u32| JobSpec {
            world_size,
            ..spec("/data/plankton/d1")
        };
        assert_eq!(
            outcome(&sized(4_000_000_000), &policy),
            "spec.world_size: 4000000000 is outside 1..=256 (the coordinator's --max-world-size)"
        );
        assert_refused(&sized(0), &policy, "spec.world_size", "outside 1..=256");
        assert_eq!(outcome(&sized(256), &policy), "ok");
        assert_refused(&sized(257), &policy, "spec.world_size", "outside");
        policy.max_world_size = u32::MAX;
        assert_refused(
            &sized(WORLD_SIZE_HARD_LIMIT + 1),
            &policy,
            "spec.world_size",
            "outside 1..=65536",
        );
    }

    #[test]
    fn sizes_that_drive_allocation_are_bounded() {
        let policy = policy(&["file:///data/plankton"], &[]);
        let base = spec("/data/plankton/d1");
        let cases = [
            (
                JobSpec {
                    batch_size: MAX_BATCH_SIZE + 1,
                    ..base.clone()
                },
                "spec.batch_size",
                "65537 is larger than 65536, the most allowed; per worker",
            ),
            (
                JobSpec {
                    epochs: MAX_EPOCHS + 1,
                    ..base.clone()
                },
                "spec.epochs",
                "100001 is larger than 100000",
            ),
            (
                JobSpec {
                    threads_per_worker: 5_000,
                    ..base.clone()
                },
                "spec.threads_per_worker",
                "larger than 1024",
            ),
            (
                JobSpec {
                    keep_checkpoints: 1_000_000,
                    ..base.clone()
                },
                "spec.keep_checkpoints",
                "larger than 1000",
            ),
            (
                JobSpec {
                    max_recoveries: u32::MAX,
                    ..base.clone()
                },
                "spec.max_recoveries",
                "larger than 10000",
            ),
            (
                JobSpec {
                    name: "n".repeat(MAX_NAME_CHARS + 1),
                    ..base.clone()
                },
                "spec.name",
                "at most 256",
            ),
            (
                JobSpec {
                    optimizer: 99,
                    ..base.clone()
                },
                "spec.optimizer",
                "99 is not a value",
            ),
            (
                JobSpec {
                    non_finite_policy: -1,
                    ..base.clone()
                },
                "spec.non_finite_policy",
                "not a value",
            ),
            (
                JobSpec {
                    loss_normalization: 7,
                    ..base.clone()
                },
                "spec.loss_normalization",
                "7 is not a value",
            ),
            (
                JobSpec {
                    gradient_compression: 5,
                    ..base.clone()
                },
                "spec.gradient_compression",
                "5 is not a value",
            ),
            (
                JobSpec {
                    precision: 3,
                    ..base.clone()
                },
                "spec.precision",
                "3 is not a value",
            ),
            (
                JobSpec {
                    loss: 5,
                    ..base.clone()
                },
                "spec.loss",
                "5 is not a value",
            ),
            (
                JobSpec {
                    loss: LossFunction::LogitAdjusted as i32,
                    logit_tau: -1.0,
                    ..base.clone()
                },
                "spec.logit_tau",
                "-1 is not a finite positive number",
            ),
            (
                JobSpec {
                    loss: LossFunction::LogitAdjusted as i32,
                    logit_tau: f32::NAN,
                    ..base.clone()
                },
                "spec.logit_tau",
                "NaN is not a finite positive number",
            ),
            (
                JobSpec {
                    logit_tau: 0.5,
                    ..base.clone()
                },
                "spec.logit_tau",
                "the loss is not logit_adjusted",
            ),
        ];
        for (spec, field, needle) in &cases {
            assert_refused(spec, &policy, field, needle);
        }
        let logit_adjusted = JobSpec {
            loss: LossFunction::LogitAdjusted as i32,
            logit_tau: 0.5,
            ..base.clone()
        };
        assert_eq!(outcome(&logit_adjusted, &policy), "ok");
        let largest = JobSpec {
            batch_size: MAX_BATCH_SIZE,
            epochs: MAX_EPOCHS,
            threads_per_worker: MAX_THREADS_PER_WORKER,
            keep_checkpoints: MAX_KEEP_CHECKPOINTS,
            max_recoveries: MAX_RECOVERIES,
            max_objects: u32::MAX,
            ..base
        };
        assert_eq!(outcome(&largest, &policy), "ok");
    }

    #[test]
    fn the_error_maps_to_invalid_argument_starting_with_the_field() {
        let error = validate_spec(&spec("file:///etc"), &policy(&["/data"], &[])).unwrap_err();
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("spec.dataset_url: file:///etc is outside"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn policy_check_names_the_bad_flag() {
        assert_eq!(JobPolicy::default().check(), Ok(()));
        let bad = policy(&["/data/plankton", "relative/dir"], &[]);
        assert!(
            bad.check()
                .unwrap_err()
                .starts_with("--allow-dataset relative/dir:")
        );
        let bad = policy(&["/data"], &["s3://"]);
        assert!(
            bad.check()
                .unwrap_err()
                .starts_with("--allow-output s3://:")
        );
        let bad = JobPolicy {
            max_world_size: 0,
            ..policy(&["/data"], &[])
        };
        assert!(bad.check().unwrap_err().contains("--max-world-size 0"));
    }
}

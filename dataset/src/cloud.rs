//! The cloud object stores (S3, Google Cloud Storage, Azure Blob Storage): how each is built from the settings
//! its users already set (object_store's environment variables, or the same keys given explicitly), how its
//! HTTP requests retry transient failures, and how its errors become messages that say what to fix.
//!
//! Every cloud request is retried by object_store's [`RetryConfig`] ([`store_retry_config`]): HTTP 429 and
//! 5xx answers, S3's `SlowDown`/`InternalError` bodies, refused or dropped connections and timeouts, including
//! a body cut while it streams. [`crate::FetchRetry`] retries again around whole reads and listings.

use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::DatasetError;

/// Which store a location lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    Memory,
    S3,
    Gcs,
    Azure,
}

impl StoreKind {
    /// The kind of store `url` names by its scheme (a plain path is local).
    pub fn of_url(url: &str) -> StoreKind {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("s3" | "s3a") => StoreKind::S3,
            Some("gs") => StoreKind::Gcs,
            Some("az" | "azure" | "abfs" | "abfss") => StoreKind::Azure,
            Some("memory") => StoreKind::Memory,
            _ => StoreKind::Local,
        }
    }

    /// The store's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Local => "local folder",
            StoreKind::Memory => "in-memory store",
            StoreKind::S3 => "S3",
            StoreKind::Gcs => "Google Cloud Storage",
            StoreKind::Azure => "Azure Blob Storage",
        }
    }

    /// What the store calls the top-level namespace of a URL's host part.
    pub fn bucket_word(self) -> &'static str {
        match self {
            StoreKind::Azure => "container",
            _ => "bucket",
        }
    }

    pub fn is_cloud(self) -> bool {
        matches!(self, StoreKind::S3 | StoreKind::Gcs | StoreKind::Azure)
    }

    /// The settings that give this store credentials, as its users set them, for messages.
    pub fn credential_settings(self) -> &'static str {
        match self {
            StoreKind::S3 => {
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary keys), or \
                 AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, or run \
                 on an instance with an IAM role"
            }
            StoreKind::Gcs => {
                "GOOGLE_APPLICATION_CREDENTIALS (a service-account or authorized-user JSON file), or \
                 GOOGLE_SERVICE_ACCOUNT (path) or GOOGLE_SERVICE_ACCOUNT_KEY (the JSON itself), or run on a \
                 Google Cloud instance with a service account"
            }
            StoreKind::Azure => {
                "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, or \
                 AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID), or AZURE_STORAGE_USE_EMULATOR=true \
                 for Azurite, or run on an Azure instance with a managed identity"
            }
            StoreKind::Local | StoreKind::Memory => "nothing (this store needs no credentials)",
        }
    }
}

/// What a store request was doing, for messages ("permission denied: cannot write ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOperation {
    Read,
    ReadMetadata,
    List,
    Write,
    Delete,
}

impl std::fmt::Display for StoreOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreOperation::Read => "read",
            StoreOperation::ReadMetadata => "read the metadata of",
            StoreOperation::List => "list",
            StoreOperation::Write => "write",
            StoreOperation::Delete => "delete",
        })
    }
}

/// Where a cloud store's settings come from: the process environment (object_store's `AWS_*`, `GOOGLE_*`,
/// `AZURE_*` variables), and/or explicit `(key, value)` pairs with object_store's configuration keys
/// (`aws_endpoint`, `google_service_account_key`, `azure_storage_account_key`, `allow_http`, `timeout`, ...),
/// which override the environment.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub from_environment: bool,
    pub options: Vec<(String, String)>,
}

impl StoreOptions {
    /// Settings from the environment only: what [`crate::open_location`] uses.
    pub fn from_environment() -> Self {
        StoreOptions {
            from_environment: true,
            options: Vec::new(),
        }
    }

    /// No setting from the environment: only what [`StoreOptions::with`] adds.
    pub fn isolated() -> Self {
        StoreOptions::default()
    }

    /// Adds the setting `key` (an object_store configuration key, e.g. `aws_access_key_id`) = `value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }
}

/// How each HTTP request to a cloud store retries transient failures (HTTP 429, 5xx, refused or dropped
/// connections, timeouts, a body cut while streaming): up to 4 retries, waits of 100 ms doubling up to 2 s
/// (object_store draws each wait at random below its bound), and no retry starts after 15 s. Shorter than
/// object_store's default (10 retries within 3 minutes), because [`crate::FetchRetry`] retries the whole read
/// again (6 attempts within 30 s), so a store that stays down fails a read in well under a minute.
pub fn store_retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(15),
    }
}

/// Client timeouts applied unless the settings give their own (`*_CONNECT_TIMEOUT`, `*_TIMEOUT`, e.g.
/// `AWS_TIMEOUT=5m`): 5 s to connect, 120 s for a whole request (object_store's default is 30 s, short for a
/// large `meta.csv` on a slow link; images and zip members are read in small requests).
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "120s";

/// A cloud store built for a location, and whether its credentials come, by default, from the cloud's
/// instance metadata service because no setting gave any (then a failure to get them means "set one").
pub struct BuiltStore {
    pub store: std::sync::Arc<dyn ObjectStore>,
    pub credentials_from_metadata: bool,
}

/// Builds the `kind` store for `bucket` from `options`.
pub fn build_cloud_store(
    url: &str,
    kind: StoreKind,
    bucket: &str,
    options: &StoreOptions,
) -> Result<BuiltStore, DatasetError> {
    let open_error = |source: object_store::Error| DatasetError::OpenStore {
        url: url.to_string(),
        source,
    };
    let bad_option = |key: &str, source: object_store::Error| DatasetError::InvalidLocation {
        url: url.to_string(),
        reason: format!("bad store setting '{key}': {source}"),
    };
    match kind {
        StoreKind::S3 => {
            let mut builder = if options.from_environment {
                AmazonS3Builder::from_env()
            } else {
                AmazonS3Builder::new()
            };
            for (key, value) in &options.options {
                let config_key: AmazonS3ConfigKey = key
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|error| bad_option(key, error))?;
                builder = builder.with_config(config_key, value);
            }
            for (client_key, default) in client_defaults() {
                if builder
                    .get_config_value(&AmazonS3ConfigKey::Client(client_key))
                    .is_none()
                {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(client_key), default);
                }
            }
            let configured = |key: AmazonS3ConfigKey| builder.get_config_value(&key).is_some();
            let skip_signature = builder
                .get_config_value(&AmazonS3ConfigKey::SkipSignature)
                .is_some_and(|value| is_true(&value));
            let credentials_configured = skip_signature
                || configured(AmazonS3ConfigKey::AccessKeyId)
                || configured(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
                || configured(AmazonS3ConfigKey::ContainerCredentialsFullUri)
                || (env_set("AWS_WEB_IDENTITY_TOKEN_FILE") && env_set("AWS_ROLE_ARN"));
            let credentials_from_metadata = !credentials_configured;
            let store = builder
                .with_bucket_name(bucket)
                .with_retry(store_retry_config())
                .build()
                .map_err(open_error)?;
            Ok(BuiltStore {
                store: std::sync::Arc::new(store),
                credentials_from_metadata,
            })
        }
        StoreKind::Gcs => {
            let mut builder = if options.from_environment {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            };
            for (key, value) in &options.options {
                let config_key: GoogleConfigKey = key
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|error| bad_option(key, error))?;
                builder = builder.with_config(config_key, value);
            }
            for (client_key, default) in client_defaults() {
                if builder
                    .get_config_value(&GoogleConfigKey::Client(client_key))
                    .is_none()
                {
                    builder = builder.with_config(GoogleConfigKey::Client(client_key), default);
                }
            }
            let configured = |key: GoogleConfigKey| builder.get_config_value(&key).is_some();
            let skip_signature = builder
                .get_config_value(&GoogleConfigKey::SkipSignature)
                .is_some_and(|value| is_true(&value));
            let credentials_configured = skip_signature
                || configured(GoogleConfigKey::ServiceAccount)
                || configured(GoogleConfigKey::ServiceAccountKey)
                || configured(GoogleConfigKey::ApplicationCredentials)
                || (options.from_environment && env_set("SERVICE_ACCOUNT"))
                || gcloud_default_credentials_exist();
            let credentials_from_metadata = !credentials_configured;
            let store = builder
                .with_bucket_name(bucket)
                .with_retry(store_retry_config())
                .build()
                .map_err(open_error)?;
            Ok(BuiltStore {
                store: std::sync::Arc::new(store),
                credentials_from_metadata,
            })
        }
        StoreKind::Azure => {
            let mut builder = if options.from_environment {
                MicrosoftAzureBuilder::from_env()
            } else {
                MicrosoftAzureBuilder::new()
            };
            for (key, value) in &options.options {
                let config_key: AzureConfigKey = key
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|error| bad_option(key, error))?;
                builder = builder.with_config(config_key, value);
            }
            for (client_key, default) in client_defaults() {
                if builder
                    .get_config_value(&AzureConfigKey::Client(client_key))
                    .is_none()
                {
                    builder = builder.with_config(AzureConfigKey::Client(client_key), default);
                }
            }
            let configured = |key: AzureConfigKey| builder.get_config_value(&key).is_some();
            let flag = |key: AzureConfigKey| {
                builder
                    .get_config_value(&key)
                    .is_some_and(|value| is_true(&value))
            };
            let use_emulator = flag(AzureConfigKey::UseEmulator);
            if !use_emulator && !configured(AzureConfigKey::AccountName) {
                return Err(DatasetError::MissingCredentials {
                    url: url.to_string(),
                    store: kind.name(),
                    settings: kind.credential_settings(),
                    detail: "no storage account is set".into(),
                });
            }
            let credentials_configured = use_emulator
                || flag(AzureConfigKey::SkipSignature)
                || flag(AzureConfigKey::UseAzureCli)
                || configured(AzureConfigKey::AccessKey)
                || configured(AzureConfigKey::SasKey)
                || configured(AzureConfigKey::Token)
                || configured(AzureConfigKey::ClientSecret)
                || configured(AzureConfigKey::FederatedTokenFile);
            let credentials_from_metadata = !credentials_configured;
            let store = builder
                .with_container_name(bucket)
                .with_retry(store_retry_config())
                .build()
                .map_err(open_error)?;
            Ok(BuiltStore {
                store: std::sync::Arc::new(store),
                credentials_from_metadata,
            })
        }
        StoreKind::Local | StoreKind::Memory => Err(DatasetError::InvalidLocation {
            url: url.to_string(),
            reason: "not a cloud store".into(),
        }),
    }
}

fn client_defaults() -> [(ClientConfigKey, &'static str); 2] {
    [
        (ClientConfigKey::ConnectTimeout, DEFAULT_CONNECT_TIMEOUT),
        (ClientConfigKey::Timeout, DEFAULT_REQUEST_TIMEOUT),
    ]
}

fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|value| !value.is_empty())
}

/// gcloud's application default credentials file (`gcloud auth application-default login`), which
/// object_store reads when nothing else is set.
fn gcloud_default_credentials_exist() -> bool {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .map(|home| home.join(".config/gcloud/application_default_credentials.json"))
        .is_some_and(|path| path.exists())
}

/// Markers (lowercase) of a request to a cloud's instance metadata service for credentials: AWS IMDS and ECS,
/// GCE's metadata server, Azure's managed identity endpoint, and object_store's token request errors.
const METADATA_CREDENTIAL_MARKERS: &[&str] = &[
    "/latest/api/token",
    "/latest/meta-data/iam/security-credentials",
    "computemetadata/v1",
    "/metadata/identity/oauth2/token",
    "error performing token request",
    "error getting token response",
    "169.254.169.254",
    "metadata.google.internal",
];

/// Markers (lowercase) of a store's answer that a bucket or container does not exist.
const MISSING_BUCKET_MARKERS: &[&str] = &[
    "nosuchbucket",
    "the specified bucket does not exist",
    "containernotfound",
    "the specified container does not exist",
    "bucket not found",
];

/// The messages of `error` and its sources, lowercase, one a line.
pub(crate) fn error_chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(cause) = current {
        text.push_str(&cause.to_string().to_lowercase());
        text.push('\n');
        current = cause.source();
    }
    text
}

/// True when `error` is a failed request for credentials to an instance metadata service.
pub(crate) fn is_metadata_credential_failure(error: &object_store::Error) -> bool {
    let text = error_chain_text(error);
    METADATA_CREDENTIAL_MARKERS
        .iter()
        .any(|marker| text.contains(marker))
}

/// True when the store's answer in `error` says the bucket or container does not exist.
pub(crate) fn says_bucket_missing(error: &object_store::Error) -> bool {
    let text = error_chain_text(error);
    MISSING_BUCKET_MARKERS
        .iter()
        .any(|marker| text.contains(marker))
}

/// The innermost message of `error`'s chain, shortened, for the detail of a message that already says what
/// to fix.
pub(crate) fn short_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = summarize_xml_error(&innermost.to_string());
    const LIMIT: usize = 300;
    if text.len() <= LIMIT {
        return text;
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `text` with an XML error body (S3, Azure, GCS's XML API) cut down to its code and message:
/// `...: 403 Forbidden: AccessDenied: Access Denied`.
fn summarize_xml_error(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = start + text[start..].find(close)?;
        Some(text[start..end].trim().to_string())
    };
    let Some(code) = between("<Code>", "</Code>") else {
        return text.to_string();
    };
    let message = between("<Message>", "</Message>").unwrap_or_default();
    let message = message
        .trim_start_matches("<![CDATA[")
        .trim_end_matches("]]>")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let before_body = text.split("<?xml").next().unwrap_or(text);
    let before_body = before_body.split("<Error>").next().unwrap_or(before_body);
    let prefix = before_body.trim_end().trim_end_matches(':').trim_end();
    format!("{prefix}: {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_error_bodies_are_cut_to_code_and_message() {
        let s3 = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n    <Code>AccessDenied</Code>\n    <Message><![CDATA[Access Denied]]></Message>\n    <RequestID>x</RequestID>\n</Error>";
        assert_eq!(
            summarize_xml_error(s3),
            "Server returned non-2xx status code: 403 Forbidden: AccessDenied: Access Denied"
        );
        let plain = "Server returned non-2xx status code: 404 Not Found: Not Found";
        assert_eq!(summarize_xml_error(plain), plain);
    }

    #[test]
    fn missing_buckets_are_recognised_in_each_cloud_answer() {
        for body in [
            "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>",
            "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist.</Message></Error>",
            "<Error><Code>ContainerNotFound</Code><Message>The specified container does not exist.</Message></Error>",
        ] {
            let error = object_store::Error::NotFound {
                path: "x".into(),
                source: body.into(),
            };
            assert!(says_bucket_missing(&error), "{body}");
        }
        let object_missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "<Error><Code>NoSuchKey</Code></Error>".into(),
        };
        assert!(!says_bucket_missing(&object_missing));
    }

    #[test]
    fn kinds_follow_the_scheme() {
        assert_eq!(StoreKind::of_url("s3://b/x"), StoreKind::S3);
        assert_eq!(StoreKind::of_url("S3A://b/x"), StoreKind::S3);
        assert_eq!(StoreKind::of_url("gs://b"), StoreKind::Gcs);
        assert_eq!(StoreKind::of_url("az://c/x"), StoreKind::Azure);
        assert_eq!(StoreKind::of_url("abfss://c/x"), StoreKind::Azure);
        assert_eq!(StoreKind::of_url("memory://t/x"), StoreKind::Memory);
        assert_eq!(StoreKind::of_url("/data/flowcam"), StoreKind::Local);
        assert_eq!(StoreKind::of_url("file:///data"), StoreKind::Local);
    }

    #[test]
    fn an_azure_location_without_an_account_names_the_variables() {
        let error = build_cloud_store(
            "az://plankton/flowcam",
            StoreKind::Azure,
            "plankton",
            &StoreOptions::isolated(),
        )
        .err()
        .expect("no account is an error");
        let message = error.to_string();
        assert!(
            message.contains("AZURE_STORAGE_ACCOUNT_NAME")
                && message.contains("AZURE_STORAGE_ACCOUNT_KEY"),
            "{message}"
        );
        assert!(matches!(error, DatasetError::MissingCredentials { .. }));
    }

    #[test]
    fn an_s3_store_without_keys_takes_credentials_from_the_metadata_service() {
        let isolated = build_cloud_store("s3://b/x", StoreKind::S3, "b", &StoreOptions::isolated())
            .expect("builds");
        assert!(isolated.credentials_from_metadata);
        let with_keys = build_cloud_store(
            "s3://b/x",
            StoreKind::S3,
            "b",
            &StoreOptions::isolated()
                .with("aws_access_key_id", "a")
                .with("aws_secret_access_key", "b"),
        )
        .expect("builds");
        assert!(!with_keys.credentials_from_metadata);
    }

    #[test]
    fn an_unknown_setting_is_named() {
        let error = build_cloud_store(
            "gs://b/x",
            StoreKind::Gcs,
            "b",
            &StoreOptions::isolated().with("google_no_such_setting", "1"),
        )
        .err()
        .expect("unknown key");
        assert!(
            error.to_string().contains("google_no_such_setting"),
            "{error}"
        );
    }
}

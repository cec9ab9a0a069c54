//! Demo credentials for a secure cluster on one machine: a CA, a server certificate for localhost, a client
//! certificate for mutual TLS, and a bearer token for every role with the tokens file that admits them.
//!
//! Not for production: the CA key lies next to the certificates, and certificates last ten years.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::tls::{ClientSecurity, ServerTlsFiles};
use crate::{Role, SecurityError, generate_token, hash_token, read_token_file};

const CA_COMMON_NAME: &str = "plankton-cluster demo CA";
const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files [`ensure_demo_credentials`] made or found, and the token of every role.
#[derive(Debug, Clone)]
pub struct DemoCredentials {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The hashed tokens file admitting the five demo principals ("demo-admin", "demo-operator", ...).
    pub tokens_file: PathBuf,
    /// The token of each role, also stored in `token-<role>`.
    pub tokens: BTreeMap<Role, String>,
}

impl DemoCredentials {
    pub fn token(&self, role: Role) -> &str {
        &self.tokens[&role]
    }

    /// `token-<role>` in the credentials directory.
    pub fn token_file(&self, role: Role) -> PathBuf {
        token_path(&self.dir, role)
    }

    /// The server certificate and key; with `require_client_certificate`, the CA as client CA (mutual TLS).
    pub fn server_tls_files(&self, require_client_certificate: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: require_client_certificate.then(|| self.ca_cert.clone()),
        }
    }

    /// The CA, the client certificate and the token of `role`: what a client of a demo server needs.
    pub fn client_security(&self, role: Role) -> ClientSecurity {
        ClientSecurity {
            ca_cert: Some(self.ca_cert.clone()),
            client_cert: Some(self.client_cert.clone()),
            client_key: Some(self.client_key.clone()),
            token: Some(self.token(role).to_string()),
        }
    }
}

fn token_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("token-{role}"))
}

fn principal_name(role: Role) -> String {
    format!("demo-{role}")
}

fn credential_paths(dir: &Path) -> DemoCredentials {
    DemoCredentials {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        tokens_file: dir.join("tokens"),
        tokens: BTreeMap::new(),
    }
}

/// Creates the demo credentials under `dir`, or reuses them when every file is already there and valid.
///
/// Files: `ca.pem`/`ca.key`; `server.pem`/`server.key` (signed by the CA, for localhost, 127.0.0.1 and ::1);
/// `client.pem`/`client.key` (client-auth, for mutual TLS); `token-<role>` for every role and `tokens`, the
/// hashed tokens file. Keys and tokens are written with mode 0600.
pub fn ensure_demo_credentials(dir: &Path) -> Result<DemoCredentials, SecurityError> {
    let mut credentials = credential_paths(dir);
    match existing_tokens(&credentials) {
        Some(tokens) => {
            credentials.tokens = tokens;
            tracing::debug!(dir = %dir.display(), "reusing the demo credentials");
        }
        None => {
            std::fs::create_dir_all(dir)
                .map_err(|source| SecurityError::write_file(dir, source))?;
            credentials.tokens = generate_all(&credentials)?;
            tracing::info!(dir = %dir.display(), "generated demo credentials (CA, server and client certificates, tokens)");
        }
    }
    Ok(credentials)
}

/// Issues a new server certificate and key, signed by the demo CA, into `server.pem`/`server.key`: a
/// rotation as cert-manager does it, to try certificate reload.
pub fn reissue_demo_server_certificate(dir: &Path) -> Result<(), SecurityError> {
    let credentials = credential_paths(dir);
    let ca_key_pem = std::fs::read_to_string(&credentials.ca_key)
        .map_err(|source| SecurityError::read_file(&credentials.ca_key, source))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| {
        SecurityError::invalid_pem(&credentials.ca_key, format!("invalid CA key: {error}"))
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);
    write_server_certificate(&credentials, &issuer)
}

/// The tokens of complete, valid existing credentials; None when anything is missing or invalid.
fn existing_tokens(credentials: &DemoCredentials) -> Option<BTreeMap<Role, String>> {
    let provider = rustls::crypto::ring::default_provider();
    let loads = |cert: &Path, key: &Path| -> Option<()> {
        let cert_pem = std::fs::read(cert).ok()?;
        let key_pem = std::fs::read(key).ok()?;
        crate::tls::load_certified_key(cert, key, &[cert_pem, key_pem], &provider)
            .ok()
            .map(|_| ())
    };
    loads(&credentials.ca_cert, &credentials.ca_key)?;
    loads(&credentials.server_cert, &credentials.server_key)?;
    loads(&credentials.client_cert, &credentials.client_key)?;
    let tokens: BTreeMap<Role, String> = Role::ALL
        .into_iter()
        .map(|role| {
            read_token_file(token_path(&credentials.dir, role))
                .ok()
                .map(|token| (role, token))
        })
        .collect::<Option<_>>()?;
    let tokens_file = std::fs::read_to_string(&credentials.tokens_file).ok()?;
    (tokens_file == tokens_file_text(&tokens)).then_some(tokens)
}

fn generate_all(credentials: &DemoCredentials) -> Result<BTreeMap<Role, String>, SecurityError> {
    let ca_key = generate_key_pair("CA key")?;
    let ca_certificate = ca_params()
        .self_signed(&ca_key)
        .map_err(generation_error("CA certificate"))?;
    write_file(
        &credentials.ca_key,
        ca_key.serialize_pem().as_bytes(),
        FileMode::Private,
    )?;
    write_file(
        &credentials.ca_cert,
        ca_certificate.pem().as_bytes(),
        FileMode::Public,
    )?;
    let issuer = Issuer::new(ca_params(), ca_key);

    write_server_certificate(credentials, &issuer)?;

    let client_key = generate_key_pair("client key")?;
    let mut client_params = leaf_params("plankton demo client", &[])?;
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_certificate = client_params
        .signed_by(&client_key, &issuer)
        .map_err(generation_error("client certificate"))?;
    write_file(
        &credentials.client_key,
        client_key.serialize_pem().as_bytes(),
        FileMode::Private,
    )?;
    write_file(
        &credentials.client_cert,
        client_certificate.pem().as_bytes(),
        FileMode::Public,
    )?;

    let tokens: BTreeMap<Role, String> = Role::ALL
        .into_iter()
        .map(|role| (role, generate_token()))
        .collect();
    for (role, token) in &tokens {
        write_file(
            &token_path(&credentials.dir, *role),
            format!("{token}\n").as_bytes(),
            FileMode::Private,
        )?;
    }
    write_file(
        &credentials.tokens_file,
        tokens_file_text(&tokens).as_bytes(),
        FileMode::Private,
    )?;
    Ok(tokens)
}

fn write_server_certificate(
    credentials: &DemoCredentials,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(), SecurityError> {
    let server_key = generate_key_pair("server key")?;
    let mut server_params = leaf_params("plankton demo server", &SERVER_NAMES)?;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_certificate = server_params
        .signed_by(&server_key, issuer)
        .map_err(generation_error("server certificate"))?;
    write_file(
        &credentials.server_key,
        server_key.serialize_pem().as_bytes(),
        FileMode::Private,
    )?;
    write_file(
        &credentials.server_cert,
        server_certificate.pem().as_bytes(),
        FileMode::Public,
    )
}

fn tokens_file_text(tokens: &BTreeMap<Role, String>) -> String {
    let mut text = String::from(
        "# Demo principals: <principal-name> <role> sha256:<hash of the token in token-<role>>\n",
    );
    for (role, token) in tokens {
        text.push_str(&format!(
            "{} {role} {}\n",
            principal_name(*role),
            hash_token(token)
        ));
    }
    text
}

/// The CA's parameters; rebuilt identically to sign with an existing CA key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params.serial_number = Some(random_serial_number());
    params
}

fn leaf_params(
    common_name: &str,
    subject_alt_names: &[&str],
) -> Result<CertificateParams, SecurityError> {
    let names: Vec<String> = subject_alt_names
        .iter()
        .map(|name| name.to_string())
        .collect();
    let mut params =
        CertificateParams::new(names).map_err(generation_error("certificate names"))?;
    params.distinguished_name = distinguished_name(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    params.serial_number = Some(random_serial_number());
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "plankton-cluster demo");
    name.push(DnType::CommonName, common_name);
    name
}

/// From the start of last year to ten years ahead: valid now whatever the clock's exact date.
fn set_validity(params: &mut CertificateParams) {
    let seconds_since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let current_year = 1970 + i32::try_from(seconds_since_epoch / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(current_year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(current_year + 10, 1, 1);
}

/// 16 random bytes, positive and without leading zero byte (as X.509 wants).
fn random_serial_number() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn generate_key_pair(what: &str) -> Result<KeyPair, SecurityError> {
    KeyPair::generate().map_err(generation_error(what))
}

fn generation_error(what: &str) -> impl FnOnce(rcgen::Error) -> SecurityError + '_ {
    move |source| SecurityError::CertificateGeneration {
        what: what.to_string(),
        source,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileMode {
    Public,
    Private,
}

/// Writes through a temporary file renamed over `path`, so readers (a reloading server) never see half a file.
fn write_file(path: &Path, contents: &[u8], mode: FileMode) -> Result<(), SecurityError> {
    use std::io::Write;

    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary_path = path.with_file_name(format!(".{file_name}.tmp"));
    let write_error = |source| SecurityError::write_file(path, source);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if mode == FileMode::Private {
            0o600
        } else {
            0o644
        });
    }
    let mut file = options.open(&temporary_path).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temporary_path, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_complete_credentials_and_regenerates_broken_ones() {
        let directory = tempfile::tempdir().unwrap();
        let created = ensure_demo_credentials(directory.path()).unwrap();
        assert_eq!(created.tokens.len(), 5);
        assert_eq!(
            read_token_file(created.token_file(Role::Viewer)).unwrap(),
            created.token(Role::Viewer)
        );
        let tokens_file = std::fs::read_to_string(&created.tokens_file).unwrap();
        assert!(tokens_file.contains(&format!(
            "demo-operator operator {}",
            hash_token(created.token(Role::Operator))
        )));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(created.token_file(Role::Admin))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&created.server_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let reused = ensure_demo_credentials(directory.path()).unwrap();
        assert_eq!(reused.tokens, created.tokens);

        std::fs::write(&created.client_key, "not a key").unwrap();
        let regenerated = ensure_demo_credentials(directory.path()).unwrap();
        assert_ne!(regenerated.tokens, created.tokens);
    }
}

//! Bearer tokens, stored hashed in a tokens file that is reloaded when it changes.
//!
//! The file (often a mounted Kubernetes Secret) has one entry per line, `#` comments and blank lines:
//!
//! ```text
//! # principal     role      SHA-256 of the token
//! ci-pipeline     operator  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! Tokens are 32 random bytes ([`generate_token`]), so an unsalted SHA-256 is enough: the file does not reveal
//! them, and nothing can be guessed from a hash of that much entropy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::reload::{self, DEFAULT_POLL_INTERVAL};
use crate::{Principal, Role, SecurityError};

const HASH_PREFIX: &str = "sha256:";

/// A new random token: 32 bytes from the OS-seeded generator, as 64 lowercase hex digits.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    lower_hex(&bytes)
}

/// The tokens-file form of a token's hash: `sha256:<64 lowercase hex digits>`.
pub fn hash_token(token: &str) -> String {
    format!("{HASH_PREFIX}{}", lower_hex(&sha256(token)))
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One entry of a tokens file.
#[derive(Debug, Clone)]
struct TokenEntry {
    principal: Principal,
    token_sha256: [u8; 32],
}

/// The principals of a tokens file, shared by every clone and refreshed in place when the file changes.
#[derive(Debug, Clone)]
pub struct TokenStore {
    shared: Arc<SharedEntries>,
}

#[derive(Debug)]
struct SharedEntries {
    path: PathBuf,
    entries: RwLock<Arc<[TokenEntry]>>,
}

impl TokenStore {
    /// Loads `path` and keeps it current: a task polls it every second and swaps in its new entries; a new
    /// version that fails to parse is logged and the previous entries stay. Must be called inside a tokio runtime.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SecurityError> {
        Self::load_with_poll_interval(path, DEFAULT_POLL_INTERVAL)
    }

    /// [`TokenStore::load`] polling every `poll_interval`.
    pub fn load_with_poll_interval(
        path: impl AsRef<Path>,
        poll_interval: Duration,
    ) -> Result<Self, SecurityError> {
        let runtime = reload::current_runtime("a tokens file store")?;
        let path = path.as_ref().to_path_buf();
        let contents = reload::read_files(std::slice::from_ref(&path))?;
        let entries = parse_tokens_file(&path, &contents[0])?;
        if entries.is_empty() {
            tracing::warn!(path = %path.display(), "the tokens file has no entries: every call will be refused");
        }
        let shared = Arc::new(SharedEntries {
            path: path.clone(),
            entries: RwLock::new(entries.into()),
        });
        reload::spawn_reload_task(
            &runtime,
            &shared,
            vec![path],
            reload::digest_contents(&contents),
            poll_interval,
            |shared: &SharedEntries, contents: &[Vec<u8>]| {
                let entries = parse_tokens_file(&shared.path, &contents[0])?;
                *shared
                    .entries
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = entries.into();
                Ok(())
            },
        );
        Ok(Self { shared })
    }

    /// The tokens file this store reads.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The principal whose token hash matches `presented_token`, if any.
    ///
    /// The presented token is hashed and compared with every entry in constant time, without stopping at a
    /// match, so the time taken reveals neither whether nor where it matched.
    pub fn authenticate(&self, presented_token: &str) -> Option<Principal> {
        let entries = self
            .shared
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let presented_sha256 = sha256(presented_token);
        // 0 = no match, otherwise index + 1 of the matching entry.
        let mut matched_position = 0u64;
        for (index, entry) in entries.iter().enumerate() {
            let is_match = entry.token_sha256.ct_eq(&presented_sha256);
            matched_position.conditional_assign(&(index as u64 + 1), is_match);
        }
        let matched_index = usize::try_from(matched_position).ok()?.checked_sub(1)?;
        Some(entries[matched_index].principal.clone())
    }
}

/// Parses a tokens file; errors name `path` and the line (from 1).
fn parse_tokens_file(path: &Path, contents: &[u8]) -> Result<Vec<TokenEntry>, SecurityError> {
    let line_error = |line: usize, message: String| SecurityError::TokensFile {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(contents).map_err(|error| {
        let line = contents[..error.valid_up_to()]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1;
        line_error(line, "not UTF-8 text".to_string())
    })?;
    let mut entries: Vec<TokenEntry> = Vec::new();
    let mut entry_lines: Vec<usize> = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let content = line
            .split_once('#')
            .map_or(line, |(before_comment, _)| before_comment)
            .trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let [name, role, hash] = fields[..] else {
            return Err(line_error(
                line_number,
                format!(
                    "expected \"<principal-name> <role> sha256:<64 hex digits>\", found {} fields",
                    fields.len()
                ),
            ));
        };
        let role: Role = role.parse().map_err(|error: crate::roles::UnknownRole| {
            line_error(line_number, error.to_string())
        })?;
        let token_sha256 = parse_hash(hash).ok_or_else(|| {
            line_error(
                line_number,
                format!("invalid token hash {hash:?}: expected sha256:<64 lowercase hex digits>"),
            )
        })?;
        for (earlier, earlier_line) in entries.iter().zip(&entry_lines) {
            if earlier.principal.name == name {
                return Err(line_error(
                    line_number,
                    format!("duplicate principal {name:?} (first on line {earlier_line})"),
                ));
            }
            if earlier.token_sha256 == token_sha256 {
                return Err(line_error(
                    line_number,
                    format!(
                        "{name:?} has the same token as {:?} on line {earlier_line}",
                        earlier.principal.name
                    ),
                ));
            }
        }
        entries.push(TokenEntry {
            principal: Principal {
                name: name.to_string(),
                role,
            },
            token_sha256,
        });
        entry_lines.push(line_number);
    }
    Ok(entries)
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix(HASH_PREFIX)?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

/// Who the callers of a server are.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// No tokens configured: every caller is [`Principal::anonymous`], an admin. Only for explicit insecure mode.
    Disabled,
    /// Callers present a bearer token of this store.
    Tokens(TokenStore),
}

/// Why a caller is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthenticationFailure {
    MissingToken,
    InvalidToken,
}

impl Authenticator {
    /// [`Authenticator::Tokens`] of [`TokenStore::load`]`(path)` (reloaded when it changes); inside a tokio runtime.
    pub fn from_tokens_file(path: impl AsRef<Path>) -> Result<Self, SecurityError> {
        Ok(Self::Tokens(TokenStore::load(path)?))
    }

    /// The principal presenting `bearer_token` (None: no token presented).
    pub fn authenticate(
        &self,
        bearer_token: Option<&str>,
    ) -> Result<Principal, AuthenticationFailure> {
        match self {
            Authenticator::Disabled => Ok(Principal::anonymous()),
            Authenticator::Tokens(store) => {
                let token = bearer_token.ok_or(AuthenticationFailure::MissingToken)?;
                store
                    .authenticate(token)
                    .ok_or(AuthenticationFailure::InvalidToken)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<TokenEntry>, SecurityError> {
        parse_tokens_file(Path::new("tokens.txt"), text.as_bytes())
    }

    #[test]
    fn generated_tokens_are_64_hex_digits_and_differ() {
        let token = generate_token();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(token, generate_token());
        assert_eq!(
            hash_token("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let text = format!(
            "# the cluster's tokens\n\nalice admin {}\n  bob   viewer {}  # read-only\n",
            hash_token("a"),
            hash_token("b")
        );
        let entries = parse(&text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].principal,
            Principal {
                name: "bob".into(),
                role: Role::Viewer
            }
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let good = format!("alice admin {}\n", hash_token("a"));
        let cases = [
            (
                format!("{good}\n# comment\nbob boss {}\n", hash_token("b")),
                "tokens.txt:4: unknown role \"boss\"",
            ),
            (format!("{good}bob viewer\n"), "tokens.txt:2: expected"),
            (
                format!("{good}bob viewer sha256:ABC\n"),
                "tokens.txt:2: invalid token hash",
            ),
            (
                format!("{good}bob viewer {}\n", hash_token("a").to_uppercase()),
                "tokens.txt:2: invalid token hash",
            ),
            (
                format!("{good}alice viewer {}\n", hash_token("b")),
                "tokens.txt:2: duplicate principal \"alice\"",
            ),
            (
                format!("{good}bob viewer {}\n", hash_token("a")),
                "tokens.txt:2: \"bob\" has the same token",
            ),
        ];
        for (text, expected) in cases {
            let message = parse(&text).unwrap_err().to_string();
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
        }
    }

    #[tokio::test]
    async fn authenticates_by_token_and_reloads_an_edited_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tokens");
        let write = |text: String| std::fs::write(&path, text).unwrap();
        write(format!(
            "alice admin {}\nbob viewer {}\ncarol client {}\n",
            hash_token("ta"),
            hash_token("tb"),
            hash_token("tc")
        ));
        let store = TokenStore::load_with_poll_interval(&path, Duration::from_millis(20)).unwrap();
        assert_eq!(
            store.authenticate("tb"),
            Some(Principal {
                name: "bob".into(),
                role: Role::Viewer
            })
        );
        assert_eq!(store.authenticate("tc").unwrap().name, "carol");
        assert_eq!(store.authenticate("wrong"), None);
        assert_eq!(store.authenticate(""), None);

        write(format!("bob operator {}\n", hash_token("tb2")));
        let became_current = wait_until(|| store.authenticate("tb2").is_some()).await;
        assert!(became_current, "the edited tokens file was not picked up");
        assert_eq!(store.authenticate("tb2").unwrap().role, Role::Operator);
        assert_eq!(store.authenticate("ta"), None);

        // A broken edit keeps the previous entries.
        write("bob boss sha256:00\n".to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.authenticate("tb2").unwrap().name, "bob");
    }

    #[tokio::test]
    async fn disabled_authenticator_treats_everyone_as_anonymous_admin() {
        assert_eq!(
            Authenticator::Disabled.authenticate(None),
            Ok(Principal::anonymous())
        );
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tokens");
        std::fs::write(&path, format!("alice admin {}\n", hash_token("ta"))).unwrap();
        let authenticator = Authenticator::from_tokens_file(&path).unwrap();
        assert_eq!(
            authenticator.authenticate(None),
            Err(AuthenticationFailure::MissingToken)
        );
        assert_eq!(
            authenticator.authenticate(Some("x")),
            Err(AuthenticationFailure::InvalidToken)
        );
        assert_eq!(
            authenticator.authenticate(Some("ta")).unwrap().name,
            "alice"
        );
    }

    async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        for _ in 0..250 {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

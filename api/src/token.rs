//! A cluster's bearer token: read from a file (or text), checked for length and
//! characters, never shown by `Debug`, compared in constant time through its SHA-256.
//! Nothing here writes to disk.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// A cluster's bearer token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(Zeroizing<String>);

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(<redacted>)")
    }
}

/// Why a token (file) is unusable. The messages are meant to be prefixed with the
/// config key or CLI flag that named the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty: write a random token of at least {MIN_TOKEN_LEN} characters into it (e.g. `openssl rand -hex 32`)")]
    Empty { path: String },
    #[error("the token in {path} is {len} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)")]
    TooShort { path: String, len: usize },
    #[error("the token in {path} contains spaces or non-printable characters; use printable ASCII only (e.g. `openssl rand -hex 32`)")]
    BadCharacters { path: String },
}

impl ClusterToken {
    /// Reads a token file; surrounding whitespace (a trailing newline) is ignored.
    pub fn from_file(path: &Path) -> Result<ClusterToken, TokenError> {
        let shown = path.display().to_string();
        let raw = Zeroizing::new(std::fs::read(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?);
        let text = std::str::from_utf8(&raw).map_err(|_| TokenError::BadCharacters {
            path: shown.clone(),
        })?;
        ClusterToken::parse(text, &shown)
    }

    /// Validates a token given as text; `origin` names where it came from.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterToken, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty {
                path: origin.to_string(),
            });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacters {
                path: origin.to_string(),
            });
        }
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: origin.to_string(),
                len: t.len(),
            });
        }
        Ok(ClusterToken(Zeroizing::new(t.to_string())))
    }

    /// The token itself, for an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token: what a server keeps instead of the token.
    pub fn digest(&self) -> [u8; 32] {
        token_digest(self.expose())
    }

    /// Whether `presented` is this token (compared in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.digest()[..].ct_eq(&token_digest(presented)[..]))
    }
}

/// SHA-256 of a presented token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

//! Per-cluster bearer tokens: reading them from files, and checking a presented token.
//!
//! Each cluster has its own token (invariant 5: cluster A's credential cannot read
//! cluster B). The server keeps only SHA-256 digests and compares them in constant
//! time. Nothing here writes to disk.

use std::fmt;
use std::path::Path;

use klio_core::ClusterName;
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

    fn digest(&self) -> [u8; 32] {
        digest(self.expose())
    }

    /// Whether `presented` is this token (compared in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.digest()[..].ct_eq(&digest(presented)[..]))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The clusters this server serves and the digest of each one's token.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<(ClusterName, [u8; 32])>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(c, _)| c))
            .finish()
    }
}

impl TokenSet {
    pub fn new(tokens: impl IntoIterator<Item = (ClusterName, ClusterToken)>) -> TokenSet {
        let mut entries: Vec<_> = tokens.into_iter().map(|(c, t)| (c, t.digest())).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        TokenSet { entries }
    }

    /// Configured clusters, in name order.
    pub fn clusters(&self) -> impl Iterator<Item = &ClusterName> {
        self.entries.iter().map(|(c, _)| c)
    }

    pub fn is_configured(&self, cluster: &ClusterName) -> bool {
        self.entries.iter().any(|(c, _)| c == cluster)
    }

    /// The clusters the presented token grants access to (empty: not a valid token).
    /// Every entry is compared, in constant time, whatever matches.
    pub fn authorize(&self, presented: &str) -> Vec<ClusterName> {
        let d = digest(presented);
        self.entries
            .iter()
            .filter(|(_, want)| bool::from(want[..].ct_eq(&d[..])))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    #[test]
    fn parse_trims_and_validates() {
        let t = ClusterToken::parse("  abcdefghijklmnop\n", "x").unwrap();
        assert_eq!(t.expose(), "abcdefghijklmnop");
        assert!(matches!(
            ClusterToken::parse("short", "x"),
            Err(TokenError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            ClusterToken::parse(" \n", "x"),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            ClusterToken::parse("abcdefgh ijklmnopq", "x"),
            Err(TokenError::BadCharacters { .. })
        ));
        assert!(!format!("{t:?}").contains("abcdef"));
    }

    #[test]
    fn authorize_maps_token_to_its_cluster_only() {
        let set = TokenSet::new([
            (
                name("a"),
                ClusterToken::parse("token-a-0123456789", "").unwrap(),
            ),
            (
                name("b"),
                ClusterToken::parse("token-b-0123456789", "").unwrap(),
            ),
        ]);
        assert_eq!(set.authorize("token-a-0123456789"), vec![name("a")]);
        assert_eq!(set.authorize("token-b-0123456789"), vec![name("b")]);
        assert!(set.authorize("token-c-0123456789").is_empty());
        assert!(set.authorize("").is_empty());
        assert!(set.is_configured(&name("a")));
        assert!(!set.is_configured(&name("c")));
    }
}

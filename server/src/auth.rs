//! Per-cluster bearer tokens: reading them from files, and checking a presented token.
//!
//! Each cluster has its own token (invariant 5: cluster A's credential cannot read
//! cluster B). The server keeps only SHA-256 digests and compares them in constant
//! time. Nothing here writes to disk.

use std::fmt;

use klio_api::token::token_digest;
pub use klio_api::token::{ClusterToken, TokenError, MIN_TOKEN_LEN};
use klio_core::ClusterName;
use subtle::ConstantTimeEq;

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
        let d = token_digest(presented);
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

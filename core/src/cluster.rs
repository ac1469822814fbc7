//! Cluster names: the key under which one PostgreSQL cluster's data is stored, and the
//! state of a cluster's replication connection.
//!
//! A name is used in directory names, URLs and associated data, so it is
//! restricted to a conservative alphabet (like a Kubernetes DNS label).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of a cluster's replication connection, as the receiver sets it and the API
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connecting,
    Streaming,
    Disconnected,
    /// Stopped for good (e.g. a different system identifier): needs an operator.
    Failed,
    /// Not streaming by design: a read-only server serves what Tier 2 holds.
    ReadOnly,
}

impl ConnectionState {
    pub const ALL: [ConnectionState; 5] = [
        ConnectionState::Connecting,
        ConnectionState::Streaming,
        ConnectionState::Disconnected,
        ConnectionState::Failed,
        ConnectionState::ReadOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Streaming => "streaming",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Failed => "failed",
            ConnectionState::ReadOnly => "read_only",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster name {0:?}: use 1 to 63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit")]
pub struct ClusterNameError(String);

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = ClusterNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(ClusterName(s.to_string()))
        } else {
            Err(ClusterNameError(s.chars().take(80).collect()))
        }
    }
}

impl TryFrom<String> for ClusterName {
    type Error = ClusterNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ClusterName> for String {
    fn from(c: ClusterName) -> String {
        c.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for s in ["pg-main", "a", "cluster_01", "0abc"] {
            assert!(s.parse::<ClusterName>().is_ok(), "{s}");
        }
    }

    #[test]
    fn rejects_paths_and_odd_characters() {
        for s in [
            "",
            "..",
            "../x",
            "a/b",
            "-x",
            "_x",
            "A",
            "a b",
            "a.b",
            &"x".repeat(64),
            "é",
        ] {
            assert!(s.parse::<ClusterName>().is_err(), "{s:?}");
        }
    }
}

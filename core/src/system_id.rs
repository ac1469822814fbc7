//! A PostgreSQL database system identifier: the 64-bit number `initdb` picks, reported by
//! `IDENTIFY_SYSTEM` (decimal), stored in `pg_control` and in every WAL segment's long
//! page header. A cluster's WAL, backups and restores must all carry the same one.
//! Owns no disk state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A database system identifier. Serialized as its number (the catalog's format);
/// displayed and parsed in decimal, as PostgreSQL prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SystemId(u64);

/// Why a text is not a system identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid database system identifier {0:?}: expected a decimal number")]
pub struct SystemIdParseError(String);

impl SystemId {
    pub const fn new(v: u64) -> SystemId {
        SystemId(v)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for SystemId {
    fn from(v: u64) -> SystemId {
        SystemId(v)
    }
}

impl From<SystemId> for u64 {
    fn from(v: SystemId) -> u64 {
        v.0
    }
}

impl FromStr for SystemId {
    type Err = SystemIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Digits only: `u64::from_str` would also take a leading '+'.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SystemIdParseError(s.chars().take(40).collect()));
        }
        s.parse::<u64>()
            .map(SystemId)
            .map_err(|_| SystemIdParseError(s.chars().take(40).collect()))
    }
}

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_decimal() {
        let id: SystemId = "7390123456789012345".parse().unwrap();
        assert_eq!(id.get(), 7_390_123_456_789_012_345);
        assert_eq!(id.to_string(), "7390123456789012345");
        assert_eq!(
            SystemId::new(u64::MAX)
                .to_string()
                .parse::<SystemId>()
                .unwrap()
                .get(),
            u64::MAX
        );
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x10",
            "18446744073709551616",
            "abc",
        ] {
            assert!(bad.parse::<SystemId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serializes_as_the_number_the_catalog_stores() {
        let id = SystemId::new(7_300_000_000_000_000_001);
        assert_eq!(serde_json::to_string(&id).unwrap(), "7300000000000000001");
        assert_eq!(
            serde_json::from_str::<SystemId>("7300000000000000001").unwrap(),
            id
        );
    }
}

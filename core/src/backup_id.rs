//! A base backup's id: `[0-9A-Za-z-]`, 1 to 64 characters (the server makes them as
//! `20261124T193000Z`). The only rule for what an id may be, used where one is made, where
//! the API receives one, and before one becomes part of a path under `data_dir`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id accepted.
pub const MAX_BACKUP_ID_LEN: usize = 64;

/// A validated backup id; safe as a single path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId(String);

/// Why a text is not a backup id; Display shows (a shortened copy of) the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backup id {0:?}: ids are letters, digits and '-', at most 64 characters, e.g. 20261124T193000Z")]
pub struct BackupIdError(String);

impl BackupId {
    /// Whether `s` is a valid id.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_BACKUP_ID_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = BackupIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if BackupId::is_valid(s) {
            Ok(BackupId(s.to_string()))
        } else {
            Err(BackupIdError(s.chars().take(80).collect()))
        }
    }
}

impl AsRef<str> for BackupId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({})", self.0)
    }
}

impl Serialize for BackupId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_letters_digits_and_dashes_up_to_64() {
        for ok in ["20261124T193000Z", "a", "nightly-2", &"x".repeat(64)] {
            assert_eq!(ok.parse::<BackupId>().unwrap().as_str(), ok);
        }
        for bad in ["", "../x", "a/b", "a b", "a.b", "é", &"x".repeat(65)] {
            let e = bad.parse::<BackupId>().unwrap_err();
            assert!(e.to_string().contains("invalid backup id"), "{e}");
        }
        let json = serde_json::to_string(&"b-1".parse::<BackupId>().unwrap()).unwrap();
        assert_eq!(json, "\"b-1\"");
        assert!(serde_json::from_str::<BackupId>("\"../etc\"").is_err());
    }
}

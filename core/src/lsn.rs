//! Log sequence numbers: a byte position in the WAL stream.
//!
//! Displayed and parsed in PostgreSQL's `X/Y` form (`16/B374D848`), serialised as
//! that string in human-readable formats.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wal::{SegNo, WalSegSize};

/// A WAL position (PostgreSQL's `XLogRecPtr`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A string that is not a valid `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected the form X/Y with hexadecimal X and Y, e.g. 0/16B3748")]
pub struct LsnParseError(String);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }

    /// The segment holding this position.
    pub fn segno(self, seg_size: WalSegSize) -> SegNo {
        SegNo(self.0 / seg_size.bytes())
    }

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, seg_size: WalSegSize) -> u64 {
        self.0 % seg_size.bytes()
    }

    /// This position rounded down to the start of its segment.
    pub fn segment_start(self, seg_size: WalSegSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(Lsn)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "g/1",
            "1/2/3",
            "123456789/0",
            " 1/2",
            "1/-2",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn text_round_trip(v in any::<u64>()) {
            let l = Lsn(v);
            prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }

        #[test]
        fn lowercase_parses(v in any::<u64>()) {
            let l = Lsn(v);
            prop_assert_eq!(l.to_string().to_lowercase().parse::<Lsn>().unwrap(), l);
        }
    }
}

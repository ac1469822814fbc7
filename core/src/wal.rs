//! WAL addressing: timelines, segment numbers, segment size and WAL file names.
//!
//! A [`WalFileName`] is parsed once at the edge (HTTP path, directory listing,
//! `restore_command` argument) and never sliced unchecked afterwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::system_id::SystemId;

/// A PostgreSQL timeline id (never 0).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TimelineId(u32);

impl TimelineId {
    /// The timeline `initdb` starts on.
    pub const FIRST: TimelineId = TimelineId(1);

    pub fn new(v: u32) -> Result<TimelineId, WalNameError> {
        if v == 0 {
            Err(WalNameError::ZeroTimeline)
        } else {
            Ok(TimelineId(v))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for TimelineId {
    type Error = WalNameError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        TimelineId::new(v)
    }
}

impl From<TimelineId> for u32 {
    fn from(t: TimelineId) -> u32 {
        t.0
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLI {}", self.0)
    }
}

/// A WAL segment number: LSN / segment size.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct SegNo(pub u64);

impl SegNo {
    pub fn start_lsn(self, seg_size: WalSegSize) -> Lsn {
        Lsn(self.0 * seg_size.bytes())
    }

    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

/// The cluster's `wal_segment_size`: a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegSize(u32);

impl WalSegSize {
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);

    pub fn new(bytes: u64) -> Result<WalSegSize, WalNameError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(WalSegSize(bytes as u32))
        } else {
            Err(WalNameError::BadSegmentSize(bytes))
        }
    }

    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per 4 GiB "xlogid" (the middle 8 hex digits of a file name).
    fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

impl TryFrom<u64> for WalSegSize {
    type Error = WalNameError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        WalSegSize::new(v)
    }
}

impl From<WalSegSize> for u64 {
    fn from(s: WalSegSize) -> u64 {
        s.bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalNameError {
    #[error("invalid WAL file name {0:?}: expected 24 hex digits (optionally .partial) or 8 hex digits + .history")]
    Malformed(String),
    #[error("timeline 0 does not exist")]
    ZeroTimeline,
    #[error("WAL segment size {0} is not a power of two between 1 MiB and 1 GiB")]
    BadSegmentSize(u64),
    #[error("WAL file name {name} does not exist with a segment size of {seg_size} bytes")]
    OutOfRange { name: String, seg_size: u64 },
}

/// What a WAL file name designates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WalFileKind {
    /// A complete segment: `000000010000000000000003`.
    Segment,
    /// The segment being written: `000000010000000000000003.partial`.
    Partial,
    /// A timeline history file: `00000002.history`.
    History,
}

/// A validated WAL file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalFileName {
    tli: TimelineId,
    /// High 32 bits of the name's position ("log"); 0 for history files.
    log: u32,
    /// Low part of the position ("seg"); 0 for history files.
    seg: u32,
    kind_rank: u8,
}

impl WalFileName {
    pub fn segment(tli: TimelineId, segno: SegNo, seg_size: WalSegSize) -> WalFileName {
        let per = seg_size.segments_per_xlogid();
        WalFileName {
            tli,
            log: (segno.0 / per) as u32,
            seg: (segno.0 % per) as u32,
            kind_rank: 0,
        }
    }

    pub fn partial(tli: TimelineId, segno: SegNo, seg_size: WalSegSize) -> WalFileName {
        WalFileName {
            kind_rank: 1,
            ..WalFileName::segment(tli, segno, seg_size)
        }
    }

    pub fn history(tli: TimelineId) -> WalFileName {
        WalFileName {
            tli,
            log: 0,
            seg: 0,
            kind_rank: 2,
        }
    }

    pub fn kind(&self) -> WalFileKind {
        match self.kind_rank {
            0 => WalFileKind::Segment,
            1 => WalFileKind::Partial,
            _ => WalFileKind::History,
        }
    }

    pub fn timeline(&self) -> TimelineId {
        self.tli
    }

    /// The segment number, checked against the cluster's segment size.
    /// History files have none.
    pub fn segno(&self, seg_size: WalSegSize) -> Result<Option<SegNo>, WalNameError> {
        if self.kind() == WalFileKind::History {
            return Ok(None);
        }
        let per = seg_size.segments_per_xlogid();
        if u64::from(self.seg) >= per {
            return Err(WalNameError::OutOfRange {
                name: self.to_string(),
                seg_size: seg_size.bytes(),
            });
        }
        Ok(Some(SegNo(u64::from(self.log) * per + u64::from(self.seg))))
    }

    /// The same segment under its sealed name (`.partial` removed).
    pub fn sealed(&self) -> WalFileName {
        match self.kind() {
            WalFileKind::Partial => WalFileName {
                kind_rank: 0,
                ..*self
            },
            _ => *self,
        }
    }

    /// The 24-hex-digit segment identity (no suffix); for history files the full name.
    pub fn identity(&self) -> String {
        match self.kind() {
            WalFileKind::History => self.to_string(),
            _ => format!("{:08X}{:08X}{:08X}", self.tli.0, self.log, self.seg),
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            WalFileKind::Segment => write!(f, "{:08X}{:08X}{:08X}", self.tli.0, self.log, self.seg),
            WalFileKind::Partial => write!(
                f,
                "{:08X}{:08X}{:08X}.partial",
                self.tli.0, self.log, self.seg
            ),
            WalFileKind::History => write!(f, "{:08X}.history", self.tli.0),
        }
    }
}

impl fmt::Debug for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex_u32(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// In JSON (the API's WAL lists), a WAL file name is its PostgreSQL spelling.
impl Serialize for WalFileName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WalFileName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for WalFileName {
    type Err = WalNameError;

    /// Accepts exactly PostgreSQL's spelling (upper-case hex).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalNameError::Malformed(s.chars().take(64).collect());
        if let Some(tli) = s.strip_suffix(".history") {
            let tli = hex_u32(tli).ok_or_else(bad)?;
            return Ok(WalFileName::history(
                TimelineId::new(tli).map_err(|_| bad())?,
            ));
        }
        let (body, kind_rank) = match s.strip_suffix(".partial") {
            Some(b) => (b, 1),
            None => (s, 0),
        };
        if body.len() != 24 || !body.is_ascii() {
            return Err(bad());
        }
        let tli = hex_u32(&body[0..8]).ok_or_else(bad)?;
        let log = hex_u32(&body[8..16]).ok_or_else(bad)?;
        let seg = hex_u32(&body[16..24]).ok_or_else(bad)?;
        Ok(WalFileName {
            tli: TimelineId::new(tli).map_err(|_| bad())?,
            log,
            seg,
            kind_rank,
        })
    }
}

/// The long page header at the start of every WAL segment (PostgreSQL's
/// `XLogLongPageHeaderData`, little-endian as written on x86-64 and aarch64).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentHeader {
    pub timeline: u32,
    /// The LSN of the page: the segment's start.
    pub page_addr: Lsn,
    pub system_id: SystemId,
    pub seg_size: u32,
}

impl SegmentHeader {
    /// Size of the long header.
    pub const LEN: usize = 40;
    /// `XLP_LONG_HEADER` in `xlp_info`.
    const XLP_LONG_HEADER: u16 = 0x0002;

    /// Parses the header at the start of `bytes`; `None` when there is none (too short,
    /// a zero page as in an unwritten segment, or no long-header flag).
    pub fn parse(bytes: &[u8]) -> Option<SegmentHeader> {
        let b = bytes.get(..Self::LEN)?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let (magic, info) = (u16_at(0), u16_at(2));
        if magic == 0 || info & Self::XLP_LONG_HEADER == 0 {
            return None;
        }
        Some(SegmentHeader {
            timeline: u32_at(4),
            page_addr: Lsn(u64_at(8)),
            system_id: SystemId::new(u64_at(24)),
            seg_size: u32_at(32),
        })
    }

    /// Checks that `bytes` is segment `name` of the system `system_id`: its header names
    /// that system, the segment's start LSN and a segment size equal to its length.
    pub fn verify(bytes: &[u8], name: &WalFileName, system_id: SystemId) -> Result<(), String> {
        Self::verify_start(bytes, bytes.len() as u64, name, system_id)
    }

    /// [`SegmentHeader::verify`] from the file's first bytes (`head`, at least
    /// [`SegmentHeader::LEN`]) and its length, for callers that stream the rest.
    pub fn verify_start(
        head: &[u8],
        len: u64,
        name: &WalFileName,
        system_id: SystemId,
    ) -> Result<(), String> {
        let h = SegmentHeader::parse(head)
            .ok_or_else(|| format!("{name} has no WAL segment header"))?;
        if h.system_id != system_id {
            return Err(format!(
                "{name} belongs to database system {}, not {system_id}",
                h.system_id
            ));
        }
        if u64::from(h.seg_size) != len {
            return Err(format!(
                "{name} is {len} bytes but its header says {}",
                h.seg_size
            ));
        }
        let seg_size = WalSegSize::new(len).map_err(|e| format!("{name}: {e}"))?;
        let start = name
            .segno(seg_size)
            .map_err(|e| format!("{name}: {e}"))?
            .map(|s| s.start_lsn(seg_size));
        if start != Some(h.page_addr) {
            return Err(format!(
                "{name} holds the WAL page at {}, not the segment's start",
                h.page_addr
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn names_like_postgres() {
        let s = WalSegSize::DEFAULT;
        let n = WalFileName::segment(tli(1), SegNo(0x1_05), s);
        assert_eq!(n.to_string(), "000000010000000100000005");
        assert_eq!(n.segno(s).unwrap(), Some(SegNo(0x105)));
        let p = WalFileName::partial(tli(2), SegNo(3), s);
        assert_eq!(p.to_string(), "000000020000000000000003.partial");
        assert_eq!(p.sealed().to_string(), "000000020000000000000003");
        assert_eq!(
            WalFileName::history(tli(0x1A)).to_string(),
            "0000001A.history"
        );
        // 1 GiB segments: 4 per xlogid.
        let big = WalSegSize::new(1 << 30).unwrap();
        assert_eq!(
            WalFileName::segment(tli(1), SegNo(5), big).to_string(),
            "000000010000000100000001"
        );
    }

    #[test]
    fn rejects_hostile_names() {
        for s in [
            "",
            "../../etc/passwd",
            "000000010000000000000003/..",
            "00000001000000000000000",
            "0000000100000000000000033",
            "00000000000000000000000A",
            "000000010000000000000003.backup",
            "00000000.history",
            "0000000g0000000000000003",
            "000000010000000000000003.partial.partial",
            "00000001000000000000000a",
            "000000010000000000000003\0",
            "0000000１000000000000003",
        ] {
            assert!(s.parse::<WalFileName>().is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn segno_checked_against_size() {
        let n: WalFileName = "000000010000000000000005".parse().unwrap();
        let big = WalSegSize::new(1 << 30).unwrap();
        assert!(n.segno(big).is_err());
        assert!(WalSegSize::new(3 << 20).is_err());
        assert!(WalSegSize::new(1 << 31).is_err());
    }

    proptest! {
        #[test]
        fn segment_round_trip(t in 1u32.., segno in 0u64..(1u64 << 40), shift in 20u32..=30) {
            let size = WalSegSize::new(1 << shift).unwrap();
            let segno = SegNo(segno % ((u64::from(u32::MAX) + 1) * (0x1_0000_0000 >> shift)));
            for n in [WalFileName::segment(tli(t), segno, size), WalFileName::partial(tli(t), segno, size)] {
                let back: WalFileName = n.to_string().parse().unwrap();
                prop_assert_eq!(back, n);
                prop_assert_eq!(back.segno(size).unwrap(), Some(segno));
            }
        }

        #[test]
        fn history_round_trip(t in 1u32..) {
            let n = WalFileName::history(tli(t));
            prop_assert_eq!(n.to_string().parse::<WalFileName>().unwrap(), n);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            let _ = s.parse::<WalFileName>();
        }
    }

    fn header(sysid: u64, addr: u64, seg: u32) -> Vec<u8> {
        let mut b = vec![0u8; seg as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn segment_header_is_checked_against_system_name_and_size() {
        let seg = 1u32 << 20;
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let good = header(42, 3 << 20, seg);
        assert_eq!(
            SegmentHeader::verify(&good, &name, SystemId::new(42)),
            Ok(())
        );
        let e = SegmentHeader::verify(&good, &name, SystemId::new(43)).unwrap_err();
        assert!(e.contains("database system 42, not 43"), "{e}");
        let e =
            SegmentHeader::verify(&header(42, 4 << 20, seg), &name, SystemId::new(42)).unwrap_err();
        assert!(e.contains("not the segment's start"), "{e}");
        let e =
            SegmentHeader::verify(&good[..seg as usize / 2], &name, SystemId::new(42)).unwrap_err();
        assert!(e.contains("header says"), "{e}");
        assert!(SegmentHeader::verify(&vec![0u8; seg as usize], &name, SystemId::new(42)).is_err());
        assert_eq!(SegmentHeader::parse(&good[..39]), None);
    }
}

//! Is the WAL a backup needs all in Tier 1? Walks the catalog's segments along the
//! timeline history, from a backup's start position to an end position (or the newest
//! stored WAL), and reports every missing stretch as an LSN range.

use std::collections::{BTreeSet, HashMap};

use klio_catalog::{SegmentRecord, TimelineRecord};
use klio_core::{Lsn, SegNo, TimelineId, WalSegSize};
use serde::{Deserialize, Serialize};

/// A stretch of WAL that is not stored: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalGap {
    pub from: Lsn,
    pub to: Lsn,
}

/// The outcome of a chain check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalChainReport {
    pub from_timeline: TimelineId,
    pub from: Lsn,
    pub to_timeline: TimelineId,
    /// End of the checked range (exclusive): the end of the last segment checked.
    pub to: Lsn,
    pub segments_checked: u64,
    pub gaps: Vec<WalGap>,
    /// Set when `from_timeline` is not an ancestor of (or equal to) `to_timeline`.
    pub not_ancestor: bool,
}

impl WalChainReport {
    pub fn is_complete(&self) -> bool {
        self.gaps.is_empty() && !self.not_ancestor
    }

    /// One line for humans: "complete from X to Y" or the gaps.
    pub fn describe(&self) -> String {
        if self.not_ancestor {
            return format!(
                "timeline {} is not an ancestor of timeline {}: the backup cannot reach the newest WAL",
                self.from_timeline, self.to_timeline
            );
        }
        if self.gaps.is_empty() {
            return format!(
                "WAL complete from {} (timeline {}) to {} (timeline {}), {} segments",
                self.from, self.from_timeline, self.to, self.to_timeline, self.segments_checked
            );
        }
        let gaps: Vec<String> = self
            .gaps
            .iter()
            .map(|g| format!("{}..{}", g.from, g.to))
            .collect();
        format!("WAL missing in Tier 1: {}", gaps.join(", "))
    }
}

/// One timeline on the path, with the segment numbers it is the source for.
struct PathStep {
    tli: TimelineId,
    first: SegNo,
    /// Inclusive; `None` for the newest timeline.
    last: Option<SegNo>,
}

/// Checks that every segment from `from` (on `from_tli`) up to `to` (exclusive: the
/// segment holding the byte before it; `None` = the newest stored segment) exists on a
/// timeline of the history from `from_tli` to `to_tli`.
pub fn check_chain(
    timelines: &[TimelineRecord],
    segments: &[SegmentRecord],
    seg_size: WalSegSize,
    from_tli: TimelineId,
    from: Lsn,
    to_tli: TimelineId,
    to: Option<Lsn>,
) -> WalChainReport {
    let by_tli: HashMap<TimelineId, &TimelineRecord> =
        timelines.iter().map(|t| (t.tli, t)).collect();
    // Walk back from the target timeline to the backup's timeline.
    let mut chain = vec![to_tli];
    let mut not_ancestor = false;
    let mut cur = to_tli;
    while cur != from_tli {
        match by_tli.get(&cur).and_then(|t| t.parent) {
            Some(p) if p < cur => {
                chain.push(p);
                cur = p;
            }
            _ => {
                not_ancestor = true;
                break;
            }
        }
    }
    chain.reverse();
    let mut steps: Vec<PathStep> = Vec::new();
    for (i, &tli) in chain.iter().enumerate() {
        let first = if i == 0 {
            from.segno(seg_size)
        } else {
            by_tli
                .get(&tli)
                .and_then(|t| t.switch_lsn)
                .unwrap_or(Lsn(0))
                .segno(seg_size)
        };
        let last = chain.get(i + 1).map(|child| {
            by_tli
                .get(child)
                .and_then(|t| t.switch_lsn)
                .unwrap_or(Lsn(0))
                .segno(seg_size)
        });
        steps.push(PathStep { tli, first, last });
    }
    let stored: BTreeSet<(TimelineId, SegNo)> = segments.iter().map(|s| (s.tli, s.segno)).collect();
    let first = from.segno(seg_size);
    let last = match to {
        // WAL up to `lsn` exclusive: the segment holding its last byte.
        Some(lsn) => Lsn(lsn.0.saturating_sub(1).max(from.0)).segno(seg_size),
        None => stored
            .iter()
            .filter(|(t, _)| chain.contains(t))
            .map(|&(_, s)| s)
            .max()
            .unwrap_or(first),
    };
    let mut gaps: Vec<WalGap> = Vec::new();
    let mut checked = 0;
    if !not_ancestor {
        let mut segno = first;
        while segno <= last {
            checked += 1;
            let present = steps.iter().any(|st| {
                segno >= st.first
                    && st.last.is_none_or(|l| segno <= l)
                    && stored.contains(&(st.tli, segno))
            });
            if !present {
                let (start, end) = (segno.start_lsn(seg_size), segno.next().start_lsn(seg_size));
                match gaps.last_mut() {
                    Some(g) if g.to == start => g.to = end,
                    _ => gaps.push(WalGap {
                        from: start,
                        to: end,
                    }),
                }
            }
            segno = segno.next();
        }
    }
    WalChainReport {
        from_timeline: from_tli,
        from,
        to_timeline: to_tli,
        to: last.next().start_lsn(seg_size),
        segments_checked: checked,
        gaps,
        not_ancestor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_catalog::{SegmentState, Tiers};

    const SEG: u64 = 16 << 20;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn seg(t: u32, n: u64) -> SegmentRecord {
        SegmentRecord {
            tli: tli(t),
            segno: SegNo(n),
            state: SegmentState::Sealed,
            plain_size: SEG,
            crc32c: None,
            stored_size: 1,
            tiers: Tiers::default(),
            recompress: false,
        }
    }

    fn timelines() -> Vec<TimelineRecord> {
        vec![
            TimelineRecord {
                tli: tli(1),
                parent: None,
                switch_lsn: None,
                history_stored: false,
            },
            TimelineRecord {
                tli: tli(2),
                parent: Some(tli(1)),
                switch_lsn: Some(Lsn(5 * SEG + 100)),
                history_stored: true,
            },
        ]
    }

    #[test]
    fn complete_chain_across_a_timeline_switch() {
        let segs: Vec<_> = (2..=5)
            .map(|n| seg(1, n))
            .chain((5..=7).map(|n| seg(2, n)))
            .collect();
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(1),
            Lsn(2 * SEG + 40),
            tli(2),
            None,
        );
        assert!(r.is_complete(), "{}", r.describe());
        assert_eq!(r.segments_checked, 6);
        assert_eq!(r.to, Lsn(8 * SEG));
    }

    #[test]
    fn gaps_are_merged_lsn_ranges() {
        let segs = vec![seg(1, 2), seg(1, 5), seg(2, 7)];
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(1),
            Lsn(2 * SEG),
            tli(2),
            None,
        );
        assert_eq!(
            r.gaps,
            vec![
                WalGap {
                    from: Lsn(3 * SEG),
                    to: Lsn(5 * SEG)
                },
                WalGap {
                    from: Lsn(6 * SEG),
                    to: Lsn(7 * SEG)
                }
            ]
        );
        assert!(
            r.describe().contains("0/3000000..0/5000000"),
            "{}",
            r.describe()
        );
    }

    #[test]
    fn a_segment_after_the_switch_on_the_old_timeline_does_not_count() {
        // Timeline 1 went on past the switch point (its segment 6 exists), but the
        // history says segment 6 belongs to timeline 2, which lacks it.
        let segs = vec![seg(1, 5), seg(1, 6), seg(2, 5), seg(2, 7)];
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(1),
            Lsn(5 * SEG),
            tli(2),
            None,
        );
        assert_eq!(r.gaps.len(), 1);
        assert_eq!(r.gaps[0].from, Lsn(6 * SEG));
    }

    #[test]
    fn explicit_end_and_unrelated_timeline() {
        let segs = vec![seg(1, 2), seg(1, 3)];
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(1),
            Lsn(2 * SEG),
            tli(1),
            Some(Lsn(3 * SEG + 5)),
        );
        assert!(r.is_complete());
        // Up to exactly the start of segment 4: segment 4 is not needed.
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(1),
            Lsn(2 * SEG),
            tli(1),
            Some(Lsn(4 * SEG)),
        );
        assert!(r.is_complete(), "{}", r.describe());
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(1),
            Lsn(2 * SEG),
            tli(1),
            Some(Lsn(4 * SEG + 1)),
        );
        assert!(!r.is_complete());
        let r = check_chain(
            &timelines(),
            &segs,
            WalSegSize::DEFAULT,
            tli(3),
            Lsn(2 * SEG),
            tli(2),
            None,
        );
        assert!(r.not_ancestor);
        assert!(!r.is_complete());
    }
}

//! Retention rules and the policy that applies them: which complete backups a tier keeps.
//! Pure (no storage); what the kept set means for a tier's objects is the server's plan.
//!
//! ```toml
//! [retention]                 # both tiers
//! recovery_window = "7d"      # restore to any point of the last 7 days
//! latest = 2                  # and/or keep counts:
//! daily = 7                   #   the newest backup of each of the 7 latest days with one
//! weekly = 4                  #   ... ISO weeks (Monday to Sunday, UTC)
//! monthly = 6
//! yearly = 1
//! [retention.tier2]           # replaces [retention]'s rules for Tier 2
//! recovery_window = "30d"
//! ```
//! A backup is kept when any rule keeps it; the newest complete backup is always kept.
//! A tier without rules keeps everything. `recovery_window` keeps every backup that
//! finished inside the window and the newest one that finished before it (restoring to
//! the window's first moment starts from that one). Periods are UTC calendar periods of
//! the time a backup finished.

use std::collections::BTreeMap;
use std::fmt;

use klio_core::clock::civil_from_days;
use klio_core::BackupId;
use serde::Deserialize;

/// One tier's rules as written (also `[retention]` itself, less the tier tables).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    pub recovery_window: Option<String>,
    pub latest: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}

/// The `[retention]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(flatten)]
    pub both: RulesConfig,
    pub tier1: Option<RulesConfig>,
    pub tier2: Option<RulesConfig>,
}

/// Validated rules of one tier. `Default`: no rules (keep everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Seconds.
    pub recovery_window: Option<u64>,
    pub latest: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}

/// Both tiers' rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub tier1: Rules,
    pub tier2: Rules,
}

/// A rule that cannot be used; `field` is the key below `retention` (`tier2.latest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RulesError {
    pub field: String,
    pub message: String,
}

/// The largest keep count accepted.
pub const MAX_KEEP: u32 = 100_000;

impl RetentionConfig {
    /// Validates the table: each tier gets its own table's rules, or `[retention]`'s.
    pub fn validate(&self) -> Result<Retention, RulesError> {
        let both = self.both.validate("")?;
        let tier = |t: &Option<RulesConfig>, name: &str| match t {
            Some(t) => t.validate(&format!("{name}.")),
            None => Ok(both),
        };
        Ok(Retention {
            tier1: tier(&self.tier1, "tier1")?,
            tier2: tier(&self.tier2, "tier2")?,
        })
    }
}

impl RulesConfig {
    fn validate(&self, prefix: &str) -> Result<Rules, RulesError> {
        let err = |field: &str, message: String| RulesError {
            field: format!("{prefix}{field}"),
            message,
        };
        let recovery_window = match self.recovery_window.as_deref() {
            None => None,
            Some(text) => Some(parse_duration(text).map_err(|m| err("recovery_window", m))?),
        };
        let count = |field: &str, v: Option<u32>| match v {
            Some(n) if !(1..=MAX_KEEP).contains(&n) => Err(err(
                field,
                format!(
                    "{n} is out of range: keep 1 to {MAX_KEEP} (leave it out to not use the rule)"
                ),
            )),
            v => Ok(v),
        };
        Ok(Rules {
            recovery_window,
            latest: count("latest", self.latest)?,
            daily: count("daily", self.daily)?,
            weekly: count("weekly", self.weekly)?,
            monthly: count("monthly", self.monthly)?,
            yearly: count("yearly", self.yearly)?,
        })
    }
}

/// `"7d"`, `"36h"`, `"90m"`, `"2w"`, `"3600s"`: a positive whole number and one unit.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || {
        format!("{text:?} is not a duration: use a whole number and a unit, e.g. \"7d\", \"36h\", \"2w\" (s, m, h, d, w)")
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("{text:?}: the window must be longer than zero")),
        Some(s) if s <= 100 * 365 * 86_400 => Ok(s),
        _ => Err(format!("{text:?}: at most 100 years")),
    }
}

impl Rules {
    /// Whether any rule is set (without rules a tier keeps everything).
    pub fn any(&self) -> bool {
        *self != Rules::default()
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.any() {
            return f.write_str("keep everything (no rules)");
        }
        let mut parts = Vec::new();
        if let Some(w) = self.recovery_window {
            parts.push(format!("recovery_window = {}", show_duration(w)));
        }
        for (name, v) in [
            ("latest", self.latest),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            if let Some(n) = v {
                parts.push(format!("{name} = {n}"));
            }
        }
        f.write_str(&parts.join(", "))
    }
}

fn show_duration(s: u64) -> String {
    for (unit, scale) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s.is_multiple_of(scale) {
            return format!("{}{unit}", s / scale);
        }
    }
    format!("{s}s")
}

/// A complete backup as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: BackupId,
    pub finished_unix: u64,
}

/// The calendar period (a number that orders periods) of a Unix time.
type Period = fn(u64) -> i64;

/// Why a kept backup is kept, one reason per rule that keeps it.
pub type Kept = BTreeMap<BackupId, Vec<String>>;

/// The backups of `candidates` that `rules` keep at `now_unix`, with the reasons.
/// Without rules, every candidate is kept.
pub fn keep(rules: &Rules, candidates: &[Candidate], now_unix: u64) -> Kept {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    // Newest first; the id breaks ties (ids are times too).
    sorted.sort_by(|a, b| (b.finished_unix, &b.id).cmp(&(a.finished_unix, &a.id)));
    let mut kept = Kept::new();
    let mut add = |c: &Candidate, why: String| kept.entry(c.id.clone()).or_default().push(why);
    if !rules.any() {
        for c in &sorted {
            add(c, "no retention rules".into());
        }
        return kept;
    }
    if let Some(newest) = sorted.first() {
        add(newest, "the newest backup".into());
    }
    if let Some(n) = rules.latest {
        for c in sorted.iter().take(n as usize) {
            add(c, format!("latest = {n}"));
        }
    }
    if let Some(window) = rules.recovery_window {
        let start = now_unix.saturating_sub(window);
        let shown = show_duration(window);
        for c in &sorted {
            if c.finished_unix >= start {
                add(c, format!("recovery_window = {shown}"));
            } else {
                add(
                    c,
                    format!("recovery_window = {shown} (the newest backup before the window)"),
                );
                break;
            }
        }
    }
    let periods: [(&str, Option<u32>, Period); 4] = [
        ("daily", rules.daily, |t| (t / 86_400) as i64),
        ("weekly", rules.weekly, |t| {
            ((t / 86_400) as i64 + 3).div_euclid(7)
        }),
        ("monthly", rules.monthly, |t| {
            let (y, m, _) = civil_from_days((t / 86_400) as i64);
            y * 12 + i64::from(m)
        }),
        ("yearly", rules.yearly, |t| {
            civil_from_days((t / 86_400) as i64).0
        }),
    ];
    for (name, count, period) in periods {
        let Some(n) = count else { continue };
        let mut last: Option<i64> = None;
        let mut taken = 0;
        for c in &sorted {
            if taken == n {
                break;
            }
            let p = period(c.finished_unix);
            if last != Some(p) {
                last = Some(p);
                taken += 1;
                add(c, format!("{name} = {n}"));
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-11-26 00:00:00 UTC, a Thursday.
    const NOW: u64 = 1_795_651_200;

    fn c(id: &str, finished: u64) -> Candidate {
        Candidate {
            id: id.parse().unwrap(),
            finished_unix: finished,
        }
    }

    fn ids(k: &Kept) -> Vec<&str> {
        k.keys().map(BackupId::as_str).collect()
    }

    #[test]
    fn durations_take_one_unit_and_refuse_nonsense() {
        assert_eq!(parse_duration("7d"), Ok(7 * DAY));
        assert_eq!(parse_duration(" 36h "), Ok(36 * 3600));
        assert_eq!(parse_duration("2w"), Ok(14 * DAY));
        assert_eq!(parse_duration("90m"), Ok(5400));
        for bad in [
            "",
            "d",
            "7",
            "7 d",
            "7days",
            "-1d",
            "1.5d",
            "0d",
            "99999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tier_tables_replace_the_shared_rules_and_errors_name_the_field() {
        let cfg: RetentionConfig =
            toml::from_str("latest = 2\n[tier2]\nrecovery_window = \"30d\"\n").unwrap();
        let r = cfg.validate().unwrap();
        assert_eq!(r.tier1.latest, Some(2));
        assert_eq!(r.tier2.latest, None);
        assert_eq!(r.tier2.recovery_window, Some(30 * DAY));
        let cfg: RetentionConfig = toml::from_str("[tier1]\ndaily = 0\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "tier1.daily");
        let cfg: RetentionConfig = toml::from_str("recovery_window = \"week\"\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().field, "recovery_window");
        assert!(toml::from_str::<RetentionConfig>("keep = 3\n").is_err());
        assert!(!Rules::default().any());
        assert_eq!(r.tier2.to_string(), "recovery_window = 30d");
    }

    #[test]
    fn without_rules_everything_is_kept_and_the_newest_always_is() {
        let all = [c("A", NOW - 3 * DAY), c("B", NOW - 2 * DAY)];
        assert_eq!(ids(&keep(&Rules::default(), &all, NOW)), ["A", "B"]);
        let tiny = Rules {
            recovery_window: Some(60),
            ..Rules::default()
        };
        // A window with no backup inside still keeps the newest before it.
        assert_eq!(ids(&keep(&tiny, &all, NOW)), ["B"]);
        assert!(keep(&tiny, &[], NOW).is_empty());
    }

    #[test]
    fn latest_keeps_the_newest_n() {
        let all: Vec<Candidate> = (1..=4)
            .map(|i| c(&format!("B{i}"), NOW - (5 - i) * DAY))
            .collect();
        let rules = Rules {
            latest: Some(2),
            ..Rules::default()
        };
        let k = keep(&rules, &all, NOW);
        assert_eq!(ids(&k), ["B3", "B4"]);
        assert!(k[&"B4".parse::<BackupId>().unwrap()].contains(&"the newest backup".to_string()));
    }

    #[test]
    fn the_recovery_window_keeps_the_backup_that_starts_it() {
        let all = [
            c("A", NOW - 10 * DAY),
            c("B", NOW - 8 * DAY),
            c("C", NOW - 6 * DAY),
            c("D", NOW - DAY),
        ];
        let rules = Rules {
            recovery_window: Some(7 * DAY),
            ..Rules::default()
        };
        assert_eq!(ids(&keep(&rules, &all, NOW)), ["B", "C", "D"]);
    }

    #[test]
    fn periods_keep_the_newest_backup_of_each_of_the_latest_periods() {
        // Two backups a day for 20 days, at 01:00 and 13:00 UTC.
        let mut all = Vec::new();
        for d in 0..20u64 {
            for h in [1, 13] {
                let t = NOW - (20 - d) * DAY + h * 3600;
                all.push(c(&format!("D{d:02}H{h:02}"), t));
            }
        }
        let daily = Rules {
            daily: Some(3),
            ..Rules::default()
        };
        assert_eq!(
            ids(&keep(&daily, &all, NOW)),
            ["D17H13", "D18H13", "D19H13"]
        );
        // NOW is a Thursday: days 17 (Monday) to 19 (yesterday, Wednesday) are this
        // week; the week before ends on day 16 (Sunday).
        let weekly = Rules {
            weekly: Some(2),
            ..Rules::default()
        };
        assert_eq!(ids(&keep(&weekly, &all, NOW)), ["D16H13", "D19H13"]);
        let monthly = Rules {
            monthly: Some(12),
            ..Rules::default()
        };
        // 20 days before 2026-11-26 is 2026-11-06: one month.
        assert_eq!(ids(&keep(&monthly, &all, NOW)), ["D19H13"]);
        let yearly = Rules {
            yearly: Some(1),
            latest: Some(1),
            ..Rules::default()
        };
        let k = keep(&yearly, &all, NOW);
        assert_eq!(ids(&k), ["D19H13"]);
        assert_eq!(k.values().next().unwrap().len(), 3, "{k:?}");
    }
}

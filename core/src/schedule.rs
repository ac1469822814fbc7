//! Cron expressions for scheduled base backups (`backup_schedule` per cluster).
//!
//! Five fields, evaluated in UTC: `minute hour day-of-month month day-of-week`.
//! Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! comma-separated list of those; months and weekdays also take English
//! three-letter names (`jan`, `mon`), and day-of-week 7 means Sunday like 0.
//! As in Vixie cron, when both day-of-month and day-of-week are restricted, a day
//! matches if either does. Shortcuts: `@hourly`, `@daily` (= `@midnight`),
//! `@weekly`, `@monthly`, `@yearly` (= `@annually`).

use std::fmt;
use std::str::FromStr;

use crate::clock::civil_from_days;

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

fn parse_value(field: &Field, s: &str) -> Result<u32, String> {
    if let Some(i) = field.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + field.min);
    }
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{}: {s:?} is not a number", field.name))?;
    if v < field.min || v > field.max {
        return Err(format!(
            "{}: {v} is out of range {}-{}",
            field.name, field.min, field.max
        ));
    }
    Ok(v)
}

/// Parses one field into a bit set; returns whether it was restricted (not `*`).
fn parse_field(field: &Field, s: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut restricted = false;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let step: u32 = st
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{}: bad step {st:?}", field.name))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            if step == 1 && s.split(',').count() == 1 {
                // plain `*`
            } else {
                restricted = true;
            }
            (field.min, field.max)
        } else {
            restricted = true;
            match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_value(field, a)?, parse_value(field, b)?);
                    if a > b {
                        return Err(format!("{}: range {range:?} is backwards", field.name));
                    }
                    (a, b)
                }
                None if part.contains('/') => (parse_value(field, range)?, field.max),
                None => {
                    let v = parse_value(field, range)?;
                    (v, v)
                }
            }
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    if bits == 0 {
        return Err(format!("{}: empty field", field.name));
    }
    Ok((bits, restricted))
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@hourly" => "0 * * * *".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            t if t.starts_with('@') => {
                return Err(format!(
                    "unknown shortcut {text:?}: use @hourly, @daily, @weekly, @monthly or @yearly"
                ))
            }
            _ => text.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; a cron expression has 5: minute hour day-of-month month day-of-week (UTC)",
                fields.len()
            ));
        }
        let spec = |name, min, max, names| Field {
            name,
            min,
            max,
            names,
        };
        let (minutes, _) = parse_field(&spec("minute", 0, 59, &[]), fields[0])?;
        let (hours, _) = parse_field(&spec("hour", 0, 23, &[]), fields[1])?;
        let (days, days_restricted) = parse_field(&spec("day-of-month", 1, 31, &[]), fields[2])?;
        let (months, _) = parse_field(&spec("month", 1, 12, &MONTHS), fields[3])?;
        let (mut weekdays, weekdays_restricted) =
            parse_field(&spec("day-of-week", 0, 7, &WEEKDAYS), fields[4])?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            text: text.to_string(),
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted,
            weekdays_restricted,
        })
    }
}

impl Schedule {
    fn day_matches(&self, days_since_epoch: i64) -> bool {
        let (_, month, day) = civil_from_days(days_since_epoch);
        if self.months & (1 << month) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday.
        let weekday = (days_since_epoch + 4).rem_euclid(7) as u32;
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first matching minute strictly after `unix_secs` (seconds since the epoch, UTC).
    /// `None` only for expressions that never match (e.g. `0 0 31 2 *`), checked over 8 years.
    pub fn next_after(&self, unix_secs: i64) -> Option<i64> {
        let start_min = unix_secs.div_euclid(60) + 1;
        let first_day = start_min.div_euclid(1440);
        let mut first_minute_of_day = start_min.rem_euclid(1440);
        for day in first_day..first_day + 366 * 8 {
            if self.day_matches(day) {
                for m in first_minute_of_day..1440 {
                    let (h, mi) = (m / 60, m % 60);
                    if self.hours & (1 << h) != 0 && self.minutes & (1 << mi) != 0 {
                        return Some((day * 1440 + m) * 60);
                    }
                }
            }
            first_minute_of_day = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Schedule {
        t.parse().unwrap()
    }

    // 2026-11-24T19:13:00Z is a Tuesday.
    const T0: i64 = 1_795_547_580;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(T0.div_euclid(86_400)), (2026, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn next_run_times() {
        assert_eq!(s("* * * * *").next_after(T0), Some(T0 + 60));
        assert_eq!(s("*/15 * * * *").next_after(T0), Some(T0 + 2 * 60));
        // Daily at 02:30 → tomorrow 02:30.
        let next = s("30 2 * * *").next_after(T0).unwrap();
        assert_eq!(
            next,
            (T0.div_euclid(86_400) + 1) * 86_400 + 2 * 3600 + 30 * 60
        );
        assert_eq!(s("@daily").next_after(T0).unwrap() % 86_400, 0);
        // Sundays at 00:00 → 2026-11-29.
        let sun = s("0 0 * * sun").next_after(T0).unwrap();
        assert_eq!(civil_from_days(sun / 86_400), (2026, 11, 29));
        assert_eq!(s("0 0 * * 7").next_after(T0), Some(sun));
        // First of the month or Mondays (OR semantics).
        let either = s("0 0 1 * mon").next_after(T0).unwrap();
        assert_eq!(civil_from_days(either / 86_400), (2026, 11, 30));
        let feb29 = s("0 12 29 feb *").next_after(T0).unwrap();
        assert_eq!(civil_from_days(feb29 / 86_400), (2028, 2, 29));
        assert_eq!(s("0 0 31 2 *").next_after(T0), None);
    }

    #[test]
    fn strictly_after() {
        let at = s("0 3 * * *").next_after(T0).unwrap();
        assert!(s("0 3 * * *").next_after(at).unwrap() == at + 86_400);
        assert!(s("0 3 * * *").next_after(at - 1).unwrap() == at);
    }

    #[test]
    fn bad_expressions_name_the_field() {
        for (expr, needle) in [
            ("* * * *", "5"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("@often", "shortcut"),
        ] {
            let err = expr.parse::<Schedule>().unwrap_err();
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }
}

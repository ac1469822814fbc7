//! Cron schedules (UTC) of volume-snapshot offloads (`snapshotOffload.schedule`), and
//! the durations of `snapshotOffload.maxAge`. Writes nothing.
//!
//! The syntax is the server's `backup_schedule` (`server/src/schedule.rs`, which the
//! operator cannot depend on: that crate links RocksDB): five fields `minute hour
//! day-of-month month day-of-week`, each `*`, `n`, `a-b`, `*/s`, `a-b/s`, `n/s` or a
//! comma-separated list of those; three-letter English month and weekday names; weekday
//! 7 is Sunday; when both day fields are restricted a day matches either (Vixie cron);
//! `@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`.

use klio_core::clock::civil_from_days;

/// A parsed cron expression: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minute: u64,
    hour: u64,
    day: u64,
    month: u64,
    weekday: u64,
    /// Whether day-of-month and day-of-week were restricted (not a plain `*`).
    day_set: bool,
    weekday_set: bool,
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's name, bounds and value names (index 0 is `lo`).
struct FieldDef {
    what: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
}

impl FieldDef {
    fn value(&self, s: &str) -> Result<u32, String> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return u32::try_from(i)
                .map(|i| i + self.lo)
                .map_err(|_| s.to_string());
        }
        match s.parse::<u32>() {
            Ok(v) if (self.lo..=self.hi).contains(&v) => Ok(v),
            Ok(v) => Err(format!(
                "{}: {v} is outside {}-{}",
                self.what, self.lo, self.hi
            )),
            Err(_) => Err(format!("{}: {s:?} is not a number", self.what)),
        }
    }

    /// The bit set of `text`, and whether it restricts anything (is not a plain `*`).
    fn parse(&self, text: &str) -> Result<(u64, bool), String> {
        let mut bits = 0u64;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                None => (item, 1),
                Some((r, s)) => match s.parse::<u32>() {
                    Ok(n) if n > 0 => (r, n),
                    _ => {
                        return Err(format!(
                            "{}: step {s:?} must be a positive number",
                            self.what
                        ))
                    }
                },
            };
            let (from, to) = if range == "*" {
                (self.lo, self.hi)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if b < a {
                    return Err(format!("{}: {range:?} runs backwards", self.what));
                }
                (a, b)
            } else if step > 1 {
                (self.value(range)?, self.hi)
            } else {
                let v = self.value(range)?;
                (v, v)
            };
            bits |= (from..=to)
                .step_by(step as usize)
                .fold(0u64, |acc, v| acc | 1 << v);
        }
        Ok((bits, text != "*"))
    }
}

impl std::str::FromStr for Cron {
    type Err = String;

    fn from_str(text: &str) -> Result<Cron, String> {
        let text = text.trim();
        let expr = match text.to_ascii_lowercase().as_str() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            s if s.starts_with('@') => {
                return Err(format!(
                    "{text:?}: unknown shortcut (use @hourly, @daily, @weekly, @monthly or @yearly)"
                ))
            }
            _ => text,
        };
        let f: Vec<&str> = expr.split_whitespace().collect();
        let [mi, h, d, mo, wd] = f[..] else {
            return Err(format!(
                "{text:?} has {} fields, cron has 5: minute hour day-of-month month day-of-week (UTC)",
                f.len()
            ));
        };
        let def = |what, lo, hi, names| FieldDef {
            what,
            lo,
            hi,
            names,
        };
        let (minute, _) = def("minute", 0, 59, &[]).parse(mi)?;
        let (hour, _) = def("hour", 0, 23, &[]).parse(h)?;
        let (day, day_set) = def("day-of-month", 1, 31, &[]).parse(d)?;
        let (month, _) = def("month", 1, 12, &MONTH_NAMES).parse(mo)?;
        let (mut weekday, weekday_set) = def("day-of-week", 0, 7, &WEEKDAY_NAMES).parse(wd)?;
        if weekday & 1 << 7 != 0 {
            weekday = (weekday & !(1 << 7)) | 1;
        }
        Ok(Cron {
            minute,
            hour,
            day,
            month,
            weekday,
            day_set,
            weekday_set,
        })
    }
}

impl Cron {
    fn runs_on(&self, epoch_day: i64) -> bool {
        let (_, month, day) = civil_from_days(epoch_day);
        // Day 0 (1970-01-01) was a Thursday (4).
        let weekday = (epoch_day + 4).rem_euclid(7);
        let by_day = self.day & 1 << day != 0;
        let by_weekday = self.weekday & 1 << weekday != 0;
        let day_ok = match (self.day_set, self.weekday_set) {
            (true, true) => by_day || by_weekday,
            (true, false) => by_day,
            (false, true) => by_weekday,
            (false, false) => true,
        };
        self.month & 1 << month != 0 && day_ok
    }

    /// The first time it fires strictly after `after` (Unix seconds); `None` for an
    /// expression that never fires within eight years (`0 0 30 2 *`).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let first = after.div_euclid(60) + 1;
        let mut minute_of_day = first.rem_euclid(1440);
        for day in first.div_euclid(1440)..first.div_euclid(1440) + 8 * 366 {
            if self.runs_on(day) {
                for m in minute_of_day..1440 {
                    if self.hour & 1 << (m / 60) != 0 && self.minute & 1 << (m % 60) != 0 {
                        return Some((day * 1440 + m) * 60);
                    }
                }
            }
            minute_of_day = 0;
        }
        None
    }
}

/// A duration such as `90s`, `30m`, `24h`, `7d`, `2w`, in seconds.
pub fn parse_age(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration such as 24h, 7d or 2w");
    let Some(last) = text.chars().last() else {
        return Err(bad());
    };
    let n: u64 = text[..text.len() - last.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let unit = match last {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cron {
        s.parse().unwrap()
    }

    // 2026-11-24T19:13:00Z, a Tuesday.
    const T: i64 = 1_795_547_580;
    const DAY: i64 = 86_400;

    #[test]
    fn it_fires_at_the_next_matching_minute() {
        assert_eq!(c("* * * * *").next_after(T), Some(T + 60));
        assert_eq!(c("*/15 * * * *").next_after(T), Some(T + 120));
        assert_eq!(
            c("30 2 * * *").next_after(T),
            Some((T / DAY + 1) * DAY + 2 * 3600 + 1800)
        );
        let sunday = c("0 0 * * sun").next_after(T).unwrap();
        assert_eq!(civil_from_days(sunday / DAY), (2026, 11, 29));
        assert_eq!(c("0 0 * * 7").next_after(T), Some(sunday));
        // Either day field matches when both are restricted: Monday the 30th.
        let either = c("0 0 1 * mon").next_after(T).unwrap();
        assert_eq!(civil_from_days(either / DAY), (2026, 11, 30));
        assert_eq!(c("@daily").next_after(T).unwrap() % DAY, 0);
        let leap = c("0 12 29 feb *").next_after(T).unwrap();
        assert_eq!(civil_from_days(leap / DAY), (2028, 2, 29));
        assert_eq!(c("0 0 30 2 *").next_after(T), None);
        // Strictly after: a firing time itself is not "next".
        let at = c("0 3 * * *").next_after(T).unwrap();
        assert_eq!(c("0 3 * * *").next_after(at), Some(at + DAY));
        assert_eq!(c("0 3 * * *").next_after(at - 1), Some(at));
    }

    #[test]
    fn bad_expressions_are_refused_with_the_field_named() {
        for (expr, says) in [
            ("* * * *", "5"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("@often", "shortcut"),
            ("x * * * *", "not a number"),
        ] {
            let e = expr.parse::<Cron>().unwrap_err();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }

    #[test]
    fn ages_parse_with_their_unit() {
        assert_eq!(parse_age("7d"), Ok(7 * 86_400));
        assert_eq!(parse_age("24h"), Ok(86_400));
        assert_eq!(parse_age("2w"), Ok(1_209_600));
        for bad in ["", "d", "7", "7y", "-1d", "7é", "99999999999999999999w"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}

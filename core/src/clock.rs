//! The one clock and calendar: the Unix time now, and civil dates (UTC, proleptic
//! Gregorian) from days since 1970-01-01. Reads the system clock; writes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since 1970-01-01 UTC (0 if the system clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// (year, month 1-12, day 1-31) of the day `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// UTC `YYYY-MM-DD HH:MM:SS` of seconds since the epoch.
pub fn utc_time(unix: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(unix);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

/// UTC `YYYYMMDDTHHMMSSZ` of seconds since the epoch (the form of backup ids).
pub fn utc_compact(unix: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(unix);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// Year, month, day, hour, minute, second (UTC) of seconds since the epoch.
fn utc_parts(unix: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(days_from_civil(2026, 11, 25), 20_782);
    }

    #[test]
    fn round_trip() {
        for days in -800_000..800_000i64 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn now_is_after_2025() {
        assert!(unix_now() > 1_735_689_600);
    }

    #[test]
    fn utc_time_is_the_civil_date_and_time() {
        assert_eq!(utc_time(1_795_547_580), "2026-11-24 19:13:00");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
    }
}

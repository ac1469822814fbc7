//! Schedules (UTC) of volume-snapshot offloads (`snapshotOffload.schedule`): the
//! server's own cron syntax, [`klio_core::schedule::Schedule`] (re-exported here as
//! [`Cron`]), and the durations of `snapshotOffload.maxAge`. Writes nothing.

/// A `snapshotOffload.schedule`: the same syntax as a cluster's `backup_schedule`.
pub use klio_core::schedule::Schedule as Cron;

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
    use klio_core::clock::civil_from_days;

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

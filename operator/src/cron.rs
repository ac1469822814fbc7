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
    // The schedule syntax itself is tested with `klio_core::schedule`.
    use super::*;

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

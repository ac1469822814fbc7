//! Prometheus text exposition (format 0.0.4) of the clusters' replication status.
//!
//! Rendered on each scrape from [`ClusterStatusView`]s; no state of its own, nothing
//! written to disk. LSNs are exported as byte positions (numbers).

use std::fmt::Write;

use klio_api::{ClusterStatusView, ConnectionState};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ClusterStatusView) -> Option<u64>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "klio_wal_received_lsn_bytes",
        kind: "gauge",
        help: "End of the WAL received from the primary, as a byte position.",
        value: |s| s.received_lsn.map(|l| l.0),
    },
    Family {
        name: "klio_wal_flushed_lsn_bytes",
        kind: "gauge",
        help: "End of the WAL durable on Tier 1 and reported to the primary as flushed.",
        value: |s| s.flushed_lsn.map(|l| l.0),
    },
    Family {
        name: "klio_primary_lsn_bytes",
        kind: "gauge",
        help: "The primary's current WAL end, as last reported by it.",
        value: |s| s.primary_lsn.map(|l| l.0),
    },
    Family {
        name: "klio_wal_lag_bytes",
        kind: "gauge",
        help: "Bytes of WAL the primary has that are not yet durable on Tier 1.",
        value: |s| s.lag_bytes,
    },
    Family {
        name: "klio_wal_segments_sealed_total",
        kind: "counter",
        help: "WAL segments completed and sealed on Tier 1.",
        value: |s| Some(s.sealed_segments),
    },
    Family {
        name: "klio_wal_fsyncs_total",
        kind: "counter",
        help: "fdatasyncs of streamed WAL (each one acknowledges everything received before it).",
        value: |s| Some(s.wal_fsyncs),
    },
    Family {
        name: "klio_tier1_disk_full",
        kind: "gauge",
        help: "1 while Tier 1 is out of space and streaming is paused.",
        value: |s| Some(u64::from(s.disk_full)),
    },
    Family {
        name: "klio_backups_complete",
        kind: "gauge",
        help: "Complete base backups stored for the cluster.",
        value: |s| Some(s.backups.complete),
    },
    Family {
        name: "klio_backup_running",
        kind: "gauge",
        help: "1 while a base backup of the cluster runs.",
        value: |s| Some(u64::from(s.backups.running)),
    },
    Family {
        name: "klio_backup_last_complete_timestamp_seconds",
        kind: "gauge",
        help: "When the newest complete base backup finished (Unix time).",
        value: |s| s.backups.last_complete_at,
    },
    Family {
        name: "klio_backup_verify_ok",
        kind: "gauge",
        help: "1 if the last `klio verify` found every backup intact and its WAL chain complete, else 0.",
        value: |s| s.backups.last_verify_ok.map(u64::from),
    },
    Family {
        name: "klio_backup_last_verify_timestamp_seconds",
        kind: "gauge",
        help: "When the last verification ran (Unix time).",
        value: |s| s.backups.last_verify_at,
    },
];

/// Renders every family for these clusters. Families with no sample still get their
/// HELP and TYPE lines, so dashboards see the metric exists.
pub fn render(statuses: &[ClusterStatusView]) -> String {
    let mut out = String::new();
    for f in FAMILIES {
        header(&mut out, f.name, f.kind, f.help);
        for s in statuses {
            if let Some(v) = (f.value)(s) {
                let _ = writeln!(
                    out,
                    "{}{{cluster=\"{}\"}} {v}",
                    f.name,
                    label(s.cluster.as_str())
                );
            }
        }
    }
    // In seconds, as Prometheus wants: not an integer, so not in FAMILIES.
    header(
        &mut out,
        "klio_wal_fsync_seconds_total",
        "counter",
        "Time spent in fdatasync of streamed WAL (with klio_wal_fsyncs_total: the mean flush a synchronous commit waits for).",
    );
    for s in statuses {
        let _ = writeln!(
            out,
            "klio_wal_fsync_seconds_total{{cluster=\"{}\"}} {}",
            label(s.cluster.as_str()),
            s.wal_fsync_micros as f64 / 1e6
        );
    }
    header(
        &mut out,
        "klio_connection_state",
        "gauge",
        "1 for the replication connection's current state, 0 for the others.",
    );
    for s in statuses {
        for state in ConnectionState::ALL {
            let _ = writeln!(
                out,
                "klio_connection_state{{cluster=\"{}\",state=\"{state}\"}} {}",
                label(s.cluster.as_str()),
                u8::from(s.state == state)
            );
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (`\`, `"` and newlines).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_core::Lsn;

    #[test]
    fn renders_every_series_with_numbers() {
        let mut a = ClusterStatusView::connecting("pg-a".parse().unwrap());
        a.state = ConnectionState::Streaming;
        a.received_lsn = Some(Lsn(0x1_0000_0010));
        a.flushed_lsn = Some(Lsn(0x1_0000_0000));
        a.primary_lsn = Some(Lsn(0x1_0000_0020));
        a.lag_bytes = Some(0x20);
        a.sealed_segments = 7;
        a.wal_fsyncs = 4000;
        a.wal_fsync_micros = 1_250_000;
        let b = ClusterStatusView::connecting("pg-b".parse().unwrap());
        let text = render(&[a, b]);
        for line in [
            "# TYPE klio_wal_received_lsn_bytes gauge",
            "klio_wal_received_lsn_bytes{cluster=\"pg-a\"} 4294967312",
            "klio_wal_flushed_lsn_bytes{cluster=\"pg-a\"} 4294967296",
            "klio_primary_lsn_bytes{cluster=\"pg-a\"} 4294967328",
            "klio_wal_lag_bytes{cluster=\"pg-a\"} 32",
            "# TYPE klio_wal_segments_sealed_total counter",
            "klio_wal_segments_sealed_total{cluster=\"pg-a\"} 7",
            "klio_wal_segments_sealed_total{cluster=\"pg-b\"} 0",
            "klio_connection_state{cluster=\"pg-a\",state=\"streaming\"} 1",
            "klio_connection_state{cluster=\"pg-a\",state=\"connecting\"} 0",
            "klio_connection_state{cluster=\"pg-b\",state=\"connecting\"} 1",
            "klio_tier1_disk_full{cluster=\"pg-b\"} 0",
            "# TYPE klio_wal_fsyncs_total counter",
            "klio_wal_fsyncs_total{cluster=\"pg-a\"} 4000",
            "# TYPE klio_wal_fsync_seconds_total counter",
            "klio_wal_fsync_seconds_total{cluster=\"pg-a\"} 1.25",
            "klio_wal_fsync_seconds_total{cluster=\"pg-b\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Unknown positions are omitted, not exported as 0.
        assert!(!text.contains("klio_wal_received_lsn_bytes{cluster=\"pg-b\"}"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

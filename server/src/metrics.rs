//! Prometheus text exposition (format 0.0.4) of the clusters' replication status, what
//! each tier stores and the Tier 2 relay's backlog.
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
        name: "klio_wal_recompressed_from_memory_total",
        kind: "counter",
        help: "WAL segments from the synchronous commit path rewritten compressed from what the writer fed the recompressor while writing them (no read-back), since the server started.",
        value: |s| Some(s.wal_recompressed_from_memory),
    },
    Family {
        name: "klio_wal_recompressed_from_file_total",
        kind: "counter",
        help: "WAL segments from the synchronous commit path rewritten compressed by reading their files back (after a restart or a backlog), since the server started.",
        value: |s| Some(s.wal_recompressed_from_file),
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
    Family {
        name: "klio_tier1_recompress_backlog_segments",
        kind: "gauge",
        help: "WAL segments in Tier 1 still stored uncompressed (written on the synchronous commit path), waiting for the background recompressor.",
        value: |s| Some(s.storage.tier1_recompress_backlog),
    },
    Family {
        name: "klio_tier2_backlog_objects",
        kind: "gauge",
        help: "Objects waiting to be copied to Tier 2 (dead letters included).",
        value: |s| s.tier2.as_ref().map(|t| t.backlog_objects),
    },
    Family {
        name: "klio_tier2_backlog_bytes",
        kind: "gauge",
        help: "Bytes waiting to be copied to Tier 2.",
        value: |s| s.tier2.as_ref().map(|t| t.backlog_bytes),
    },
    Family {
        name: "klio_tier2_backlog_oldest_age_seconds",
        kind: "gauge",
        help: "Age of the oldest object waiting for Tier 2 (absent when none waits).",
        value: |s| s.tier2.as_ref().and_then(|t| t.oldest_age_seconds),
    },
    Family {
        name: "klio_tier2_dead_letters",
        kind: "gauge",
        help: "Objects whose upload failed permanently; `klio tier2 retry` queues them again.",
        value: |s| s.tier2.as_ref().map(|t| t.dead_letters),
    },
    Family {
        name: "klio_tier2_last_upload_timestamp_seconds",
        kind: "gauge",
        help: "When Tier 2 last confirmed an upload (Unix time).",
        value: |s| s.tier2.as_ref().and_then(|t| t.last_upload_at),
    },
    Family {
        name: "klio_tier2_uploaded_objects_total",
        kind: "counter",
        help: "Objects uploaded to Tier 2 since the server started.",
        value: |s| s.tier2.as_ref().map(|t| t.uploaded_objects),
    },
    Family {
        name: "klio_tier2_uploaded_bytes_total",
        kind: "counter",
        help: "Bytes uploaded to Tier 2 since the server started.",
        value: |s| s.tier2.as_ref().map(|t| t.uploaded_bytes),
    },
    Family {
        name: "klio_tier2_upload_failures_total",
        kind: "counter",
        help: "Failed Tier 2 uploads (each retried later or made a dead letter) since the server started.",
        value: |s| s.tier2.as_ref().map(|t| t.upload_failures),
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
    for (name, help, value) in [
        (
            "klio_stored_objects",
            "Objects stored per tier: WAL segments, history files, packs and backup manifests.",
            (|s: &ClusterStatusView| [s.storage.tier1_objects, s.storage.tier2_objects])
                as fn(&ClusterStatusView) -> [u64; 2],
        ),
        (
            "klio_stored_bytes",
            "Bytes stored per tier (compressed and encrypted, as stored).",
            |s: &ClusterStatusView| [s.storage.tier1_bytes, s.storage.tier2_bytes],
        ),
    ] {
        header(&mut out, name, "gauge", help);
        for s in statuses {
            let tiers = value(s);
            for (tier, v) in [("1", tiers[0]), ("2", tiers[1])] {
                if tier == "2" && s.tier2.is_none() {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",tier=\"{tier}\"}} {v}",
                    label(s.cluster.as_str())
                );
            }
        }
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
    fn storage_per_tier_and_the_tier2_backlog_are_exported() {
        let mut a = ClusterStatusView::connecting("pg-a".parse().unwrap());
        a.storage = klio_api::StorageStatus {
            tier1_objects: 12,
            tier1_bytes: 5000,
            tier2_objects: 10,
            tier2_bytes: 4000,
            tier1_recompress_backlog: 3,
        };
        a.tier2 = Some(klio_api::Tier2Status {
            location: "s3://b/p".into(),
            backlog_objects: 2,
            backlog_bytes: 1000,
            oldest_age_seconds: Some(30),
            dead_letters: 1,
            last_upload_at: Some(1_700_000_000),
            uploaded_objects: 10,
            uploaded_bytes: 4000,
            upload_failures: 3,
            ..Default::default()
        });
        // Without [tier2]: Tier 1 figures only, no Tier 2 series.
        let mut b = ClusterStatusView::connecting("pg-b".parse().unwrap());
        b.storage.tier1_objects = 1;
        let text = render(&[a, b]);
        for line in [
            "klio_stored_objects{cluster=\"pg-a\",tier=\"1\"} 12",
            "klio_stored_objects{cluster=\"pg-a\",tier=\"2\"} 10",
            "klio_stored_bytes{cluster=\"pg-a\",tier=\"1\"} 5000",
            "klio_stored_bytes{cluster=\"pg-a\",tier=\"2\"} 4000",
            "klio_stored_objects{cluster=\"pg-b\",tier=\"1\"} 1",
            "klio_tier1_recompress_backlog_segments{cluster=\"pg-a\"} 3",
            "klio_tier1_recompress_backlog_segments{cluster=\"pg-b\"} 0",
            "klio_tier2_backlog_objects{cluster=\"pg-a\"} 2",
            "klio_tier2_backlog_bytes{cluster=\"pg-a\"} 1000",
            "klio_tier2_backlog_oldest_age_seconds{cluster=\"pg-a\"} 30",
            "klio_tier2_dead_letters{cluster=\"pg-a\"} 1",
            "klio_tier2_last_upload_timestamp_seconds{cluster=\"pg-a\"} 1700000000",
            "# TYPE klio_tier2_uploaded_objects_total counter",
            "klio_tier2_uploaded_objects_total{cluster=\"pg-a\"} 10",
            "klio_tier2_uploaded_bytes_total{cluster=\"pg-a\"} 4000",
            "klio_tier2_upload_failures_total{cluster=\"pg-a\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("cluster=\"pg-b\",tier=\"2\""));
        assert!(!text.contains("klio_tier2_backlog_objects{cluster=\"pg-b\"}"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

//! How client commands print: aligned human tables by default, JSON with
//! `--output json`. Pure formatting; nothing is read or written here.

use std::fmt::Write;

use klio_api::{BackupList, BackupStateView, BackupView, StatusList, VerifyReport, WalList};

/// `--output` of the client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// A text table: a header row and rows, columns padded to their widest cell.
/// Columns marked numeric are right-aligned.
struct Table {
    headers: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            numeric: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, &w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                if self.numeric[i] {
                    let _ = write!(line, "{cell:>w$}");
                } else {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in IEC units: `512 B`, `16.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The mean WAL fdatasync since the server started, e.g. `0.25 ms` (`-` before the first).
fn mean_fsync(count: u64, micros: u64) -> String {
    if count == 0 {
        return "-".into();
    }
    format!("{:.2} ms", micros as f64 / count as f64 / 1000.0)
}

/// `klio status` as a table; a line per cluster error follows the table.
pub fn status_table(list: &StatusList) -> String {
    if list.clusters.is_empty() {
        return "no clusters visible with this token\n".into();
    }
    let mut t = Table::new(&[
        ("CLUSTER", false),
        ("STATE", false),
        ("TIMELINE", true),
        ("RECEIVED", false),
        ("FLUSHED", false),
        ("PRIMARY", false),
        ("LAG", true),
        ("SEALED", true),
        ("FSYNC", true),
        ("DISK", false),
        ("TIER1", true),
        ("TIER2", true),
        ("BACKLOG", true),
    ]);
    let mut notes = String::new();
    for s in &list.clusters {
        let (tier2, backlog) = match &s.tier2 {
            None => ("-".to_string(), "-".to_string()),
            Some(t) => (
                human_bytes(s.storage.tier2_bytes),
                format!("{} / {}", t.backlog_objects, human_bytes(t.backlog_bytes)),
            ),
        };
        t.row(vec![
            s.cluster.to_string(),
            s.state.to_string(),
            or_dash(s.timeline),
            or_dash(s.received_lsn),
            or_dash(s.flushed_lsn),
            or_dash(s.primary_lsn),
            or_dash(s.lag_bytes.map(human_bytes)),
            s.sealed_segments.to_string(),
            mean_fsync(s.wal_fsyncs, s.wal_fsync_micros),
            if s.disk_full { "FULL" } else { "ok" }.to_string(),
            human_bytes(s.storage.tier1_bytes),
            tier2,
            backlog,
        ]);
        if let Some(e) = &s.last_error {
            let _ = writeln!(notes, "{}: last error: {e}", s.cluster);
        }
        if let Some(t) = s.tier2.as_ref() {
            if let Some(age) = t.oldest_age_seconds.filter(|&a| a >= 60) {
                let _ = writeln!(
                    notes,
                    "{}: the oldest object waiting for Tier 2 ({}) was queued {age} s ago",
                    s.cluster, t.location
                );
            }
            if t.dead_letters > 0 {
                let _ = writeln!(
                    notes,
                    "{}: {} object(s) failed permanently and wait for `klio tier2 retry --cluster {}` once the cause is fixed:",
                    s.cluster, t.dead_letters, s.cluster
                );
                for d in &t.dead {
                    let _ = writeln!(
                        notes,
                        "  {} {}: {}",
                        d.kind,
                        d.name,
                        d.error.as_deref().unwrap_or("(no error recorded)")
                    );
                }
            }
        }
    }
    let mut out = t.render();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out
}

/// `klio list wal` as a table with a total line.
pub fn wal_table(list: &WalList) -> String {
    if list.files.is_empty() {
        return format!("no WAL stored for cluster {}\n", list.cluster);
    }
    let mut t = Table::new(&[("NAME", false), ("SIZE", true), ("STORED", true)]);
    let (mut plain, mut stored) = (0u64, 0u64);
    for f in &list.files {
        plain = plain.saturating_add(f.plain_size);
        stored = stored.saturating_add(f.stored_size);
        t.row(vec![
            f.name.to_string(),
            human_bytes(f.plain_size),
            human_bytes(f.stored_size),
        ]);
    }
    let mut out = t.render();
    let _ = writeln!(
        out,
        "{} files, {} ({} stored)",
        list.files.len(),
        human_bytes(plain),
        human_bytes(stored)
    );
    out
}

/// Seconds as `1h02m`, `3m05s` or `12.3s`.
pub fn human_duration(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

/// `new / stored` of the backup as a percentage, e.g. `3.1%`.
fn new_share(b: &BackupView) -> String {
    if b.state != BackupStateView::Complete || b.stored_bytes == 0 {
        return "-".into();
    }
    format!("{:.1}%", b.new_bytes as f64 * 100.0 / b.stored_bytes as f64)
}

/// `klio list backups` as a table (oldest first); failed backups get a line with the reason.
pub fn backup_table(list: &BackupList) -> String {
    if list.backups.is_empty() {
        return format!("no backups of cluster {}\n", list.cluster);
    }
    let mut t = Table::new(&[
        ("ID", false),
        ("STATE", false),
        ("KIND", false),
        ("LABEL", false),
        ("TLI", true),
        ("START LSN", false),
        ("END LSN", false),
        ("FILES", true),
        ("SIZE", true),
        ("STORED", true),
        ("NEW", true),
        ("NEW%", true),
        ("DURATION", true),
        ("FINISHED (UTC)", false),
    ]);
    for b in &list.backups {
        let duration = b
            .finished_at
            .map(|f| human_duration(f.saturating_sub(b.started_at) as f64))
            .or_else(|| b.progress.as_ref().map(|p| human_duration(p.elapsed_secs)));
        t.row(vec![
            b.id.to_string(),
            b.state.as_str().into(),
            format!("{:?}", b.kind).to_lowercase(),
            b.label.clone(),
            or_dash(b.start_timeline),
            or_dash(b.start_lsn),
            or_dash(b.end_lsn),
            b.files.to_string(),
            human_bytes(b.logical_bytes),
            human_bytes(b.stored_bytes),
            human_bytes(b.new_bytes),
            new_share(b),
            or_dash(duration),
            or_dash(b.finished_at.map(klio_core::clock::utc_time)),
        ]);
    }
    let mut out = t.render();
    for b in &list.backups {
        if let Some(e) = &b.error {
            let _ = writeln!(out, "{}: {e}", b.id);
        }
    }
    out
}

/// One finished backup in a few lines (`klio backup --wait`).
pub fn backup_summary(b: &BackupView) -> String {
    let mut out = format!(
        "backup {} of cluster {}: {}\n",
        b.id,
        b.cluster,
        b.state.as_str()
    );
    if let Some(e) = &b.error {
        let _ = writeln!(out, "  error: {e}");
    }
    if b.state == BackupStateView::Complete {
        let _ = writeln!(
            out,
            "  WAL {} .. {} (timeline {}), {} files, {} read, {} stored, {} new ({})",
            or_dash(b.start_lsn),
            or_dash(b.end_lsn),
            or_dash(b.end_timeline),
            b.files,
            human_bytes(b.logical_bytes),
            human_bytes(b.stored_bytes),
            human_bytes(b.new_bytes),
            new_share(b)
        );
    }
    out
}

/// `klio verify`: one block per backup, then the verdict.
pub fn verify_report(r: &VerifyReport) -> String {
    let mut out = String::new();
    if r.backups.is_empty() {
        let _ = writeln!(out, "cluster {}: no complete backup to verify", r.cluster);
    }
    for b in &r.backups {
        let _ = writeln!(
            out,
            "backup {}: {} ({} files, {} chunks, {} checked)",
            b.id,
            if b.ok { "OK" } else { "FAILED" },
            b.files_checked,
            b.chunks_checked,
            human_bytes(b.bytes_checked)
        );
        for p in &b.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        let _ = writeln!(out, "  {}", b.wal.summary);
    }
    let _ = writeln!(
        out,
        "verify {}: cluster {}",
        if r.ok { "passed" } else { "FAILED" },
        r.cluster
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_api::{ClusterStatusView, ConnectionState, WalEntryView};
    use klio_core::Lsn;

    #[test]
    fn human_bytes_uses_iec_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn status_table_is_aligned() {
        let mut a = ClusterStatusView::connecting("pg-main".parse().unwrap());
        a.state = ConnectionState::Streaming;
        a.timeline = Some(klio_core::TimelineId::FIRST);
        a.flushed_lsn = Some(Lsn(0x16_B374_D848));
        a.lag_bytes = Some(16 << 20);
        a.wal_fsyncs = 4;
        a.wal_fsync_micros = 1000;
        let mut b = ClusterStatusView::connecting("b".parse().unwrap());
        b.last_error = Some("connection refused".into());
        let text = status_table(&StatusList {
            clusters: vec![a, b],
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("CLUSTER  STATE       TIMELINE"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("pg-main  streaming          1"),
            "{text}"
        );
        assert!(
            lines[1].contains("16/B374D848") && lines[1].contains("16.0 MiB"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("b        connecting         -"),
            "{text}"
        );
        // FLUSHED column starts at the same offset on every row.
        let col = lines[0].find("FLUSHED").unwrap();
        assert_eq!(&lines[1][col..col + 11], "16/B374D848");
        assert_eq!(&lines[2][col..col + 1], "-");
        assert!(text.contains("b: last error: connection refused"), "{text}");
        // The mean flush, right-aligned under FSYNC; "-" before the first.
        let end = lines[0].find("FSYNC").unwrap() + "FSYNC".len();
        assert!(lines[1][..end].ends_with("0.25 ms"), "{text}");
        assert!(lines[2][..end].ends_with('-'), "{text}");
    }

    #[test]
    fn wal_table_lists_files_and_total() {
        let list = WalList {
            cluster: "pg-main".parse().unwrap(),
            files: vec![
                WalEntryView {
                    name: "000000010000000000000001".parse().unwrap(),
                    plain_size: 16 << 20,
                    stored_size: 1 << 20,
                },
                WalEntryView {
                    name: "00000002.history".parse().unwrap(),
                    plain_size: 42,
                    stored_size: 90,
                },
            ],
        };
        let text = wal_table(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME                          SIZE   STORED");
        assert_eq!(lines[1], "000000010000000000000001  16.0 MiB  1.0 MiB");
        assert_eq!(lines[2], "00000002.history              42 B     90 B");
        assert_eq!(lines[3], "2 files, 16.0 MiB (1.0 MiB stored)");
    }
}

#[cfg(test)]
mod backup_tests {
    use super::*;
    use klio_api::{BackupKindView, BackupProgress};
    use klio_core::Lsn;

    fn view(id: &str, state: BackupStateView) -> BackupView {
        BackupView {
            cluster: "pg-a".parse().unwrap(),
            id: id.parse().unwrap(),
            label: "nightly".into(),
            kind: BackupKindView::Stream,
            state,
            error: None,
            start_lsn: Some(Lsn(0x300_0028)),
            start_timeline: Some(1),
            end_lsn: Some(Lsn(0x300_0100)),
            end_timeline: Some(1),
            started_at: 1_795_547_580,
            finished_at: Some(1_795_547_650),
            pg_version: Some(170_000),
            logical_bytes: 1 << 30,
            stored_bytes: 200 << 20,
            new_bytes: 10 << 20,
            files: 1200,
            chunks: 1100,
            new_chunks: 60,
            progress: None,
            tiers: None,
        }
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(185.0), "3m05s");
        assert_eq!(human_duration(3720.0), "1h02m");
    }

    #[test]
    fn backup_table_shows_new_share_and_errors() {
        let mut failed = view("20261124T191400Z", BackupStateView::Failed);
        failed.error = Some("server stopped during the backup".into());
        failed.finished_at = None;
        let mut running = view("20261124T191500Z", BackupStateView::Running);
        running.finished_at = None;
        running.progress = Some(BackupProgress {
            phase: "streaming".into(),
            done_bytes: 5,
            total_bytes: None,
            elapsed_secs: 4.0,
        });
        let text = backup_table(&BackupList {
            cluster: "pg-a".parse().unwrap(),
            backups: vec![
                view("20261124T191300Z", BackupStateView::Complete),
                failed,
                running,
            ],
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(
            lines[1].contains("complete") && lines[1].contains("5.0%"),
            "{text}"
        );
        assert!(lines[1].contains("2026-11-24 19:14:10"), "{text}");
        assert!(
            lines[3].contains("running") && lines[3].contains("4.0s"),
            "{text}"
        );
        assert!(
            text.contains("20261124T191400Z: server stopped during the backup"),
            "{text}"
        );
        let s = backup_summary(&view("x", BackupStateView::Complete));
        assert!(
            s.contains("1200 files") && s.contains("10.0 MiB new (5.0%)"),
            "{s}"
        );
    }
}

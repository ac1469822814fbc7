//! Progress of a running backup on the client: a one-line bar redrawn in place when
//! stderr is a terminal, a plain log line every few seconds otherwise.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::output::{human_bytes, human_duration};
use klio_api::BackupView;

/// Draws successive snapshots of one backup.
#[derive(Debug)]
pub struct ProgressDisplay {
    tty: bool,
    last_line: Option<Instant>,
    line_every: Duration,
    drawn: bool,
}

impl ProgressDisplay {
    pub fn new() -> ProgressDisplay {
        ProgressDisplay {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last_line: None,
            line_every: Duration::from_secs(10),
            drawn: false,
        }
    }

    /// Shows `b` (a running backup's latest view).
    pub fn update(&mut self, b: &BackupView) {
        let Some(text) = describe(b) else { return };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            self.drawn = true;
        } else if self
            .last_line
            .is_none_or(|t| t.elapsed() >= self.line_every)
        {
            let _ = writeln!(err, "backup {}: {text}", b.id);
            self.last_line = Some(Instant::now());
        }
        let _ = err.flush();
    }

    /// Ends the bar's line (call before printing anything else).
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

impl Default for ProgressDisplay {
    fn default() -> Self {
        ProgressDisplay::new()
    }
}

/// `[#####-----] 1.2 GiB / 3.4 GiB  35%  120.5 MiB/s  ETA 18.0s  streaming`.
pub fn describe(b: &BackupView) -> Option<String> {
    let p = b.progress.as_ref()?;
    let rate = if p.elapsed_secs > 0.5 {
        p.done_bytes as f64 / p.elapsed_secs
    } else {
        0.0
    };
    let mut s = String::new();
    match p.total_bytes.filter(|&t| t > 0) {
        Some(total) => {
            let frac = (p.done_bytes as f64 / total as f64).min(1.0);
            let filled = (frac * 20.0).round() as usize;
            s.push_str(&format!(
                "[{}{}] {} / {}  {:>3.0}%",
                "#".repeat(filled),
                "-".repeat(20 - filled),
                human_bytes(p.done_bytes),
                human_bytes(total),
                frac * 100.0
            ));
            if rate > 0.0 && p.done_bytes < total {
                let eta = (total - p.done_bytes) as f64 / rate;
                s.push_str(&format!(
                    "  {}/s  ETA {}",
                    human_bytes(rate as u64),
                    human_duration(eta)
                ));
            } else if rate > 0.0 {
                s.push_str(&format!("  {}/s", human_bytes(rate as u64)));
            }
        }
        None => {
            s.push_str(&human_bytes(p.done_bytes));
            if rate > 0.0 {
                s.push_str(&format!("  {}/s", human_bytes(rate as u64)));
            }
        }
    }
    s.push_str("  ");
    s.push_str(&p.phase);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_api::{BackupKindView, BackupProgress, BackupStateView};

    #[test]
    fn bar_rate_and_eta() {
        let mut b = BackupView {
            cluster: "pg-a".parse().unwrap(),
            id: "x".parse().unwrap(),
            label: "l".into(),
            kind: BackupKindView::Stream,
            state: BackupStateView::Running,
            error: None,
            start_lsn: None,
            start_timeline: None,
            end_lsn: None,
            end_timeline: None,
            started_at: 0,
            finished_at: None,
            pg_version: None,
            logical_bytes: 0,
            stored_bytes: 0,
            new_bytes: 0,
            files: 0,
            chunks: 0,
            new_chunks: 0,
            progress: None,
            tiers: None,
        };
        assert_eq!(describe(&b), None);
        b.progress = Some(BackupProgress {
            phase: "streaming".into(),
            done_bytes: 100 << 20,
            total_bytes: Some(400 << 20),
            elapsed_secs: 10.0,
        });
        let s = describe(&b).unwrap();
        assert!(
            s.starts_with("[#####---------------] 100.0 MiB / 400.0 MiB   25%"),
            "{s}"
        );
        assert!(
            s.contains("10.0 MiB/s") && s.contains("ETA 30.0s") && s.ends_with("streaming"),
            "{s}"
        );
        b.progress.as_mut().unwrap().total_bytes = None;
        assert_eq!(describe(&b).unwrap(), "100.0 MiB  10.0 MiB/s  streaming");
    }
}

//! Byte-for-byte comparison of the WAL Klio serves back with PostgreSQL's own `pg_wal`,
//! counted per timeline, so that a test states how many files it expected compared and
//! nothing is skipped silently. Writes the files read back into a directory the caller
//! names.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::KlioServer;

/// How many WAL files a comparison checked, per timeline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compared {
    per_timeline: BTreeMap<u32, usize>,
}

impl Compared {
    /// Files compared on all timelines.
    pub fn total(&self) -> usize {
        self.per_timeline.values().sum()
    }

    /// Files compared on timeline `tli`.
    pub fn on_timeline(&self, tli: u32) -> usize {
        self.per_timeline.get(&tli).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Compared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .per_timeline
            .iter()
            .map(|(tli, n)| format!("{n} on timeline {tli}"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// The timeline a WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY[.partial]`) is on.
fn timeline_of(name: &str) -> Result<u32> {
    let hex = name
        .get(..8)
        .with_context(|| format!("{name:?} is not a WAL file name"))?;
    u32::from_str_radix(hex, 16).with_context(|| format!("{name:?} is not a WAL file name"))
}

impl KlioServer {
    /// Reads each of `names` back from Klio into `out` and checks it against the file of
    /// the same name in `pg_wal`: a segment through `klio wal-restore`, byte-identical; a
    /// `.partial` (a timeline's last segment) through the API, equal to the start of
    /// pg_wal's copy, which PostgreSQL keeps at full segment size under the `.partial`
    /// name or, when it does not archive, under the segment's own name. Every file must
    /// be in `pg_wal`: one that is not there is an error, never skipped.
    pub fn compare_with_pg_wal(
        &self,
        cluster: &str,
        pg_wal: &Path,
        out: &Path,
        names: &[String],
    ) -> Result<Compared> {
        let mut compared = Compared::default();
        for name in names {
            let tli = timeline_of(name)?;
            let segment = name.strip_suffix(".partial").unwrap_or(name);
            let theirs = std::fs::read(pg_wal.join(name))
                .or_else(|_| std::fs::read(pg_wal.join(segment)))
                .with_context(|| {
                    format!(
                        "{name} is not in {}: nothing to compare Klio's copy with",
                        pg_wal.display()
                    )
                })?;
            let ours = if name.ends_with(".partial") {
                let (code, body) =
                    self.get(cluster, &format!("/v1/clusters/{cluster}/wal/{name}"))?;
                ensure!(code == 200, "GET {name}: HTTP {code}");
                body
            } else {
                let dest = out.join(name);
                let o = self.wal_restore(cluster, name, &dest)?;
                if !o.status.success() {
                    bail!(
                        "wal-restore {name} failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                std::fs::read(&dest)?
            };
            let same = if name.ends_with(".partial") {
                theirs.starts_with(&ours)
            } else {
                ours == theirs
            };
            if !same {
                let at = ours
                    .iter()
                    .zip(&theirs)
                    .position(|(a, b)| a != b)
                    .unwrap_or(ours.len().min(theirs.len()));
                bail!(
                    "{name}: content differs from pg_wal at byte {at:#x} (Klio {} bytes, pg_wal {} bytes)",
                    ours.len(),
                    theirs.len()
                );
            }
            *compared.per_timeline.entry(tli).or_default() += 1;
        }
        Ok(compared)
    }
}

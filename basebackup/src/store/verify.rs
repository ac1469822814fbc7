//! Verifying a stored backup: every chunk read back, authenticated and re-hashed,
//! each file's size and CRC-32C checked, and the files checked against PostgreSQL's
//! `backup_manifest`. Reads only; writes nothing.

use std::collections::HashMap;
use std::fs::File;

use klio_core::manifest::FileKind;
use klio_core::BackupId;

use super::{BackupStoreError, ChunkStore, Result};

/// What [`ChunkStore::verify_backup`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyResult {
    pub files_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Each names the file and, where it applies, the chunk.
    pub problems: Vec<String>,
}

impl ChunkStore {
    /// Reads back every chunk of a complete backup, checks each file's size and
    /// CRC-32C, and the files against PostgreSQL's `backup_manifest`.
    pub fn verify_backup(&self, id: &BackupId) -> Result<VerifyResult> {
        let b = self
            .backup(id)?
            .ok_or_else(|| BackupStoreError::NoSuchBackup(id.to_string()))?;
        let mut r = VerifyResult::default();
        let manifest = match self.read_manifest(&b.id) {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(format!("backup {id}: manifest: {e}"));
                return Ok(r);
            }
        };
        // Open pack files; `None`: Tier 1 does not hold the pack.
        let mut packs: HashMap<String, Option<File>> = HashMap::new();
        for f in &manifest.files {
            r.files_checked += 1;
            if f.kind != FileKind::File {
                continue;
            }
            let mut crc = 0u32;
            let mut len = 0u64;
            let mut bad = false;
            for c in &f.chunks {
                r.chunks_checked += 1;
                let rec = match self.inner.catalog.chunk(&self.inner.cluster, &c.0)? {
                    Some(rec) => rec,
                    None => {
                        r.problems.push(format!(
                            "backup {id}: file {}: chunk {c} is not in the catalog",
                            f.pg_path()
                        ));
                        bad = true;
                        break;
                    }
                };
                // Tier 1 no longer holds it (retention): read from Tier 2.
                let missing =
                    |why: &str| std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string());
                if !packs.contains_key(&rec.pack) {
                    let opened = self
                        .pack_path(&rec.pack)
                        .and_then(|p| match File::open(&p) {
                            Ok(h) => Ok(Some(h)),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                            Err(e) => Err(super::io(&p)(e)),
                        });
                    match opened {
                        Ok(h) => {
                            packs.insert(rec.pack.clone(), h);
                        }
                        Err(e) => {
                            r.problems.push(format!(
                                "backup {id}: file {}: chunk {c}: pack {e}",
                                f.pg_path()
                            ));
                            bad = true;
                            break;
                        }
                    }
                }
                let read = match (&packs[&rec.pack], rec.tier1_freed) {
                    (Some(h), false) => self.read_chunk_at(h, c, &rec, true),
                    _ => self.read_chunk_elsewhere(c, &rec, missing("not in Tier 1"), true),
                };
                match read {
                    Ok(data) => {
                        crc = crc32c::crc32c_append(crc, &data);
                        len += data.len() as u64;
                        r.bytes_checked += data.len() as u64;
                    }
                    Err(e) => {
                        r.problems
                            .push(format!("backup {id}: file {}: {e}", f.pg_path()));
                        bad = true;
                    }
                }
            }
            if !bad {
                if len != f.size {
                    r.problems.push(format!(
                        "backup {id}: file {}: {len} bytes read back, {} expected",
                        f.pg_path(),
                        f.size
                    ));
                } else if f.crc32c.is_some_and(|c| c != crc) {
                    r.problems.push(format!(
                        "backup {id}: file {}: CRC-32C mismatch",
                        f.pg_path()
                    ));
                }
            }
        }
        match self.read_pg_manifest(&b.id) {
            Ok(Some(pg)) => {
                match crate::manifest::check_against_pg_manifest(&manifest.files, &pg) {
                    Ok(c) => r.problems.extend(
                        c.problems()
                            .into_iter()
                            .map(|p| format!("backup {id}: {p}")),
                    ),
                    Err(e) => r
                        .problems
                        .push(format!("backup {id}: backup_manifest: {e}")),
                }
            }
            Ok(None) => {}
            Err(e) => r
                .problems
                .push(format!("backup {id}: backup_manifest: {e}")),
        }
        Ok(r)
    }
}

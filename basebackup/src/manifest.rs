//! The check of a backup against PostgreSQL's own `backup_manifest`. Klio's manifest
//! types are `klio_core::manifest`'s.

use std::collections::HashMap;

use klio_core::manifest::{FileKind, ManifestFile};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Outcome of comparing a backup with PostgreSQL's `backup_manifest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgManifestCheck {
    pub files_compared: usize,
    /// In PostgreSQL's manifest, not in the backup.
    pub missing: Vec<String>,
    /// In the backup (regular files), not in PostgreSQL's manifest.
    pub extra: Vec<String>,
    /// `path: what differs`.
    pub mismatched: Vec<String>,
}

impl PgManifestCheck {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.mismatched.is_empty()
    }

    /// Problems, one per string (empty when ok).
    pub fn problems(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .missing
            .iter()
            .map(|p| format!("file {p} is in PostgreSQL's backup_manifest but not in the backup"))
            .collect();
        v.extend(
            self.extra.iter().map(|p| {
                format!("file {p} is in the backup but not in PostgreSQL's backup_manifest")
            }),
        );
        v.extend(self.mismatched.iter().map(|m| format!("file {m}")));
        v
    }

    pub fn describe(&self) -> String {
        let p = self.problems();
        if p.is_empty() {
            return format!("{} files match", self.files_compared);
        }
        let shown: Vec<&str> = p.iter().take(5).map(String::as_str).collect();
        format!(
            "{} problem(s): {}{}",
            p.len(),
            shown.join("; "),
            if p.len() > 5 { "; …" } else { "" }
        )
    }
}

#[derive(Deserialize)]
struct PgManifest {
    #[serde(rename = "Files")]
    files: Vec<PgFile>,
}

#[derive(Deserialize)]
struct PgFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// PostgreSQL's CRC-32C checksum text: the 4 bytes of the value in memory order
/// (little-endian), as hex.
pub fn pg_crc32c_hex(crc: u32) -> String {
    hex::encode(crc.to_le_bytes())
}

/// Checks `Manifest-Checksum`: SHA-256 of everything up to the line that carries it.
fn check_manifest_checksum(text: &[u8]) -> Result<(), String> {
    const KEY: &[u8] = b"\"Manifest-Checksum\"";
    let pos = text
        .windows(KEY.len())
        .rposition(|w| w == KEY)
        .ok_or("backup_manifest has no Manifest-Checksum")?;
    let rest = &text[pos + KEY.len()..];
    let q1 = rest
        .iter()
        .position(|&b| b == b'"')
        .ok_or("malformed Manifest-Checksum")?;
    let q2 = rest[q1 + 1..]
        .iter()
        .position(|&b| b == b'"')
        .ok_or("malformed Manifest-Checksum")?;
    let stated = std::str::from_utf8(&rest[q1 + 1..q1 + 1 + q2])
        .map_err(|_| "malformed Manifest-Checksum")?;
    let actual = hex::encode(Sha256::digest(&text[..pos]));
    if !actual.eq_ignore_ascii_case(stated) {
        return Err(format!(
            "backup_manifest checksum mismatch (stated {stated}, computed {actual}): the manifest is damaged"
        ));
    }
    Ok(())
}

/// Compares the backup's regular files with PostgreSQL's `backup_manifest`: every file
/// there must be in the backup with the same size and CRC-32C, and vice versa.
pub fn check_against_pg_manifest(
    files: &[ManifestFile],
    pg_manifest: &[u8],
) -> Result<PgManifestCheck, String> {
    check_manifest_checksum(pg_manifest)?;
    let m: PgManifest = serde_json::from_slice(pg_manifest)
        .map_err(|e| format!("backup_manifest is not valid JSON: {e}"))?;
    let ours: HashMap<String, &ManifestFile> = files
        .iter()
        .filter(|f| f.kind == FileKind::File)
        .map(|f| (f.pg_path(), f))
        .collect();
    let mut check = PgManifestCheck::default();
    let mut seen = std::collections::HashSet::new();
    for f in &m.files {
        let path = match (&f.path, &f.encoded_path) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => {
                let raw = hex::decode(e).map_err(|_| format!("bad Encoded-Path {e:?}"))?;
                String::from_utf8_lossy(&raw).into_owned()
            }
            (None, None) => return Err("a backup_manifest entry without a path".into()),
        };
        seen.insert(path.clone());
        let Some(o) = ours.get(&path) else {
            check.missing.push(path);
            continue;
        };
        check.files_compared += 1;
        if o.size != f.size {
            check.mismatched.push(format!(
                "{path}: size {} here, {} in backup_manifest",
                o.size, f.size
            ));
            continue;
        }
        if let (Some(alg), Some(sum)) = (&f.algorithm, &f.checksum) {
            if alg.eq_ignore_ascii_case("CRC32C") {
                match o.crc32c {
                    Some(c) if pg_crc32c_hex(c).eq_ignore_ascii_case(sum) => {}
                    Some(c) => check.mismatched.push(format!(
                        "{path}: CRC-32C {} here, {sum} in backup_manifest",
                        pg_crc32c_hex(c)
                    )),
                    None => check
                        .mismatched
                        .push(format!("{path}: no checksum recorded here")),
                }
            }
        }
    }
    for p in ours.keys() {
        if !seen.contains(p) {
            check.extra.push(p.clone());
        }
    }
    check.missing.sort();
    check.extra.sort();
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, crc: u32) -> ManifestFile {
        ManifestFile {
            tablespace: None,
            path: path.into(),
            kind: FileKind::File,
            mode: 0o600,
            mtime: 0,
            size,
            crc32c: Some(crc),
            link_target: None,
            chunks: vec![],
        }
    }

    fn pg_manifest(entries: &[(&str, u64, u32)]) -> Vec<u8> {
        let mut s = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
        let lines: Vec<String> = entries
            .iter()
            .map(|(p, size, crc)| {
                format!(
                    "{{ \"Path\": \"{p}\", \"Size\": {size}, \"Last-Modified\": \"2026-11-24 19:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                    pg_crc32c_hex(*crc)
                )
            })
            .collect();
        s.push_str(&lines.join(",\n"));
        s.push_str(" ],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n");
        let sum = hex::encode(Sha256::digest(s.as_bytes()));
        s.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
        s.into_bytes()
    }

    #[test]
    fn matching_backup_passes() {
        let mut ts = file("PG_17_1/5/16400", 8192, 3);
        ts.tablespace = Some(16399);
        let files = vec![
            file("backup_label", 10, 1),
            file("base/1/1259", 8192, 2),
            ts,
        ];
        let m = pg_manifest(&[
            ("backup_label", 10, 1),
            ("base/1/1259", 8192, 2),
            ("pg_tblspc/16399/PG_17_1/5/16400", 8192, 3),
        ]);
        let c = check_against_pg_manifest(&files, &m).unwrap();
        assert!(c.is_ok(), "{}", c.describe());
        assert_eq!(c.files_compared, 3);
    }

    #[test]
    fn differences_are_named() {
        let files = vec![file("a", 10, 1), file("b", 10, 2), file("extra", 1, 1)];
        let m = pg_manifest(&[("a", 11, 1), ("b", 10, 9), ("gone", 5, 5)]);
        let c = check_against_pg_manifest(&files, &m).unwrap();
        assert_eq!(c.missing, vec!["gone"]);
        assert_eq!(c.extra, vec!["extra"]);
        assert_eq!(c.mismatched.len(), 2);
        let d = c.describe();
        assert!(
            d.contains("a: size 10 here, 11") && d.contains("b: CRC-32C"),
            "{d}"
        );
    }

    #[test]
    fn a_damaged_manifest_is_refused() {
        let mut m = pg_manifest(&[("a", 10, 1)]);
        let i = m.iter().position(|&b| b == b'a').unwrap();
        m[i] = b'c';
        let e = check_against_pg_manifest(&[file("a", 10, 1)], &m).unwrap_err();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(check_against_pg_manifest(&[], b"{}").is_err());
    }

    #[test]
    fn crc_hex_is_little_endian_like_postgres() {
        // PostgreSQL prints the pg_crc32c's bytes in memory order.
        assert_eq!(pg_crc32c_hex(0x1234_5678), "78563412");
    }
}

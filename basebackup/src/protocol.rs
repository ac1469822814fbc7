//! `BASE_BACKUP` on a replication connection, as a pull-based stream of events.
//!
//! PostgreSQL 15+ (option list in parentheses): two result sets (start position;
//! tablespaces), then one CopyOut whose CopyData payloads start with a type byte — `n`
//! new archive (name, tablespace location), `d` data, `p` progress (bytes so far), `m`
//! the manifest follows (later `d` are manifest bytes) — then the end position.
//! PostgreSQL 13/14 (bare options): the same two result sets, then one CopyOut of raw
//! tar per tablespace in the order of the tablespace result set (the data directory
//! last), one CopyOut with the manifest, then the end position.
//!
//! WAL is never requested: Klio streams it on its own connection and checks that the
//! WAL from the backup's start to its end is in Tier 1 before calling it complete.
//! `WAIT false` (`NOWAIT`) likewise: PostgreSQL's archiver is not involved.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use klio_core::{Lsn, TimelineId};
use klio_pgwire::{CopyMessage, CopyOutNext, PgError, ReplicationConn, ResultSet};

/// What to ask PostgreSQL for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    pub label: String,
    /// `CHECKPOINT 'fast'` (else `'spread'`).
    pub fast_checkpoint: bool,
    /// `MAX_RATE` in kB/s (32..=1048576).
    pub max_rate_kbps: Option<u32>,
}

/// One tablespace as the server announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// `None` for the main data directory.
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Size estimate in kB (with `PROGRESS`).
    pub size_kb: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEvent {
    Started {
        start_lsn: Lsn,
        timeline: TimelineId,
        tablespaces: Vec<TablespaceInfo>,
    },
    ArchiveStart {
        /// `None` for the main data directory's archive.
        tablespace: Option<u32>,
        location: Option<String>,
        name: String,
    },
    ArchiveData(Bytes),
    ArchiveEnd,
    Progress {
        done_bytes: u64,
        total_bytes: Option<u64>,
    },
    ManifestData(Bytes),
    Finished {
        end_lsn: Lsn,
        timeline: TimelineId,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackupProtocolError {
    #[error("PostgreSQL {0} is not supported for base backups: Klio needs 13 or newer")]
    UnsupportedVersion(u32),
    #[error("invalid backup label: {0}")]
    BadLabel(String),
    #[error("MAX_RATE {0} kB/s is out of range (32 to 1048576)")]
    BadRate(u32),
    #[error("{}", server_hint(.0))]
    Pg(#[from] PgError),
    #[error("unexpected BASE_BACKUP response: {0}")]
    Protocol(String),
}

fn server_hint(e: &PgError) -> String {
    match e.sqlstate() {
        Some("42501") => format!("{e} (the role needs the REPLICATION attribute)"),
        Some("53300") => format!(
            "{e} (all WAL senders are busy: raise max_wal_senders on the primary; Klio needs one for streaming and one for a backup)"
        ),
        _ => e.to_string(),
    }
}

fn proto(msg: impl Into<String>) -> BackupProtocolError {
    BackupProtocolError::Protocol(msg.into())
}

/// The `BASE_BACKUP` command for this server version.
pub fn base_backup_command(
    server_version_num: u32,
    opts: &BaseBackupOptions,
) -> Result<String, BackupProtocolError> {
    if server_version_num < 130_000 {
        return Err(BackupProtocolError::UnsupportedVersion(
            server_version_num / 10_000,
        ));
    }
    if opts.label.is_empty() || opts.label.len() > 1023 || opts.label.contains('\0') {
        return Err(BackupProtocolError::BadLabel(
            "use 1 to 1023 bytes without NUL".into(),
        ));
    }
    if let Some(r) = opts.max_rate_kbps {
        if !(32..=1_048_576).contains(&r) {
            return Err(BackupProtocolError::BadRate(r));
        }
    }
    let label = opts.label.replace('\'', "''");
    if server_version_num >= 150_000 {
        let mut o = vec![
            format!("LABEL '{label}'"),
            "PROGRESS".to_string(),
            format!(
                "CHECKPOINT '{}'",
                if opts.fast_checkpoint {
                    "fast"
                } else {
                    "spread"
                }
            ),
            "WAIT false".to_string(),
            "WAL false".to_string(),
            "MANIFEST 'yes'".to_string(),
            "MANIFEST_CHECKSUMS 'CRC32C'".to_string(),
            "TARGET 'client'".to_string(),
        ];
        if let Some(r) = opts.max_rate_kbps {
            o.push(format!("MAX_RATE {r}"));
        }
        Ok(format!("BASE_BACKUP ({})", o.join(", ")))
    } else {
        let mut s = format!("BASE_BACKUP LABEL '{label}' PROGRESS");
        if opts.fast_checkpoint {
            s.push_str(" FAST");
        }
        s.push_str(" NOWAIT");
        if let Some(r) = opts.max_rate_kbps {
            s.push_str(&format!(" MAX_RATE {r}"));
        }
        s.push_str(" MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'");
        Ok(s)
    }
}

fn position(set: &ResultSet, what: &str) -> Result<(Lsn, TimelineId), BackupProtocolError> {
    let lsn = set
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse::<Lsn>().ok())
        .ok_or_else(|| proto(format!("no {what} position")))?;
    let tli = set
        .rows
        .first()
        .and_then(|r| r.get(1))
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse::<u32>().ok())
        .and_then(|v| TimelineId::new(v).ok())
        .ok_or_else(|| proto(format!("no {what} timeline")))?;
    Ok((lsn, tli))
}

fn tablespaces(set: &ResultSet) -> Result<Vec<TablespaceInfo>, BackupProtocolError> {
    set.rows
        .iter()
        .map(|r| {
            let field = |i: usize| r.get(i).and_then(|v| v.as_deref());
            let oid = field(0)
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| proto(format!("bad tablespace oid {v:?}")))
                })
                .transpose()?;
            Ok(TablespaceInfo {
                oid,
                location: field(1).map(String::from),
                size_kb: field(2).and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// Parses one 15+ CopyData payload into an event (`None` for the `m` marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    NewArchive { name: String, location: String },
    Data(Bytes),
    Progress(u64),
    ManifestFollows,
}

pub fn parse_payload(mut body: Bytes) -> Result<Payload, BackupProtocolError> {
    if body.is_empty() {
        return Err(proto("empty CopyData message"));
    }
    let kind = body.get_u8();
    match kind {
        b'n' => {
            let mut strs = body.split(|&b| b == 0);
            let name = strs
                .next()
                .ok_or_else(|| proto("archive message without a name"))?;
            let location = strs
                .next()
                .ok_or_else(|| proto("archive message without a location"))?;
            Ok(Payload::NewArchive {
                name: String::from_utf8(name.to_vec())
                    .map_err(|_| proto("archive name is not UTF-8"))?,
                location: String::from_utf8(location.to_vec())
                    .map_err(|_| proto("tablespace location is not UTF-8"))?,
            })
        }
        b'd' => Ok(Payload::Data(body)),
        b'p' => {
            if body.len() != 8 {
                return Err(proto("progress message of the wrong length"));
            }
            Ok(Payload::Progress(body.get_u64()))
        }
        b'm' => Ok(Payload::ManifestFollows),
        other => Err(proto(format!(
            "unknown CopyData message type {:?}",
            other as char
        ))),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Started not yet returned.
    Start,
    /// Inside a CopyOut.
    Copy,
    /// Old protocol: the manifest's CopyOut.
    OldManifest,
    Done,
}

/// A running `BASE_BACKUP`; call [`BaseBackupStream::next`] until it returns `None`.
pub struct BaseBackupStream<'c> {
    conn: &'c mut ReplicationConn,
    modern: bool,
    phase: Phase,
    pending: VecDeque<BackupEvent>,
    start: (Lsn, TimelineId),
    tablespaces: Vec<TablespaceInfo>,
    /// Old protocol: index of the tablespace whose archive is streaming.
    old_index: usize,
    in_archive: bool,
    in_manifest: bool,
    total_bytes: Option<u64>,
}

impl std::fmt::Debug for BaseBackupStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseBackupStream")
            .field("modern", &self.modern)
            .field("phase", &self.phase)
            .finish()
    }
}

impl<'c> BaseBackupStream<'c> {
    /// Sends `BASE_BACKUP` and reads up to the first data.
    pub async fn start(
        conn: &'c mut ReplicationConn,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackupStream<'c>, BackupProtocolError> {
        let version = conn.server_version_num();
        let sql = base_backup_command(version, opts)?;
        let sets = conn.start_copy_out(&sql).await?;
        let [start_set, ts_set] = sets.as_slice() else {
            return Err(proto(format!(
                "expected 2 result sets before the data, got {}",
                sets.len()
            )));
        };
        let start = position(start_set, "start")?;
        let tablespaces = tablespaces(ts_set)?;
        if tablespaces.is_empty() {
            return Err(proto("no tablespaces announced"));
        }
        let total_kb: u64 = tablespaces.iter().filter_map(|t| t.size_kb).sum();
        let modern = version >= 150_000;
        let mut s = BaseBackupStream {
            conn,
            modern,
            phase: Phase::Start,
            pending: VecDeque::new(),
            start,
            tablespaces,
            old_index: 0,
            in_archive: false,
            in_manifest: false,
            total_bytes: (total_kb > 0).then_some(total_kb * 1024),
        };
        if !modern {
            s.begin_old_archive();
        }
        Ok(s)
    }

    fn begin_old_archive(&mut self) {
        let t = &self.tablespaces[self.old_index];
        let name = match t.oid {
            Some(oid) => format!("{oid}.tar"),
            None => "base.tar".to_string(),
        };
        self.pending.push_back(BackupEvent::ArchiveStart {
            tablespace: t.oid,
            location: t.location.clone(),
            name,
        });
        self.in_archive = true;
    }

    fn end_archive(&mut self) {
        if self.in_archive {
            self.in_archive = false;
            self.pending.push_back(BackupEvent::ArchiveEnd);
        }
    }

    fn tablespace_of(
        &self,
        name: &str,
        location: &str,
    ) -> Result<Option<u32>, BackupProtocolError> {
        if let Some(oid) = name
            .strip_suffix(".tar")
            .and_then(|n| n.parse::<u32>().ok())
        {
            return Ok(Some(oid));
        }
        if name == "base.tar" || location.is_empty() {
            return Ok(None);
        }
        self.tablespaces
            .iter()
            .find(|t| t.location.as_deref() == Some(location))
            .map(|t| t.oid)
            .ok_or_else(|| proto(format!("archive {name:?} for an unannounced tablespace")))
    }

    /// The next event; `Ok(None)` after [`BackupEvent::Finished`].
    pub async fn next(&mut self) -> Result<Option<BackupEvent>, BackupProtocolError> {
        loop {
            if self.phase == Phase::Start {
                self.phase = Phase::Copy;
                return Ok(Some(BackupEvent::Started {
                    start_lsn: self.start.0,
                    timeline: self.start.1,
                    tablespaces: self.tablespaces.clone(),
                }));
            }
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if self.phase == Phase::Done {
                return Ok(None);
            }
            match self.conn.recv_copy().await? {
                CopyMessage::Data(body) => {
                    if !self.modern {
                        let ev = if self.phase == Phase::OldManifest {
                            BackupEvent::ManifestData(body)
                        } else {
                            BackupEvent::ArchiveData(body)
                        };
                        return Ok(Some(ev));
                    }
                    match parse_payload(body)? {
                        Payload::NewArchive { name, location } => {
                            if self.in_manifest {
                                return Err(proto("archive after the manifest"));
                            }
                            self.end_archive();
                            let tablespace = self.tablespace_of(&name, &location)?;
                            self.pending.push_back(BackupEvent::ArchiveStart {
                                tablespace,
                                location: (!location.is_empty()).then_some(location),
                                name,
                            });
                            self.in_archive = true;
                        }
                        Payload::Data(d) => {
                            if self.in_manifest {
                                return Ok(Some(BackupEvent::ManifestData(d)));
                            }
                            if !self.in_archive {
                                return Err(proto("data before any archive"));
                            }
                            return Ok(Some(BackupEvent::ArchiveData(d)));
                        }
                        Payload::Progress(done) => {
                            return Ok(Some(BackupEvent::Progress {
                                done_bytes: done,
                                total_bytes: self.total_bytes,
                            }))
                        }
                        Payload::ManifestFollows => {
                            self.end_archive();
                            self.in_manifest = true;
                        }
                    }
                }
                CopyMessage::Done => {
                    self.end_archive();
                    match self.conn.next_copy_out().await? {
                        CopyOutNext::Copy(_) if !self.modern => {
                            self.old_index += 1;
                            if self.old_index < self.tablespaces.len() {
                                self.begin_old_archive();
                            } else if self.phase == Phase::Copy {
                                self.phase = Phase::OldManifest;
                            } else {
                                return Err(proto("more COPY data than tablespaces"));
                            }
                        }
                        CopyOutNext::Copy(_) => return Err(proto("a second COPY stream")),
                        CopyOutNext::Finished(sets) => {
                            if !self.modern && self.old_index + 1 < self.tablespaces.len() {
                                return Err(proto(
                                    "the backup ended before every tablespace was sent",
                                ));
                            }
                            let set = sets
                                .iter()
                                .find(|s| s.columns.len() >= 2 && !s.rows.is_empty())
                                .ok_or_else(|| proto("no end position"))?;
                            let (end_lsn, timeline) = position(set, "end")?;
                            if end_lsn < self.start.0 {
                                return Err(proto(format!(
                                    "end position {end_lsn} is before the start {}",
                                    self.start.0
                                )));
                            }
                            self.phase = Phase::Done;
                            self.pending
                                .push_back(BackupEvent::Finished { end_lsn, timeline });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BaseBackupOptions {
        BaseBackupOptions {
            label: "it's nightly".into(),
            fast_checkpoint: true,
            max_rate_kbps: None,
        }
    }

    #[test]
    fn commands_per_version() {
        let c = base_backup_command(170_002, &opts()).unwrap();
        assert_eq!(
            c,
            "BASE_BACKUP (LABEL 'it''s nightly', PROGRESS, CHECKPOINT 'fast', WAIT false, WAL false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TARGET 'client')"
        );
        let mut o = opts();
        o.fast_checkpoint = false;
        o.max_rate_kbps = Some(1024);
        let c = base_backup_command(150_000, &o).unwrap();
        assert!(
            c.contains("CHECKPOINT 'spread'") && c.ends_with("MAX_RATE 1024)"),
            "{c}"
        );
        let c = base_backup_command(130_020, &opts()).unwrap();
        assert_eq!(
            c,
            "BASE_BACKUP LABEL 'it''s nightly' PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
        assert!(matches!(
            base_backup_command(120_000, &opts()),
            Err(BackupProtocolError::UnsupportedVersion(12))
        ));
        o.max_rate_kbps = Some(1);
        assert!(base_backup_command(170_000, &o).is_err());
        let mut bad = opts();
        bad.label = "a\0b".into();
        assert!(base_backup_command(170_000, &bad).is_err());
    }

    #[test]
    fn payloads() {
        let p = parse_payload(Bytes::from_static(b"n16385.tar\0/srv/ts\0")).unwrap();
        assert_eq!(
            p,
            Payload::NewArchive {
                name: "16385.tar".into(),
                location: "/srv/ts".into()
            }
        );
        assert_eq!(
            parse_payload(Bytes::from_static(b"dabc")).unwrap(),
            Payload::Data(Bytes::from_static(b"abc"))
        );
        let mut p = b"p".to_vec();
        p.extend_from_slice(&12345u64.to_be_bytes());
        assert_eq!(
            parse_payload(Bytes::from(p)).unwrap(),
            Payload::Progress(12345)
        );
        assert_eq!(
            parse_payload(Bytes::from_static(b"m")).unwrap(),
            Payload::ManifestFollows
        );
        assert!(parse_payload(Bytes::from_static(b"z")).is_err());
        assert!(parse_payload(Bytes::from_static(b"p123")).is_err());
        assert!(parse_payload(Bytes::new()).is_err());
    }
}

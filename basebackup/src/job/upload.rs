//! An offload upload stored as a backup: the body of `POST .../offloads/upload`
//! ([`klio_core::upload`] frames) decoded on a blocking thread straight into the chunk
//! store, then the usual WAL wait and commit ([`super::finish`]).
//!
//! The uploading client is a peer like any other: beyond the decoder's grammar (normal,
//! relative paths; exact file sizes; a complete body), every entry passes the same
//! [`MemberRule`] as a `BASE_BACKUP` archive member (links only as `pg_tblspc/<oid>`
//! in the data directory, nothing below a link), a tablespace's files come only after
//! its link, no path twice; at the end the copy must hold `PG_VERSION`, a
//! `global/pg_control` with the cluster's database system identifier, and a
//! `backup_label` file equal to the label frame. Anything else aborts the backup: what
//! it stored is removed and it is recorded failed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use klio_core::manifest::{FileKind, FileMeta, ManifestTablespace};
use klio_core::offload::{parse_backup_label, tablespace_link_oid};
use klio_core::upload::{UploadDecoder, UploadEntry, UploadError, UploadEvent, UploadKind};
use klio_core::{BackupId, Lsn, SystemId, TimelineId};

use super::{finish, store_error, thread_error, JobError, JobProgress, WalWaiter};
use crate::archive_rule::MemberRule;
use crate::store::{BackupKind, BackupRecord, BackupWriter, ChunkStore};
use crate::tar::{EntryKind, TarEntry};

/// Largest `backup_label` / `PG_VERSION` kept for the final checks.
const LABEL_MAX: usize = 1 << 20;

/// Which of the copy's files the final checks need, while one is being received.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    Label,
    Control,
    Version,
}

/// Receives one upload.
struct Ingest<'a> {
    store: &'a ChunkStore,
    id: &'a BackupId,
    label: &'a str,
    end: (TimelineId, Lsn),
    writer: Option<BackupWriter>,
    start: Option<(TimelineId, Lsn)>,
    label_text: String,
    rules: HashMap<Option<u32>, MemberRule>,
    seen: HashSet<(Option<u32>, String)>,
    /// Tablespace links of the data directory: OID → target.
    links: HashMap<u32, String>,
    capturing: Option<Capture>,
    got_label: Option<Vec<u8>>,
    got_control: Option<Vec<u8>>,
    got_version: bool,
    progress: &'a JobProgress,
}

impl Ingest<'_> {
    fn writer(&mut self) -> Result<&mut BackupWriter, JobError> {
        self.writer
            .as_mut()
            .ok_or_else(|| JobError::Source("an entry before the backup_label".into()))
    }

    fn event(&mut self, ev: UploadEvent<'_>) -> Result<(), JobError> {
        match ev {
            UploadEvent::Label(text) => self.begin(text),
            UploadEvent::Entry(e) => self.entry(e),
            UploadEvent::Data(d) => {
                match self.capturing {
                    Some(Capture::Label) => {
                        let buf = self.got_label.get_or_insert_with(Vec::new);
                        if buf.len() + d.len() > LABEL_MAX {
                            return Err(JobError::Source(
                                "the copy's backup_label is larger than 1 MiB".into(),
                            ));
                        }
                        buf.extend_from_slice(d);
                    }
                    Some(Capture::Control) => {
                        let buf = self.got_control.get_or_insert_with(Vec::new);
                        let want = 8usize.saturating_sub(buf.len()).min(d.len());
                        buf.extend_from_slice(&d[..want]);
                    }
                    Some(Capture::Version) | None => {}
                }
                self.progress.add_done(d.len() as u64);
                self.writer()?.write(d).map_err(store_error)
            }
            UploadEvent::EntryEnd => {
                self.capturing = None;
                self.writer()?.end_file().map_err(store_error)
            }
            UploadEvent::End => Ok(()),
        }
    }

    fn begin(&mut self, text: String) -> Result<(), JobError> {
        let l = parse_backup_label(&text)
            .map_err(|why| JobError::Source(format!("backup_label: {why}")))?;
        if self.end.1 < l.start_lsn {
            return Err(JobError::Source(format!(
                "the backup_label starts at {}, after this server's durable WAL position {}: the copy is newer than the WAL Klio holds; wait until Klio has streamed past {} (or pass --end-lsn with pg_backup_stop's LSN) and upload again",
                l.start_lsn, self.end.1, l.start_lsn
            )));
        }
        let w = self
            .store
            .begin(
                self.id,
                self.label,
                BackupKind::Offload,
                l.start_lsn,
                l.start_timeline,
                None,
            )
            .map_err(store_error)?;
        self.writer = Some(w);
        self.start = Some((l.start_timeline, l.start_lsn));
        self.label_text = text;
        Ok(())
    }

    fn entry(&mut self, e: UploadEntry) -> Result<(), JobError> {
        if let Some(oid) = e.tablespace {
            if !self.links.contains_key(&oid) {
                return Err(JobError::Source(format!(
                    "{} of tablespace {oid} arrived before (or without) its link pg_tblspc/{oid} in the data directory",
                    e.path
                )));
            }
        }
        if !self.seen.insert((e.tablespace, e.path.clone())) {
            return Err(JobError::Source(format!(
                "{} is sent twice (tablespace {:?})",
                e.path, e.tablespace
            )));
        }
        let member = TarEntry {
            path: e.path.clone(),
            kind: match e.kind {
                UploadKind::File => EntryKind::File,
                UploadKind::Directory => EntryKind::Directory,
                UploadKind::Symlink => EntryKind::Symlink,
            },
            mode: e.mode & 0o7777,
            size: e.size,
            mtime: e.mtime,
            link_target: e.link_target.clone(),
        };
        self.rules
            .entry(e.tablespace)
            .or_default()
            .check(&member, e.tablespace)
            .map_err(JobError::Source)?;
        if e.kind == UploadKind::Symlink {
            // The rule let only pg_tblspc/<oid> through, in the data directory.
            if let (Some(oid), Some(t)) = (tablespace_link_oid(&e.path), &e.link_target) {
                self.links.insert(oid, t.clone());
            }
        }
        self.capturing = match (e.tablespace, e.kind, e.path.as_str()) {
            (None, UploadKind::File, "backup_label") => Some(Capture::Label),
            (None, UploadKind::File, "global/pg_control") => Some(Capture::Control),
            (None, UploadKind::File, "PG_VERSION") => Some(Capture::Version),
            _ => None,
        };
        match self.capturing {
            Some(Capture::Label) => self.got_label = Some(Vec::new()),
            Some(Capture::Control) => self.got_control = Some(Vec::new()),
            Some(Capture::Version) => self.got_version = true,
            None => {}
        }
        self.writer()?
            .begin_file(FileMeta {
                tablespace: e.tablespace,
                path: e.path,
                kind: match e.kind {
                    UploadKind::File => FileKind::File,
                    UploadKind::Directory => FileKind::Directory,
                    UploadKind::Symlink => FileKind::Symlink,
                },
                mode: e.mode & 0o7777,
                mtime: e.mtime,
                size: e.size,
                link_target: e.link_target,
            })
            .map_err(store_error)
    }

    /// The checks once the whole body is in.
    fn complete(&self, system_id: SystemId) -> Result<(), JobError> {
        if !self.got_version {
            return Err(JobError::Source(
                "the copy has no PG_VERSION: it is not a PostgreSQL data directory".into(),
            ));
        }
        let found = self
            .got_control
            .as_deref()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| SystemId::new(u64::from_le_bytes(b)))
            .ok_or_else(|| {
                JobError::Source(
                    "the copy has no (or a truncated) global/pg_control: it is not a PostgreSQL data directory".into(),
                )
            })?;
        if found != system_id {
            return Err(JobError::Source(format!(
                "global/pg_control has database system identifier {found}, but this cluster's is {system_id}: this is a copy of another PostgreSQL cluster; upload it into the cluster it belongs to"
            )));
        }
        match &self.got_label {
            Some(b) if b == self.label_text.as_bytes() => Ok(()),
            Some(_) => Err(JobError::Source(
                "the copy's backup_label file differs from the upload's label frame".into(),
            )),
            None => Err(JobError::Source(
                "the upload has no backup_label file in the data directory (the client sends the label as one)".into(),
            )),
        }
    }
}

/// Stores an upload (the request body's pieces, as they arrive on `body`) as a backup.
/// A body that ends before its end frame, or breaks any rule in the module
/// documentation, aborts the backup.
#[allow(clippy::too_many_arguments)]
pub async fn upload_backup(
    mut body: tokio::sync::mpsc::Receiver<Bytes>,
    store: &ChunkStore,
    id: BackupId,
    label: String,
    end: (TimelineId, Lsn),
    system_id: SystemId,
    progress: Arc<JobProgress>,
    wal: &WalWaiter,
) -> Result<BackupRecord, JobError> {
    progress.set_phase("receiving");
    let store2 = store.clone();
    let prog = progress.clone();
    let received = tokio::task::spawn_blocking(move || {
        let mut ing = Ingest {
            store: &store2,
            id: &id,
            label: &label,
            end,
            writer: None,
            start: None,
            label_text: String::new(),
            rules: HashMap::new(),
            seen: HashSet::new(),
            links: HashMap::new(),
            capturing: None,
            got_label: None,
            got_control: None,
            got_version: false,
            progress: &prog,
        };
        let mut dec = UploadDecoder::new();
        let r = (|| -> Result<(), JobError> {
            while let Some(piece) = body.blocking_recv() {
                dec.feed(&piece, &mut |ev| ing.event(ev))
                    .map_err(|e| match e {
                        UploadError::Sink(inner) => inner,
                        other => JobError::Source(other.to_string()),
                    })?;
            }
            dec.finish().map_err(|e| JobError::Source(e.to_string()))?;
            ing.complete(system_id)
        })();
        let writer = ing.writer.take();
        let spaces: Vec<ManifestTablespace> = {
            let mut v: Vec<_> = ing
                .links
                .iter()
                .map(|(oid, t)| ManifestTablespace {
                    oid: *oid,
                    location: Some(t.clone()),
                })
                .collect();
            v.sort_by_key(|t| t.oid);
            v
        };
        match (r, writer) {
            (Ok(()), Some(w)) => Ok((w, ing.start.expect("a writer has a start"), spaces)),
            (Ok(()), None) => Err(JobError::Source("the upload has no backup_label".into())),
            (Err(e), w) => {
                if let Some(w) = w {
                    let _ = w.abort(&e.to_string());
                }
                Err(e)
            }
        }
    })
    .await
    .map_err(thread_error)?;
    let (writer, start, spaces) = received?;
    finish(writer, progress, wal, start, end, spaces, None).await
}

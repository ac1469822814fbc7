//! `klio offload --upload`: reads a PGDATA copy on this machine (a volume snapshot
//! mounted in a Job) under the same rules as the server's own offload
//! ([`klio_core::offload::scan`]: confined to `--root`, no symbolic link followed,
//! PostgreSQL's base-backup exclusions) and streams it to the server in
//! [`klio_core::upload`] frames. Reads only; writes nothing.
//!
//! The reading runs on a blocking thread, one file piece (at most 1 MiB) ahead of the
//! network through a small channel, so memory stays flat whatever the copy's size. A
//! read error ends the body without its end frame: the server aborts the backup, and
//! the read error is what this command reports.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use klio_api::client::{Client, ClientError};
use klio_api::{BackupView, UploadRequest};
use klio_core::offload::{scan, OffloadPolicy, OffloadSource, SourceKind};
use klio_core::upload::{self, UploadEntry, UploadKind, MAX_FRAME};
use klio_core::ClusterName;

use super::OffloadArgs;

/// Pieces read ahead of the network.
const AHEAD: usize = 8;

pub(super) async fn upload(
    c: &Client,
    cluster: &ClusterName,
    args: &OffloadArgs,
) -> Result<BackupView, ClientError> {
    let from = absolute(&args.from, "--from")?;
    let root = match &args.root {
        Some(r) => absolute(r, "--root")?,
        None => from.clone(),
    };
    let given_label = args.backup_label.clone();
    let source = {
        let (from, roots, label) = (from.clone(), [root.clone()], given_label.clone());
        tokio::task::spawn_blocking(move || {
            scan(
                &from,
                &OffloadPolicy {
                    roots: &roots,
                    system_id: None,
                    label: label.as_deref(),
                },
            )
        })
        .await
        .map_err(|e| ClientError::Io(format!("reading the copy: {e}")))?
        .map_err(|e| ClientError::Usage(scan_message(e, &root)))?
    };
    let req = UploadRequest {
        label: args.label.clone().or_else(|| source.label.label.clone()),
        end_lsn: args.end_lsn,
        total_bytes: Some(source.total_bytes),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(AHEAD);
    let reader = tokio::task::spawn_blocking(move || {
        let r = send_copy(&source, given_label.is_some(), &tx);
        if let Err(Stop::Read(e)) = &r {
            // Ends the body without its end frame: the server aborts the backup.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.clone())));
        }
        r
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let sent = c
        .upload_offload(cluster, &req, reqwest::Body::wrap_stream(stream))
        .await;
    let read = reader
        .await
        .map_err(|e| ClientError::Io(format!("reading the copy: {e}")))?;
    match (sent, read) {
        (_, Err(Stop::Read(e))) => Err(ClientError::Io(format!(
            "reading the copy failed, so the server aborted the upload: {e}"
        ))),
        // The server stopped reading: its answer says why.
        (sent, Ok(()) | Err(Stop::Disconnected)) => sent,
    }
}

/// Why sending the copy stopped.
enum Stop {
    /// Reading the copy failed (the message names the file).
    Read(String),
    /// The request ended on the network side (the server answered or the connection
    /// broke): the request's own outcome says which.
    Disconnected,
}

fn absolute(p: &Path, flag: &str) -> Result<PathBuf, ClientError> {
    std::path::absolute(p).map_err(|e| ClientError::Usage(format!("{flag} {}: {e}", p.display())))
}

/// The scan's error, with the local flag to fix instead of the server's setting.
fn scan_message(e: klio_core::offload::OffloadError, root: &Path) -> String {
    use klio_core::offload::OffloadError;
    match e {
        OffloadError::OutsideRoots => format!(
            "--from is not a directory inside --root {} (or does not exist)",
            root.display()
        ),
        OffloadError::NoLabel(dir) => format!(
            "{} has no backup_label: pass the text pg_backup_stop returned with --backup-label / KLIO_BACKUP_LABEL (CloudNativePG keeps it in the VolumeSnapshot's cnpg.io/backupLabelFile annotation)",
            dir.display()
        ),
        other => other.to_string(),
    }
}

/// Sends the whole body: magic, label, entries with their data, end.
fn send_copy(
    source: &OffloadSource,
    label_given: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), Stop> {
    let send = |b: Vec<u8>| {
        tx.blocking_send(Ok(Bytes::from(b)))
            .map_err(|_| Stop::Disconnected)
    };
    let text = source.label.text.as_bytes();
    let mut head = upload::MAGIC.to_vec();
    head.extend(upload::frame(upload::TAG_LABEL, text));
    if label_given {
        // The copy's own file (if any) is replaced by the given text.
        head.extend(upload::entry_frame(&UploadEntry {
            tablespace: None,
            path: "backup_label".into(),
            kind: UploadKind::File,
            mode: 0o600,
            mtime: klio_core::clock::unix_now() as i64,
            size: text.len() as u64,
            link_target: None,
        }));
        if !text.is_empty() {
            head.extend(upload::frame(upload::TAG_DATA, text));
        }
    }
    send(head)?;
    for e in &source.entries {
        if label_given && e.tablespace.is_none() && e.path == "backup_label" {
            continue;
        }
        let (kind, link_target) = match &e.kind {
            SourceKind::File => (UploadKind::File, None),
            SourceKind::Directory => (UploadKind::Directory, None),
            SourceKind::Symlink(t) => (UploadKind::Symlink, Some(t.clone())),
        };
        send(upload::entry_frame(&UploadEntry {
            tablespace: e.tablespace,
            path: e.path.clone(),
            kind,
            mode: e.mode,
            mtime: e.mtime,
            size: e.size,
            link_target,
        }))?;
        if e.kind != SourceKind::File || e.size == 0 {
            continue;
        }
        let mut f = source
            .open(e)
            .map_err(|err| Stop::Read(err.to_string()))?
            .take(e.size);
        let mut left = e.size;
        while left > 0 {
            let want = left.min(u64::from(MAX_FRAME)) as usize;
            let mut piece = vec![0u8; 5 + want];
            let mut got = 0;
            while got < want {
                let n = f
                    .read(&mut piece[5 + got..])
                    .map_err(|err| Stop::Read(format!("{}: {err}", e.source.display())))?;
                if n == 0 {
                    return Err(Stop::Read(format!(
                        "{} shrank while being read; is the copy still changing? Upload from a snapshot that nothing writes to",
                        e.source.display()
                    )));
                }
                got += n;
            }
            piece[..5].copy_from_slice(&upload::frame_header(upload::TAG_DATA, want as u32));
            send(piece)?;
            left -= want as u64;
        }
    }
    send(upload::frame(upload::TAG_END, b""))
}

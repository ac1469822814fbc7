//! The per-cluster writer thread: applies streamed WAL to the Tier 1 store and
//! reports the durable position.
//!
//! Group commit: the thread drains every message already queued, writes them,
//! then issues one fdatasync and publishes the new durable position. The
//! receiver sends a standby status update as soon as that position changes.

use std::thread::JoinHandle;

use bytes::Bytes;
use klio_core::{Lsn, TimelineId};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info};

use crate::wal_store::{SegmentWriter, StoreError, WalStore};

/// Messages queued before the receiver waits (at most 128 KiB each).
const QUEUE_DEPTH: usize = 64;

enum WriterCmd {
    Data {
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    },
    /// Flush, close the open segment, clear a previous error, and report
    /// where streaming must resume.
    Checkpoint {
        reply: oneshot::Sender<Result<Option<(TimelineId, Lsn)>, WriterError>>,
    },
}

/// What the writer thread publishes after each fsync or failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterProgress {
    /// End of durable WAL (fdatasync'ed) on the timeline being written.
    pub durable: Option<(TimelineId, Lsn)>,
    pub sealed: u64,
    /// Set after a write or fsync failure; nothing more is acknowledged until
    /// the receiver reconnects (which checkpoints and clears it).
    pub error: Option<String>,
    pub disk_full: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the Tier 1 writer thread has stopped")]
pub struct WriterGone;

/// A failed checkpoint: the message, and whether Tier 1 is out of space.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriterError {
    pub message: String,
    pub disk_full: bool,
}

impl From<&StoreError> for WriterError {
    fn from(e: &StoreError) -> Self {
        WriterError {
            message: describe(e),
            disk_full: e.is_disk_full(),
        }
    }
}

/// The error as logged and reported: for a full disk, with the fix.
pub fn describe(e: &StoreError) -> String {
    if e.is_disk_full() {
        format!(
            "Tier 1 is out of space ({e}); free space on Klio's volume or enlarge it: streaming resumes by itself, and nothing beyond what is on disk is acknowledged meanwhile"
        )
    } else {
        e.to_string()
    }
}

/// Handle to a cluster's writer thread.
pub struct Ingest {
    tx: mpsc::Sender<WriterCmd>,
    progress: watch::Receiver<WriterProgress>,
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    pub fn spawn(store: WalStore) -> std::io::Result<Ingest> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (ptx, prx) = watch::channel(WriterProgress::default());
        let name = format!("klio-wal-{}", store.cluster());
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || writer_loop(SegmentWriter::new(store), rx, ptx))?;
        Ok(Ingest {
            tx,
            progress: prx,
            thread: Some(thread),
        })
    }

    /// Queues WAL for writing; waits when the queue is full (backpressure).
    pub async fn write(&self, tli: TimelineId, start: Lsn, data: Bytes) -> Result<(), WriterGone> {
        self.tx
            .send(WriterCmd::Data { tli, start, data })
            .await
            .map_err(|_| WriterGone)
    }

    /// Makes everything queued durable, closes the open segment and returns the
    /// end of stored WAL (where streaming resumes). Clears a previous error.
    pub async fn checkpoint(&self) -> Result<Option<(TimelineId, Lsn)>, WriterError> {
        let gone = || WriterError {
            message: WriterGone.to_string(),
            disk_full: false,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterCmd::Checkpoint { reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub fn subscribe(&self) -> watch::Receiver<WriterProgress> {
        self.progress.clone()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it has flushed.
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(
    mut writer: SegmentWriter,
    mut rx: mpsc::Receiver<WriterCmd>,
    progress: watch::Sender<WriterProgress>,
) {
    let mut failed: Option<StoreError> = None;
    let mut last_sealed = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut dirty = false;
        let mut cmd = Some(first);
        while let Some(c) = cmd.take() {
            match c {
                WriterCmd::Data { tli, start, data } => {
                    if failed.is_none() {
                        dirty = true;
                        if let Err(e) = writer.write(tli, start, &data) {
                            failed = Some(e);
                            writer.abandon();
                        }
                    }
                }
                WriterCmd::Checkpoint { reply } => {
                    let res = checkpoint(&mut writer, &mut failed);
                    let _ = reply.send(res.map_err(|e| WriterError::from(&e)));
                    dirty = false;
                    publish(&progress, &writer, None);
                }
            }
            cmd = rx.try_recv().ok();
        }
        if dirty && failed.is_none() {
            if let Err(e) = writer.flush() {
                writer.abandon();
                failed = Some(e);
            }
        }
        if let Some(e) = &failed {
            if progress.borrow().error.is_none() {
                error!(error = %describe(e), "Tier 1 write failed; acknowledging nothing further until it recovers");
            }
            publish(&progress, &writer, Some(e));
        } else if dirty || writer.sealed_count() != last_sealed {
            publish(&progress, &writer, None);
        }
        last_sealed = writer.sealed_count();
    }
    if failed.is_none() {
        if let Err(e) = writer.close() {
            error!(error = %e, "flushing Tier 1 at shutdown failed");
        } else {
            info!("Tier 1 writer closed cleanly");
        }
    }
}

fn checkpoint(
    writer: &mut SegmentWriter,
    failed: &mut Option<StoreError>,
) -> Result<Option<(TimelineId, Lsn)>, StoreError> {
    if failed.take().is_none() {
        writer.close()?;
    }
    writer.store().resume_point()
}

fn publish(
    progress: &watch::Sender<WriterProgress>,
    writer: &SegmentWriter,
    err: Option<&StoreError>,
) {
    let p = WriterProgress {
        durable: writer.durable(),
        sealed: writer.sealed_count(),
        error: err.map(describe),
        disk_full: err.is_some_and(|e| e.is_disk_full()),
    };
    progress.send_if_modified(|old| {
        if *old != p {
            *old = p;
            true
        } else {
            false
        }
    });
}

//! The per-cluster Tier 1 writer: applies streamed WAL to the store and reports the
//! durable position.
//!
//! Group commit: the receiver writes every message that is ready on the socket, then
//! calls [`Ingest::end_batch`] for one fdatasync, which publishes the new durable
//! position; the receiver sends a standby status update as soon as it changes.

use std::time::{Duration, Instant};

use klio_core::{Lsn, TimelineId};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::wal_store::{FlushStats, SegmentWriter, StoreError, WalStore};

/// What the writer publishes after each fsync or failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterProgress {
    /// End of durable WAL (fdatasync'ed) on the timeline being written.
    pub durable: Option<(TimelineId, Lsn)>,
    pub sealed: u64,
    /// Set after a write or fsync failure; nothing more is acknowledged until
    /// the receiver reconnects (which checkpoints and clears it).
    pub error: Option<String>,
    pub disk_full: bool,
    /// fdatasyncs of WAL so far and their total time.
    pub flushes: FlushStats,
}

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

/// A cluster's Tier 1 writer, driven from the receiver's own thread, whose COPY loop
/// blocks it (`cluster::copy_loop`). A synchronous standby's round trip — socket,
/// write, fdatasync, status update — then involves no thread hand-off and no async
/// runtime, like pg_receivewal's single loop; catching up, reads and writes alternate
/// in 8 MiB batches.
pub struct Ingest {
    core: std::sync::Mutex<WriterCore>,
    progress: watch::Receiver<WriterProgress>,
    recompress_counts: Option<crate::wal_store::RewriteCounts>,
}

impl Ingest {
    /// Also starts the store's background recompressor (stopped when this is dropped).
    pub fn new(store: WalStore) -> Ingest {
        let (ptx, prx) = watch::channel(WriterProgress::default());
        let writer = match SegmentWriter::new(store.clone()).with_recompressor() {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot start the WAL recompressor thread: segments written on the synchronous commit path stay uncompressed in Tier 1 and are not relayed to Tier 2 until the next start");
                SegmentWriter::new(store)
            }
        };
        Ingest {
            recompress_counts: writer.recompress_counts(),
            core: std::sync::Mutex::new(WriterCore::new(writer, ptx)),
            progress: prx,
        }
    }

    fn core(&self) -> std::sync::MutexGuard<'_, WriterCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes WAL (framed, encrypted, not yet fsync'ed).
    pub fn write(&self, tli: TimelineId, start: Lsn, data: &[u8]) {
        self.core().data(tli, start, data);
    }

    /// Fsyncs what was written and publishes the durable position.
    pub fn end_batch(&self) {
        self.core().end_batch();
    }

    /// Makes everything written durable, closes the open segment and returns the
    /// end of stored WAL (where streaming resumes). Clears a previous error.
    pub fn checkpoint(&self) -> Result<Option<(TimelineId, Lsn)>, WriterError> {
        self.core().checkpoint()
    }

    pub fn subscribe(&self) -> watch::Receiver<WriterProgress> {
        self.progress.clone()
    }

    /// Its recompressor's rewrite counters, read live (none if it did not start).
    pub fn recompress_counts(&self) -> Option<crate::wal_store::RewriteCounts> {
        self.recompress_counts.clone()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.core().close();
    }
}

/// The writer's state and its error and publishing rules, shared by both modes.
struct WriterCore {
    writer: SegmentWriter,
    failed: Option<StoreError>,
    last_sealed: u64,
    dirty: bool,
    progress: watch::Sender<WriterProgress>,
    /// When a slow flush was last logged (at most one warning a minute).
    slow_warned: Option<Instant>,
}

/// A WAL flush slower than this is logged: every synchronous commit waited for it.
const SLOW_FLUSH: Duration = Duration::from_secs(1);
const SLOW_WARN_EVERY: Duration = Duration::from_secs(60);

impl WriterCore {
    fn new(writer: SegmentWriter, progress: watch::Sender<WriterProgress>) -> WriterCore {
        WriterCore {
            writer,
            failed: None,
            last_sealed: 0,
            dirty: false,
            progress,
            slow_warned: None,
        }
    }

    fn data(&mut self, tli: TimelineId, start: Lsn, data: &[u8]) {
        if self.failed.is_none() {
            self.dirty = true;
            let before = self.writer.flush_stats();
            if let Err(e) = self.writer.write(tli, start, data) {
                self.failed = Some(e);
                self.writer.abandon();
            }
            self.warn_if_slow(before);
        }
    }

    /// Logs (rate-limited) when the fdatasyncs since `before` took more than
    /// [`SLOW_FLUSH`] each on average.
    fn warn_if_slow(&mut self, before: FlushStats) {
        let now = self.writer.flush_stats();
        let n = now.count - before.count;
        if n == 0 {
            return;
        }
        let each = Duration::from_nanos((now.nanos - before.nanos) / n);
        if each >= SLOW_FLUSH
            && self
                .slow_warned
                .is_none_or(|t| t.elapsed() >= SLOW_WARN_EVERY)
        {
            warn!(
                seconds = each.as_secs_f64(),
                "a WAL fdatasync on Tier 1 took {:.1} s: synchronous commits wait that long for Klio; check the volume (klio_wal_fsync_seconds_total / klio_wal_fsyncs_total is the mean)",
                each.as_secs_f64()
            );
            self.slow_warned = Some(Instant::now());
        }
    }

    fn checkpoint(&mut self) -> Result<Option<(TimelineId, Lsn)>, WriterError> {
        let res = checkpoint(&mut self.writer, &mut self.failed);
        self.dirty = false;
        publish(&self.progress, &self.writer, None);
        res.map_err(|e| WriterError::from(&e))
    }

    /// After a batch: one fdatasync for everything written, then publish.
    fn end_batch(&mut self) {
        if self.dirty && self.failed.is_none() {
            let before = self.writer.flush_stats();
            if let Err(e) = self.writer.flush() {
                self.writer.abandon();
                self.failed = Some(e);
            }
            self.warn_if_slow(before);
        }
        if let Some(e) = &self.failed {
            if self.progress.borrow().error.is_none() {
                error!(error = %describe(e), "Tier 1 write failed; acknowledging nothing further until it recovers");
            }
            publish(&self.progress, &self.writer, Some(e));
        } else if self.dirty || self.writer.sealed_count() != self.last_sealed {
            publish(&self.progress, &self.writer, None);
        }
        self.dirty = false;
        self.last_sealed = self.writer.sealed_count();
    }

    fn close(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.writer.close() {
                error!(error = %e, "flushing Tier 1 at shutdown failed");
            } else {
                info!("Tier 1 writer closed cleanly");
            }
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
        flushes: writer.flush_stats(),
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

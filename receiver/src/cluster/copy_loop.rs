//! The COPY loop of one streaming session: XLogData from the primary goes to Tier 1,
//! and standby status updates go back with the flush position Tier 1 made durable.
//!
//! The loop blocks its thread (the receiver's own, which runs nothing else meanwhile):
//! it waits for the primary in poll(2) and sends each status update as soon as the
//! batch's fdatasync returned, with no async runtime between the socket and the disk,
//! as pg_receivewal's loop does (`klio_pgwire`'s blocking COPY I/O).
//!
//! The loop sees the primary as an [`Upstream`] and Tier 1 as a [`WalSink`], so its
//! durability rule — the flush position sent never exceeds what the sink reported as
//! fdatasync'ed, also across failures — is tested here with fakes of both, without a
//! PostgreSQL. Writes nothing itself (the sink does).

use std::time::{Duration, Instant};

use klio_core::{Lsn, TimelineId};
use klio_pgwire::replication::{self, ReplicationMessage, StandbyStatusUpdate};
use klio_pgwire::{CopyMessage, PgError, ReplicationConn};
use tokio::sync::watch;

use super::SessionError;
use crate::ingest::{Ingest, WriterProgress};
use crate::status::ClusterStatus;

/// Most WAL written before an fsync while catching up (data keeps arriving).
const BATCH_BYTES: usize = 8 << 20;

/// The primary's side of a COPY stream, read and written blocking.
pub(super) trait Upstream {
    /// The next CopyData or CopyDone, or `None` if none arrived within `timeout`.
    fn recv_copy(&mut self, timeout: Duration) -> Result<Option<CopyMessage>, PgError>;
    /// Whether another message is already there (so the fsync can wait for it).
    fn more_ready(&mut self) -> bool;
    /// A standby status update: `write` received, `flush` durable.
    fn send_status(&mut self, write: Lsn, flush: Lsn) -> Result<(), PgError>;
}

/// Tier 1 as the loop drives it: writes, one fdatasync per batch, and the published
/// progress (durable position, errors).
pub(super) trait WalSink {
    fn write(&self, tli: TimelineId, start: Lsn, data: &[u8]);
    /// Makes everything written durable and publishes the new position (or the error).
    fn end_batch(&self);
    fn subscribe(&self) -> watch::Receiver<WriterProgress>;
}

impl Upstream for ReplicationConn {
    fn recv_copy(&mut self, timeout: Duration) -> Result<Option<CopyMessage>, PgError> {
        self.recv_copy_blocking(timeout)
    }

    fn more_ready(&mut self) -> bool {
        self.more_ready_now()
    }

    fn send_status(&mut self, write: Lsn, flush: Lsn) -> Result<(), PgError> {
        let msg = StandbyStatusUpdate {
            write,
            flush,
            apply: Lsn(0),
            client_time: replication::pg_now_micros(),
            reply_requested: false,
        };
        self.send_copy_data_blocking(&msg.encode())
    }
}

impl WalSink for Ingest {
    fn write(&self, tli: TimelineId, start: Lsn, data: &[u8]) {
        Ingest::write(self, tli, start, data)
    }

    fn end_batch(&self) {
        Ingest::end_batch(self)
    }

    fn subscribe(&self) -> watch::Receiver<WriterProgress> {
        Ingest::subscribe(self)
    }
}

pub(super) enum CopyEnd {
    Shutdown,
    EndOfTimeline,
}

/// Where a COPY session starts: timeline, first requested byte, and what of it is
/// already durable in Tier 1 (`Lsn::INVALID` for nothing).
pub(super) struct CopyPosition {
    pub tli: TimelineId,
    pub start: Lsn,
    pub durable: Lsn,
}

/// The longest single wait for the primary: how soon a shutdown is seen while the
/// primary sends nothing.
const WAKE_EVERY: Duration = Duration::from_millis(100);

/// Streams until the primary ends the timeline (CopyDone) or `shutdown` turns true.
/// Blocks the calling thread throughout.
pub(super) fn copy_loop(
    conn: &mut impl Upstream,
    sink: &impl WalSink,
    status: &ClusterStatus,
    pos: CopyPosition,
    status_interval: Duration,
    shutdown: &watch::Receiver<bool>,
) -> Result<CopyEnd, SessionError> {
    let CopyPosition {
        tli,
        start,
        durable,
    } = pos;
    let mut progress = sink.subscribe();
    let mut received = start;
    let mut flushed = durable;
    let mut unflushed = 0usize;
    if flushed != Lsn::INVALID {
        status.set_flushed(flushed);
        conn.send_status(received, flushed)?;
    }
    // What the writer published before the session (an error ends it here).
    let p = progress.borrow_and_update().clone();
    on_progress(p, conn, status, tli, received, &mut flushed)?;
    let mut next_status = Instant::now() + status_interval;
    loop {
        if *shutdown.borrow() {
            return Ok(CopyEnd::Shutdown);
        }
        let now = Instant::now();
        if now >= next_status {
            conn.send_status(received, flushed)?;
            next_status = now + status_interval;
        }
        let wait = next_status.saturating_duration_since(now).min(WAKE_EVERY);
        let Some(m) = conn.recv_copy(wait)? else {
            continue;
        };
        match m {
            CopyMessage::Data(buf) => match ReplicationMessage::decode(buf)? {
                ReplicationMessage::XLogData(x) => {
                    // The primary's numbers are checked: an end past the WAL address
                    // space is a protocol error, not an overflow.
                    let end = x.end()?;
                    status.set_primary(x.wal_end);
                    if !x.data.is_empty() {
                        unflushed += x.data.len();
                        sink.write(tli, x.wal_start, &x.data);
                    }
                    if end > received {
                        received = end;
                        status.set_received(end);
                    }
                }
                ReplicationMessage::Keepalive(k) => {
                    status.set_primary(k.wal_end);
                    if k.reply_requested {
                        conn.send_status(received, flushed)?;
                    }
                }
            },
            CopyMessage::Done => return Ok(CopyEnd::EndOfTimeline),
        }
        // Group commit: one fsync for everything that arrived together (bounded while
        // catching up), then the status update goes out at once: a synchronous commit
        // is waiting for it. Checked after every message, not only after WAL: a
        // keepalive read together with the last WAL must not hold that WAL's fsync back
        // until more WAL arrives.
        if unflushed > 0 && (unflushed >= BATCH_BYTES || !conn.more_ready()) {
            sink.end_batch();
            unflushed = 0;
            let changed = progress
                .has_changed()
                .map_err(|_| SessionError::store("the writer stopped".into(), false))?;
            if changed {
                let p = progress.borrow_and_update().clone();
                on_progress(p, conn, status, tli, received, &mut flushed)?;
            }
        }
    }
}

/// Acts on what the writer published: its error ends the session; a new durable
/// position on this timeline goes to the primary as the flush position.
fn on_progress(
    p: WriterProgress,
    conn: &mut impl Upstream,
    status: &ClusterStatus,
    tli: TimelineId,
    received: Lsn,
    flushed: &mut Lsn,
) -> Result<(), SessionError> {
    if let Some(err) = p.error {
        // A full disk is flagged where the session ends (run_cluster).
        return Err(SessionError::store(err, p.disk_full));
    }
    status.set_sealed(p.sealed);
    status.set_wal_flushes(p.flushes.count, p.flushes.nanos);
    if let Some((t, lsn)) = p.durable {
        if t == tli && lsn > *flushed {
            status.set_disk_full(false);
            *flushed = lsn;
            status.set_flushed(lsn);
            conn.send_status(received, lsn)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

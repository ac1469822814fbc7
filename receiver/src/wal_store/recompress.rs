//! Background recompression of sealed WAL segments whose frames were stored plain.
//!
//! On the synchronous commit path the segment writer stores each flush's frame
//! uncompressed (see `segment_writer`), and a segment sealed that way is marked
//! `recompress` in the catalog. [`WalStore::recompress_pending`] rewrites each such
//! segment: it reads the sealed file back (every frame authenticated, size and CRC-32C
//! against the catalog) or, for a segment the writer fed to the idle thread while it
//! wrote it (`feed`), takes the compressed form prepared then; writes the same
//! plaintext compressed in 1 MiB frames to
//! `<24 hex>.tmp`, fsyncs it, renames it over the sealed file, fsyncs the directory and
//! then, in one catalog write (not synced: see below), records the new size, clears
//! `recompress` and queues the segment for Tier 2. [`Recompressor`] runs that on
//! low-priority threads of its own, woken whenever a segment is sealed.
//!
//! Crash safety: the sealed file is complete in either form and readers (which open it
//! by name) see one form or the other, never a mix. A crash before the rename leaves a
//! `.tmp` that start-up reconciliation removes; after the rename and before the catalog
//! write reaches the disk, reconciliation finds the size changed, verifies the file and
//! records it from its frames (compressed, so no longer marked), and the relay's
//! start-up scan queues it. Until the mark is cleared the segment is not
//! queued for Tier 2 (so Tier 2 only ever holds its final form), backups whose WAL it
//! holds wait to be relayed, and Tier 1 retention keeps it.
//!
//! Writes `<24 hex>.tmp` and renames it to `<24 hex>` in the WAL directory; updates
//! segment records and the relay queue in the catalog.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use klio_catalog::{RelayKind, SegmentRecord, SegmentState};
use klio_core::crashsafe::durable_rename;
use klio_core::failpoint;
use klio_core::frame::FrameSealer;
use klio_core::{SegNo, TimelineId};
use tracing::{debug, error, info, warn};

use super::{io_err, StoreError, WalStore};

mod feed;
mod idle_cgroup;
pub use feed::Feed;
use feed::{Prepared, Preparing};

/// Plaintext per frame of a recompressed segment.
const FRAME: usize = 1 << 20;
/// How long a failed pass waits before it is tried again (a seal wakes it sooner).
const RETRY: Duration = Duration::from_secs(60);
/// The recompressor's nice value: it gives way to PostgreSQL and to WAL intake.
const NICE: i32 = 10;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecompressReport {
    /// Segments rewritten compressed.
    pub rewritten: usize,
    /// Segments left as they were (compressing saved less than 1/16, or Tier 1 no
    /// longer holds them); their mark is cleared.
    pub kept: usize,
    /// Stored bytes before and after, over the rewritten segments.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Of `rewritten`, those written from the form prepared while the segment was
    /// written (`feed`), without reading the file back.
    pub from_memory: usize,
}

impl WalStore {
    /// Rewrites every segment the catalog marks `recompress`, oldest first, and queues
    /// each for Tier 2 once it is final. Returns early (without error) once `stop` is
    /// set. (The [`Recompressor`]'s threads do the same, one claimed segment at a time.)
    pub fn recompress_pending(&self, stop: &AtomicBool) -> Result<RecompressReport, StoreError> {
        let mut report = RecompressReport::default();
        for rec in self.marked_segments()? {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.recompress_segment(rec, &mut report, stop, None)?;
        }
        Ok(report)
    }

    /// Segments still marked `recompress`.
    pub fn recompress_backlog(&self) -> Result<usize, StoreError> {
        Ok(self.marked_segments()?.len())
    }

    /// The records marked `recompress`, oldest first.
    fn marked_segments(&self) -> Result<Vec<SegmentRecord>, StoreError> {
        let mut due: Vec<SegmentRecord> = self
            .inner
            .catalog
            .segments(&self.inner.cluster)?
            .into_iter()
            .filter(|r| r.recompress)
            .collect();
        due.sort_by_key(|r| (r.tli, r.segno));
        Ok(due)
    }

    /// Rewrites one segment: from `prepared` when that is its whole plaintext
    /// compressed (`feed`), otherwise from its file. Once `stop` is set it gives up
    /// between frames, leaving the segment as it was (still marked).
    fn recompress_segment(
        &self,
        mut rec: SegmentRecord,
        report: &mut RecompressReport,
        stop: &AtomicBool,
        prepared: Option<Prepared>,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let name = self.segment_names(rec.tli, rec.segno).0;
        let path = self.path(&name);
        if rec.state != SegmentState::Sealed || !rec.tiers.tier1 {
            // Nothing to rewrite (the mark is only ever set on a sealed Tier 1 copy).
            rec.recompress = false;
            inner.catalog.put_segment(&inner.cluster, &rec)?;
            report.kept += 1;
            return Ok(());
        }
        let prepared = prepared.filter(|p| p.matches(rec.plain_size, rec.crc32c));
        let missing = || StoreError::Corrupt {
            path: path.clone(),
            why: "the catalog marks it for recompression, but the file is missing".into(),
        };
        // The file is read only when there is nothing prepared; either way it must
        // still be there to be replaced.
        let mut reader = match &prepared {
            Some(_) if path.exists() => None,
            Some(_) => return Err(missing()),
            None => Some(self.open_read(&name)?.ok_or_else(missing)?),
        };
        let from_memory = prepared.is_some();
        let tmp = inner.dir.temp(&name);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            let (Some(reader), None) = (reader.as_mut(), &prepared) else {
                let out = &prepared.as_ref().expect("prepared when not reading").out;
                file.write_all(out).map_err(io_err(&tmp))?;
                return Ok::<_, StoreError>(Some((file, out.len() as u64)));
            };
            let (mut sealer, header) = FrameSealer::create(&inner.key, &self.object_id(&name));
            let mut out = Vec::with_capacity(FRAME + (FRAME >> 4));
            out.extend_from_slice(&header);
            let mut pending: Vec<u8> = Vec::with_capacity(FRAME);
            let mut stored = 0u64;
            let mut flush = |pending: &mut Vec<u8>,
                             out: &mut Vec<u8>,
                             sealer: &mut FrameSealer,
                             last: bool|
             -> Result<(), StoreError> {
                if !pending.is_empty() {
                    sealer.seal(pending, out);
                    pending.clear();
                }
                if last {
                    sealer.seal_final(out);
                }
                file.write_all(out).map_err(io_err(&tmp))?;
                stored += out.len() as u64;
                out.clear();
                Ok(())
            };
            // The reader checks the catalog's size and CRC-32C after its last piece.
            while let Some(piece) = reader.next_piece()? {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let mut piece = &piece[..];
                while !piece.is_empty() {
                    let take = (FRAME - pending.len()).min(piece.len());
                    pending.extend_from_slice(&piece[..take]);
                    piece = &piece[take..];
                    if pending.len() == FRAME {
                        flush(&mut pending, &mut out, &mut sealer, false)?;
                    }
                }
            }
            flush(&mut pending, &mut out, &mut sealer, true)?;
            Ok::<_, StoreError>(Some((file, stored)))
        })();
        drop(prepared);
        let (file, stored) = match written {
            Ok(Some(w)) => w,
            Ok(None) => {
                std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
                return Ok(());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Worth a rename only if it saves something (not just frame headers).
        let relay_bytes = if stored.saturating_mul(16) < rec.stored_size.saturating_mul(15) {
            if let Err(e) = file.sync_all() {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(&tmp)(e));
            }
            drop(file);
            // Done reading the old file: it may become the spare (`super::spare`),
            // which a reader's shared lock (this one's too) would refuse.
            drop(reader);
            let spare = self.link_spare(&path);
            failpoint::hit("wal-recompress-rename");
            if let Err(e) = durable_rename(&tmp, &path) {
                if spare {
                    self.unlink_spare();
                }
                return Err(io_err(&path)(e));
            }
            if spare {
                self.spare_is_ready();
            }
            failpoint::hit("wal-recompress-catalog");
            report.rewritten += 1;
            report.from_memory += usize::from(from_memory);
            report.bytes_before += rec.stored_size;
            report.bytes_after += stored;
            debug!(segment = %name, before = rec.stored_size, after = stored, from_memory, "recompressed a WAL segment");
            stored
        } else {
            drop(file);
            std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            report.kept += 1;
            rec.stored_size
        };
        rec.stored_size = relay_bytes;
        rec.recompress = false;
        let relay = self.relay_item(RelayKind::WalSegment, &name, relay_bytes);
        // Unsynced: the rename is durable, and if a crash loses this write, start-up
        // reconciliation records the segment from its file and the relay's start-up
        // scan queues it (tested by
        // `crashes_while_rewriting_leave_a_complete_segment_that_start_up_sorts_out`).
        // One device flush fewer per rewrite, which the commits in flight would wait
        // for.
        inner
            .catalog
            .put_segment_queued_unsynced(&inner.cluster, &rec, relay.as_ref())?;
        Ok(())
    }
}

/// Rewrites marked segments on two threads of its own, once at start (segments a
/// previous run left marked) and again whenever [`Recompressor::wake`] is called:
///
/// - `klio-recompress` runs at `SCHED_IDLE`: it gets only CPU time nothing else wants,
///   and a synchronous standby's receiver waking up preempts it at once (at nice 10 it
///   held the CPU for up to a scheduler slice, which showed in the commit latency tail).
///   That does not make its CPU free to PostgreSQL's processes, which sit in scheduling
///   groups of their own: on a two-vCPU host a busy loop at `SCHED_IDLE` beside a
///   synchronous standby tripled the 4-client p99, and a rewrite's ~50 ms burst shows in
///   the commits in flight (`docs/BENCHMARKS.md`, session 23; pacing the rewrite into
///   short bursts moved the cost onto more commits and was not kept).
/// - `klio-recomp-lag` runs at nice 10 and only while [`CATCH_UP_AT`] or more segments
///   wait, or one has waited [`MAX_WAIT`]: the floor for a CPU that is never idle (a
///   long base backup, say), where the idle thread would make almost no progress and
///   Tier 2 would fall behind without bound. (An unprivileged thread cannot leave
///   `SCHED_IDLE` again, hence two threads.)
///
/// The two never rewrite the same segment: each claims one under a lock before it
/// starts. Dropping the recompressor stops both between frames and joins them.
pub struct Recompressor {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// An idle thread takes what is fed (false when the recompressor does not run).
    prepares: bool,
}

/// The recompressor's running totals of rewrites, read live (`klio_wal_recompressed_*`).
#[derive(Clone)]
pub struct RewriteCounts(Arc<Shared>);

impl RewriteCounts {
    /// Segments rewritten: from what was prepared while they were written, and from
    /// their files.
    pub fn get(&self) -> (u64, u64) {
        (
            self.0.from_memory.load(Ordering::Relaxed),
            self.0.from_file.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for RewriteCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (memory, file) = self.get();
        f.debug_struct("RewriteCounts")
            .field("from_memory", &memory)
            .field("from_file", &file)
            .finish()
    }
}

/// Unclaimed marked segments at which the catch-up thread joins in.
const CATCH_UP_AT: usize = 4;
/// How long a marked segment waits for the idle thread before the catch-up thread
/// takes it: a bound on how far recompression holds Tier 2 back on a busy machine.
const MAX_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Idle,
    CatchUp,
}

struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
    /// What the catch-up thread waits on ([`Recompressor::wake`]).
    cond: Condvar,
    /// What the idle thread waits on: every wake, and everything fed to it.
    idle_cond: Condvar,
    /// Segments rewritten from what was prepared while they were written, and from
    /// their files.
    from_memory: AtomicU64,
    from_file: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Bumped by every wake; each thread remembers the last one it acted on.
    generation: u64,
    /// Segments a thread is rewriting now.
    claimed: HashSet<(TimelineId, SegNo)>,
    /// Segments whose rewrite failed for a reason retrying cannot fix (logged once).
    failed: HashSet<(TimelineId, SegNo)>,
    /// When each marked segment was first seen waiting.
    first_seen: HashMap<(TimelineId, SegNo), Instant>,
    /// What the segment writer fed for the idle thread to prepare (`feed`).
    queue: feed::Queue,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Recompressor {
    pub fn start(store: WalStore) -> std::io::Result<Recompressor> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                generation: 1,
                ..State::default()
            }),
            cond: Condvar::new(),
            idle_cond: Condvar::new(),
            from_memory: AtomicU64::new(0),
            from_file: AtomicU64::new(0),
        });
        let mut r = Recompressor {
            shared,
            threads: Vec::new(),
            prepares: false,
        };
        if failpoint::recompress_paused() {
            warn!("KLIO_TEST_RECOMPRESS_PAUSED is set: the WAL recompressor does not run");
            return Ok(r);
        }
        for (role, name) in [
            (Role::Idle, "klio-recompress"),
            (Role::CatchUp, "klio-recomp-lag"),
        ] {
            let (store, s) = (store.clone(), r.shared.clone());
            // On failure, `r` is dropped: the thread already started is stopped.
            r.threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run(&store, &s, role))?,
            );
        }
        r.prepares = true;
        Ok(r)
    }

    /// A feed for a segment the writer has just created, to be prepared compressed as it
    /// is written (`feed`); none when the recompressor does not run or the segment is
    /// larger than [`feed::MAX_SEGMENT`].
    pub fn feed(&self, tli: TimelineId, segno: SegNo, segment_bytes: u64) -> Option<Feed> {
        (self.prepares && segment_bytes <= feed::MAX_SEGMENT)
            .then(|| Feed::new(self.shared.clone(), (tli, segno)))
    }

    /// A handle on its counts of segments rewritten (from what was prepared while they
    /// were written, and from their files) that a status reader can keep.
    pub fn counts(&self) -> RewriteCounts {
        RewriteCounts(self.shared.clone())
    }

    /// A segment was sealed: look for work.
    pub fn wake(&self) {
        self.shared.state().generation += 1;
        self.shared.cond.notify_all();
        self.shared.idle_cond.notify_all();
    }
}

impl Drop for Recompressor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The oldest marked segment that no thread has claimed and that has not failed. The
/// catch-up thread takes it only once [`CATCH_UP_AT`] or more are waiting or it has
/// waited [`MAX_WAIT`]; otherwise the answer is how long until it has (if anything
/// waits at all).
fn pick(
    due: Vec<SegmentRecord>,
    st: &State,
    role: Role,
    now: Instant,
) -> Result<SegmentRecord, Option<Duration>> {
    let open: Vec<SegmentRecord> = due
        .into_iter()
        .filter(|r| {
            let k = (r.tli, r.segno);
            !st.claimed.contains(&k) && !st.failed.contains(&k)
        })
        .collect();
    let count = open.len();
    let Some(oldest) = open.into_iter().next() else {
        return Err(None);
    };
    if role == Role::Idle || count >= CATCH_UP_AT {
        return Ok(oldest);
    }
    let waited = st
        .first_seen
        .get(&(oldest.tli, oldest.segno))
        .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
    if waited >= MAX_WAIT {
        Ok(oldest)
    } else {
        Err(Some(MAX_WAIT - waited))
    }
}

/// Claims the segment to rewrite next, or says when to look again. The catalog is read
/// under the lock: a segment another thread has finished is then either still claimed
/// or no longer marked, never taken again from a stale record.
fn claim(
    store: &WalStore,
    shared: &Shared,
    role: Role,
) -> Result<Result<SegmentRecord, Option<Duration>>, StoreError> {
    let mut st = shared.state();
    let due = store.marked_segments()?;
    let now = Instant::now();
    st.first_seen
        .retain(|k, _| due.iter().any(|r| (r.tli, r.segno) == *k));
    for r in &due {
        st.first_seen.entry((r.tli, r.segno)).or_insert(now);
    }
    let next = pick(due, &st, role, now);
    if let Ok(r) = &next {
        st.claimed.insert((r.tli, r.segno));
    }
    Ok(next)
}

fn run(store: &WalStore, shared: &Shared, role: Role) {
    set_priority(role);
    let mut seen = 0u64;
    let mut retry_in: Option<Duration> = None;
    // Only the idle thread prepares what the writer feeds.
    let mut preparing = Preparing::default();
    let cond = match role {
        Role::Idle => &shared.idle_cond,
        Role::CatchUp => &shared.cond,
    };
    loop {
        let due = {
            let mut st = shared.state();
            let fed = |st: &State| role == Role::Idle && !st.queue.is_empty();
            let mut timed_out = false;
            while st.generation == seen && !fed(&st) && !shared.stop.load(Ordering::Relaxed) {
                match retry_in {
                    Some(d) => {
                        let (g, t) = cond.wait_timeout(st, d).unwrap_or_else(|p| p.into_inner());
                        st = g;
                        if t.timed_out() {
                            timed_out = true;
                            break;
                        }
                    }
                    None => st = cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                }
            }
            let due = timed_out || st.generation != seen;
            seen = st.generation;
            due
        };
        if role == Role::Idle {
            preparing.drain(store, shared);
        }
        if due {
            retry_in = work(store, shared, role, &mut preparing);
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Rewrites segments one claim at a time until none is left for `role` or `stop` is
/// set. Returns when to look again without a wake: after a failure that may pass (a
/// full disk, say), or when a waiting segment becomes the catch-up thread's. The idle
/// thread prepares what was fed before each claim, and rewrites a segment from what it
/// prepared when that is the whole segment.
fn work(
    store: &WalStore,
    shared: &Shared,
    role: Role,
    preparing: &mut Preparing,
) -> Option<Duration> {
    while !shared.stop.load(Ordering::Relaxed) {
        if role == Role::Idle {
            preparing.drain(store, shared);
        }
        let rec = match claim(store, shared, role) {
            Ok(Ok(r)) => r,
            Ok(Err(look_again)) => return look_again,
            Err(e) => {
                warn!(cluster = %store.cluster(), error = %e, "cannot read the catalog to recompress stored WAL; retrying in a minute");
                return Some(RETRY);
            }
        };
        let key = (rec.tli, rec.segno);
        let prepared = preparing.take(key);
        let mut report = RecompressReport::default();
        let res = store.recompress_segment(rec, &mut report, &shared.stop, prepared);
        let mut st = shared.state();
        st.claimed.remove(&key);
        match res {
            Ok(()) => {
                let memory = report.from_memory as u64;
                let file = report.rewritten as u64 - memory;
                shared.from_memory.fetch_add(memory, Ordering::Relaxed);
                shared.from_file.fetch_add(file, Ordering::Relaxed);
                if report != RecompressReport::default() {
                    debug!(cluster = %store.cluster(), ?role, ?report, "recompressed a segment");
                }
            }
            Err(e @ (StoreError::Frame { .. } | StoreError::Corrupt { .. })) => {
                // The segment stays marked (and out of Tier 2) until an operator
                // looks; the others go on.
                error!(cluster = %store.cluster(), error = %e, "cannot recompress a stored WAL segment; it stays as it is and is not relayed to Tier 2");
                st.failed.insert(key);
            }
            Err(e) => {
                warn!(cluster = %store.cluster(), error = %e, "recompressing stored WAL failed; retrying in a minute");
                return Some(RETRY);
            }
        }
    }
    None
}

/// Lowers this thread's scheduling priority: the recompressor's CPU time should come
/// from what PostgreSQL and WAL intake leave over.
/// `ioprio_set`'s "which": one thread (`include/uapi/linux/ioprio.h`).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// The I/O priority of a recompressor thread: the idle class for the idle thread (its
/// requests are dispatched when the disk has nothing else to do), best effort at the
/// lowest level (7) for the catch-up thread. The writeback its fsync starts carries it,
/// so an I/O scheduler that honours priorities (mq-deadline, bfq) sends a commit's
/// small write ahead of the rewritten segment's megabytes. Measured at 4 clients (one
/// A/B run, `docs/BENCHMARKS.md`): p99 0.90x and TPS 1.07x the same build without it.
fn io_priority(role: Role) -> libc::c_int {
    const CLASS_SHIFT: u32 = 13;
    match role {
        Role::Idle => 3 << CLASS_SHIFT,
        Role::CatchUp => (2 << CLASS_SHIFT) | 7,
    }
}

#[allow(unsafe_code)]
fn set_priority(role: Role) {
    // SAFETY: setpriority, sched_setscheduler and ioprio_set act on this thread's own id
    // and only read the sched_param passed by reference for the duration of the call.
    let (nice, idle, io) = unsafe {
        let tid = libc::gettid();
        let nice = libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            if role == Role::Idle { 19 } else { NICE },
        );
        let idle = if role == Role::Idle {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param)
        } else {
            0
        };
        let io = libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid,
            io_priority(role),
        );
        (nice, idle, io)
    };
    if nice != 0 || idle != 0 || io != 0 {
        debug!(?role, error = %std::io::Error::last_os_error(), "cannot lower the recompressor's priority");
    }
    if role == Role::Idle {
        join_idle_cgroup();
    }
}

/// Moves the idle thread into an idle CPU cgroup (`idle_cgroup`), where the host lets
/// Klio; says once per process what happened.
#[allow(unsafe_code)]
fn join_idle_cgroup() {
    static SAID: std::sync::Once = std::sync::Once::new();
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    match idle_cgroup::join(tid) {
        Ok(dir) => SAID.call_once(|| {
            info!(cgroup = %dir.display(), "the WAL recompressor's idle thread runs in an idle CPU cgroup: its CPU bursts give way at once to any other process that wakes up, PostgreSQL's included");
        }),
        Err(e) => SAID.call_once(|| {
            info!(reason = %e, "the WAL recompressor's idle thread is not in an idle CPU cgroup, only at SCHED_IDLE: on CPUs shared with PostgreSQL its bursts can delay synchronous commits (run Klio as root or in a delegated cgroup with the cgroup v1 cpu controller, or on CPUs of its own)");
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use klio_catalog::Catalog;
    use klio_core::frame::decode_object;
    use klio_core::layout::DataDir;
    use klio_core::{DataKey, Lsn, WalSegSize};
    use rand::Rng;

    use super::*;
    use crate::wal_store::{SegmentWriter, COMPRESS_INLINE};

    const SEG: u64 = 1 << 20;

    fn store(dir: &Path) -> WalStore {
        let catalog = Arc::new(Catalog::open(&DataDir::new(dir).catalog_dir()).unwrap());
        let s = WalStore::open(
            dir,
            "c1".parse().unwrap(),
            DataKey::generate(),
            WalSegSize::new(SEG).unwrap(),
            catalog,
        )
        .unwrap();
        s.set_relay(true);
        s
    }

    fn tli() -> TimelineId {
        TimelineId::new(1).unwrap()
    }

    /// Hex text: compresses to about half, like WAL full of row data.
    fn wal(bytes: u64) -> Vec<u8> {
        let mut rng = rand::thread_rng();
        let mut v = Vec::with_capacity(bytes as usize + 16);
        while (v.len() as u64) < bytes {
            v.extend_from_slice(format!("{:016x}", rng.gen::<u64>()).as_bytes());
        }
        v.truncate(bytes as usize);
        v
    }

    /// Writes `data` from LSN 0 the way a synchronous standby does: a flush after
    /// every `piece` bytes.
    fn write_synchronously(s: &WalStore, data: &[u8], piece: usize) {
        let mut w = SegmentWriter::new(s.clone());
        let mut at = 0u64;
        for p in data.chunks(piece) {
            w.write(tli(), Lsn(at), p).unwrap();
            w.flush().unwrap();
            at += p.len() as u64;
        }
        w.close().unwrap();
    }

    fn record(s: &WalStore, segno: u64) -> SegmentRecord {
        s.inner
            .catalog
            .segment(&s.inner.cluster, tli(), SegNo(segno))
            .unwrap()
            .unwrap()
    }

    fn queued(s: &WalStore) -> Vec<(String, u64)> {
        s.inner
            .catalog
            .relay_items(&s.inner.cluster)
            .unwrap()
            .into_iter()
            .filter(|i| i.kind == RelayKind::WalSegment)
            .map(|i| (i.name, i.bytes))
            .collect()
    }

    fn sealed_path(s: &WalStore, segno: u64) -> std::path::PathBuf {
        s.path(&s.segment_names(tli(), SegNo(segno)).0)
    }

    /// The segment's plaintext, decoded from its file.
    fn contents(s: &WalStore, segno: u64) -> (Vec<u8>, u64) {
        let name = s.segment_names(tli(), SegNo(segno)).0;
        let bytes = std::fs::read(s.path(&name)).unwrap();
        let obj = decode_object(&s.inner.key, &s.object_id(&name), &bytes, false).unwrap();
        assert!(obj.finished);
        (obj.data, obj.plain_uncompressed)
    }

    /// Segment 0 is still marked, not queued, and no temporary file is left.
    fn left_as_it_was(s: &WalStore) {
        assert!(record(s, 0).recompress);
        assert!(queued(s).is_empty());
        assert!(!s
            .inner
            .dir
            .temp(&s.segment_names(tli(), SegNo(0)).0)
            .exists());
    }

    fn pass(s: &WalStore) -> RecompressReport {
        s.recompress_pending(&AtomicBool::new(false)).unwrap()
    }

    #[test]
    fn sync_path_segments_are_sealed_plain_then_rewritten_compressed_and_only_then_queued() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG + 5000);
        write_synchronously(&s, &data, 9000);
        for n in 0..2 {
            let rec = record(&s, n);
            assert!(rec.recompress, "segment {n}: {rec:?}");
            assert!(rec.stored_size > SEG, "stored plain: {}", rec.stored_size);
            let (_, plain) = contents(&s, n);
            assert_eq!(plain, SEG, "every frame of segment {n} is stored plain");
        }
        assert!(
            queued(&s).is_empty(),
            "queued before recompression: {:?}",
            queued(&s)
        );
        assert_eq!(s.recompress_backlog().unwrap(), 2);

        let r = pass(&s);
        assert_eq!(r.rewritten, 2, "{r:?}");
        assert!(r.bytes_after * 10 < r.bytes_before * 7, "{r:?}");
        let mut want_queue = Vec::new();
        for n in 0..2 {
            let rec = record(&s, n);
            let len = std::fs::metadata(sealed_path(&s, n)).unwrap().len();
            assert!(!rec.recompress);
            assert_eq!(rec.stored_size, len);
            let (plain, uncompressed) = contents(&s, n);
            assert_eq!(uncompressed, 0, "segment {n} still has plain frames");
            assert!(plain[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
            want_queue.push((s.segment_names(tli(), SegNo(n)).0.to_string(), len));
        }
        assert_eq!(queued(&s), want_queue);
        assert_eq!(s.recompress_backlog().unwrap(), 0);
        // Nothing left over in the directory, and a second pass has nothing to do.
        assert!(std::fs::read_dir(s.dir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        assert_eq!(pass(&s), RecompressReport::default());
    }

    #[test]
    fn catch_up_segments_are_compressed_inline_and_queued_at_seal() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        write_synchronously(&s, &data, COMPRESS_INLINE);
        for n in 0..2 {
            let rec = record(&s, n);
            assert!(!rec.recompress, "{rec:?}");
            assert!(rec.stored_size * 10 < SEG * 7, "{rec:?}");
        }
        assert_eq!(queued(&s).len(), 2);
        assert_eq!(pass(&s), RecompressReport::default());
    }

    #[test]
    fn incompressible_segments_are_kept_as_they_are_and_queued() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data: Vec<u8> = (0..SEG).map(|_| rand::random::<u8>()).collect();
        write_synchronously(&s, &data, 9000);
        let before = std::fs::read(sealed_path(&s, 0)).unwrap();
        assert!(record(&s, 0).recompress);
        let r = pass(&s);
        assert_eq!((r.rewritten, r.kept), (0, 1), "{r:?}");
        assert_eq!(std::fs::read(sealed_path(&s, 0)).unwrap(), before);
        assert!(!record(&s, 0).recompress);
        assert_eq!(queued(&s).len(), 1);
    }

    /// A crash after the new form was written and before the rename leaves a `.tmp`;
    /// one after the rename and before the catalog write leaves the catalog's size
    /// stale. Start-up reconciliation sorts both out, and no byte changes.
    #[test]
    fn crashes_while_rewriting_leave_a_complete_segment_that_start_up_sorts_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        write_synchronously(&s, &data, 9000);

        // Segment 1: rewritten, then the catalog write lost (it would have queued the
        // segment in the same write).
        let stale = record(&s, 1);
        s.set_relay(false);
        s.recompress_segment(
            stale.clone(),
            &mut RecompressReport::default(),
            &AtomicBool::new(false),
            None,
        )
        .unwrap();
        s.set_relay(true);
        s.inner
            .catalog
            .put_segment(&s.inner.cluster, &stale)
            .unwrap();
        assert!(queued(&s).is_empty());
        // Segment 0: as if the process died before the rename.
        let tmp = s.inner.dir.temp(&s.segment_names(tli(), SegNo(0)).0);
        std::fs::write(&tmp, b"half of a rewritten segment").unwrap();

        let report = s.reconcile().unwrap();
        // The `.tmp`, and the spare segment 1's rewrite left (`super::spare`).
        assert_eq!(report.temp_files_removed, 2, "{report:?}");
        assert!(!tmp.exists());
        assert!(!s.inner.dir.spare().exists());
        // Segment 1's file is already compressed: its record follows the file, and
        // the relay's start-up scan queues it.
        let rec1 = record(&s, 1);
        assert!(!rec1.recompress, "{rec1:?}");
        assert_eq!(
            rec1.stored_size,
            std::fs::metadata(sealed_path(&s, 1)).unwrap().len()
        );
        assert!(record(&s, 0).recompress);
        let r = pass(&s);
        assert_eq!(r.rewritten, 1, "{r:?}");
        for n in 0..2 {
            assert!(contents(&s, n).0[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
        }
    }

    /// A segment sealed plain and recorded only after a crash (the rename done, the
    /// catalog write lost) is marked at start-up; so is a complete partial sealed then.
    #[test]
    fn segments_sealed_at_start_up_are_marked_from_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        write_synchronously(&s, &data, 9000);
        // Forget segment 0's record; turn segment 1 back into a complete partial.
        s.inner
            .catalog
            .delete_segment(&s.inner.cluster, tli(), SegNo(0))
            .unwrap();
        let (name1, partial1) = s.segment_names(tli(), SegNo(1));
        let bytes = std::fs::read(s.path(&name1)).unwrap();
        // Drop the final frame (the last 48 bytes: an empty frame and its tag).
        std::fs::write(s.path(&partial1), &bytes[..bytes.len() - 48]).unwrap();
        std::fs::remove_file(s.path(&name1)).unwrap();
        let mut rec1 = record(&s, 1);
        rec1.state = SegmentState::Partial;
        rec1.recompress = false;
        s.inner
            .catalog
            .put_segment(&s.inner.cluster, &rec1)
            .unwrap();

        let report = s.reconcile().unwrap();
        assert_eq!(report.sealed_at_startup, 1, "{report:?}");
        assert!(record(&s, 0).recompress);
        assert!(record(&s, 1).recompress);
        assert_eq!(pass(&s).rewritten, 2);
    }

    /// A tampered segment is not rewritten (its bytes stay as they are, for an operator
    /// to look at), and stays out of Tier 2.
    #[test]
    fn a_tampered_segment_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        write_synchronously(&s, &wal(SEG), 9000);
        let path = sealed_path(&s, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SEG as usize / 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = s.recompress_pending(&AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, StoreError::Frame { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        left_as_it_was(&s);
    }

    /// The background thread: started by the writer, it rewrites what is sealed while
    /// the writer goes on, and what an earlier run left marked.
    #[test]
    fn the_recompressor_thread_rewrites_segments_as_they_are_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(3 * SEG);
        // An earlier run's marked segment.
        write_synchronously(&s, &data[..SEG as usize], 9000);
        assert_eq!(s.recompress_backlog().unwrap(), 1);
        let mut w = SegmentWriter::new(s.clone()).with_recompressor().unwrap();
        let mut at = SEG;
        for p in data[SEG as usize..].chunks(9000) {
            w.write(tli(), Lsn(at), p).unwrap();
            w.flush().unwrap();
            at += p.len() as u64;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.recompress_backlog().unwrap() > 0 {
            assert!(Instant::now() < deadline, "backlog never drained");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (memory, file) = w.recompress_counts().unwrap().get();
        assert_eq!(memory + file, 3);
        drop(w);
        for n in 0..3 {
            let (plain, uncompressed) = contents(&s, n);
            assert_eq!(uncompressed, 0);
            assert!(plain[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
        }
        assert_eq!(queued(&s).len(), 3);
    }

    fn shared() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            idle_cond: Condvar::new(),
            from_memory: AtomicU64::new(0),
            from_file: AtomicU64::new(0),
        }
    }

    /// A recompressor whose feeds are queued but that runs no thread: the test drains
    /// and rewrites with `Preparing::drain` and `work`, step by step.
    fn threadless() -> (Recompressor, Arc<Shared>) {
        let sh = Arc::new(shared());
        let r = Recompressor {
            shared: sh.clone(),
            threads: Vec::new(),
            prepares: true,
        };
        (r, sh)
    }

    /// Writes `data` from LSN 0 like `write_synchronously`, with `r`'s feeds attached;
    /// a piece of `inline_at` bytes (if any) is written alone at that offset, as when
    /// catching up.
    /// Returns the recompressor (dropping it would stop it).
    fn write_fed(
        s: &WalStore,
        r: Recompressor,
        data: &[u8],
        inline_at: Option<usize>,
    ) -> Recompressor {
        let mut w = SegmentWriter::new(s.clone());
        w.recompressor = Some(r);
        let mut at = 0usize;
        while at < data.len() {
            let n = match inline_at {
                Some(i) if at == i => COMPRESS_INLINE + 1000,
                Some(i) if at < i => 9000.min(i - at),
                _ => 9000,
            }
            .min(data.len() - at);
            w.write(tli(), Lsn(at as u64), &data[at..at + n]).unwrap();
            w.flush().unwrap();
            at += n;
        }
        w.close().unwrap();
        w.recompressor.take().unwrap()
    }

    fn marked(s: &WalStore) -> Vec<u64> {
        s.marked_segments()
            .unwrap()
            .iter()
            .map(|r| r.segno.0)
            .collect()
    }

    /// A segment the writer fed to the end is rewritten from what the idle thread
    /// prepared while it was written, without its file being read; the result is the
    /// same segment, compressed, and queued for Tier 2 as from the file.
    #[test]
    fn segments_fed_while_written_are_rewritten_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        let (r, sh) = threadless();
        let _r = write_fed(&s, r, &data, None);
        assert_eq!(marked(&s), [0, 1]);
        let mut preparing = Preparing::default();
        preparing.drain(&s, &sh);
        assert_eq!(preparing.len(), 2);
        // A file that cannot be read would fail a rewrite from it: this one is not read.
        for n in 0..2 {
            let path = sealed_path(&s, n);
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&path, bytes).unwrap();
        }
        assert_eq!(work(&s, &sh, Role::Idle, &mut preparing), None);
        assert_eq!(sh.from_memory.load(Ordering::Relaxed), 2);
        assert_eq!(sh.from_file.load(Ordering::Relaxed), 0);
        assert!(marked(&s).is_empty());
        for n in 0..2 {
            let (plain, uncompressed) = contents(&s, n);
            assert_eq!(uncompressed, 0);
            assert!(plain[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
            let len = std::fs::metadata(sealed_path(&s, n)).unwrap().len();
            assert_eq!(record(&s, n).stored_size, len);
            assert!(len * 10 < SEG * 7, "{len}");
        }
        assert_eq!(queued(&s).len(), 2);
        assert_eq!(preparing.len(), 0);
    }

    /// A feed cut short (a frame compressed inline, as when catching up) or never
    /// finished leaves nothing prepared: the segment is rewritten from its file.
    #[test]
    fn a_segment_whose_feed_was_cut_is_rewritten_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(SEG);
        let (r, sh) = threadless();
        let _r = write_fed(&s, r, &data, Some((SEG / 2) as usize));
        assert_eq!(marked(&s), [0], "plain frames are half the segment");
        let mut preparing = Preparing::default();
        preparing.drain(&s, &sh);
        assert_eq!(preparing.len(), 0);
        assert_eq!(work(&s, &sh, Role::Idle, &mut preparing), None);
        assert_eq!(sh.from_memory.load(Ordering::Relaxed), 0);
        assert_eq!(sh.from_file.load(Ordering::Relaxed), 1);
        let (plain, uncompressed) = contents(&s, 0);
        assert_eq!(uncompressed, 0);
        assert!(plain == data);
    }

    /// What is prepared is used only if it is the whole segment as sealed: a CRC-32C
    /// that differs from the writer's drops it.
    #[test]
    fn a_prepared_segment_that_does_not_match_the_seal_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let sh = shared();
        let key = (tli(), SegNo(0));
        let data = wal(SEG);
        let mut preparing = Preparing::default();
        for (crc, kept) in [(crc32c::crc32c(&data) ^ 1, 0), (crc32c::crc32c(&data), 1)] {
            assert!(sh.enqueue(feed::Item::Piece {
                key,
                at: 0,
                data: data.clone(),
            }));
            assert!(sh.enqueue(feed::Item::Sealed {
                key,
                plain_len: SEG,
                crc,
            }));
            preparing.drain(&s, &sh);
            assert_eq!(preparing.len(), kept);
        }
        let p = preparing.take(key).unwrap();
        assert!(p.matches(SEG, Some(crc32c::crc32c(&data))));
        assert!(!p.matches(SEG - 1, Some(crc32c::crc32c(&data))));
        assert!(!p.matches(SEG, None));
    }

    /// A recompressor that does not keep up holds at most `QUEUE_CAP` of fed WAL and
    /// the prepared form of two segments: the rest is rewritten from the files.
    #[test]
    fn a_recompressor_that_falls_behind_holds_little_and_rewrites_the_rest_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let n = (feed::QUEUE_CAP as u64 / SEG) + 2;
        let data = wal(n * SEG);
        let (r, sh) = threadless();
        let _r = write_fed(&s, r, &data, None);
        assert_eq!(sh.state().queue.bytes(), feed::QUEUE_CAP);
        let mut preparing = Preparing::default();
        preparing.drain(&s, &sh);
        assert_eq!(preparing.len(), 2);
        assert_eq!(work(&s, &sh, Role::Idle, &mut preparing), None);
        assert_eq!(sh.from_memory.load(Ordering::Relaxed), 2);
        assert_eq!(sh.from_file.load(Ordering::Relaxed), n - 2);
        for k in 0..n {
            let (plain, uncompressed) = contents(&s, k);
            assert_eq!(uncompressed, 0);
            assert!(plain[..] == data[(k * SEG) as usize..((k + 1) * SEG) as usize]);
        }
    }

    /// The floor for a CPU that is never idle: while the idle thread is stuck on the
    /// oldest segment (claimed), the catch-up thread rewrites the others, but only
    /// while `CATCH_UP_AT` or more are waiting, and never the claimed one.
    #[test]
    fn the_catch_up_thread_works_only_on_a_backlog_and_never_on_a_claimed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let n = CATCH_UP_AT as u64 + 2;
        let data = wal(n * SEG);
        write_synchronously(&s, &data, 9000);
        assert_eq!(marked(&s), (0..n).collect::<Vec<_>>());
        let sh = shared();
        sh.state().claimed.insert((tli(), SegNo(0)));
        let first = std::fs::read(sealed_path(&s, 0)).unwrap();

        // It stops with work left to the idle thread, to look again within MAX_WAIT.
        let again = work(&s, &sh, Role::CatchUp, &mut Preparing::default());
        assert!(again.is_some_and(|w| w <= MAX_WAIT), "{again:?}");
        let left: Vec<u64> = std::iter::once(0)
            .chain(n - CATCH_UP_AT as u64 + 1..n)
            .collect();
        assert_eq!(marked(&s), left);
        assert_eq!(std::fs::read(sealed_path(&s, 0)).unwrap(), first);
        assert!(work(&s, &sh, Role::CatchUp, &mut Preparing::default()).is_some());
        assert_eq!(
            marked(&s),
            left,
            "below the backlog it leaves work to the idle thread"
        );
        let due = s.marked_segments().unwrap();
        let now = Instant::now();
        let wait = pick(due.clone(), &sh.state(), Role::CatchUp, now).unwrap_err();
        assert!(wait.is_some_and(|w| w <= MAX_WAIT), "{wait:?}");
        // Once the oldest unclaimed one has waited long enough, it takes it.
        let key = (tli(), SegNo(left[1]));
        sh.state().first_seen.insert(key, now - MAX_WAIT);
        let took = pick(due, &sh.state(), Role::CatchUp, now).unwrap();
        assert_eq!((took.tli, took.segno), key);

        assert_eq!(work(&s, &sh, Role::Idle, &mut Preparing::default()), None);
        assert_eq!(marked(&s), [0]);
        sh.state().claimed.clear();
        assert_eq!(work(&s, &sh, Role::Idle, &mut Preparing::default()), None);
        assert!(marked(&s).is_empty());
        for k in 0..n {
            let (plain, uncompressed) = contents(&s, k);
            assert_eq!(uncompressed, 0);
            assert!(plain[..] == data[(k * SEG) as usize..((k + 1) * SEG) as usize]);
        }
        assert_eq!(queued(&s).len(), n as usize);
    }

    /// Stopping (Klio shutting down) abandons a rewrite between frames: the segment
    /// stays as it was, marked, with no temporary file left.
    #[test]
    fn a_stopped_rewrite_leaves_the_segment_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        write_synchronously(&s, &wal(SEG), 9000);
        let path = sealed_path(&s, 0);
        let before = std::fs::read(&path).unwrap();
        let rec = s.marked_segments().unwrap().remove(0);
        let mut report = RecompressReport::default();
        s.recompress_segment(rec, &mut report, &AtomicBool::new(true), None)
            .unwrap();
        assert_eq!(report, RecompressReport::default());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        left_as_it_was(&s);
    }

    /// The id of this process's thread called `name`.
    fn thread_id(name: &str) -> Option<u64> {
        std::fs::read_dir("/proc/self/task").unwrap().find_map(|t| {
            let t = t.ok()?.path();
            (std::fs::read_to_string(t.join("comm")).ok()?.trim() == name)
                .then(|| t.file_name()?.to_str()?.parse().ok())?
        })
    }

    /// Scheduling policy, nice value and I/O priority of this process's thread `name`
    /// (from `/proc/self/task/*/stat` and `ioprio_get`).
    #[allow(unsafe_code)]
    fn thread_sched(name: &str) -> Option<(u32, i64, i64)> {
        for t in std::fs::read_dir("/proc/self/task").unwrap() {
            let t = t.unwrap().path();
            if std::fs::read_to_string(t.join("comm")).ok()?.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            // Fields after the parenthesised name: state is field 3, nice 19, policy 41.
            let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            let tid: libc::c_long = t.file_name()?.to_str()?.parse().ok()?;
            // SAFETY: ioprio_get only reads its integer arguments.
            let io = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
            return Some((rest[41 - 3].parse().ok()?, rest[19 - 3].parse().ok()?, io));
        }
        None
    }

    /// The idle thread runs at SCHED_IDLE (a waking receiver preempts it at once) and
    /// the catch-up thread at nice 10; their I/O at the idle and the lowest best-effort
    /// priority.
    #[test]
    fn the_recompressor_threads_run_at_idle_and_low_priority() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let r = Recompressor::start(s).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let idle = thread_sched("klio-recompress");
            let lag = thread_sched("klio-recomp-lag");
            let io = |r| io_priority(r) as i64;
            if idle.is_some_and(|(p, _, i)| p == SCHED_IDLE && i == io(Role::Idle))
                && lag == Some((SCHED_OTHER, 10, io(Role::CatchUp)))
            {
                break;
            }
            assert!(Instant::now() < deadline, "idle {idle:?}, catch-up {lag:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The thread joins the idle cgroup right after lowering its priority.
        let tid = thread_id("klio-recompress").unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (own, joined) = loop {
            let own = std::fs::read_to_string(format!("/proc/self/task/{tid}/cgroup")).unwrap();
            // Joined: the thread's own cgroup is the idle one (so the idle cgroup
            // `idle_dir` gives for it is a child of a `klio-idle`).
            let joined = idle_cgroup::idle_dir(&own, &mountinfo)
                .ok()
                .filter(|d| d.parent().is_some_and(|p| p.ends_with(idle_cgroup::NAME)));
            if joined.is_some() || Instant::now() > deadline {
                break (own, joined);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match joined {
            Some(d) => {
                let d = d.parent().unwrap();
                let idle = std::fs::read_to_string(d.join("cpu.idle")).unwrap();
                assert_eq!(idle.trim(), "1", "{}", d.display());
            }
            None if std::env::var("KLIO_TEST_ALLOW_UNPRIVILEGED").as_deref() == Ok("1") => {
                eprintln!("NOT CHECKED (KLIO_TEST_ALLOW_UNPRIVILEGED=1): the idle cgroup");
            }
            None => panic!(
                "the idle thread is not in an idle CPU cgroup ({own:?}); this needs root \
                 and a cgroup v1 cpu controller, as in CI; or set \
                 KLIO_TEST_ALLOW_UNPRIVILEGED=1"
            ),
        }
        drop(r);
        assert_eq!(thread_sched("klio-recompress"), None);
        assert_eq!(thread_sched("klio-recomp-lag"), None);
    }
}

//! Live per-cluster streaming state, shared with the HTTP API and metrics.
//! In memory only.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use klio_core::{Lsn, SystemId, TimelineId};

pub use klio_core::cluster::ConnectionState;

/// Counters and positions of one cluster, updated by its receiver task.
#[derive(Debug)]
pub struct ClusterStatus {
    received: AtomicU64,
    flushed: AtomicU64,
    primary: AtomicU64,
    timeline: AtomicU32,
    system_id: AtomicU64,
    sealed: AtomicU64,
    disk_full: AtomicBool,
    wal_flushes: AtomicU64,
    wal_flush_nanos: AtomicU64,
    /// The writer's recompressor, read live at each snapshot.
    recompress: Mutex<Option<crate::wal_store::RewriteCounts>>,
    state: Mutex<(ConnectionState, Option<String>)>,
}

/// A consistent-enough copy of [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub state: ConnectionState,
    pub last_error: Option<String>,
    pub received: Option<Lsn>,
    pub flushed: Option<Lsn>,
    pub primary: Option<Lsn>,
    pub timeline: Option<TimelineId>,
    pub system_id: Option<SystemId>,
    pub sealed_segments: u64,
    pub disk_full: bool,
    /// fdatasyncs of WAL since the server started, and their total time.
    pub wal_flushes: u64,
    pub wal_flush_nanos: u64,
    /// Segments rewritten compressed since the server started: from what the writer fed
    /// the recompressor while writing them, and from their files.
    pub recompressed_from_memory: u64,
    pub recompressed_from_file: u64,
}

fn opt(v: u64) -> Option<Lsn> {
    (v != 0).then_some(Lsn(v))
}

impl Default for ClusterStatus {
    fn default() -> Self {
        ClusterStatus {
            received: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            primary: AtomicU64::new(0),
            timeline: AtomicU32::new(0),
            system_id: AtomicU64::new(0),
            sealed: AtomicU64::new(0),
            disk_full: AtomicBool::new(false),
            wal_flushes: AtomicU64::new(0),
            wal_flush_nanos: AtomicU64::new(0),
            recompress: Mutex::new(None),
            state: Mutex::new((ConnectionState::Connecting, None)),
        }
    }
}

impl ClusterStatus {
    pub fn snapshot(&self) -> StatusSnapshot {
        let (state, last_error) = self
            .state
            .lock()
            .map(|g| g.clone())
            .unwrap_or((ConnectionState::Failed, None));
        let (recompressed_from_memory, recompressed_from_file) = self
            .recompress
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.get()))
            .unwrap_or_default();
        let sid = self.system_id.load(Ordering::Relaxed);
        let tli = self.timeline.load(Ordering::Relaxed);
        StatusSnapshot {
            state,
            last_error,
            received: opt(self.received.load(Ordering::Relaxed)),
            flushed: opt(self.flushed.load(Ordering::Relaxed)),
            primary: opt(self.primary.load(Ordering::Relaxed)),
            timeline: TimelineId::new(tli).ok(),
            system_id: (sid != 0).then_some(SystemId::new(sid)),
            sealed_segments: self.sealed.load(Ordering::Relaxed),
            disk_full: self.disk_full.load(Ordering::Relaxed),
            wal_flushes: self.wal_flushes.load(Ordering::Relaxed),
            wal_flush_nanos: self.wal_flush_nanos.load(Ordering::Relaxed),
            recompressed_from_memory,
            recompressed_from_file,
        }
    }

    /// Sets the state; returns true when it or the error message changed.
    pub fn set_state(&self, state: ConnectionState, error: Option<String>) -> bool {
        self.set_state_announced(state, error, || {})
    }

    /// Sets the state; when it or the error message changes, runs `announce` (which logs
    /// the change) first, so whoever sees the new state in the status also finds its log
    /// line. The lock is not held while it runs (a log write can block). Only the
    /// cluster's receiver changes its state (a read-only server sets it once, before any
    /// receiver runs), so nothing changes it between the check and the store. Returns
    /// whether it changed.
    pub fn set_state_announced(
        &self,
        state: ConnectionState,
        error: Option<String>,
        announce: impl FnOnce(),
    ) -> bool {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = {
            let g = lock();
            g.0 != state || g.1 != error
        };
        if changed {
            announce();
        }
        *lock() = (state, error);
        changed
    }

    pub fn set_received(&self, lsn: Lsn) {
        self.received.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub fn set_flushed(&self, lsn: Lsn) {
        self.flushed.store(lsn.0, Ordering::Relaxed);
    }

    pub fn set_primary(&self, lsn: Lsn) {
        self.primary.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub fn set_timeline(&self, tli: TimelineId) {
        self.timeline.store(tli.get(), Ordering::Relaxed);
    }

    pub fn set_system_id(&self, id: SystemId) {
        self.system_id.store(id.get(), Ordering::Relaxed);
    }

    /// Segments sealed since the server started.
    pub fn set_sealed(&self, n: u64) {
        self.sealed.store(n, Ordering::Relaxed);
    }

    pub fn set_disk_full(&self, v: bool) {
        self.disk_full.store(v, Ordering::Relaxed);
    }

    /// The writer's running totals of WAL fdatasyncs (count, nanoseconds).
    pub fn set_wal_flushes(&self, count: u64, nanos: u64) {
        self.wal_flushes.store(count, Ordering::Relaxed);
        self.wal_flush_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The writer's recompressor, whose rewrite counters each snapshot reads.
    pub fn set_recompress_counts(&self, counts: Option<crate::wal_store::RewriteCounts>) {
        if let Ok(mut g) = self.recompress.lock() {
            *g = counts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ClusterStatus, ConnectionState};

    #[test]
    fn a_state_change_is_announced_before_a_reader_can_see_it_and_only_once() {
        let status = ClusterStatus::default();
        let mut seen_while_announcing = None;
        let changed = status.set_state_announced(ConnectionState::Streaming, None, || {
            seen_while_announcing = Some(status.snapshot().state);
        });
        assert!(changed);
        assert_eq!(seen_while_announcing, Some(ConnectionState::Connecting));
        assert_eq!(status.snapshot().state, ConnectionState::Streaming);

        let again = status.set_state_announced(ConnectionState::Streaming, None, || {
            panic!("announced a state that did not change")
        });
        assert!(!again);
        let err = Some("connection refused".to_string());
        assert!(status.set_state(ConnectionState::Disconnected, err.clone()));
        assert_eq!(status.snapshot().last_error, err);
    }
}

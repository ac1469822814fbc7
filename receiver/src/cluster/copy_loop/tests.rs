//! The copy loop against a scripted primary and a fake Tier 1: every flush position it
//! sends must be at or below what the sink had made durable at that moment, across
//! batches, keepalives, ticks and a failing fdatasync.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use klio_pgwire::replication::{PrimaryKeepalive, XLogData};

use super::*;
use crate::wal_store::FlushStats;

fn tli1() -> TimelineId {
    TimelineId::new(1).unwrap()
}

/// Fake Tier 1: writes are "in the page cache" until `end_batch`, which makes them
/// durable (or fails, from the `fail_flush`-th fdatasync on) and publishes like `Ingest`.
struct FakeSink {
    state: Mutex<SinkState>,
    progress: watch::Sender<WriterProgress>,
}

#[derive(Default)]
struct SinkState {
    written: Option<(TimelineId, Lsn)>,
    synced: Option<(TimelineId, Lsn)>,
    flushes: u64,
    /// The n-th fdatasync (1-based) and every later one fail.
    fail_flush: Option<u64>,
    failed: bool,
}

impl FakeSink {
    fn new(fail_flush: Option<u64>) -> Arc<FakeSink> {
        Arc::new(FakeSink {
            state: Mutex::new(SinkState {
                fail_flush,
                ..SinkState::default()
            }),
            progress: watch::channel(WriterProgress::default()).0,
        })
    }

    fn synced(&self) -> Option<(TimelineId, Lsn)> {
        self.state.lock().unwrap().synced
    }
}

impl WalSink for Arc<FakeSink> {
    fn write(&self, tli: TimelineId, start: Lsn, data: &[u8]) {
        let mut s = self.state.lock().unwrap();
        if let Some((_, end)) = s.written {
            assert_eq!(end, start, "the loop wrote a gap or an overlap");
        }
        s.written = Some((tli, Lsn(start.0 + data.len() as u64)));
    }

    fn end_batch(&self) {
        let mut s = self.state.lock().unwrap();
        s.flushes += 1;
        if s.failed || s.fail_flush.is_some_and(|n| s.flushes >= n) {
            s.failed = true;
            self.progress.send_modify(|p| {
                p.error = Some("fdatasync failed: Input/output error".into());
            });
            return;
        }
        s.synced = s.written;
        let (durable, count) = (s.synced, s.flushes);
        self.progress.send_modify(|p| {
            p.durable = durable;
            p.flushes = FlushStats { count, nanos: 0 };
        });
    }

    fn subscribe(&self) -> watch::Receiver<WriterProgress> {
        self.progress.subscribe()
    }
}

/// Status updates sent so far, and a signal for each new one.
#[derive(Default)]
struct Sent {
    list: Mutex<Vec<(Lsn, Lsn)>>,
    cond: Condvar,
}

/// Scripted primary: messages come from the test through a channel; every status update
/// is checked against the sink's durable position at the moment it is sent.
struct FakePrimary {
    incoming: mpsc::Receiver<CopyMessage>,
    /// A message taken off the channel by `more_ready`, not yet received.
    peeked: Option<CopyMessage>,
    sink: Arc<FakeSink>,
    sent: Arc<Sent>,
}

impl Upstream for FakePrimary {
    fn recv_copy(&mut self, timeout: Duration) -> Result<Option<CopyMessage>, PgError> {
        if let Some(m) = self.peeked.take() {
            return Ok(Some(m));
        }
        match self.incoming.recv_timeout(timeout) {
            Ok(m) => Ok(Some(m)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            // The script is over: a primary that sends nothing more.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                Ok(None)
            }
        }
    }

    fn more_ready(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.incoming.try_recv().ok();
        }
        self.peeked.is_some()
    }

    fn send_status(&mut self, write: Lsn, flush: Lsn) -> Result<(), PgError> {
        let durable = self.sink.synced().map_or(Lsn::INVALID, |(_, l)| l);
        assert!(
            flush <= durable,
            "flush {flush} reported while only {durable} was durable"
        );
        self.sent.list.lock().unwrap().push((write, flush));
        self.sent.cond.notify_all();
        Ok(())
    }
}

struct Script {
    tx: mpsc::Sender<CopyMessage>,
    sent: Arc<Sent>,
    next: u64,
}

impl Script {
    /// XLogData of `len` bytes continuing the stream.
    fn wal(&mut self, len: usize) {
        let x = XLogData {
            wal_start: Lsn(self.next),
            wal_end: Lsn(self.next + len as u64),
            send_time: 0,
            data: Bytes::from(vec![0x5a; len]),
        };
        self.next += len as u64;
        self.tx.send(CopyMessage::Data(x.encode())).unwrap();
    }

    fn keepalive(&self) {
        let k = PrimaryKeepalive {
            wal_end: Lsn(self.next),
            send_time: 0,
            reply_requested: true,
        };
        self.tx.send(CopyMessage::Data(k.encode())).unwrap();
    }

    /// Waits (bounded) until a status update reports `flush` at or past `lsn`.
    fn flushed_to(&self, lsn: u64) {
        let list = self.sent.list.lock().unwrap();
        let (_list, timeout) = self
            .sent
            .cond
            .wait_timeout_while(list, Duration::from_secs(10), |l| {
                !l.iter().any(|(_, f)| f.0 >= lsn)
            })
            .unwrap();
        assert!(!timeout.timed_out(), "the loop never reported the flush");
    }

    fn sent(&self) -> Vec<(Lsn, Lsn)> {
        self.sent.list.lock().unwrap().clone()
    }
}

const START: u64 = 0x0300_0000;

/// Runs the loop (status every 5 ms) on a thread of its own while `driver`, which plays
/// the primary, runs on this one; a loop still running 30 s after the driver is done is
/// stopped, which fails the test instead of hanging it.
fn run_with(
    primary: &mut FakePrimary,
    sink: &Arc<FakeSink>,
    status: &ClusterStatus,
    driver: impl FnOnce(),
) -> Result<CopyEnd, SessionError> {
    let (stop_tx, stop) = watch::channel(false);
    let (done_tx, done) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let end = copy_loop(
                primary,
                sink,
                status,
                position(),
                Duration::from_millis(5),
                &stop,
            );
            let _ = done_tx.send(end);
        });
        driver();
        let end = done.recv_timeout(Duration::from_secs(30));
        if end.is_err() {
            stop_tx.send_replace(true);
        }
        end.expect("the copy loop did not finish")
    })
}

fn setup(fail_flush: Option<u64>) -> (Script, FakePrimary, Arc<FakeSink>) {
    let (tx, incoming) = mpsc::channel();
    let sink = FakeSink::new(fail_flush);
    let sent = Arc::new(Sent::default());
    let primary = FakePrimary {
        incoming,
        peeked: None,
        sink: sink.clone(),
        sent: sent.clone(),
    };
    let script = Script {
        tx,
        sent,
        next: START,
    };
    (script, primary, sink)
}

fn position() -> CopyPosition {
    CopyPosition {
        tli: tli1(),
        start: Lsn(START),
        durable: Lsn::INVALID,
    }
}

#[test]
fn flush_sent_never_exceeds_what_the_sink_made_durable() {
    let (mut script, mut primary, sink) = setup(None);
    let status = ClusterStatus::default();
    let driver = || {
        // Bursts (several messages queued: one fsync for them) and single messages,
        // keepalives asking for a reply in between.
        for burst in [1usize, 5, 1, 3, 8, 1] {
            for i in 0..burst {
                script.wal(100 + 37 * i);
            }
            script.keepalive();
            script.flushed_to(script.next);
        }
        script.tx.send(CopyMessage::Done).unwrap();
    };
    let end = run_with(&mut primary, &sink, &status, driver);
    assert!(matches!(end, Ok(CopyEnd::EndOfTimeline)));
    let sent = script.sent();
    let last = sent.iter().map(|(_, f)| *f).max().unwrap();
    assert_eq!(last, Lsn(script.next), "everything durable was reported");
    assert_eq!(status.snapshot().flushed, Some(Lsn(script.next)));
    // Write positions run ahead of (or equal) flush positions, never behind.
    assert!(sent.iter().all(|(w, f)| w >= f), "{sent:?}");
}

#[test]
fn a_failed_fdatasync_ends_the_session_without_reporting_its_data() {
    let (mut script, mut primary, sink) = setup(Some(3));
    let status = ClusterStatus::default();
    let driver = || {
        script.wal(500);
        script.flushed_to(START + 500);
        script.wal(700);
        script.flushed_to(START + 1200);
        // The third fdatasync fails: its 300 bytes were written but are not durable.
        script.wal(300);
        script.keepalive();
    };
    let end = run_with(&mut primary, &sink, &status, driver);
    let err = end.err().expect("the session must end on a Tier 1 failure");
    assert!(err.to_string().contains("fdatasync failed"), "{err}");
    let sent = script.sent();
    assert!(
        sent.iter().all(|(_, f)| f.0 <= START + 1200),
        "data of the failed fdatasync was reported flushed: {sent:?}"
    );
    assert_eq!(sink.synced(), Some((tli1(), Lsn(START + 1200))));
}

#[test]
fn wal_past_the_end_of_the_address_space_is_an_error_not_an_overflow() {
    let (script, mut primary, sink) = setup(None);
    let status = ClusterStatus::default();
    let (_stop_tx, stop) = watch::channel(false);
    let x = XLogData {
        wal_start: Lsn(u64::MAX - 10),
        wal_end: Lsn(u64::MAX),
        send_time: 0,
        data: Bytes::from(vec![1u8; 100]),
    };
    script.tx.send(CopyMessage::Data(x.encode())).unwrap();
    let end = copy_loop(
        &mut primary,
        &sink,
        &status,
        position(),
        Duration::from_secs(60),
        &stop,
    );
    let err = end.err().expect("must be refused");
    assert!(err.to_string().contains("address space"), "{err}");
    assert!(
        sink.state.lock().unwrap().written.is_none(),
        "nothing written"
    );
}

//! The synchronous standby's round trip as the primary sees it: `perf trace` of the
//! walsender's `sendto` and `recvfrom` only, so the standby process itself runs
//! untraced. A round trip starts when the walsender's `sendto` of WAL returns and ends
//! when the last reply arrives before the walsender sends anything else. The walsender
//! notices a standby message by reading its first byte alone (`recvfrom` of size 1
//! returning 1), so that call's return is the arrival. The standby's wake-up, write,
//! flush and reply are all inside the round trip; the walsender's own wake-up is too,
//! alike for every standby.
//!
//! Why the last reply: pg_receivewal and Klio reply once, after the flush; a
//! PostgreSQL walreceiver replies after the write and again after the flush. A reply
//! to a keepalive is not counted; a status update a standby sends on a timer in between
//! would end a round trip late (once in `wal_receiver_status_interval`). With one
//! client there is one commit in flight, so each WAL message has its own reply; with
//! more, the round trip is counted from the last message sent before the reply.

use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::{ensure, Context, Result};

/// A `sendto` returning at least this many bytes carries WAL (an XLogData message is
/// 30 bytes of headers plus its WAL; a keepalive is 23 bytes).
const MIN_WAL_SEND: i64 = 40;

/// `perf trace` attached to one walsender.
pub struct Tracer {
    child: Child,
    out: PathBuf,
}

impl Tracer {
    /// Starts tracing walsender `pid` into `out`; returns once perf is tracing.
    pub fn start(pid: u32, out: &Path) -> Result<Tracer> {
        let child = crate::perf::trace(&["-p", &pid.to_string(), "-e", "sendto,recvfrom"], out)
            .with_context(|| format!("tracing walsender {pid}"))?;
        Ok(Tracer {
            child,
            out: out.to_owned(),
        })
    }

    /// Stops perf (SIGINT, so it flushes its output) and returns the round trips in µs.
    pub fn finish(self) -> Result<Vec<f64>> {
        crate::perf::interrupt(self.child)?;
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        let trips = round_trips(&text);
        ensure!(
            !trips.is_empty(),
            "no WAL message with a reply in {}",
            self.out.display()
        );
        Ok(trips)
    }
}

/// One completed call of a `perf trace` line: (end time in ms, call name, arguments,
/// return value).
/// perf prints `   12.345 ( 0.021 ms): sendto(fd: 7, ...) = 8430`, with `comm/tid ` before
/// the call when it traces several threads. Calls still in flight (no duration) and
/// lines of other shapes give `None`.
fn parse_line(line: &str) -> Option<(f64, &str, &str, i64)> {
    let (start, rest) = line.trim_start().split_once(" (")?;
    let (dur, rest) = rest.split_once(" ms): ")?;
    let end = start.parse::<f64>().ok()? + dur.trim().parse::<f64>().ok()?;
    let (call, rest) = rest.split_once('(')?;
    let call = call.rsplit(' ').next()?;
    let (args, ret) = rest.rsplit_once(" = ")?;
    let args = args.trim_end().strip_suffix(')')?;
    let ret: i64 = ret.split_whitespace().next()?.parse().ok()?;
    Some((end, call, args, ret))
}

/// What a traced call was, for the round trips.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    WalSent,
    /// Anything else sent (a keepalive): replies after it are not the WAL's.
    OtherSent,
    ReplyArrived,
}

/// Round trips in µs from a walsender's `perf trace`: from the end of each `sendto` of
/// WAL to the last reply's arrival before anything else is sent (sends without a reply
/// are left out).
pub fn round_trips(trace: &str) -> Vec<f64> {
    let mut events: Vec<(f64, Event)> = trace
        .lines()
        .filter_map(parse_line)
        .filter_map(|(t, call, args, ret)| match call {
            "sendto" if ret >= MIN_WAL_SEND => Some((t, Event::WalSent)),
            "sendto" if ret > 0 => Some((t, Event::OtherSent)),
            "recvfrom" if ret == 1 && args.ends_with("size: 1") => Some((t, Event::ReplyArrived)),
            _ => None,
        })
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = Vec::new();
    let mut sent: Option<f64> = None;
    let mut reply: Option<f64> = None;
    for (t, ev) in events {
        match ev {
            Event::WalSent | Event::OtherSent => {
                if let (Some(s), Some(r)) = (sent, reply.take()) {
                    out.push((r - s) * 1000.0);
                }
                sent = (ev == Event::WalSent).then_some(t);
            }
            Event::ReplyArrived => {
                if sent.is_some() {
                    reply = Some(t);
                }
            }
        }
    }
    if let (Some(s), Some(r)) = (sent, reply) {
        out.push((r - s) * 1000.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_each_wal_send_with_the_next_reply_read() {
        let trace = "\
     0.000 ( 0.030 ms): recvfrom(fd: 7, ubuf: 0x1, size: 1)                        = -1 EAGAIN (Resource temporarily unavailable)
     0.054 ( 0.029 ms): sendto(fd: 7, buff: 0x2, len: 8430)                        = 8430
     0.322 ( 0.020 ms): recvfrom(fd: 7, ubuf: 0x1, size: 1)                        = 1
     0.356 ( 0.017 ms): recvfrom(fd: 7, ubuf: 0x3, size: 8192)                     = 38
     1.000 ( 0.010 ms): sendto(fd: 7, buff: 0x2, len: 23)                          = 23
     1.100 ( 0.010 ms): recvfrom(fd: 7, ubuf: 0x1, size: 1)                        = 1
     2.000 ( 0.010 ms): sendto(fd: 7, buff: 0x2, len: 200)                         = 200
     2.100 ( 0.010 ms): sendto(fd: 7, buff: 0x2, len: 300)                         = 300
     2.400 (         ): recvfrom(fd: 7, ubuf: 0x1, size: 1)                     ...
     2.390 ( 0.100 ms): postgres/77 recvfrom(fd: 7, ubuf: 0x1, size: 1)          = 1
     2.500 ( 0.010 ms): recvfrom(fd: 7, ubuf: 0x3, size: 8192)                     = 38
     3.000 ( 0.010 ms): sendto(fd: 7, buff: 0x2, len: 200)                         = 200
     3.100 ( 0.010 ms): recvfrom(fd: 7, ubuf: 0x1, size: 1)                        = 1
     3.400 ( 0.010 ms): recvfrom(fd: 7, ubuf: 0x1, size: 1)                        = 1
     4.000 ( 0.010 ms): sendto(fd: 7, buff: 0x2, len: 200)                         = 200
";
        let rt = round_trips(trace);
        // 0.083 -> 0.342 (the peek, not the read of the rest); the keepalive (23 bytes)
        // starts nothing and the reply after it (1.11) is not the WAL's; the reply at
        // 2.49 answers the last of two sends (ending 2.11); of a write and a flush reply
        // (3.11, 3.41) the flush counts; the last send has no reply.
        assert_eq!(rt.len(), 3, "{rt:?}");
        let want = [259.0, 380.0, 400.0];
        for (got, want) in rt.iter().zip(want) {
            assert!((got - want).abs() < 0.01, "{rt:?}");
        }
    }

    #[test]
    fn odd_lines_are_skipped() {
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line(" 2.400 (         ): recvfrom(fd: 7) ..."), None);
        assert_eq!(
            parse_line(" 1.5 ( 0.5 ms): comm/1 sendto(fd: 7, len: 9) = 9"),
            Some((2.0, "sendto", "fd: 7, len: 9", 9))
        );
    }
}

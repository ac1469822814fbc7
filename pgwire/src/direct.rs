//! Blocking COPY I/O for a receive loop that owns its thread (the receiver's stream).
//!
//! Through tokio, every message costs a reactor turn, a task wake-up and a poll of each
//! branch the loop waits on; on a synchronous standby's round trip (read → write →
//! fdatasync → status update) that was several µs of CPU per commit more than
//! pg_receivewal's plain loop. Here the socket is read and written with non-blocking
//! system calls and waited for with poll(2), as libpq does; a TLS stream goes through
//! the same rustls session the async stream uses, so both paths can follow each other
//! on one connection.
//!
//! The socket stays registered with tokio's reactor, which does not run meanwhile.
//! Bytes read here are never seen by it: its registration is edge-triggered, so a later
//! async read either finds bytes or finds none and waits for the next arrival.
//! Reads and writes the connection's socket only.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, MsgFlags};

use crate::message::has_complete_message;
use crate::tls::Stream;
use crate::{CopyMessage, PgError, ReplicationConn, READ_CHUNK};

/// How long a blocking send waits for the server to take bytes before giving up on
/// the connection (a status update is a few dozen bytes: a full socket buffer means
/// the server stopped reading).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl ReplicationConn {
    /// [`Self::recv_copy`] for a loop that owns its thread: waits in poll(2) for at most
    /// `timeout` (rounded up to a millisecond), then returns `Ok(None)` if no complete
    /// message arrived. The same messages are skipped and the same errors reported.
    pub fn recv_copy_blocking(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<CopyMessage>, PgError> {
        self.check_receiving()?;
        let mut deadline = None;
        loop {
            if let Some(msg) = self.try_parse().map_err(|e| self.broken(e))? {
                match self.copy_message(msg)? {
                    Some(m) => return Ok(Some(m)),
                    None => continue,
                }
            }
            if let Some(e) = self.read_error.take() {
                return Err(self.broken(e.into()));
            }
            // A socket found empty by the last read (`more_ready_now` before the batch's
            // fsync, typically) is waited for at once: poll(2) returns at once if bytes
            // came since, and an empty read is one system call less per commit.
            if !self.socket_drained {
                match self.fill_now() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return Err(self.broken(e.into())),
                }
            }
            let now = Instant::now();
            let left = deadline
                .get_or_insert(now + timeout)
                .saturating_duration_since(now);
            if left.is_zero() {
                return Ok(None);
            }
            match wait(self.stream.fd(), PollFlags::POLLIN, left) {
                Ok(true) => self.socket_drained = false,
                Ok(false) => return Ok(None),
                Err(e) => return Err(self.broken(e.into())),
            }
        }
    }

    /// [`Self::more_ready`] for the blocking receive: whether a complete message is
    /// buffered, after reading (without waiting) whatever the socket holds. An error or
    /// the end of the stream is kept for the next [`Self::recv_copy_blocking`].
    pub fn more_ready_now(&mut self) -> bool {
        loop {
            if has_complete_message(&self.read_buf) {
                return true;
            }
            if self.read_error.is_some() {
                return false;
            }
            match self.fill_now() {
                Ok(true) => {}
                Ok(false) => return false,
                Err(e) => {
                    self.read_error = Some(e);
                    return false;
                }
            }
        }
    }

    /// [`Self::send_copy_data`] for a loop that owns its thread: returns once the
    /// message is written to the socket (waiting in poll(2) while its buffer is full).
    pub fn send_copy_data_blocking(&mut self, payload: &[u8]) -> Result<(), PgError> {
        self.queue_copy_data(payload)?;
        let res = self.stream.send_all(&self.write_buf, SEND_TIMEOUT);
        self.write_buf.clear();
        res.map_err(|e| self.broken(e.into()))
    }

    /// Appends what can be read now to the read buffer: whether anything was (and notes
    /// whether the socket was found empty). The end of the stream is an error here (the
    /// server never ends a COPY that way).
    fn fill_now(&mut self) -> io::Result<bool> {
        if self.scratch.len() < READ_CHUNK {
            self.scratch.resize(READ_CHUNK, 0);
        }
        let read = self.stream.read_now(&mut self.scratch)?;
        self.socket_drained = read.is_none();
        match read {
            Some(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("server {} closed the connection unexpectedly", self.target),
            )),
            Some(n) => {
                self.read_buf.extend_from_slice(&self.scratch[..n]);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Stream {
    /// Reads what the socket (through the TLS session, for TLS) has now, without
    /// waiting: `Some(n)` bytes, `Some(0)` at the end of the stream, `None` if nothing
    /// has arrived yet.
    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let tls = match self {
            Stream::Tcp(_) | Stream::Unix(_) => {
                return match Sock(self.fd()).read(buf) {
                    Ok(n) => Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Stream::Tls(tls) => tls,
        };
        let (tcp, session) = tls.get_mut();
        let mut sock = Sock(tcp.as_fd());
        let mut eof = false;
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if eof {
                        return Ok(Some(0));
                    }
                }
                Err(e) => return Err(e),
            }
            match session.read_tls(&mut sock) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
            if let Err(e) = session.process_new_packets() {
                // The alert rustls queued for the server, if the socket takes it.
                let _ = session.write_tls(&mut sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Writes all of `data` (encrypted, for TLS), waiting while the socket's buffer is
    /// full; fails with `TimedOut` after `timeout` without progress.
    fn send_all(&mut self, data: &[u8], timeout: Duration) -> io::Result<()> {
        let mut deadline = None;
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => {
                let fd = self.fd();
                let mut rest = data;
                while !rest.is_empty() {
                    match Sock(fd).write(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            rest = &rest[n..];
                            deadline = None;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait_writable(fd, &mut deadline, timeout)?
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Stream::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                session.writer().write_all(data)?;
                let fd = tcp.as_fd();
                while session.wants_write() {
                    match session.write_tls(&mut Sock(fd)) {
                        Ok(_) => deadline = None,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait_writable(fd, &mut deadline, timeout)?
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The socket as a non-blocking `Read` and `Write`: `WouldBlock` where it would wait.
struct Sock<'a>(BorrowedFd<'a>);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match recv(self.0.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        loop {
            match send(self.0.as_raw_fd(), buf, flags) {
                Err(Errno::EINTR) => {}
                r => return r.map_err(io::Error::from),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits in poll(2) until `fd` has one of `events` (or an error or hang-up, which the
/// next read or write reports), for at most `timeout` rounded up to a millisecond:
/// whether it did. Interrupted by a signal, it says yes (the caller tries again).
fn wait(fd: BorrowedFd<'_>, events: PollFlags, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    let ms = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut [PollFd::new(fd, events)], ms) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Waits for room in the socket's send buffer; `TimedOut` once `timeout` has passed
/// since the first wait without progress (`deadline`, reset by the caller on progress).
fn wait_writable(
    fd: BorrowedFd<'_>,
    deadline: &mut Option<Instant>,
    timeout: Duration,
) -> io::Result<()> {
    let now = Instant::now();
    let left = deadline
        .get_or_insert(now + timeout)
        .saturating_duration_since(now);
    if left.is_zero() || !wait(fd, PollFlags::POLLOUT, left)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server has not read from the connection for {} s",
                timeout.as_secs()
            ),
        ));
    }
    Ok(())
}

//! `klio-pgwire`: PostgreSQL's physical-replication protocol as Klio speaks it. Owns no
//! disk state.
//!
//! - [`conninfo`]: libpq connection strings (key=value and URI) and passfiles;
//! - this crate's root: the replication connection on the `postgres-protocol` codecs, over
//!   TCP, a Unix socket or TLS: startup and authentication (see `startup`), the
//!   simple-query protocol for replication commands, and CopyBoth/CopyOut streams;
//! - [`replication`]: typed replication commands and CopyData messages.
//!
//! Reading keeps one buffer and only ever consumes complete messages, so [`recv_copy`] can be
//! cancelled (e.g. by a timer in `tokio::select!`) without losing or splitting a message.
//! Writing keeps one buffer too: a cancelled send leaves the unsent rest queued for the next.
//!
//! [`recv_copy`]: ReplicationConn::recv_copy

pub mod conninfo;
pub mod replication;

mod auth;
mod channel_binding;
mod direct;
mod error;
mod message;
mod startup;
mod tls;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

use std::collections::HashMap;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use auth::AuthMechanism;
pub use error::PgError;
pub use message::parse_server_version;
use message::{
    data_row, describe, log_notice, parse_backend, row_description, server_error, Backend,
};
use tls::Stream;

/// Minimum free space kept in the read buffer before each read.
const READ_CHUNK: usize = 64 * 1024;

/// The rows of one result set, as text. `raw` has the exact bytes where text is not enough
/// (`TIMELINE_HISTORY` content).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    /// Field values as text (lossily decoded if the server sent invalid UTF-8).
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tag (`IDENTIFY_SYSTEM`, `SELECT`…); empty if the server sent none.
    pub command_tag: String,
    pub(crate) raw_rows: Vec<Vec<Option<Bytes>>>,
}

impl ResultSet {
    /// The index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The text value of column `name` in row `row` (`None` for NULL or no such field).
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let col = self.column(name)?;
        self.rows.get(row)?.get(col)?.as_deref()
    }

    /// The exact bytes of a field (`None` for NULL or no such field).
    pub fn raw(&self, row: usize, col: usize) -> Option<&Bytes> {
        self.raw_rows.get(row)?.get(col)?.as_ref()
    }
}

/// One message of a COPY stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyMessage {
    /// A CopyData payload.
    Data(Bytes),
    /// The server's CopyDone.
    Done,
}

/// What the server answered a command that may start CopyBoth (`START_REPLICATION`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyBothStart {
    /// CopyBothResponse: streaming has started.
    Started,
    /// The command completed without COPY (e.g. `START_REPLICATION` at exactly the end of a
    /// past timeline answers with the `next_tli, next_tli_startpos` result set).
    Completed(Vec<ResultSet>),
}

/// What follows the end of one CopyOut (for `BASE_BACKUP`, which before PostgreSQL 15 sends
/// one CopyOut per tablespace and one for the manifest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyOutNext {
    /// Another CopyOutResponse, preceded by these result sets.
    Copy(Vec<ResultSet>),
    /// ReadyForQuery: the command is over; these result sets came after the last COPY.
    Finished(Vec<ResultSet>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Ready for a command.
    Idle,
    /// In CopyBoth (`both`) or CopyOut.
    Copy {
        both: bool,
        server_done: bool,
        client_done: bool,
    },
    /// A command's remaining messages up to ReadyForQuery must be read before the next one
    /// (set while a command runs, so a cancelled call leaves a consistent state).
    Draining,
    /// An I/O or protocol error: the connection cannot be used any more.
    Broken,
}

/// A physical replication connection (`replication=true`).
pub struct ReplicationConn {
    stream: Stream,
    read_buf: BytesMut,
    /// A read error seen by [`Self::more_ready`], reported by the next receive.
    read_error: Option<io::Error>,
    /// Where the blocking COPY receive ([`Self::recv_copy_blocking`]) reads into.
    scratch: Vec<u8>,
    /// The last blocking read found the socket empty (a hint: wrong only costs a
    /// system call).
    socket_drained: bool,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    server_version_num: u32,
    backend_pid: i32,
    state: State,
    target: String,
    /// TLS with the server certificate verified (`verify-ca`, `verify-full`, or `require`
    /// with a root certificate).
    server_verified: bool,
    auth: AuthMechanism,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("target", &self.target)
            .field("tls", &self.is_tls())
            .field("server_verified", &self.server_verified)
            .field("auth", &self.auth)
            .field("server_version_num", &self.server_version_num)
            .field("backend_pid", &self.backend_pid)
            .field("state", &self.state)
            .finish()
    }
}

impl ReplicationConn {
    fn new(stream: Stream, target: String) -> ReplicationConn {
        ReplicationConn {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            read_error: None,
            scratch: Vec::new(),
            socket_drained: false,
            write_buf: BytesMut::new(),
            parameters: HashMap::new(),
            server_version_num: 0,
            backend_pid: 0,
            state: State::Idle,
            target,
            server_verified: false,
            auth: AuthMechanism::NoneRequested,
        }
    }

    /// The server version as `server_version_num` (e.g. 150018), from the startup parameters.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// A parameter the server reported with ParameterStatus (`server_version`, `TimeZone`…).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server process id (BackendKeyData).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Whether the connection is TLS with a server certificate verified against
    /// `sslrootcert` (with the host name for `verify-full`).
    pub fn server_verified(&self) -> bool {
        self.server_verified
    }

    /// How the server authenticated this connection.
    pub fn auth_mechanism(&self) -> AuthMechanism {
        self.auth
    }

    /// Where this connection goes, for log and error messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `sql` with the simple-query protocol and returns its result sets. An
    /// ErrorResponse becomes [`PgError::Server`] once the server is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<ResultSet>, PgError> {
        self.send_query(sql).await?;
        let mut results = Results::default();
        loop {
            let msg = self.next_message().await?;
            match self.collect(msg, &mut results, "a query")? {
                Step::Continue => {}
                Step::Ready => return results.finish(),
                Step::CopyBoth | Step::CopyOut => {
                    return Err(self.broken(PgError::protocol(
                        "the server started a COPY for a plain query",
                    )))
                }
            }
        }
    }

    /// Sends `sql` (e.g. `START_REPLICATION`) and waits for CopyBothResponse.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<CopyBothStart, PgError> {
        self.send_query(sql).await?;
        let mut results = Results::default();
        loop {
            let msg = self.next_message().await?;
            match self.collect(msg, &mut results, "a CopyBoth command")? {
                Step::Continue => {}
                Step::CopyBoth if results.error.is_none() && results.sets.is_empty() => {
                    self.state = State::Copy {
                        both: true,
                        server_done: false,
                        client_done: false,
                    };
                    return Ok(CopyBothStart::Started);
                }
                Step::Ready => return results.finish().map(CopyBothStart::Completed),
                Step::CopyBoth | Step::CopyOut => {
                    return Err(self.broken(PgError::protocol(
                        "unexpected COPY response while waiting for CopyBothResponse",
                    )))
                }
            }
        }
    }

    /// Sends `sql` (e.g. `BASE_BACKUP`) and waits for CopyOutResponse; returns the result sets
    /// that came before it.
    pub async fn start_copy_out(&mut self, sql: &str) -> Result<Vec<ResultSet>, PgError> {
        self.send_query(sql).await?;
        match self.wait_copy_out().await? {
            CopyOutNext::Copy(sets) => Ok(sets),
            CopyOutNext::Finished(_) => Err(PgError::protocol(
                "the command completed without the expected CopyOutResponse",
            )),
        }
    }

    /// After a CopyOut ended (`recv_copy` returned [`CopyMessage::Done`]): waits for the next
    /// CopyOutResponse or the end of the command.
    pub async fn next_copy_out(&mut self) -> Result<CopyOutNext, PgError> {
        match self.state {
            State::Copy {
                both: false,
                server_done: true,
                ..
            } => {
                self.state = State::Draining;
                self.wait_copy_out().await
            }
            _ => Err(PgError::protocol(
                "next_copy_out called outside a finished CopyOut",
            )),
        }
    }

    async fn wait_copy_out(&mut self) -> Result<CopyOutNext, PgError> {
        let mut results = Results::default();
        loop {
            let msg = self.next_message().await?;
            match self.collect(msg, &mut results, "a CopyOut command")? {
                Step::Continue => {}
                Step::CopyOut if results.error.is_none() => {
                    self.state = State::Copy {
                        both: false,
                        server_done: false,
                        client_done: true,
                    };
                    return Ok(CopyOutNext::Copy(results.sets));
                }
                Step::Ready => return results.finish().map(CopyOutNext::Finished),
                Step::CopyOut | Step::CopyBoth => {
                    return Err(self.broken(PgError::protocol(
                        "unexpected COPY response while waiting for CopyOutResponse",
                    )))
                }
            }
        }
    }

    /// Receives the next CopyData payload or the server's CopyDone. Cancel-safe: a message is
    /// consumed only when complete and returned in the same poll. NoticeResponse (logged) and
    /// ParameterStatus are skipped; an ErrorResponse ends the COPY with [`PgError::Server`].
    pub async fn recv_copy(&mut self) -> Result<CopyMessage, PgError> {
        self.check_receiving()?;
        loop {
            let msg = self.next_message().await?;
            if let Some(m) = self.copy_message(msg)? {
                return Ok(m);
            }
        }
    }

    /// Refuses a receive outside a COPY (or after the server's CopyDone).
    fn check_receiving(&self) -> Result<(), PgError> {
        match self.state {
            State::Copy {
                server_done: false, ..
            } => Ok(()),
            _ => Err(PgError::protocol(
                "recv_copy called outside a COPY (or after the server's CopyDone)",
            )),
        }
    }

    /// What a backend message received during COPY is for the caller: CopyData or
    /// CopyDone, `None` for one handled here (notice, parameter status), or the error
    /// that ends the COPY.
    fn copy_message(&mut self, msg: Backend) -> Result<Option<CopyMessage>, PgError> {
        match msg {
            Backend::Message(Message::CopyData(body)) => {
                Ok(Some(CopyMessage::Data(body.into_bytes())))
            }
            Backend::Message(Message::CopyDone) => {
                if let State::Copy { server_done, .. } = &mut self.state {
                    *server_done = true;
                }
                Ok(Some(CopyMessage::Done))
            }
            Backend::Message(Message::ErrorResponse(body)) => {
                self.state = State::Draining;
                Err(server_error(body.fields()))
            }
            Backend::Message(Message::NoticeResponse(body)) => {
                log_notice(body.fields());
                Ok(None)
            }
            Backend::Message(Message::ParameterStatus(body)) => {
                self.parameter_status(&body)?;
                Ok(None)
            }
            other => Err(self.broken(PgError::Protocol(format!(
                "unexpected {} during COPY",
                describe(&other)
            )))),
        }
    }

    /// Sends one CopyData message (CopyBoth only) and flushes it.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        self.queue_copy_data(payload)?;
        self.flush_out().await
    }

    /// Queues one CopyData message for sending (CopyBoth only).
    fn queue_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        match self.state {
            State::Copy {
                both: true,
                client_done: false,
                ..
            } => {}
            _ => {
                return Err(PgError::protocol(
                    "send_copy_data called outside CopyBoth (or after send_copy_done)",
                ))
            }
        }
        frontend::CopyData::new(payload)
            .map_err(|e| PgError::Protocol(format!("CopyData too large: {e}")))?
            .write(&mut self.write_buf);
        Ok(())
    }

    /// Sends CopyDone (CopyBoth only): the client ends its side of the stream.
    pub async fn send_copy_done(&mut self) -> Result<(), PgError> {
        match &mut self.state {
            State::Copy {
                both: true,
                client_done,
                ..
            } if !*client_done => *client_done = true,
            _ => {
                return Err(PgError::protocol(
                    "send_copy_done called outside CopyBoth (or twice)",
                ))
            }
        }
        frontend::copy_done(&mut self.write_buf);
        self.flush_out().await
    }

    /// Ends a COPY: sends CopyDone if the client has not, discards CopyData still arriving,
    /// and collects the result sets up to ReadyForQuery (after the end of a timeline:
    /// `next_tli, next_tli_startpos`).
    pub async fn finish_copy(&mut self) -> Result<Vec<ResultSet>, PgError> {
        let State::Copy { client_done, .. } = self.state else {
            return Err(PgError::protocol("finish_copy called outside a COPY"));
        };
        if !client_done {
            self.send_copy_done().await?;
        }
        self.state = State::Draining;
        let mut results = Results::default();
        let mut discarded = 0usize;
        loop {
            let msg = match self.next_message().await? {
                Backend::Message(Message::CopyData(body)) => {
                    discarded += body.data().len();
                    continue;
                }
                Backend::Message(Message::CopyDone) => continue,
                other => other,
            };
            match self.collect(msg, &mut results, "the end of a COPY")? {
                Step::Continue => {}
                Step::Ready => {
                    if discarded > 0 {
                        tracing::debug!(bytes = discarded, "discarded CopyData after CopyDone");
                    }
                    return results.finish();
                }
                Step::CopyOut | Step::CopyBoth => {
                    return Err(self.broken(PgError::protocol(
                        "unexpected COPY response after a COPY (use next_copy_out for \
                         BASE_BACKUP before PostgreSQL 15)",
                    )))
                }
            }
        }
    }

    /// Sends Terminate and closes the socket; errors are ignored.
    pub async fn close(mut self) {
        if self.state != State::Broken {
            frontend::terminate(&mut self.write_buf);
            let _ = self.flush_out().await;
        }
        let _ = self.stream.shutdown().await;
    }

    // ---- internals ----

    /// Gets to Idle (draining a previous command's rest) and sends a Query message.
    async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        match self.state {
            State::Idle => {}
            State::Draining => self.drain().await?,
            State::Copy { .. } => {
                return Err(PgError::protocol(
                    "a COPY is in progress: end it with finish_copy before the next command",
                ))
            }
            State::Broken => {
                return Err(PgError::protocol(
                    "the connection failed earlier and cannot be used: reconnect",
                ))
            }
        }
        frontend::query(sql, &mut self.write_buf)
            .map_err(|e| PgError::Protocol(format!("invalid query text: {e}")))?;
        self.state = State::Draining;
        self.flush_out().await
    }

    /// Reads and discards messages up to ReadyForQuery.
    async fn drain(&mut self) -> Result<(), PgError> {
        loop {
            match self.next_message().await? {
                Backend::Message(Message::ReadyForQuery(_)) => {
                    self.state = State::Idle;
                    return Ok(());
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    tracing::debug!(error = %server_error(body.fields()), "discarded server error");
                }
                Backend::Message(Message::ParameterStatus(body)) => self.parameter_status(&body)?,
                _ => {}
            }
        }
    }

    /// Handles one message of a command's response.
    fn collect(
        &mut self,
        msg: Backend,
        results: &mut Results,
        during: &str,
    ) -> Result<Step, PgError> {
        let msg = match msg {
            Backend::CopyBothResponse => return Ok(Step::CopyBoth),
            Backend::Message(m) => m,
        };
        match msg {
            Message::RowDescription(body) => {
                results.close_current();
                let columns = row_description(&body).map_err(|e| self.broken(e))?;
                results.current = Some(ResultSet {
                    columns,
                    ..ResultSet::default()
                });
            }
            Message::DataRow(body) => {
                let Some(current) = results.current.as_mut() else {
                    return Err(self.broken(PgError::protocol("DataRow without RowDescription")));
                };
                let raw = data_row(&body).map_err(|e| self.broken(e))?;
                if raw.len() != current.columns.len() {
                    return Err(self.broken(PgError::Protocol(format!(
                        "DataRow has {} fields, RowDescription {}",
                        raw.len(),
                        current.columns.len()
                    ))));
                }
                current.rows.push(
                    raw.iter()
                        .map(|f| f.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                );
                current.raw_rows.push(raw);
            }
            Message::CommandComplete(body) => {
                let tag = body
                    .tag()
                    .map_err(|e| self.broken(PgError::Protocol(format!("CommandComplete: {e}"))))?
                    .to_owned();
                let mut set = results.current.take().unwrap_or_default();
                set.command_tag = tag;
                results.sets.push(set);
            }
            Message::EmptyQueryResponse => {}
            Message::ErrorResponse(body) => {
                let err = server_error(body.fields());
                results.error.get_or_insert(err);
            }
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::ParameterStatus(body) => self.parameter_status(&body)?,
            Message::CopyOutResponse(_) => return Ok(Step::CopyOut),
            Message::ReadyForQuery(_) => {
                results.close_current();
                self.state = State::Idle;
                return Ok(Step::Ready);
            }
            other => {
                let other = Backend::Message(other);
                return Err(self.broken(PgError::Protocol(format!(
                    "unexpected {} during {during}",
                    describe(&other)
                ))));
            }
        }
        Ok(Step::Continue)
    }

    fn parameter_status(
        &mut self,
        body: &postgres_protocol::message::backend::ParameterStatusBody,
    ) -> Result<(), PgError> {
        let name = body.name().map_err(|e| self.broken(e.into()))?;
        let value = body.value().map_err(|e| self.broken(e.into()))?;
        self.parameters.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    fn broken(&mut self, err: PgError) -> PgError {
        self.state = State::Broken;
        err
    }

    /// Writes the queued output and flushes. Cancel-safe in the sense that what was not
    /// written stays queued.
    async fn flush_out(&mut self) -> Result<(), PgError> {
        while self.write_buf.has_remaining() {
            match self.stream.write_buf(&mut self.write_buf).await {
                Ok(0) => {
                    return Err(self.broken(PgError::Io(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "server closed the connection",
                    ))))
                }
                Ok(_) => {}
                Err(e) => return Err(self.broken(e.into())),
            }
        }
        self.stream.flush().await.map_err(|e| self.broken(e.into()))
    }

    /// The next complete backend message. Cancel-safe.
    async fn next_message(&mut self) -> Result<Backend, PgError> {
        loop {
            if let Some(msg) = self.try_parse().map_err(|e| self.broken(e))? {
                return Ok(msg);
            }
            if let Some(e) = self.read_error.take() {
                return Err(self.broken(e.into()));
            }
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK {
                self.read_buf.reserve(READ_CHUNK);
            }
            match self.stream.read_buf(&mut self.read_buf).await {
                Ok(0) => {
                    return Err(self.broken(PgError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("server {} closed the connection unexpectedly", self.target),
                    ))))
                }
                Ok(_) => {}
                Err(e) => return Err(self.broken(e.into())),
            }
        }
    }

    /// Splits one complete message off the read buffer, if there is one.
    fn try_parse(&mut self) -> Result<Option<Backend>, PgError> {
        parse_backend(&mut self.read_buf)
    }
}

enum Step {
    Continue,
    Ready,
    CopyBoth,
    CopyOut,
}

#[derive(Default)]
struct Results {
    sets: Vec<ResultSet>,
    current: Option<ResultSet>,
    error: Option<PgError>,
}

impl Results {
    fn close_current(&mut self) {
        if let Some(set) = self.current.take() {
            self.sets.push(set);
        }
    }

    fn finish(mut self) -> Result<Vec<ResultSet>, PgError> {
        self.close_current();
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.sets),
        }
    }
}

#[cfg(test)]
mod tests;

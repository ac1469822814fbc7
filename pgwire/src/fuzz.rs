//! Fuzzing entry points for the parsers of what a (possibly hostile) server sends: backend
//! message framing and bodies, and a whole client session (startup, authentication,
//! replication commands, streaming, COPY) against a peer that sends arbitrary bytes. Used by
//! the bounded proptest runs in `cargo test` and by the `cargo fuzz` targets in `fuzz/`
//! (feature `fuzzing`). Each returns normally for any input; a panic or a hang is a bug.
//! Touches no files.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::startup::startup;
use super::tls::Stream;
use super::{data_row, parse_backend, row_description, server_error, Backend, CopyMessage};
use crate::conninfo::ConnInfo;
use crate::replication::{ReplicationMessage, StreamStart};

/// `input[0]` script bits for [`session`]: `START_REPLICATION` and the CopyBoth stream.
pub const SCRIPT_STREAMING: u8 = 0;
/// A `BASE_BACKUP`-style sequence of CopyOut streams.
pub const SCRIPT_COPY_OUT: u8 = 1 << 3;
/// The replication commands (`IDENTIFY_SYSTEM`, `SHOW`, slots, `TIMELINE_HISTORY`).
pub const SCRIPT_COMMANDS: u8 = 2 << 3;

/// A session must end (by error or normally) well within this; longer is a hang.
const SESSION_LIMIT: Duration = Duration::from_secs(20);

/// Splits `data` into backend messages as the connection does and decodes every body the
/// client reads. Returns the tags of the messages it split off (for chunking properties).
pub fn backend_messages(data: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::from(data);
    let mut tags = Vec::new();
    while let Ok(Some(msg)) = parse_backend(&mut buf) {
        tags.push(decode_body(msg));
    }
    tags
}

/// Like [`backend_messages`], but with the bytes arriving in pieces at `cuts`.
pub fn backend_messages_chunked(data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let mut tags = Vec::new();
    let mut from = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    for to in cuts {
        buf.extend_from_slice(&data[from.min(to)..to]);
        from = from.max(to);
        loop {
            match parse_backend(&mut buf) {
                Ok(Some(msg)) => tags.push(decode_body(msg)),
                Ok(None) => break,
                Err(_) => return tags,
            }
        }
    }
    tags
}

/// Decodes a message's body the way the connection would; returns its tag.
fn decode_body(msg: Backend) -> u8 {
    let msg = match msg {
        Backend::CopyBothResponse => return b'W',
        Backend::Message(m) => m,
    };
    match msg {
        Message::RowDescription(body) => {
            let _ = row_description(&body);
            b'T'
        }
        Message::DataRow(body) => {
            let _ = data_row(&body);
            b'D'
        }
        Message::ErrorResponse(body) => {
            let _ = server_error(body.fields());
            b'E'
        }
        Message::NoticeResponse(body) => {
            let _ = server_error(body.fields());
            b'N'
        }
        Message::ParameterStatus(body) => {
            let _ = (body.name(), body.value());
            b'S'
        }
        Message::CommandComplete(body) => {
            let _ = body.tag();
            b'C'
        }
        Message::AuthenticationSasl(body) => {
            let _: Result<Vec<String>, _> = body.mechanisms().map(|m| Ok(m.to_owned())).collect();
            b'R'
        }
        Message::CopyData(body) => {
            let _ = ReplicationMessage::decode(body.into_bytes());
            b'd'
        }
        _ => b'?',
    }
}

/// Runs a client session against a peer that sends `input[1..]` and then closes. `input[0]`
/// picks client options: bit 0 pretends the server was verified by TLS, bit 1 sets
/// `require_auth=password,md5,scram-sha-256`, bit 2 `channel_binding=require`; bits 3-4
/// the script after startup: [`SCRIPT_STREAMING`], [`SCRIPT_COPY_OUT`] (a `BASE_BACKUP`
/// sequence), [`SCRIPT_COMMANDS`], or the commands then streaming.
pub fn session(input: &[u8]) {
    let (flags, server_bytes) = match input.split_first() {
        Some((f, rest)) => (*f, rest.to_vec()),
        None => (0, Vec::new()),
    };
    let mut conninfo = "host=/fuzz user=u password=pw sslmode=prefer".to_owned();
    if flags & 2 != 0 {
        conninfo.push_str(" require_auth=password,md5,scram-sha-256");
    }
    if flags & 4 != 0 {
        conninfo.push_str(" channel_binding=require");
    }
    let Ok(info) = ConnInfo::parse(&conninfo) else {
        unreachable!("the fuzz conninfo is valid: {conninfo}");
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let Ok((client, server)) = UnixStream::pair() else {
            return;
        };
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move {
            let _ = server_write.write_all(&server_bytes).await;
            let _ = server_write.shutdown().await;
        });
        tokio::spawn(async move {
            let mut sink = vec![0; 4096];
            while matches!(server_read.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let client = client_session(Stream::Unix(client), flags, &info);
        if tokio::time::timeout(SESSION_LIMIT, client).await.is_err() {
            panic!("the client session did not end after the server closed the connection");
        }
    });
}

async fn client_session(stream: Stream, flags: u8, info: &ConnInfo) {
    let Ok(mut conn) = startup(stream, flags & 1 != 0, info, "fuzz").await else {
        return;
    };
    let script = flags & (3 << 3);
    if script == SCRIPT_COPY_OUT {
        if conn.start_copy_out("BASE_BACKUP").await.is_ok() {
            loop {
                match conn.recv_copy().await {
                    Ok(CopyMessage::Data(_)) => {}
                    Ok(CopyMessage::Done) => match conn.next_copy_out().await {
                        Ok(super::CopyOutNext::Copy(_)) => {}
                        _ => break,
                    },
                    Err(_) => break,
                }
            }
        }
        conn.close().await;
        return;
    }
    if script != SCRIPT_STREAMING {
        let _ = conn.identify_system().await;
        let _ = conn.wal_segment_size().await;
        let _ = conn.read_replication_slot("s").await;
        let _ = conn.create_physical_slot("s").await;
        let _ = conn
            .timeline_history(klio_core::TimelineId::new(2).expect("2 is a timeline"))
            .await;
    }
    if script != SCRIPT_COMMANDS {
        if let Ok(StreamStart::Streaming) = conn
            .start_physical_replication(
                Some("s"),
                klio_core::Lsn(0),
                klio_core::TimelineId::new(1).expect("1 is a timeline"),
            )
            .await
        {
            // The receiver's blocking COPY I/O, never waiting: the peer writing the
            // input runs on this thread's runtime, so the loop yields to it instead.
            loop {
                match conn.recv_copy_blocking(Duration::ZERO) {
                    Ok(Some(CopyMessage::Data(payload))) => {
                        let _ = ReplicationMessage::decode(payload);
                        let _ = conn.more_ready_now();
                    }
                    Ok(None) => tokio::task::yield_now().await,
                    Ok(Some(CopyMessage::Done)) | Err(_) => break,
                }
            }
            let _ = conn.finish_copy().await;
        }
    }
    conn.close().await;
}

/// A backend message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.put_u32(u32::try_from(body.len() + 4).unwrap_or(u32::MAX));
    v.extend_from_slice(body);
    v
}

/// NUL-terminated strings, concatenated.
pub fn cstrings(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

/// An Authentication message with request `code`.
pub fn authentication(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    message(b'R', &body)
}

/// A RowDescription of text columns.
pub fn row_description_message(names: &[&str]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i16(i16::try_from(names.len()).unwrap_or(i16::MAX));
    for n in names {
        body.put_slice(n.as_bytes());
        body.put_u8(0);
        body.put_i32(0);
        body.put_i16(0);
        body.put_i32(25);
        body.put_i16(-1);
        body.put_i32(-1);
        body.put_i16(0);
    }
    message(b'T', &body)
}

/// A DataRow (`None` is NULL).
pub fn data_row_message(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
    for v in values {
        match v {
            Some(v) => {
                body.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                body.put_slice(v);
            }
            None => body.put_i32(-1),
        }
    }
    message(b'D', &body)
}

/// AuthenticationOk, `server_version`, BackendKeyData, ReadyForQuery.
pub fn startup_ok() -> Vec<u8> {
    let mut v = authentication(0, &[]);
    v.extend(message(
        b'S',
        &cstrings(&["server_version", "15.18 (Debian 15.18-1.pgdg120+1)"]),
    ));
    v.extend(message(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    v.extend(message(b'Z', b"I"));
    v
}

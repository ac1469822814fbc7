//! Unit tests of the wire layer against scripted fake servers on loopback TCP.

mod auth_policy;
mod fuzz;

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::fuzz::{
    authentication as auth, cstrings as cstr, data_row_message, message as msg,
    row_description_message as row_description, startup_ok,
};
use super::*;
use crate::conninfo::ConnInfo;
use crate::replication::{ReplicationMessage, StandbyStatusUpdate, StreamStart};
use klio_core::{Lsn, SystemId, TimelineId};

pub(super) fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(t);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    msg(b'E', &body)
}

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
    data_row_message(&values)
}

/// Reads the untagged startup packet.
pub(super) async fn read_startup(s: &mut TcpStream) -> Vec<u8> {
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    body
}

/// Reads one tagged frontend message.
pub(super) async fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// Runs `script` as a one-connection fake server; returns a conninfo pointing at it.
pub(super) async fn fake<F, Fut>(extra: &str, script: F) -> (ConnInfo, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        script(s).await;
    });
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=rep sslmode=disable {extra}"
    ))
    .unwrap();
    (info, task)
}

#[test]
fn server_versions() {
    for (s, n) in [
        ("15.18 (Debian 15.18-1.pgdg120+1)", 150018),
        ("17.2", 170002),
        ("13.22", 130022),
        ("18beta1", 180000),
        ("16devel", 160000),
        ("9.6.24", 90624),
    ] {
        assert_eq!(parse_server_version(s), Some(n), "{s}");
    }
    assert_eq!(parse_server_version(""), None);
    assert_eq!(parse_server_version("abc"), None);
}

#[test]
fn parser_waits_for_complete_messages_and_limits_size() {
    let full = msg(b'd', b"hello");
    let mut buf = BytesMut::from(&full[..6]);
    assert!(parse_backend(&mut buf).unwrap().is_none());
    assert_eq!(buf.len(), 6, "nothing consumed from an incomplete message");
    buf.extend_from_slice(&full[6..]);
    buf.extend_from_slice(&msg(b'W', &[0, 0, 0]));
    match parse_backend(&mut buf).unwrap() {
        Some(Backend::Message(Message::CopyData(b))) => assert_eq!(b.data(), b"hello"),
        _ => panic!("expected CopyData"),
    }
    assert!(matches!(
        parse_backend(&mut buf).unwrap(),
        Some(Backend::CopyBothResponse)
    ));
    assert!(buf.is_empty());

    let mut huge = BytesMut::from(&[b'd', 0x40, 0, 0, 4][..]);
    assert!(matches!(parse_backend(&mut huge), Err(PgError::Protocol(m)) if m.contains("1 GiB")));
    let mut short_len = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
    assert!(matches!(
        parse_backend(&mut short_len),
        Err(PgError::Protocol(_))
    ));
    let mut bad_w = BytesMut::from(&msg(b'W', &[0, 0, 2, 0, 0])[..]);
    assert!(matches!(
        parse_backend(&mut bad_w),
        Err(PgError::Protocol(_))
    ));
    let mut unknown = BytesMut::from(&msg(b'?', b"")[..]);
    assert!(matches!(
        parse_backend(&mut unknown),
        Err(PgError::Protocol(_))
    ));
}

#[tokio::test]
async fn trust_query_and_cancel_safe_streaming() {
    let payloads: Vec<Vec<u8>> = vec![
        crate::replication::XLogData {
            wal_start: Lsn(0x100_0000),
            wal_end: Lsn(0x100_0010),
            send_time: 1,
            data: Bytes::from_static(b"0123456789abcdef"),
        }
        .encode()
        .to_vec(),
        vec![b'k'; 18],
        (0..=255u8).cycle().take(70_000).collect(),
    ];
    let expected = payloads.clone();
    let (info, server) = fake("application_name=tester", move |mut s| async move {
        let startup = read_startup(&mut s).await;
        let text = String::from_utf8_lossy(&startup).into_owned();
        assert!(text.contains("replication\0true\0"), "{text:?}");
        assert!(text.contains("user\0rep\0"), "{text:?}");
        assert!(text.contains("application_name\0tester\0"), "{text:?}");
        assert!(!text.contains("database"), "{text:?}");
        s.write_all(&startup_ok()).await.unwrap();

        assert_eq!(read_msg(&mut s).await, (b'Q', cstr(&["IDENTIFY_SYSTEM"])));
        let mut out = row_description(&["systemid", "timeline", "xlogpos", "dbname"]);
        out.extend(data_row(&[
            Some("7301234567890123456"),
            Some("3"),
            Some("0/1A2B3C4"),
            None,
        ]));
        out.extend(msg(b'C', &cstr(&["IDENTIFY_SYSTEM"])));
        out.extend(ready());
        s.write_all(&out).await.unwrap();

        let (tag, body) = read_msg(&mut s).await;
        assert_eq!(tag, b'Q');
        assert_eq!(
            body,
            cstr(&["START_REPLICATION SLOT \"klio\" PHYSICAL 0/1000000 TIMELINE 3"])
        );
        let mut out = msg(b'W', &[0, 0, 0]);
        for (i, p) in payloads.iter().enumerate() {
            out.extend(msg(b'd', p));
            if i == 0 {
                let mut notice = Vec::new();
                for (t, v) in [(b'S', "NOTICE"), (b'C', "00000"), (b'M', "hi")] {
                    notice.push(t);
                    notice.extend_from_slice(v.as_bytes());
                    notice.push(0);
                }
                notice.push(0);
                out.extend(msg(b'N', &notice));
                out.extend(msg(b'S', &cstr(&["TimeZone", "UTC"])));
            }
        }
        out.extend(msg(b'c', b""));
        // Dribble it out so that reads are split everywhere: in headers and bodies first,
        // then in larger pieces through the 70 kB message.
        let (head, tail) = out.split_at(400);
        for chunk in head.chunks(7).chain(tail.chunks(4099)) {
            s.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        let (tag, body) = read_msg(&mut s).await;
        assert_eq!(tag, b'd');
        let update = StandbyStatusUpdate::decode(Bytes::from(body)).unwrap();
        assert_eq!(update.flush, Lsn(0x100_0010));
        assert_eq!(read_msg(&mut s).await, (b'c', vec![]));
        let mut out = msg(b'C', &cstr(&["START_STREAMING"]));
        out.extend(msg(b'C', &cstr(&["START_REPLICATION"])));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(read_msg(&mut s).await.0, b'X');
    })
    .await;

    let mut conn = ReplicationConn::connect(&info).await.unwrap();
    assert_eq!(conn.server_version_num(), 150018);
    assert_eq!(conn.backend_pid(), 42);
    assert!(!conn.is_tls());
    let system = conn.identify_system().await.unwrap();
    assert_eq!(system.system_id, SystemId::new(7301234567890123456));
    assert_eq!(system.timeline.get(), 3);
    assert_eq!(system.xlogpos, Lsn(0x1A2B3C4));
    assert_eq!(system.dbname, None);

    let start = conn
        .start_physical_replication(Some("klio"), Lsn(0x100_0000), TimelineId::new(3).unwrap())
        .await
        .unwrap();
    assert_eq!(start, StreamStart::Streaming);
    let mut received = Vec::new();
    let mut cancelled = 0;
    loop {
        tokio::select! {
            m = conn.recv_copy() => match m.unwrap() {
                CopyMessage::Data(d) => received.push(d.to_vec()),
                CopyMessage::Done => break,
            },
            _ = tokio::time::sleep(Duration::from_micros(30)) => cancelled += 1,
        }
    }
    assert!(cancelled > 0, "the timer never won: cancel safety untested");
    assert_eq!(received, expected);
    assert_eq!(conn.parameter("TimeZone"), Some("UTC"));
    let ReplicationMessage::XLogData(x) =
        ReplicationMessage::decode(received[0].clone().into()).unwrap()
    else {
        panic!("not XLogData");
    };
    let update = StandbyStatusUpdate {
        write: x.wal_end,
        flush: x.wal_end,
        apply: Lsn(0),
        client_time: crate::replication::pg_now_micros(),
        reply_requested: false,
    };
    conn.send_copy_data(&update.encode()).await.unwrap();
    let results = conn.finish_copy().await.unwrap();
    let tags: Vec<_> = results.iter().map(|r| r.command_tag.as_str()).collect();
    assert_eq!(tags, ["START_STREAMING", "START_REPLICATION"]);
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn query_error_keeps_connection_usable() {
    let (info, server) = fake("", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&startup_ok()).await.unwrap();
        read_msg(&mut s).await;
        let mut out = error("ERROR", "42601", "syntax error");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        read_msg(&mut s).await;
        let mut out = row_description(&["wal_segment_size"]);
        out.extend(data_row(&[Some("16MB")]));
        out.extend(msg(b'C', &cstr(&["SHOW"])));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        read_msg(&mut s).await;
    })
    .await;
    let mut conn = ReplicationConn::connect(&info).await.unwrap();
    let err = conn.simple_query("BOGUS").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42601"));
    assert!(!err.is_auth_failure());
    assert_eq!(conn.wal_segment_size().await.unwrap().bytes(), 16 << 20);
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn scram_must_complete_before_authentication_ok() {
    let (info, server) = fake("password=secret", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(10, &cstr(&["SCRAM-SHA-256", ""])))
            .await
            .unwrap();
        let (tag, body) = read_msg(&mut s).await;
        assert_eq!(tag, b'p');
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(text.starts_with("SCRAM-SHA-256\0"), "{text:?}");
        assert!(text.contains("n,,n=,r="), "no channel binding: {text:?}");
        // A rogue server skipping the proof of the password.
        s.write_all(&startup_ok()).await.unwrap();
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(
        matches!(err, PgError::Protocol(ref m) if m.contains("SCRAM")),
        "{err}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn scram_plus_only_is_a_clear_error() {
    let (info, server) = fake("password=secret", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(10, &cstr(&["SCRAM-SHA-256-PLUS", ""])))
            .await
            .unwrap();
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure());
    assert!(err.to_string().contains("SCRAM-SHA-256-PLUS"), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn missing_password_is_an_auth_failure_naming_the_fix() {
    let (info, server) = fake("passfile=/nonexistent/pgpass", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure());
    let text = err.to_string();
    assert!(text.contains("no password"), "{text}");
    assert!(text.contains("/nonexistent/pgpass"), "{text}");
    server.await.unwrap();
}

#[tokio::test]
async fn md5_and_cleartext_send_the_right_password() {
    let (info, server) = fake("password=pw", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
        let (tag, body) = read_msg(&mut s).await;
        assert_eq!(tag, b'p');
        let expected = postgres_protocol::authentication::md5_hash(b"rep", b"pw", [1, 2, 3, 4]);
        assert_eq!(body, cstr(&[&expected]));
        s.write_all(&error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"rep\"",
        ))
        .await
        .unwrap();
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure());
    assert_eq!(err.sqlstate(), Some("28P01"));
    let text = err.to_string();
    assert!(
        text.contains("password authentication failed for user \"rep\"")
            && text.contains("check the password or passfile"),
        "{text}"
    );
    server.await.unwrap();

    // Cleartext over a plain connection needs the opt-in (see tests/auth_policy.rs).
    let (info, server) = fake("password=pw require_auth=password", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        assert_eq!(read_msg(&mut s).await, (b'p', cstr(&["pw"])));
        s.write_all(&startup_ok()).await.unwrap();
    })
    .await;
    ReplicationConn::connect(&info).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn missing_replication_privilege_is_an_auth_failure() {
    let (info, server) = fake("", |mut s| async move {
        read_startup(&mut s).await;
        let mut out = auth(0, &[]);
        out.extend(error(
            "FATAL",
            "42501",
            "must be superuser or replication role to start walsender",
        ));
        s.write_all(&out).await.unwrap();
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure());
    assert!(
        err.to_string().contains("ALTER ROLE rep REPLICATION"),
        "{err}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn sslmode_require_refuses_a_server_without_ssl_and_prefer_falls_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        for attempt in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let startup = read_startup(&mut s).await;
            assert_eq!(startup, [0x04, 0xd2, 0x16, 0x2f], "SSLRequest code");
            s.write_all(b"N").await.unwrap();
            if attempt == 0 {
                continue; // sslmode=require gives up here
            }
            read_startup(&mut s).await;
            s.write_all(&startup_ok()).await.unwrap();
            assert_eq!(read_msg(&mut s).await.0, b'X');
        }
    });
    let err = ReplicationConn::connect(
        &ConnInfo::parse(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=require"
        ))
        .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PgError::Tls(ref m) if m.contains("does not support SSL")),
        "{err}"
    );
    let conn = ReplicationConn::connect(
        &ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=u sslmode=prefer")).unwrap(),
    )
    .await
    .unwrap();
    assert!(!conn.is_tls());
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn connect_timeout_is_honoured() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (_s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=u sslmode=disable connect_timeout=2"
    ))
    .unwrap();
    let started = std::time::Instant::now();
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(matches!(err, PgError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(err.to_string().contains("connect_timeout"), "{err}");
    server.abort();
}

#[tokio::test]
async fn connection_refused_names_the_target() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=u sslmode=disable"
    ))
    .unwrap();
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// A receiver decides "fsync now" when [`ReplicationConn::more_ready_now`] says nothing
/// is waiting. Bytes that reach the socket after a receive must count: otherwise a group
/// commit leaves out WAL that had already arrived. The server here is a plain thread
/// that sends the second message only once the client has asked the first time.
#[tokio::test(flavor = "current_thread")]
async fn more_ready_now_sees_bytes_that_arrived_after_a_receive() {
    use std::io::{Read, Write};
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let wal = |start: u64| {
        crate::replication::XLogData {
            wal_start: Lsn(start),
            wal_end: Lsn(start + 16),
            send_time: 1,
            data: Bytes::from_static(b"0123456789abcdef"),
        }
        .encode()
        .to_vec()
    };
    let (first, second) = (wal(0x100_0000), wal(0x100_0010));
    let expected = second.clone();
    let (port, server) = copy_server(msg(b'd', &first), move |s| {
        go_rx.recv().unwrap();
        // On loopback the bytes are in the client's receive queue once this returns.
        s.write_all(&msg(b'd', &second)).unwrap();
        sent_tx.send(()).unwrap();
        // Hold the connection until the client is done.
        let _ = s.read(&mut [0u8; 1]);
    });
    let mut conn = streaming_client(port).await;
    let wait = std::time::Duration::from_secs(10);
    assert!(matches!(
        conn.recv_copy_blocking(wait).unwrap(),
        Some(CopyMessage::Data(_))
    ));
    assert!(!conn.more_ready_now(), "nothing was sent yet");
    go_tx.send(()).unwrap();
    sent_rx.recv().unwrap();
    assert!(
        conn.more_ready_now(),
        "a whole message waits on the socket, but more_ready_now said nothing is ready"
    );
    match conn.recv_copy_blocking(wait).unwrap() {
        Some(CopyMessage::Data(d)) => assert_eq!(d.to_vec(), expected),
        other => panic!("expected the second message, got {other:?}"),
    }
    assert!(!conn.more_ready_now(), "everything sent was read");
    drop(conn);
    server.join().unwrap();
}

/// A server on a plain thread that completes startup, answers the client's one query
/// (`START_REPLICATION`) with CopyBothResponse followed by `after_start`, runs `then` on
/// the socket and closes the connection. Returns its port.
fn copy_server(
    after_start: Vec<u8>,
    then: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // As PostgreSQL's own sockets: no Nagle delay holding a message back.
        s.set_nodelay(true).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).unwrap();
        s.write_all(&startup_ok()).unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        assert_eq!(head[0], b'Q');
        let mut query = vec![0; u32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
        s.read_exact(&mut query).unwrap();
        let mut out = msg(b'W', &[0, 0, 0]);
        out.extend(after_start);
        s.write_all(&out).unwrap();
        then(&mut s);
    });
    (port, server)
}

async fn streaming_client(port: u16) -> ReplicationConn {
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=rep sslmode=disable"
    ))
    .unwrap();
    let mut conn = ReplicationConn::connect(&info).await.unwrap();
    let start = conn
        .start_physical_replication(None, Lsn(0x100_0000), TimelineId::new(1).unwrap())
        .await
        .unwrap();
    assert_eq!(start, StreamStart::Streaming);
    conn
}

/// The blocking receive and a server that goes away in the middle of a message: the
/// whole message before it is delivered, then an error naming the server (not a hang,
/// not a partial message), and the connection stays unusable.
#[tokio::test(flavor = "current_thread")]
async fn blocking_receive_reports_a_server_gone_mid_message() {
    let wal = crate::replication::XLogData {
        wal_start: Lsn(0x100_0000),
        wal_end: Lsn(0x100_0010),
        send_time: 1,
        data: Bytes::from_static(b"0123456789abcdef"),
    }
    .encode()
    .to_vec();
    let mut bytes = msg(b'd', &wal);
    bytes.extend_from_slice(&msg(b'd', &wal)[..9]);
    let (port, server) = copy_server(bytes, |_| {});
    let mut conn = streaming_client(port).await;
    let wait = Duration::from_secs(10);
    match conn.recv_copy_blocking(wait).unwrap() {
        Some(CopyMessage::Data(d)) => assert_eq!(d.to_vec(), wal),
        other => panic!("expected the whole first message, got {other:?}"),
    }
    let err = conn.recv_copy_blocking(wait).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("closed the connection unexpectedly") && text.contains(&port.to_string()),
        "{text}"
    );
    assert!(
        conn.recv_copy_blocking(wait).is_err(),
        "a broken connection"
    );
    server.join().unwrap();
}

/// An ErrorResponse during the COPY (the walsender terminated) ends the blocking receive
/// with the server's error, SQLSTATE included.
#[tokio::test(flavor = "current_thread")]
async fn blocking_receive_reports_the_servers_error_during_copy() {
    let error = error(
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
    );
    let (port, server) = copy_server(error, |_| {});
    let mut conn = streaming_client(port).await;
    match conn.recv_copy_blocking(Duration::from_secs(10)) {
        Err(PgError::Server { code, message, .. }) => {
            assert_eq!(code, "57P01");
            assert!(message.contains("administrator command"), "{message}");
        }
        other => panic!("expected the server's error, got {other:?}"),
    }
    server.join().unwrap();
}

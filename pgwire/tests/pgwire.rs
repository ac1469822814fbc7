//! The replication connection against real PostgreSQL servers started by `klio-harness`:
//! every authentication method, TLS modes, the replication commands, and streaming checked
//! against the server's own WAL files.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use klio_core::{Lsn, SystemId, TimelineId, WalFileName};
use klio_harness::{AuthMethod, PgInstance, PgOptions, REPLICATION_PASSWORD, REPLICATION_USER};
use klio_pgwire::conninfo::ConnInfo;
use klio_pgwire::replication::{
    pg_now_micros, ReplicationMessage, StandbyStatusUpdate, StreamStart,
};
use klio_pgwire::{AuthMechanism, CopyMessage, PgError, ReplicationConn};
use tracing::Instrument;

const TIMEOUT: Duration = Duration::from_secs(30);

/// An LSN as SQL prints it.
fn lsn(text: &str) -> Lsn {
    text.trim().parse().expect("an LSN from SQL")
}

fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).expect("a timeline")
}

fn start(opts: PgOptions) -> PgInstance {
    PgInstance::start(opts).expect("starting PostgreSQL")
}

fn info(s: &str) -> ConnInfo {
    ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn connect(s: &str) -> ReplicationConn {
    ReplicationConn::connect(&info(s))
        .await
        .unwrap_or_else(|e| panic!("connecting with {s}: {e}"))
}

fn conninfo_value(p: &Path) -> String {
    format!(
        "'{}'",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
    )
}

/// The conninfo for streaming_replica over 127.0.0.1 with `extra` appended.
fn tcp(pg: &PgInstance, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={REPLICATION_USER} {extra}",
        pg.port()
    )
}

/// Checks the server's identity through SQL: proves we talk to that server, not just anything.
async fn assert_identifies(conn: &mut ReplicationConn, pg: &PgInstance) {
    let system = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    let expected: SystemId = pg
        .psql("SELECT system_identifier FROM pg_control_system()")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(system.system_id, expected);
    let version: u32 = pg.psql("SHOW server_version_num").unwrap().parse().unwrap();
    assert_eq!(conn.server_version_num(), version);
}

/// Log lines written while the guard lives (this thread only: `#[tokio::test]` runs the
/// test on one thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The warning lines.
    fn warnings(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("WARN"))
            .map(str::to_owned)
            .collect()
    }
}

async fn assert_auth_failure(conninfo: &str, needle: &str) -> PgError {
    let err = ReplicationConn::connect(&info(conninfo))
        .await
        .expect_err("connection must be rejected");
    assert!(err.is_auth_failure(), "{err:?}");
    assert!(err.to_string().contains(needle), "{err}");
    err
}

#[tokio::test]
async fn trust_over_unix_socket() {
    let pg = start(PgOptions::new().auth(AuthMethod::Trust));
    let s = format!(
        "host={} port={} user=postgres application_name=klio_unix",
        conninfo_value(pg.socket_dir()),
        pg.port()
    );
    let mut conn = connect(&s).await;
    assert!(!conn.is_tls());
    assert_identifies(&mut conn, &pg).await;
    let apps = pg
        .psql("SELECT application_name FROM pg_stat_activity WHERE backend_type = 'walsender'")
        .unwrap();
    assert_eq!(apps, "klio_unix");
    conn.close().await;

    // The same socket as a URI with a percent-encoded directory.
    let encoded: String = pg.socket_dir().display().to_string().replace('/', "%2F");
    let mut conn = connect(&format!("postgresql://postgres@{encoded}:{}", pg.port())).await;
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;
}

#[tokio::test]
async fn cleartext_password_only_to_a_verified_server_or_with_the_opt_in() {
    let pg = start(PgOptions::new().auth(AuthMethod::Password));
    // Plain TCP: Klio refuses to answer the server's request (no SQLSTATE: not the server).
    let err = assert_auth_failure(&pg.replication_conninfo(), "require_auth=password").await;
    assert_eq!(err.sqlstate(), None, "{err}");
    assert!(err.to_string().contains("clear text"), "{err}");
    // The opt-in.
    let opted_in = format!("{} require_auth=password", pg.replication_conninfo());
    let mut conn = connect(&opted_in).await;
    assert_eq!(conn.auth_mechanism(), AuthMechanism::Password);
    assert!(!conn.server_verified());
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;
    assert_auth_failure(
        &tcp(&pg, "password=wrong sslmode=disable require_auth=password"),
        "password authentication failed for user \"streaming_replica\"",
    )
    .await;

    // TLS with the server certificate verified (verify-full): no opt-in needed.
    let pg = start(PgOptions::new().auth(AuthMethod::Password).ssl(true));
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert!(conn.is_tls() && conn.server_verified());
    assert_eq!(conn.auth_mechanism(), AuthMechanism::Password);
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;
    // TLS without verification is not enough.
    let err = assert_auth_failure(
        &tcp(
            &pg,
            &format!("password={REPLICATION_PASSWORD} sslmode=require"),
        ),
        "TLS without a verified server certificate",
    )
    .await;
    assert!(err.to_string().contains("require_auth=password"), "{err}");
}

#[tokio::test]
async fn md5_right_and_wrong_password() {
    let pg = start(PgOptions::new().auth(AuthMethod::Md5));
    let (logs, _guard) = Logs::capture();
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert_eq!(conn.auth_mechanism(), AuthMechanism::Md5);
    let warnings = logs.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("md5") && w.contains("unencrypted")),
        "md5 over plain TCP is a warning: {warnings:?}"
    );
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;
    let err = assert_auth_failure(
        &tcp(&pg, "password=wrong sslmode=disable"),
        "password authentication failed for user \"streaming_replica\"",
    )
    .await;
    assert_eq!(err.sqlstate(), Some("28P01"));
}

#[tokio::test]
async fn scram_right_and_wrong_password_and_passfile() {
    let pg = start(PgOptions::new().auth(AuthMethod::ScramSha256));
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;

    let err = assert_auth_failure(
        &tcp(&pg, "password=wrong sslmode=disable"),
        "password authentication failed for user \"streaming_replica\"",
    )
    .await;
    assert_eq!(err.sqlstate(), Some("28P01"));
    assert!(
        err.to_string().contains("check the password or passfile"),
        "{err}"
    );

    // No password anywhere: a client-side auth failure naming the fix.
    assert_auth_failure(
        &tcp(&pg, "sslmode=disable passfile=/nonexistent/pgpass"),
        "no password",
    )
    .await;

    // The password from a passfile entry for the `replication` pseudo-database.
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:postgres:{REPLICATION_USER}:not-this-one\n\
             127.0.0.1:{}:replication:{REPLICATION_USER}:{REPLICATION_PASSWORD}\n",
            pg.port(),
            pg.port()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_passfile = tcp(
        &pg,
        &format!("sslmode=disable passfile={}", conninfo_value(&passfile)),
    );
    let mut conn = connect(&with_passfile).await;
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;
    // A world-readable passfile is ignored, as libpq does.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_auth_failure(&with_passfile, "no password").await;
}

#[tokio::test]
async fn tls_modes_with_scram() {
    let pg = start(PgOptions::new().auth(AuthMethod::ScramSha256).ssl(true));
    let tls = pg.tls().expect("TLS files").clone();
    let ca = conninfo_value(&tls.ca_cert);

    // The harness's own conninfo: verify-full against its CA.
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert!(conn.is_tls() && conn.server_verified());
    assert_identifies(&mut conn, &pg).await;
    let ssl_in_use = pg
        .psql(&format!(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = {}",
            conn.backend_pid()
        ))
        .unwrap();
    assert_eq!(ssl_in_use, "t", "the server sees an encrypted connection");
    conn.close().await;

    let password = format!("password={REPLICATION_PASSWORD}");
    // require without a root certificate: encrypted, certificate not checked.
    let conn = connect(&tcp(&pg, &format!("{password} sslmode=require"))).await;
    assert!(conn.is_tls() && !conn.server_verified());
    conn.close().await;
    // prefer: TLS when offered.
    let conn = connect(&tcp(&pg, &format!("{password} sslmode=prefer"))).await;
    assert!(conn.is_tls());
    conn.close().await;
    // allow: plain first, rejected by the hostssl-only pg_hba.conf, then TLS.
    let conn = connect(&tcp(&pg, &format!("{password} sslmode=allow"))).await;
    assert!(conn.is_tls());
    conn.close().await;
    // disable: pg_hba.conf has no entry for a plain connection.
    let err =
        assert_auth_failure(&tcp(&pg, &format!("{password} sslmode=disable")), "pg_hba").await;
    assert_eq!(err.sqlstate(), Some("28000"));

    // verify-full checks the name: the certificate is for 127.0.0.1 and localhost.
    let conn = connect(&format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={REPLICATION_USER} {password} \
         sslmode=verify-full sslrootcert={ca}",
        pg.port()
    ))
    .await;
    assert!(conn.is_tls());
    conn.close().await;
    let wrong_name = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={} user={REPLICATION_USER} {password} \
         sslrootcert={ca}",
        pg.port()
    );
    let err = ReplicationConn::connect(&info(&format!("{wrong_name} sslmode=verify-full")))
        .await
        .expect_err("wrong host name must fail verify-full");
    assert!(matches!(err, PgError::Tls(_)), "{err:?}");
    // verify-ca does not check the name; require with a root certificate behaves the same.
    connect(&format!("{wrong_name} sslmode=verify-ca"))
        .await
        .close()
        .await;
    connect(&format!("{wrong_name} sslmode=require"))
        .await
        .close()
        .await;

    // A CA that did not sign the server certificate fails verify-ca, and `require` with it.
    let other_ca = conninfo_value(&tls.client_cert);
    for mode in ["verify-ca", "require"] {
        let err = ReplicationConn::connect(&info(&tcp(
            &pg,
            &format!("{password} sslmode={mode} sslrootcert={other_ca}"),
        )))
        .await
        .expect_err("untrusted server certificate");
        assert!(matches!(err, PgError::Tls(_)), "{mode}: {err:?}");
    }
    // verify-full without any root certificate is a configuration error.
    let err =
        ReplicationConn::connect(&info(&tcp(&pg, &format!("{password} sslmode=verify-full"))))
            .await
            .expect_err("no root certificate");
    assert!(
        matches!(err, PgError::Config(ref m) if m.contains("sslrootcert")),
        "{err}"
    );
}

#[tokio::test]
async fn client_certificate_authentication() {
    let pg = start(PgOptions::new().auth(AuthMethod::Cert));
    let tls = pg.tls().expect("TLS files").clone();
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert!(conn.is_tls());
    assert_identifies(&mut conn, &pg).await;
    conn.close().await;

    // Without the client certificate the server refuses: an auth failure.
    let err = assert_auth_failure(
        &tcp(
            &pg,
            &format!(
                "sslmode=verify-full sslrootcert={}",
                conninfo_value(&tls.ca_cert)
            ),
        ),
        "certificate",
    )
    .await;
    assert_eq!(err.sqlstate(), Some("28000"));

    // A key that does not belong to the certificate is caught locally.
    let err = ReplicationConn::connect(&info(&tcp(
        &pg,
        &format!(
            "sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}",
            ca = conninfo_value(&tls.ca_cert),
            cert = conninfo_value(&tls.client_cert),
            key = conninfo_value(&tls.server_key),
        ),
    )))
    .await
    .expect_err("mismatched key");
    assert!(matches!(err, PgError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn identify_system_show_and_slots() {
    let pg = start(PgOptions::new());
    let mut conn = connect(&pg.replication_conninfo()).await;
    let system = conn.identify_system().await.unwrap();
    assert_eq!(system.timeline, tli(1));
    let current = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    assert!(system.xlogpos <= current && system.xlogpos > Lsn(0));
    assert_eq!(system.dbname, None, "physical replication has no database");

    let segment_size = conn.wal_segment_size().await.unwrap();
    let expected: u64 = pg
        .psql("SELECT setting::bigint * 1 FROM pg_settings WHERE name = 'wal_segment_size'")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(segment_size.bytes(), expected);
    assert_eq!(conn.show("wal_segment_size").await.unwrap(), "16MB");

    assert_eq!(
        conn.read_replication_slot("klio_missing").await.unwrap(),
        None
    );
    conn.create_physical_slot("klio_slot").await.unwrap();
    let slot = conn
        .read_replication_slot("klio_slot")
        .await
        .unwrap()
        .expect("the slot exists");
    let sql_lsn = pg
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'klio_slot'")
        .unwrap();
    assert_eq!(slot.restart_lsn, Some(lsn(&sql_lsn)));
    assert_eq!(slot.restart_tli, Some(tli(1)));
    let err = conn.create_physical_slot("klio_slot").await.unwrap_err();
    assert!(
        matches!(err, PgError::SlotExists { ref slot } if slot == "klio_slot"),
        "{err:?}"
    );
    // The connection is still usable after the server error.
    conn.identify_system().await.unwrap();
    conn.drop_slot("klio_slot").await.unwrap();
    assert_eq!(conn.read_replication_slot("klio_slot").await.unwrap(), None);

    // Timeline 1 has no history file.
    let err = conn.timeline_history(tli(1)).await.unwrap_err();
    assert!(matches!(err, PgError::Server { .. }), "{err:?}");
    conn.close().await;
}

/// Streams from `start` until at least `want` bytes arrived; answers keepalives that ask.
async fn receive_wal(conn: &mut ReplicationConn, want: u64) -> Vec<(Lsn, Bytes)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut chunks = Vec::new();
    let mut total = 0u64;
    while total < want {
        let msg = tokio::time::timeout_at(deadline.into(), conn.recv_copy())
            .await
            .expect("WAL did not arrive in time")
            .expect("recv_copy");
        let (n, reply) = take_copy_message(msg, &mut chunks);
        total += n;
        if let Some(reply) = reply {
            conn.send_copy_data(&reply).await.unwrap();
        }
    }
    chunks
}

/// [`receive_wal`] with the blocking COPY I/O.
fn receive_wal_blocking(conn: &mut ReplicationConn, want: u64) -> Vec<(Lsn, Bytes)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut chunks = Vec::new();
    let mut total = 0u64;
    while total < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = conn
            .recv_copy_blocking(left)
            .expect("recv_copy_blocking")
            .expect("WAL did not arrive in time");
        let (n, reply) = take_copy_message(msg, &mut chunks);
        total += n;
        if let Some(reply) = reply {
            conn.send_copy_data_blocking(&reply).unwrap();
        }
    }
    chunks
}

/// Keeps a received message's WAL in `chunks` and returns how many bytes it carried,
/// with the status update to send back when it is a keepalive asking for one.
fn take_copy_message(msg: CopyMessage, chunks: &mut Vec<(Lsn, Bytes)>) -> (u64, Option<Bytes>) {
    let CopyMessage::Data(payload) = msg else {
        panic!("server ended the stream");
    };
    match ReplicationMessage::decode(payload).unwrap() {
        ReplicationMessage::XLogData(x) => {
            let n = x.data.len() as u64;
            chunks.push((x.wal_start, x.data));
            (n, None)
        }
        ReplicationMessage::Keepalive(k) if k.reply_requested => {
            let update = StandbyStatusUpdate {
                write: Lsn(0),
                flush: Lsn(0),
                apply: Lsn(0),
                client_time: pg_now_micros(),
                reply_requested: false,
            };
            (0, Some(update.encode()))
        }
        ReplicationMessage::Keepalive(_) => (0, None),
    }
}

/// Generates some WAL, streams from the start of the segment holding `restart` and checks
/// every byte received against the server's own segment file. Returns the end LSN reached.
async fn stream_and_compare_with_pg_wal(
    pg: &PgInstance,
    conn: &mut ReplicationConn,
    slot: Option<&str>,
    restart: Lsn,
    tli: TimelineId,
) -> Lsn {
    stream_and_compare_via(pg, conn, slot, restart, tli, Receive::Async).await
}

/// How a test receives: through tokio, or with the blocking COPY I/O (which names the
/// table it fills, so that one server can be streamed from several times).
#[derive(Clone, Copy)]
enum Receive<'a> {
    Async,
    Blocking { table: &'a str },
}

async fn stream_and_compare_via(
    pg: &PgInstance,
    conn: &mut ReplicationConn,
    slot: Option<&str>,
    restart: Lsn,
    tli: TimelineId,
    how: Receive<'_>,
) -> Lsn {
    let segment_size = conn.wal_segment_size().await.unwrap();
    let start_lsn = restart.segment_start(segment_size);
    let table = match how {
        Receive::Async => "t",
        Receive::Blocking { table } => table,
    };
    pg.psql(&format!(
        "CREATE TABLE {table} AS SELECT g, md5(g::text) FROM generate_series(1, 5000) g"
    ))
    .unwrap();
    let end = lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap());
    let wanted = end.checked_sub(start_lsn).expect("WAL was written");
    assert!(wanted > 4096);

    let started = conn
        .start_physical_replication(slot, start_lsn, tli)
        .await
        .unwrap();
    assert_eq!(started, StreamStart::Streaming);
    let chunks = match how {
        Receive::Async => receive_wal(conn, wanted).await,
        Receive::Blocking { .. } => receive_wal_blocking(conn, wanted),
    };
    assert_eq!(chunks[0].0, start_lsn, "streaming starts where asked");

    // Every byte received equals the server's own segment file at the same offset.
    let file = pg
        .wal_dir()
        .join(WalFileName::segment(tli, start_lsn.segno(segment_size), segment_size).to_string());
    let segment = std::fs::read(&file).unwrap();
    let mut next = start_lsn;
    let mut compared = 0usize;
    for (wal_start, data) in &chunks {
        assert_eq!(*wal_start, next, "chunks are contiguous");
        next = next.checked_add(data.len() as u64).unwrap();
        let offset = wal_start.checked_sub(start_lsn).unwrap() as usize;
        let n = data.len().min(segment.len().saturating_sub(offset));
        assert_eq!(
            &data[..n],
            &segment[offset..offset + n],
            "WAL at {wal_start}"
        );
        compared += n;
    }
    assert!(compared as u64 >= wanted, "compared {compared} bytes");
    end
}

#[tokio::test]
async fn streaming_matches_pg_wal_and_status_updates_are_accepted() {
    let pg = start(PgOptions::new());
    let mut conn = connect(&format!(
        "{} application_name=klio_stream",
        pg.replication_conninfo()
    ))
    .await;
    conn.create_physical_slot("klio_stream").await.unwrap();
    let slot = conn
        .read_replication_slot("klio_stream")
        .await
        .unwrap()
        .unwrap();
    let end = stream_and_compare_with_pg_wal(
        &pg,
        &mut conn,
        Some("klio_stream"),
        slot.restart_lsn.unwrap(),
        tli(1),
    )
    .await;

    // A standby status update is taken: pg_stat_replication and the slot follow it.
    let flushed = end;
    let update = StandbyStatusUpdate {
        write: flushed,
        flush: flushed,
        apply: Lsn(0),
        client_time: pg_now_micros(),
        reply_requested: false,
    };
    conn.send_copy_data(&update.encode()).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let row = pg
            .psql(
                "SELECT r.flush_lsn, s.restart_lsn FROM pg_stat_replication r, \
                 pg_replication_slots s WHERE r.application_name = 'klio_stream' \
                 AND s.slot_name = 'klio_stream'",
            )
            .unwrap();
        if row == format!("{0}|{0}", flushed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status update not applied: {row}"
        );
        // Keep reading so the server is never blocked on us.
        let _ = tokio::time::timeout(Duration::from_millis(100), conn.recv_copy()).await;
    }

    // Asking for a reply gets a keepalive back.
    let update = StandbyStatusUpdate {
        reply_requested: true,
        client_time: pg_now_micros(),
        ..update
    };
    conn.send_copy_data(&update.encode()).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), conn.recv_copy())
            .await
            .expect("no keepalive in reply")
            .unwrap();
        if let CopyMessage::Data(p) = msg {
            if let ReplicationMessage::Keepalive(k) = ReplicationMessage::decode(p).unwrap() {
                assert!(k.wal_end >= flushed);
                break;
            }
        }
    }

    // Client-side stop, then the connection takes commands again.
    conn.send_copy_done().await.unwrap();
    let results = conn.finish_copy().await.unwrap();
    let tags: Vec<_> = results.iter().map(|r| r.command_tag.as_str()).collect();
    assert!(tags.contains(&"START_REPLICATION"), "{tags:?}");
    conn.identify_system().await.unwrap();
    conn.close().await;
}

/// The receiver's blocking COPY I/O over each transport, on one server: WAL arrives
/// byte-identical to `pg_wal`, a status update sent is applied, a receive with nothing
/// to read returns empty after its timeout, and the async path then finishes the COPY
/// and takes commands on the same connection.
#[tokio::test]
async fn blocking_copy_io_over_tls_tcp_and_unix_socket() {
    let pg = start(PgOptions::new().ssl(true));
    let app = "application_name=klio_blocking";
    let transports = [
        ("tls", format!("{} {app}", pg.replication_conninfo()), true),
        (
            "tcp",
            format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable {app}",
                pg.port()
            ),
            false,
        ),
        (
            "unix",
            format!(
                "host={} port={} user=postgres {app}",
                conninfo_value(pg.socket_dir()),
                pg.port()
            ),
            false,
        ),
    ];
    for (name, conninfo, tls) in transports {
        let mut conn = connect(&conninfo).await;
        assert_eq!(conn.is_tls(), tls, "{name}");
        let sys = conn.identify_system().await.unwrap();
        let table = format!("t_{name}");
        let how = Receive::Blocking { table: &table };
        let end =
            stream_and_compare_via(&pg, &mut conn, None, sys.xlogpos, sys.timeline, how).await;

        let update = StandbyStatusUpdate {
            write: end,
            flush: end,
            apply: Lsn(0),
            client_time: pg_now_micros(),
            reply_requested: false,
        };
        conn.send_copy_data_blocking(&update.encode()).unwrap();
        let query = format!(
            "SELECT flush_lsn FROM pg_stat_replication WHERE pid = {}",
            conn.backend_pid()
        );
        let deadline = Instant::now() + TIMEOUT;
        while pg.psql(&query).unwrap() != end.to_string() {
            assert!(
                Instant::now() < deadline,
                "{name}: status update not applied"
            );
            // Keep reading so the server is never blocked on us.
            conn.recv_copy_blocking(Duration::from_millis(20)).unwrap();
        }

        // Nothing sent: the receive waits its timeout out and returns empty (a
        // keepalive may come first).
        let wait = Duration::from_millis(50);
        loop {
            let t0 = Instant::now();
            if conn.recv_copy_blocking(wait).unwrap().is_none() {
                assert!(t0.elapsed() >= wait, "{name}: returned early");
                break;
            }
        }
        assert!(!conn.more_ready_now(), "{name}");

        conn.send_copy_done().await.unwrap();
        let results = conn.finish_copy().await.unwrap();
        let tags: Vec<_> = results.iter().map(|r| r.command_tag.as_str()).collect();
        assert!(tags.contains(&"START_REPLICATION"), "{name}: {tags:?}");
        assert_eq!(
            conn.identify_system().await.unwrap().system_id,
            sys.system_id
        );
        conn.close().await;
    }
}

#[tokio::test]
async fn server_requests_replies_by_keepalive() {
    let pg = start(PgOptions::new().conf("wal_sender_timeout", "2s"));
    let mut conn = connect(&pg.replication_conninfo()).await;
    let system = conn.identify_system().await.unwrap();
    let segment_size = conn.wal_segment_size().await.unwrap();
    let start_lsn = system.xlogpos.segment_start(segment_size);
    conn.start_physical_replication(None, start_lsn, system.timeline)
        .await
        .unwrap();
    // Without replies the server asks for one within wal_sender_timeout / 2; answering every
    // request keeps the connection alive well past the timeout.
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut requests = 0;
    while Instant::now() < deadline {
        let msg = tokio::time::timeout(Duration::from_secs(3), conn.recv_copy())
            .await
            .expect("the server went silent")
            .expect("connection kept alive by replies");
        let CopyMessage::Data(payload) = msg else {
            panic!("stream ended");
        };
        if let ReplicationMessage::Keepalive(k) = ReplicationMessage::decode(payload).unwrap() {
            if k.reply_requested {
                requests += 1;
                let update = StandbyStatusUpdate {
                    write: k.wal_end,
                    flush: start_lsn,
                    apply: Lsn(0),
                    client_time: pg_now_micros(),
                    reply_requested: false,
                };
                conn.send_copy_data(&update.encode()).await.unwrap();
            }
        }
    }
    assert!(requests >= 2, "server asked for {requests} replies in 7 s");
    conn.finish_copy().await.unwrap();
    conn.close().await;
}

#[tokio::test]
async fn promoted_standby_timeline_history_and_end_of_timeline() {
    let primary = start(PgOptions::new());
    let standby = primary.start_standby(PgOptions::new()).expect("standby");
    // Put the switch point in the middle of a segment: WAL the standby has replayed.
    primary
        .psql("CREATE TABLE before_promotion AS SELECT generate_series(1, 1000) g")
        .unwrap();
    let target = primary.psql("SELECT pg_current_wal_flush_lsn()").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while standby
        .psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'"))
        .unwrap()
        != "t"
    {
        assert!(
            Instant::now() < deadline,
            "standby did not replay up to {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    standby.promote().expect("promote");
    let mut conn = connect(&standby.replication_conninfo()).await;
    let system = conn.identify_system().await.unwrap();
    assert_eq!(system.timeline, tli(2));

    let (name, content) = conn.timeline_history(tli(2)).await.unwrap();
    assert_eq!(name, "00000002.history");
    let on_disk = std::fs::read(standby.wal_dir().join(&name)).unwrap();
    assert_eq!(&content[..], &on_disk[..]);
    // "1\t0/3000060\treason": the switch point.
    let text = String::from_utf8(on_disk).unwrap();
    let switch = lsn(text.split('\t').nth(1).unwrap());

    // Streaming timeline 1 ends at the switch point with CopyDone, then next_tli/startpos.
    let segment_size = conn.wal_segment_size().await.unwrap();
    let start_lsn = switch.segment_start(segment_size);
    assert_ne!(
        start_lsn, switch,
        "switch point {switch} on a segment boundary"
    );
    let started = conn
        .start_physical_replication(None, start_lsn, tli(1))
        .await
        .unwrap();
    assert_eq!(started, StreamStart::Streaming);
    let mut received_to = start_lsn;
    loop {
        let msg = tokio::time::timeout(TIMEOUT, conn.recv_copy())
            .await
            .expect("timeline 1 did not end")
            .unwrap();
        match msg {
            CopyMessage::Data(p) => {
                if let ReplicationMessage::XLogData(x) = ReplicationMessage::decode(p).unwrap() {
                    received_to = x.end().unwrap();
                }
            }
            CopyMessage::Done => break,
        }
    }
    assert_eq!(
        received_to, switch,
        "timeline 1 streamed up to the switch point"
    );
    let results = conn.finish_copy().await.unwrap();
    let (next_tli, next_start) = klio_pgwire::replication::parse_timeline_end(&results).unwrap();
    assert_eq!((next_tli, next_start), (tli(2), switch));

    // Starting exactly at the end of timeline 1 skips COPY altogether.
    let started = conn
        .start_physical_replication(None, switch, tli(1))
        .await
        .unwrap();
    assert_eq!(
        started,
        StreamStart::TimelineEnded {
            next_tli: tli(2),
            next_tli_startpos: switch
        }
    );
    conn.identify_system().await.unwrap();
    conn.close().await;
}

#[tokio::test]
async fn postgres_13_slots_and_streaming() {
    let pg = start(PgOptions::new().major(13));
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert_eq!(conn.server_version_num() / 10000, 13);
    assert_identifies(&mut conn, &pg).await;
    // The unparenthesised syntax works before 15.
    conn.create_physical_slot("klio13").await.unwrap();
    let err = conn.create_physical_slot("klio13").await.unwrap_err();
    assert!(matches!(err, PgError::SlotExists { .. }), "{err:?}");
    let err = conn.read_replication_slot("klio13").await.unwrap_err();
    assert!(matches!(err, PgError::Unsupported(_)), "{err:?}");
    let restart = lsn(&pg
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'klio13'")
        .unwrap());
    stream_and_compare_with_pg_wal(&pg, &mut conn, Some("klio13"), restart, tli(1)).await;
    conn.finish_copy().await.unwrap();
    conn.close().await;
}

#[tokio::test]
async fn postgres_17_tls_verify_full_with_scram() {
    let pg = start(PgOptions::new().major(17).ssl(true));
    let mut conn = connect(&pg.replication_conninfo()).await;
    assert!(conn.is_tls());
    assert_eq!(conn.auth_mechanism(), AuthMechanism::ScramSha256Plus);
    assert_eq!(conn.server_version_num() / 10000, 17);
    assert_identifies(&mut conn, &pg).await;
    let slot = conn.read_replication_slot("none_here").await.unwrap();
    assert_eq!(slot, None);
    conn.close().await;
}

#[tokio::test]
async fn scram_is_bound_to_the_tls_channel() {
    let pg = start(PgOptions::new().auth(AuthMethod::ScramSha256).ssl(true));
    let base = pg.replication_conninfo();
    // The server verifies the binding data (the hash of its certificate) in the client's
    // final SCRAM message: a successful SCRAM-SHA-256-PLUS exchange means it matched.
    for (option, expected) in [
        ("", AuthMechanism::ScramSha256Plus),
        ("channel_binding=prefer", AuthMechanism::ScramSha256Plus),
        ("channel_binding=require", AuthMechanism::ScramSha256Plus),
        ("channel_binding=disable", AuthMechanism::ScramSha256),
    ] {
        let mut conn = connect(&format!("{base} {option}")).await;
        assert_eq!(conn.auth_mechanism(), expected, "{option}");
        assert_identifies(&mut conn, &pg).await;
        conn.close().await;
    }
    // Binding also holds where the certificate is not verified (sslmode=require): a relay
    // in the middle would present another certificate and fail the exchange.
    let conn = connect(&tcp(
        &pg,
        &format!("password={REPLICATION_PASSWORD} sslmode=require channel_binding=require"),
    ))
    .await;
    assert_eq!(conn.auth_mechanism(), AuthMechanism::ScramSha256Plus);
    conn.close().await;
    let err = assert_auth_failure(
        &format!("{base} channel_binding=require password=wrong"),
        "password authentication failed",
    )
    .await;
    assert_eq!(err.sqlstate(), Some("28P01"));
}

#[tokio::test]
async fn channel_binding_require_without_tls_is_refused_clearly() {
    let pg = start(PgOptions::new().auth(AuthMethod::ScramSha256));
    let err = assert_auth_failure(
        &tcp(
            &pg,
            &format!("password={REPLICATION_PASSWORD} sslmode=prefer channel_binding=require"),
        ),
        "channel_binding=require",
    )
    .await;
    let text = err.to_string();
    assert!(
        text.contains("not encrypted") && text.contains("sslmode=verify-full"),
        "{text}"
    );
    // Without the requirement the same server is fine (SCRAM without binding).
    let conn = connect(&tcp(
        &pg,
        &format!("password={REPLICATION_PASSWORD} sslmode=prefer"),
    ))
    .await;
    assert_eq!(conn.auth_mechanism(), AuthMechanism::ScramSha256);
    conn.close().await;
}

#[tokio::test]
async fn sslmode_prefer_without_server_ssl_is_a_warning_naming_the_cluster() {
    let pg = start(PgOptions::new());
    let (logs, _guard) = Logs::capture();
    let password = format!("password={REPLICATION_PASSWORD}");
    // The receiver and backup jobs connect inside a span that names the cluster.
    let span = tracing::info_span!("cluster", cluster = "pg-fallback");
    let conn = ReplicationConn::connect(&info(&tcp(&pg, &format!("{password} sslmode=prefer"))))
        .instrument(span)
        .await
        .expect("prefer connects without TLS");
    assert!(!conn.is_tls() && !conn.server_verified());
    conn.close().await;
    let warnings = logs.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("pg-fallback")
            && w.contains("WITHOUT ENCRYPTION")
            && w.contains("sslmode=verify-full")),
        "{warnings:?}"
    );
    // sslmode=disable asks for a plain connection: no warning.
    let before = logs.warnings().len();
    connect(&tcp(&pg, &format!("{password} sslmode=disable")))
        .await
        .close()
        .await;
    assert_eq!(logs.warnings().len(), before, "{:?}", logs.warnings());
}

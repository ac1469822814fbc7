//! Opening a replication connection: the socket, SSLRequest and TLS as `sslmode` says (with
//! libpq's `allow`/`prefer` retries; falling back to no encryption is a warning), the
//! StartupMessage, authentication (see `auth`), then parameters up to ReadyForQuery.
//! Touches no files.

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::auth::authenticate;
use super::tls::{Stream, TlsSetup, Verification};
use super::{describe, log_notice, parse_server_version, server_error, Backend, PgError};
use super::{ReplicationConn, State};
use crate::conninfo::{ConnInfo, Endpoint, SslMode};

impl ReplicationConn {
    /// Connects and authenticates a physical replication connection (`replication=true`,
    /// `user`, `database` if given, `application_name`), honouring `connect_timeout`.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConn, PgError> {
        let endpoint = info.endpoint();
        let target = endpoint.to_string();
        let connecting = connect_any(info, &endpoint, &target);
        let conn = match info.connect_timeout {
            Some(after) => tokio::time::timeout(after, connecting)
                .await
                .map_err(|_| PgError::Timeout {
                    after,
                    target: target.clone(),
                })??,
            None => connecting.await?,
        };
        tracing::debug!(
            target = %conn.target,
            tls = conn.is_tls(),
            server_verified = conn.server_verified,
            auth = conn.auth.as_str(),
            server_version_num = conn.server_version_num,
            backend_pid = conn.backend_pid,
            "replication connection established"
        );
        Ok(conn)
    }
}

/// A failed attempt, and whether it had got as far as TLS.
type Attempt = Result<ReplicationConn, (PgError, bool)>;

async fn connect_any(
    info: &ConnInfo,
    endpoint: &Endpoint,
    target: &str,
) -> Result<ReplicationConn, PgError> {
    let (host, port) = match endpoint {
        Endpoint::Unix(path) => {
            // libpq: sslmode is ignored for Unix-domain sockets.
            let socket = UnixStream::connect(path)
                .await
                .map_err(|source| PgError::Connect {
                    target: target.to_owned(),
                    source,
                })?;
            return startup(Stream::Unix(socket), false, info, target).await;
        }
        Endpoint::Tcp { host, port } => (host.as_str(), *port),
    };
    let tls = match info.sslmode {
        SslMode::Disable => None,
        _ => Some(TlsSetup::new(info)?),
    };
    let try_once = |use_tls: bool| {
        let tls = tls.as_ref().filter(|_| use_tls);
        attempt(info, host, port, target, tls)
    };
    match info.sslmode {
        SslMode::Disable => try_once(false).await.map_err(|(e, _)| e),
        SslMode::Allow => match try_once(false).await {
            Err((e, _)) if is_hba_rejection(&e) => {
                tracing::debug!(error = %e, "sslmode=allow: retrying with TLS");
                try_once(true).await.map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        },
        SslMode::Prefer => match try_once(true).await {
            Err((e, true)) if matches!(e, PgError::Tls(_)) || is_hba_rejection(&e) => {
                tracing::warn!(
                    server = %target,
                    error = %e,
                    "TLS connection failed; retrying WITHOUT ENCRYPTION because sslmode=prefer \
                     (the default): set sslmode=verify-full and sslrootcert in the cluster \
                     conninfo to require an encrypted connection to a verified server"
                );
                try_once(false).await.map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            try_once(true).await.map_err(|(e, _)| e)
        }
    }
}

/// pg_hba.conf had no entry for this connection (e.g. `hostssl` only): the one failure
/// libpq's `allow`/`prefer` retry with the other encryption.
fn is_hba_rejection(err: &PgError) -> bool {
    matches!(err, PgError::Auth { code: Some(code), .. } if code == "28000")
}

async fn attempt(
    info: &ConnInfo,
    host: &str,
    port: u16,
    target: &str,
    tls: Option<&TlsSetup>,
) -> Attempt {
    let mut tcp = TcpStream::connect((host, port)).await.map_err(|source| {
        (
            PgError::Connect {
                target: target.to_owned(),
                source,
            },
            false,
        )
    })?;
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        None => Stream::Tcp(tcp),
        Some(setup) => {
            let mut request = bytes::BytesMut::new();
            frontend::ssl_request(&mut request);
            tcp.write_all(&request)
                .await
                .map_err(|e| (e.into(), false))?;
            // Exactly one byte: anything the server sent after 'S' must go to the TLS layer.
            let answer = tcp.read_u8().await.map_err(|e| (e.into(), false))?;
            match answer {
                b'S' => setup
                    .handshake(tcp, target, info.sslmode)
                    .await
                    .map_err(|e| (e, true))?,
                b'N' if info.sslmode.requires_tls() => {
                    return Err((
                        PgError::Tls(format!(
                            "server {target} does not support SSL, but sslmode={} requires it: \
                             enable ssl on the server or change sslmode in the cluster conninfo",
                            info.sslmode
                        )),
                        false,
                    ))
                }
                b'N' => {
                    if info.sslmode == SslMode::Prefer {
                        tracing::warn!(
                            server = %target,
                            "server does not support SSL: connected WITHOUT ENCRYPTION because \
                             sslmode=prefer (the default); enable ssl on the server and set \
                             sslmode=verify-full and sslrootcert in the cluster conninfo"
                        );
                    }
                    Stream::Tcp(tcp)
                }
                b'E' => {
                    return Err((
                        PgError::protocol("server answered the SSLRequest with an error"),
                        false,
                    ))
                }
                other => {
                    return Err((
                        PgError::Protocol(format!(
                            "invalid answer {other:#04x} to the SSLRequest: is {target} a \
                             PostgreSQL server?"
                        )),
                        false,
                    ))
                }
            }
        }
    };
    let tls_used = matches!(stream, Stream::Tls(_));
    let verified = tls_used && tls.is_some_and(|t| t.verification != Verification::None);
    startup(stream, verified, info, target)
        .await
        .map_err(|e| (e, tls_used))
}

/// `server_verified`: the stream is TLS and the server certificate was verified.
pub(super) async fn startup(
    stream: Stream,
    server_verified: bool,
    info: &ConnInfo,
    target: &str,
) -> Result<ReplicationConn, PgError> {
    let mut conn = ReplicationConn::new(stream, target.to_owned());
    conn.server_verified = server_verified;
    let mut params = vec![
        ("user", info.user.as_str()),
        ("replication", "true"),
        ("application_name", info.application_name.as_str()),
    ];
    if let Some(db) = &info.dbname {
        params.push(("database", db.as_str()));
    }
    frontend::startup_message(params.iter().copied(), &mut conn.write_buf)
        .map_err(|e| PgError::Config(format!("invalid startup parameter: {e}")))?;
    conn.flush_out().await?;
    authenticate(&mut conn, info).await?;
    loop {
        match conn.next_message().await? {
            Backend::Message(Message::ParameterStatus(body)) => conn.parameter_status(&body)?,
            Backend::Message(Message::BackendKeyData(body)) => {
                conn.backend_pid = body.process_id();
            }
            Backend::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
            Backend::Message(Message::ErrorResponse(body)) => {
                return Err(PgError::startup_error(
                    server_error(body.fields()),
                    &info.user,
                ))
            }
            Backend::Message(Message::ReadyForQuery(_)) => break,
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected {} during startup",
                    describe(&other)
                )))
            }
        }
    }
    let version = conn.parameter("server_version").unwrap_or_default();
    conn.server_version_num = parse_server_version(version).ok_or_else(|| {
        PgError::Protocol(format!(
            "server reported an unparsable server_version {version:?}"
        ))
    })?;
    conn.state = State::Idle;
    Ok(conn)
}

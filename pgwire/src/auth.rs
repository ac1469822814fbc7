//! Authentication of a new replication connection (trust, cleartext password, MD5,
//! SCRAM-SHA-256 with or without channel binding, client certificate) and the client's
//! policy over it: `require_auth`, `channel_binding`, and never a cleartext password to a
//! server that TLS did not verify unless the user opted in. Touches no files (the passfile
//! is read through `conninfo`).

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    self, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::channel_binding::tls_server_end_point;
use super::{describe, log_notice, server_error, Backend, PgError, ReplicationConn};
use crate::conninfo::{AuthMethod, ChannelBinding, ConnInfo};

/// How the server authenticated the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMechanism {
    /// The server asked for nothing (trust, or a TLS client certificate).
    #[default]
    NoneRequested,
    /// The password in clear text (pg_hba.conf `password`).
    Password,
    /// MD5 of the password with a salt.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS, bound to the TLS channel (`tls-server-end-point`).
    ScramSha256Plus,
}

impl AuthMechanism {
    /// The name as PostgreSQL and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMechanism::NoneRequested => "none",
            AuthMechanism::Password => "password",
            AuthMechanism::Md5 => "md5",
            AuthMechanism::ScramSha256 => SCRAM_SHA_256,
            AuthMechanism::ScramSha256Plus => SCRAM_SHA_256_PLUS,
        }
    }
}

fn auth_error(message: String) -> PgError {
    PgError::Auth {
        code: None,
        message,
    }
}

/// Runs the authentication exchange up to AuthenticationOk.
pub(super) async fn authenticate(
    conn: &mut ReplicationConn,
    info: &ConnInfo,
) -> Result<(), PgError> {
    let mut scram: Option<ScramSha256> = None;
    let mut scram_finished = false;
    loop {
        let msg = match conn.next_message().await? {
            Backend::Message(msg) => msg,
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected {} during authentication",
                    describe(&other)
                )))
            }
        };
        match msg {
            Message::AuthenticationOk => {
                if scram.is_some() && !scram_finished {
                    return Err(PgError::protocol(
                        "server ended SCRAM authentication without proving it knows the password",
                    ));
                }
                if conn.auth == AuthMechanism::NoneRequested {
                    check_allowed(conn, info, AuthMethod::None)?;
                    if info.channel_binding == ChannelBinding::Require {
                        return Err(auth_error(format!(
                            "channel_binding=require, but server {} accepted the client \
                             without a password exchange (trust or certificate \
                             authentication), so nothing was bound to the TLS channel: use \
                             scram-sha-256 for this user in pg_hba.conf, or remove \
                             channel_binding=require",
                            conn.target
                        )));
                    }
                }
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                check_allowed(conn, info, AuthMethod::Password)?;
                refuse_without_channel_binding(conn, info, "password")?;
                refuse_cleartext_to_unverified_server(conn, info)?;
                let password = need_password(info, &conn.target, "password")?;
                frontend::password_message(password.as_bytes(), &mut conn.write_buf)?;
                conn.auth = AuthMechanism::Password;
                conn.flush_out().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                check_allowed(conn, info, AuthMethod::Md5)?;
                refuse_without_channel_binding(conn, info, "md5")?;
                let password = need_password(info, &conn.target, "md5")?;
                if !conn.is_tls() {
                    tracing::warn!(
                        server = %conn.target,
                        "md5 authentication over an unencrypted connection: the salted hash \
                         can be captured and the password guessed offline; use scram-sha-256 \
                         in pg_hba.conf and sslmode=verify-full"
                    );
                }
                let hash = md5_hash(info.user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut conn.write_buf)?;
                conn.auth = AuthMechanism::Md5;
                conn.flush_out().await?;
            }
            Message::AuthenticationSasl(body) => {
                if scram.is_some() {
                    return Err(PgError::protocol("a second AuthenticationSASL"));
                }
                let mechanisms: Vec<String> = body
                    .mechanisms()
                    .map(|m| Ok(m.to_owned()))
                    .collect()
                    .map_err(|e| PgError::Protocol(format!("AuthenticationSASL: {e}")))?;
                check_allowed(conn, info, AuthMethod::ScramSha256)?;
                let (mechanism, binding) = choose_scram(conn, info, &mechanisms)?;
                let password = need_password(info, &conn.target, "scram-sha-256")?;
                let exchange = ScramSha256::new(password.as_bytes(), binding);
                frontend::sasl_initial_response(
                    mechanism.as_str(),
                    exchange.message(),
                    &mut conn.write_buf,
                )?;
                scram = Some(exchange);
                conn.auth = mechanism;
                conn.flush_out().await?;
            }
            Message::AuthenticationSaslContinue(body) => {
                let exchange = scram
                    .as_mut()
                    .filter(|_| !scram_finished)
                    .ok_or_else(|| PgError::protocol("unexpected AuthenticationSASLContinue"))?;
                exchange.update(body.data()).map_err(|e| {
                    auth_error(format!("SCRAM exchange with {} failed: {e}", conn.target))
                })?;
                frontend::sasl_response(exchange.message(), &mut conn.write_buf)?;
                conn.flush_out().await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let exchange = scram
                    .as_mut()
                    .filter(|_| !scram_finished)
                    .ok_or_else(|| PgError::protocol("unexpected AuthenticationSASLFinal"))?;
                exchange.finish(body.data()).map_err(|e| {
                    auth_error(format!(
                        "server {} failed to prove it knows the SCRAM password ({e}): it is \
                         not the server the password belongs to",
                        conn.target
                    ))
                })?;
                scram_finished = true;
            }
            Message::ErrorResponse(body) => {
                return Err(PgError::startup_error(
                    server_error(body.fields()),
                    &info.user,
                ))
            }
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential => {
                return Err(auth_error(format!(
                    "server {} requests GSSAPI/SSPI/Kerberos authentication, which Klio does \
                     not support: use scram-sha-256, md5, password or cert for this user in \
                     pg_hba.conf",
                    conn.target
                )))
            }
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected {} during authentication",
                    describe(&Backend::Message(other))
                )))
            }
        }
    }
}

/// `require_auth`: the server may only use the methods the user allowed.
fn check_allowed(
    conn: &ReplicationConn,
    info: &ConnInfo,
    method: AuthMethod,
) -> Result<(), PgError> {
    match &info.require_auth {
        Some(required) if !required.allows(method) => Err(auth_error(match method {
            AuthMethod::None => format!(
                "server {} did not ask the client to authenticate (trust or certificate \
                 authentication), but the cluster conninfo has require_auth={required}: add \
                 none to require_auth, or change pg_hba.conf",
                conn.target
            ),
            _ => format!(
                "server {} requested {method} authentication, but the cluster conninfo has \
                 require_auth={required}: change the method in pg_hba.conf or require_auth",
                conn.target
            ),
        })),
        _ => Ok(()),
    }
}

/// `channel_binding=require` accepts SCRAM-SHA-256-PLUS only.
fn refuse_without_channel_binding(
    conn: &ReplicationConn,
    info: &ConnInfo,
    method: &str,
) -> Result<(), PgError> {
    if info.channel_binding != ChannelBinding::Require {
        return Ok(());
    }
    Err(auth_error(format!(
        "channel_binding=require, but server {} requested {method} authentication, which \
         cannot bind to the TLS channel: use scram-sha-256 for this user in pg_hba.conf",
        conn.target
    )))
}

/// A cleartext password goes only to a server whose certificate TLS verified, unless the
/// user listed `password` in `require_auth`.
fn refuse_cleartext_to_unverified_server(
    conn: &ReplicationConn,
    info: &ConnInfo,
) -> Result<(), PgError> {
    let opted_in = info
        .require_auth
        .as_ref()
        .is_some_and(|r| r.lists_password());
    if conn.server_verified || opted_in {
        return Ok(());
    }
    let channel = if conn.is_tls() {
        format!(
            "TLS without a verified server certificate (sslmode={})",
            info.sslmode
        )
    } else {
        "an unencrypted connection".to_owned()
    };
    Err(auth_error(format!(
        "server {} requested the password in clear text (pg_hba.conf method `password`) over \
         {channel}, where anyone posing as the server would receive it: Klio refused to send \
         it. Use scram-sha-256 in pg_hba.conf, or sslmode=verify-full with sslrootcert, or \
         accept the risk by adding require_auth=password to the cluster conninfo",
        conn.target
    )))
}

/// Picks SCRAM-SHA-256 or SCRAM-SHA-256-PLUS and the channel binding as `channel_binding`
/// says, from what the server offers and whether the connection is TLS.
fn choose_scram(
    conn: &ReplicationConn,
    info: &ConnInfo,
    offered: &[String],
) -> Result<(AuthMechanism, sasl::ChannelBinding), PgError> {
    let target = &conn.target;
    let offers_plus = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
    let offers_plain = offered.iter().any(|m| m == SCRAM_SHA_256);
    let certificate = conn.stream.peer_certificate();
    let plus = |data| {
        (
            AuthMechanism::ScramSha256Plus,
            sasl::ChannelBinding::tls_server_end_point(data),
        )
    };
    let plain =
        |binding| {
            if offers_plain {
                Ok((AuthMechanism::ScramSha256, binding))
            } else if offers_plus {
                Err(auth_error(format!(
                "server {target} offers only SCRAM-SHA-256-PLUS (channel binding), which needs \
                 TLS and channel_binding=prefer or require; the connection is {}, with \
                 channel_binding={}",
                if certificate.is_some() { "TLS" } else { "not encrypted" },
                info.channel_binding
            )))
            } else {
                Err(auth_error(format!(
                    "server {target} offers only the SASL mechanisms {offered:?}; Klio supports \
                 SCRAM-SHA-256 and SCRAM-SHA-256-PLUS"
                )))
            }
        };
    match (info.channel_binding, certificate) {
        (ChannelBinding::Require, None) => Err(auth_error(format!(
            "channel_binding=require, but the connection to {target} is not encrypted \
             (sslmode={}, or a Unix socket): channel binding needs TLS; use \
             sslmode=verify-full",
            info.sslmode
        ))),
        (ChannelBinding::Require, Some(_)) if !offers_plus => Err(auth_error(format!(
            "channel_binding=require, but server {target} does not offer SCRAM-SHA-256-PLUS \
             (it offers {offered:?}): it needs PostgreSQL 11 or later with SSL, and \
             scram-sha-256 for this user in pg_hba.conf"
        ))),
        (ChannelBinding::Require, Some(cert)) => {
            let data = tls_server_end_point(cert).map_err(|e| {
                auth_error(format!(
                    "channel_binding=require, but {e} (server {target}): use an RSA or ECDSA \
                     server certificate, or remove channel_binding=require"
                ))
            })?;
            Ok(plus(data))
        }
        (ChannelBinding::Prefer, Some(cert)) if offers_plus => match tls_server_end_point(cert) {
            Ok(data) => Ok(plus(data)),
            Err(e) => {
                tracing::warn!(
                    server = %target,
                    "cannot use SCRAM channel binding: {e}; authenticating without it"
                );
                plain(sasl::ChannelBinding::unsupported())
            }
        },
        // "y": the client could bind, the server did not offer it (a server that does and
        // hid it from us refuses the exchange: a downgrade is detected).
        (ChannelBinding::Prefer, Some(_)) => plain(sasl::ChannelBinding::unrequested()),
        (ChannelBinding::Prefer | ChannelBinding::Disable, _) => {
            plain(sasl::ChannelBinding::unsupported())
        }
    }
}

fn need_password(info: &ConnInfo, target: &str, method: &str) -> Result<String, PgError> {
    info.resolve_password().ok_or_else(|| {
        let passfile = info
            .passfile_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.pgpass".into());
        auth_error(format!(
            "server {target} requests {method} authentication for user {} but no password is \
             available: set password in the cluster conninfo, or add a line \
             `host:port:replication:{}:password` to the passfile {passfile} (mode 0600)",
            info.user, info.user
        ))
    })
}

//! The replication connection's error type: one enum for the crate boundary, whose messages
//! name the cause and, where the user can do something, the fix.

use std::fmt;
use std::io;
use std::time::Duration;

/// Everything that can go wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Reading or writing the socket failed, or the server closed the connection.
    #[error("replication connection I/O error: {0}")]
    Io(#[from] io::Error),
    /// The TCP or Unix-socket connection could not be opened.
    #[error(
        "could not connect to {target}: {source}: check that PostgreSQL is running and accepts \
         connections there (host and port in the cluster conninfo)"
    )]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    /// TLS negotiation, certificate verification or key loading failed.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The server rejected the credentials (or the client had none to offer).
    #[error("{message}")]
    Auth {
        /// SQLSTATE from the server (`28P01`, `28000`, `42501`), `None` for client-side causes.
        code: Option<String>,
        /// Complete message: the cause and what to check.
        message: String,
    },
    /// An ErrorResponse from the server.
    #[error("{}", ServerDisplay { severity, code, message, detail, hint })]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// `CREATE_REPLICATION_SLOT` for a slot that already exists (SQLSTATE 42710).
    #[error("replication slot \"{slot}\" already exists")]
    SlotExists { slot: String },
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    /// The conninfo or files it names cannot be used.
    #[error("replication connection configuration error: {0}")]
    Config(String),
    /// The request needs a newer server.
    #[error("{0}")]
    Unsupported(String),
    /// `connect_timeout` expired.
    #[error(
        "timed out after {}s connecting to {target}: check the host, port and network path, \
         or raise connect_timeout in the cluster conninfo", after.as_secs()
    )]
    Timeout { after: Duration, target: String },
}

impl PgError {
    /// Whether the server rejected the credentials or role (or none were available): retrying
    /// without changing the configuration cannot help.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, PgError::Auth { .. })
    }

    /// The SQLSTATE the server reported, if this came from an ErrorResponse.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            PgError::Auth { code, .. } => code.as_deref(),
            PgError::SlotExists { .. } => Some("42710"),
            _ => None,
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> PgError {
        PgError::Protocol(msg.into())
    }

    /// Maps an ErrorResponse received during startup: credential and role problems become
    /// [`PgError::Auth`] with a hint at the fix.
    pub(crate) fn startup_error(err: PgError, user: &str) -> PgError {
        let PgError::Server { code, message, .. } = &err else {
            return err;
        };
        let fix = match code.as_str() {
            "28P01" => "check the password or passfile in the cluster conninfo".to_owned(),
            "28000" => format!(
                "check that role {user} exists, that pg_hba.conf has a `replication` entry for \
                 it matching this address and SSL mode, and the client certificate if one is used"
            ),
            "42501" => format!(
                "role {user} needs the REPLICATION attribute (ALTER ROLE {user} REPLICATION)"
            ),
            _ => return err,
        };
        PgError::Auth {
            code: Some(code.clone()),
            message: format!("{message}: {fix}"),
        }
    }
}

struct ServerDisplay<'a> {
    severity: &'a str,
    code: &'a str,
    message: &'a str,
    detail: &'a Option<String>,
    hint: &'a Option<String>,
}

impl fmt::Display for ServerDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server error {} {}: {}",
            self.severity, self.code, self.message
        )?;
        if let Some(detail) = self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

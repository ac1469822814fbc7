//! Connection strings for the replication connection.
//!
//! Owns parsing of libpq-style conninfo strings (key/value form and `postgresql://` URIs) into
//! a [`ConnInfo`], and libpq's password-file lookup (`passfile`, `PGPASSFILE`, `~/.pgpass`).
//! Reads the password file; writes nothing to disk.
//!
//! Differences from libpq, on purpose: only one host per conninfo; no `PGHOST`/`PGPASSWORD`/…
//! environment defaults except `PGUSER` and `PGPASSFILE` (one server protects many clusters,
//! and a process-wide password would leak between them); unknown keys are an error.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod auth;
mod passfile;
mod uri;
pub use auth::{AuthMethod, ChannelBinding, RequireAuth};
use passfile::read_passfile;

/// The `sslrootcert` value that means "the system's trusted roots".
pub const SYSTEM_ROOTS: &str = "system";
/// libpq's compiled-in default socket directory on Debian, used when no host is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Default server port.
pub const DEFAULT_PORT: u16 = 5432;
/// Default `application_name` sent at startup.
pub const DEFAULT_APPLICATION_NAME: &str = "klio";

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try without TLS first; retry with TLS if the server rejects the plain connection.
    Allow,
    /// Try TLS first; fall back to a plain connection if the server does not offer it.
    Prefer,
    /// TLS required; certificate not verified unless a root certificate is available.
    Require,
    /// TLS required; server certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// TLS required; chain verified and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is unacceptable.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix-domain socket file (`{dir}/.s.PGSQL.{port}`).
    Unix(PathBuf),
    /// A TCP address: a host name or IP literal, and a port.
    Tcp { host: String, port: u16 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "socket {}", path.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A conninfo string that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("invalid conninfo: {0}")]
    Syntax(String),
    #[error(
        "invalid conninfo: unknown connection option \"{0}\" (Klio accepts host, hostaddr, port, \
         user, password, passfile, dbname, sslmode, sslcert, sslkey, sslrootcert, \
         channel_binding, require_auth, application_name, connect_timeout)"
    )]
    UnknownKey(String),
    #[error(
        "invalid conninfo: connection option \"{key}={value}\" is valid for libpq but not \
         supported by Klio; remove it{accepted}"
    )]
    Unsupported {
        key: String,
        value: String,
        accepted: String,
    },
    #[error("invalid conninfo: invalid value \"{value}\" for \"{key}\": expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// A parsed connection string. The `Debug` output never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// `host` as given: a host name, an IP literal or (starting with `/`) a socket directory.
    pub host: Option<String>,
    /// `hostaddr`: the IP to connect to; `host` is then only used for TLS and the passfile.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub passfile: Option<PathBuf>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// `sslrootcert`; the special value `system` means the bundled web PKI roots, and
    /// then only `sslmode=verify-full` (the default with it) or `require` (which then
    /// checks the host name too) are accepted, as in libpq 16.
    pub sslrootcert: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    /// `require_auth`; `None` accepts any method Klio supports.
    pub require_auth: Option<RequireAuth>,
    pub application_name: String,
    /// `connect_timeout`; `None` waits forever. libpq rounds values below 2 s up to 2 s.
    pub connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("sslrootcert", &self.sslrootcert)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// libpq options that Klio does not implement but accepts at values meaning "what Klio does
/// anyway", so that a `primary_conninfo` written by `pg_basebackup -R` can be pasted as is.
/// `None` accepts any value (the option has no effect on what Klio does).
const TOLERATED_LIBPQ_OPTIONS: &[(&str, Option<&[&str]>)] = &[
    ("gssencmode", Some(&["disable", "prefer"])),
    ("gssdelegation", Some(&["0"])),
    ("krbsrvname", None),
    ("sslcompression", Some(&["0"])),
    ("sslsni", Some(&["1"])),
    ("sslcertmode", Some(&["allow"])),
    ("ssl_min_protocol_version", Some(&["TLSv1.2", "TLSv1.3"])),
    ("target_session_attrs", Some(&["any"])),
    ("load_balance_hosts", Some(&["disable"])),
    ("replication", Some(&["true", "on", "yes", "1"])),
];

/// libpq options Klio rejects with a specific message rather than "unknown".
const OTHER_LIBPQ_OPTIONS: &[&str] = &[
    "service",
    "options",
    "client_encoding",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "ssl_max_protocol_version",
    "sslnegotiation",
    "requirepeer",
    "gsslib",
    "requiressl",
];

#[derive(Default)]
struct Builder {
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    passfile: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    sslrootcert: Option<String>,
    channel_binding: Option<String>,
    require_auth: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
}

impl Builder {
    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        // libpq treats an empty value as "not set".
        let value = Some(value).filter(|v| !v.is_empty());
        let slot = match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "passfile" => &mut self.passfile,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "sslrootcert" => &mut self.sslrootcert,
            "channel_binding" => &mut self.channel_binding,
            "require_auth" => &mut self.require_auth,
            "application_name" => &mut self.application_name,
            "connect_timeout" => &mut self.connect_timeout,
            _ => return tolerate(key, value.as_deref().unwrap_or("")),
        };
        *slot = value;
        Ok(())
    }

    fn build(self) -> Result<ConnInfo, ConnInfoError> {
        let invalid = |key: &str, value: &str, expected| ConnInfoError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        };
        if let Some(host) = &self.host {
            if host.contains(',') {
                return Err(ConnInfoError::Syntax(format!(
                    "multiple hosts (\"{host}\") are not supported: give one host per cluster"
                )));
            }
        }
        let hostaddr = match &self.hostaddr {
            None => None,
            Some(v) => Some(
                v.parse::<IpAddr>()
                    .map_err(|_| invalid("hostaddr", v, "a numeric IPv4 or IPv6 address"))?,
            ),
        };
        let port = match &self.port {
            None => DEFAULT_PORT,
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("port", v, "a port number 1-65535"))?,
        };
        let system_roots = self.sslrootcert.as_deref() == Some(SYSTEM_ROOTS);
        let sslmode = match &self.sslmode {
            // libpq 16: system roots default to verify-full.
            None if system_roots => SslMode::VerifyFull,
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(v).ok_or_else(|| {
                invalid(
                    "sslmode",
                    v,
                    "disable, allow, prefer, require, verify-ca or verify-full",
                )
            })?,
        };
        if system_roots && !matches!(sslmode, SslMode::Require | SslMode::VerifyFull) {
            // Any publicly trusted certificate chains to the system roots: without the host
            // name check they authenticate nobody in particular.
            return Err(ConnInfoError::Syntax(format!(
                "sslmode={sslmode} may not be used with sslrootcert=system: use \
                 sslmode=verify-full (any publicly trusted certificate chains to the system \
                 roots, so only the host name check identifies the server)"
            )));
        }
        let channel_binding = match &self.channel_binding {
            None => ChannelBinding::default(),
            Some(v) => ChannelBinding::parse(v)?,
        };
        if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
            return Err(ConnInfoError::Syntax(
                "channel_binding=require needs TLS, but sslmode=disable: use \
                 sslmode=verify-full"
                    .into(),
            ));
        }
        let require_auth = self
            .require_auth
            .as_deref()
            .map(RequireAuth::parse)
            .transpose()?;
        let connect_timeout = match &self.connect_timeout {
            None => None,
            Some(v) => {
                let secs = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| invalid("connect_timeout", v, "a number of seconds"))?;
                // libpq: zero or negative means wait forever, 1 is raised to 2.
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
        };
        let user = match self.user {
            Some(user) => user,
            None => default_user().ok_or_else(|| {
                ConnInfoError::Syntax(
                    "no user given and the operating system user is unknown: add user=…".into(),
                )
            })?,
        };
        Ok(ConnInfo {
            host: self.host,
            hostaddr,
            port,
            user,
            password: self.password,
            passfile: self.passfile.map(PathBuf::from),
            dbname: self.dbname,
            sslmode,
            sslcert: self.sslcert.map(PathBuf::from),
            sslkey: self.sslkey.map(PathBuf::from),
            sslrootcert: self.sslrootcert.map(PathBuf::from),
            channel_binding,
            require_auth,
            application_name: self
                .application_name
                .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_owned()),
            connect_timeout,
        })
    }
}

/// The options Klio implements.
const KLIO_OPTIONS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "passfile",
    "dbname",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "channel_binding",
    "require_auth",
    "application_name",
    "connect_timeout",
];

/// Whether `word` is a conninfo option name (Klio's or another libpq option).
fn is_option_name(word: &str) -> bool {
    KLIO_OPTIONS.contains(&word)
        || TOLERATED_LIBPQ_OPTIONS.iter().any(|(k, _)| *k == word)
        || OTHER_LIBPQ_OPTIONS.contains(&word)
}

fn tolerate(key: &str, value: &str) -> Result<(), ConnInfoError> {
    if let Some((_, accepted)) = TOLERATED_LIBPQ_OPTIONS.iter().find(|(k, _)| *k == key) {
        return match accepted {
            None => Ok(()),
            Some(values) if values.contains(&value) => Ok(()),
            Some(values) => Err(ConnInfoError::Unsupported {
                key: key.to_owned(),
                value: value.to_owned(),
                accepted: format!(" or set it to {}", values.join(" or ")),
            }),
        };
    }
    if OTHER_LIBPQ_OPTIONS.contains(&key) {
        return Err(ConnInfoError::Unsupported {
            key: key.to_owned(),
            value: value.to_owned(),
            accepted: String::new(),
        });
    }
    Err(ConnInfoError::UnknownKey(key.to_owned()))
}

/// `$PGUSER`, else the effective operating-system user.
fn default_user() -> Option<String> {
    if let Some(user) = std::env::var("PGUSER").ok().filter(|u| !u.is_empty()) {
        return Some(user);
    }
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
}

impl ConnInfo {
    /// Parses a libpq conninfo string: `key=value …` or a `postgresql://` / `postgres://` URI.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        let trimmed = s.trim_start();
        let mut builder = Builder::default();
        if let Some(rest) = trimmed
            .strip_prefix("postgresql://")
            .or_else(|| trimmed.strip_prefix("postgres://"))
        {
            uri::parse_uri(s, rest.trim_end(), &mut builder)?;
        } else {
            parse_key_values(s, &mut builder)?;
        }
        builder.build()
    }

    /// The password given in the conninfo itself, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Returns a copy with an explicit password (e.g. from a mounted secret file).
    pub fn with_password(mut self, password: impl Into<String>) -> ConnInfo {
        self.password = Some(password.into()).filter(|p| !p.is_empty());
        self
    }

    /// The socket directory when `host` names one (starts with `/`), or the default directory
    /// when neither `host` nor `hostaddr` is given.
    fn socket_dir(&self) -> Option<&Path> {
        match (&self.host, &self.hostaddr) {
            (_, Some(_)) => None,
            (Some(h), None) if h.starts_with('/') => Some(Path::new(h)),
            (Some(_), None) => None,
            (None, None) => Some(Path::new(DEFAULT_SOCKET_DIR)),
        }
    }

    /// Where the connection goes: a Unix socket file or a TCP host and port.
    pub fn endpoint(&self) -> Endpoint {
        if let Some(dir) = self.socket_dir() {
            return Endpoint::Unix(dir.join(format!(".s.PGSQL.{}", self.port)));
        }
        let host = match (&self.hostaddr, &self.host) {
            (Some(addr), _) => addr.to_string(),
            (None, Some(host)) => host.clone(),
            (None, None) => "localhost".to_owned(),
        };
        Endpoint::Tcp {
            host,
            port: self.port,
        }
    }

    /// The name the server certificate is checked against (`host`, else `hostaddr`).
    pub fn tls_server_name(&self) -> Option<String> {
        match (&self.host, &self.hostaddr) {
            (Some(h), _) if !h.starts_with('/') => Some(h.clone()),
            (_, Some(addr)) => Some(addr.to_string()),
            _ => None,
        }
    }

    /// The password to send: the explicit one, else the matching passfile entry.
    pub fn resolve_password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self.passfile_path()?;
        read_passfile(
            &path,
            &self.passfile_host(),
            &self.port.to_string(),
            &self.user,
        )
    }

    /// `passfile`, else `$PGPASSFILE`, else `~/.pgpass`.
    pub fn passfile_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.passfile {
            return Some(p.clone());
        }
        if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        home_dir().map(|h| h.join(".pgpass"))
    }

    /// The host field matched against the passfile, by libpq's rules.
    fn passfile_host(&self) -> String {
        let host = match (&self.host, &self.hostaddr) {
            (Some(h), _) => h.clone(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => String::new(),
        };
        if host.is_empty() || host == DEFAULT_SOCKET_DIR {
            "localhost".to_owned()
        } else {
            host
        }
    }

    /// A short description for error messages: `user@endpoint`.
    pub fn describe(&self) -> String {
        format!("user {} at {}", self.user, self.endpoint())
    }
}

/// The home directory: `$HOME`, else the passwd entry.
pub(crate) fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

fn parse_key_values(s: &str, builder: &mut Builder) -> Result<(), ConnInfoError> {
    type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;
    fn skip_space(chars: &mut Chars<'_>) {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }
    let mut chars = s.char_indices().peekable();
    loop {
        skip_space(&mut chars);
        let Some(&(key_at, _)) = chars.peek() else {
            return Ok(());
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next().map(|(_, c)| c) != Some('=') {
            // The word may be a piece of an unquoted password: name it only if it is an option.
            let word = if is_option_name(&key) {
                format!("\"{key}\"")
            } else {
                format!("the word at byte {key_at}")
            };
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after {word} (expected key=value pairs or a postgresql:// URI; \
                 quote values that hold spaces: password='a b')"
            )));
        }
        skip_space(&mut chars);
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(ConnInfoError::Syntax(format!(
                    "unterminated quoted string in the value of \"{key}\""
                )));
            }
            builder.set(&key, value)?;
            continue;
        }
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
            if c == '\\' {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        builder.set(&key, value)?;
    }
}

#[cfg(test)]
mod tests;

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

use percent_encoding::percent_decode_str;

mod passfile;
use passfile::read_passfile;

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
         application_name, connect_timeout)"
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
    pub sslrootcert: Option<PathBuf>,
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
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// libpq options that Klio does not implement but accepts at values meaning "what Klio does
/// anyway", so that a `primary_conninfo` written by `pg_basebackup -R` can be pasted as is.
/// `None` accepts any value (the option has no effect on what Klio does).
const TOLERATED_LIBPQ_OPTIONS: &[(&str, Option<&[&str]>)] = &[
    ("channel_binding", Some(&["disable", "prefer"])),
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
    "require_auth",
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
        let sslmode = match &self.sslmode {
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(v).ok_or_else(|| {
                invalid(
                    "sslmode",
                    v,
                    "disable, allow, prefer, require, verify-ca or verify-full",
                )
            })?,
        };
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
            application_name: self
                .application_name
                .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_owned()),
            connect_timeout,
        })
    }
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
            parse_uri(rest.trim_end(), &mut builder)?;
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
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(());
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after \"{key}\" (expected key=value pairs or a postgresql:// URI)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "unterminated quoted string in the value of \"{key}\""
                        )))
                    }
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConnInfoError::Syntax(format!(
                                "unterminated quoted string in the value of \"{key}\""
                            )))
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        builder.set(&key, value)?;
    }
}

fn decode(part: &str, what: &str) -> Result<String, ConnInfoError> {
    // libpq rejects malformed escapes and %00; percent_decode_str passes malformed ones through.
    let bytes = part.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            let ok = hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err(ConnInfoError::Syntax(format!(
                    "invalid percent-encoded token in the URI {what}: \"{part}\""
                )));
            }
            if hex == Some(b"00") {
                return Err(ConnInfoError::Syntax(format!(
                    "forbidden value %00 in the URI {what}: \"{part}\""
                )));
            }
        }
    }
    percent_decode_str(part)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ConnInfoError::Syntax(format!("the URI {what} is not valid UTF-8")))
}

fn parse_uri(rest: &str, builder: &mut Builder) -> Result<(), ConnInfoError> {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (main, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            builder.set("user", decode(user, "user name")?)?;
            if let Some(p) = password {
                builder.set("password", decode(p, "password")?)?;
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(ConnInfoError::Syntax(format!(
            "multiple hosts (\"{hostport}\") are not supported: give one host per cluster"
        )));
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| {
            ConnInfoError::Syntax(format!(
                "missing \"]\" in the IPv6 host address of the URI: \"{hostport}\""
            ))
        })?;
        if host.is_empty() {
            return Err(ConnInfoError::Syntax(
                "empty IPv6 host address in the URI".into(),
            ));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ConnInfoError::Syntax(format!(
                    "unexpected \"{p}\" after the IPv6 host address in the URI"
                ))
            })?),
        };
        (host.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(h, "host")?, Some(p)),
            None => (decode(hostport, "host")?, None),
        }
    };
    builder.set("host", host)?;
    if let Some(port) = port {
        builder.set("port", decode(port, "port")?)?;
    }
    if let Some(path) = path {
        builder.set("dbname", decode(path, "database name")?)?;
    }
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                ConnInfoError::Syntax(format!(
                    "missing \"=\" in the URI query parameter \"{pair}\""
                ))
            })?;
            let key = decode(key, "query parameter name")?;
            let value = decode(value, "query parameter value")?;
            // libpq maps the JDBC-style ssl=true to sslmode=require.
            if key == "ssl" {
                if value != "true" {
                    return Err(ConnInfoError::InvalidValue {
                        key,
                        value,
                        expected: "true (or use sslmode=…)",
                    });
                }
                builder.set("sslmode", "require".into())?;
                continue;
            }
            builder.set(&key, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnInfo {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn key_value_basics_and_defaults() {
        let c = parse("host=db.example port=5433 user=streaming_replica dbname=postgres");
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "streaming_replica");
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.application_name, "klio");
        assert_eq!(c.connect_timeout, None);
        assert_eq!(
            c.endpoint(),
            Endpoint::Tcp {
                host: "db.example".into(),
                port: 5433
            }
        );
    }

    #[test]
    fn key_value_quoting_and_whitespace() {
        let c = parse(
            "  host = h  password = 'it\\'s a \\\\ secret'  application_name='a b' user=u\\ x ",
        );
        assert_eq!(c.password(), Some("it's a \\ secret"));
        assert_eq!(c.application_name, "a b");
        assert_eq!(c.user, "u x");
        assert_eq!(c.host.as_deref(), Some("h"));
        let c = parse("user=u password=''");
        assert_eq!(
            c.password(),
            None,
            "an empty value means unset, as in libpq"
        );
    }

    #[test]
    fn key_value_errors() {
        assert!(matches!(
            ConnInfo::parse("host"),
            Err(ConnInfoError::Syntax(m)) if m.contains("missing \"=\" after \"host\"")
        ));
        assert!(matches!(
            ConnInfo::parse("user=u password='abc"),
            Err(ConnInfoError::Syntax(m)) if m.contains("unterminated")
        ));
        let err = ConnInfo::parse("user=u frobnicate=1").unwrap_err();
        assert_eq!(err, ConnInfoError::UnknownKey("frobnicate".into()));
        assert!(err.to_string().contains("\"frobnicate\""));
        assert!(matches!(
            ConnInfo::parse("user=u sslmode=bogus"),
            Err(ConnInfoError::InvalidValue { key, .. }) if key == "sslmode"
        ));
        assert!(matches!(
            ConnInfo::parse("user=u port=0"),
            Err(ConnInfoError::InvalidValue { key, .. }) if key == "port"
        ));
        assert!(matches!(
            ConnInfo::parse("user=u keepalives=1"),
            Err(ConnInfoError::Unsupported { key, .. }) if key == "keepalives"
        ));
        assert!(ConnInfo::parse("user=u host=a,b").is_err());
    }

    #[test]
    fn pg_basebackup_primary_conninfo_is_accepted() {
        let c = parse(
            "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
             host=/var/run/postgresql port=5432 sslmode=prefer sslcompression=0 \
             sslcertmode=allow sslsni=1 ssl_min_protocol_version=TLSv1.2 gssencmode=prefer \
             krbsrvname=postgres gssdelegation=0 target_session_attrs=any \
             load_balance_hosts=disable",
        );
        assert_eq!(
            c.endpoint(),
            Endpoint::Unix("/var/run/postgresql/.s.PGSQL.5432".into())
        );
        assert!(ConnInfo::parse("user=u channel_binding=require").is_err());
    }

    #[test]
    fn sslmodes_and_timeout() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(parse(&format!("user=u sslmode={s}")).sslmode, m);
            assert_eq!(m.as_str(), s);
        }
        assert_eq!(
            parse("user=u connect_timeout=1").connect_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse("user=u connect_timeout=10").connect_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse("user=u connect_timeout=0").connect_timeout, None);
    }

    #[test]
    fn unix_socket_and_hostaddr() {
        let c = parse("host=/tmp/pg port=6000 user=u");
        assert_eq!(c.endpoint(), Endpoint::Unix("/tmp/pg/.s.PGSQL.6000".into()));
        assert_eq!(c.tls_server_name(), None);
        let c = parse("user=u");
        assert_eq!(
            c.endpoint(),
            Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET_DIR).join(".s.PGSQL.5432"))
        );
        assert_eq!(c.passfile_host(), "localhost");
        let c = parse("host=db.example hostaddr=10.0.0.7 user=u");
        assert_eq!(
            c.endpoint(),
            Endpoint::Tcp {
                host: "10.0.0.7".into(),
                port: 5432
            }
        );
        assert_eq!(c.tls_server_name().as_deref(), Some("db.example"));
        assert_eq!(c.passfile_host(), "db.example");
        assert!(ConnInfo::parse("user=u hostaddr=db.example").is_err());
    }

    #[test]
    fn uri_form() {
        let c = parse("postgresql://rep%40l:p%3Ass%40w@db.example:5433/my%20db?sslmode=require&application_name=k%20x");
        assert_eq!(c.user, "rep@l");
        assert_eq!(c.password(), Some("p:ss@w"));
        assert_eq!(c.host.as_deref(), Some("db.example"));
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname.as_deref(), Some("my db"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name, "k x");

        let c = parse("postgres://u@[::1]:6543");
        assert_eq!(c.host.as_deref(), Some("::1"));
        assert_eq!(
            c.endpoint().to_string(),
            "[::1]:6543",
            "IPv6 endpoints are bracketed"
        );

        let c = parse("postgresql://u@%2Fvar%2Flib%2Fpg:7000");
        assert_eq!(
            c.endpoint(),
            Endpoint::Unix("/var/lib/pg/.s.PGSQL.7000".into())
        );

        let c = parse("postgresql:///db?host=/tmp/s&user=u&ssl=true");
        assert_eq!(c.endpoint(), Endpoint::Unix("/tmp/s/.s.PGSQL.5432".into()));
        assert_eq!(c.dbname.as_deref(), Some("db"));
        assert_eq!(c.sslmode, SslMode::Require);

        assert!(ConnInfo::parse("postgresql://u@[::1/db").is_err());
        assert!(ConnInfo::parse("postgresql://u@h/db?nope=1").is_err());
        assert!(ConnInfo::parse("postgresql://u@h/d%zz").is_err());
        assert!(ConnInfo::parse("postgresql://u@h/d%00").is_err());
        assert!(ConnInfo::parse("postgresql://u@h1,h2/d").is_err());
        assert!(ConnInfo::parse("postgresql://u@h:notaport").is_err());
    }

    #[test]
    fn debug_redacts_password() {
        let c = parse("user=u password=hunter2");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        let c = parse("postgresql://u:hunter2@h/");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn passfile_resolution_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "/tmp/sock:6000:replication:rep:s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let info = parse(&format!(
            "host=/tmp/sock port=6000 user=rep passfile='{}'",
            path.display()
        ));
        assert_eq!(info.resolve_password().as_deref(), Some("s3cret"));
        // Explicit password wins.
        assert_eq!(
            info.clone()
                .with_password("x")
                .resolve_password()
                .as_deref(),
            Some("x")
        );
        // Group/world readable: ignored, as libpq does.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(info.resolve_password(), None);
        // Missing file: no password, no error.
        let missing = parse("user=rep passfile=/nonexistent/pgpass");
        assert_eq!(missing.resolve_password(), None);
    }
}

//! What a test asks of an instance ([`PgOptions`], [`AuthMethod`]) and how that becomes the
//! harness's configuration files in the data directory: `klio_harness.conf` (included from
//! `postgresql.conf`) and `pg_hba.conf`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::tls::TlsFiles;
use crate::{REPLICATION_USER, SUPERUSER};

/// The `pg_hba.conf` method for the `streaming_replica` replication line and the
/// `host all all` line (the superuser always gets `trust`, locally and on 127.0.0.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication.
    Trust,
    /// Cleartext password.
    Password,
    /// MD5 challenge; the password is stored as MD5 (`password_encryption = md5`), so the
    /// MD5 exchange really runs.
    Md5,
    /// SCRAM-SHA-256, stored as SCRAM.
    #[default]
    ScramSha256,
    /// TLS client certificate whose CN must equal the user; implies TLS.
    Cert,
}

impl AuthMethod {
    fn hba_method(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Cert => "cert",
        }
    }

    fn password_encryption(self) -> &'static str {
        match self {
            AuthMethod::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }
}

/// How to set up an instance. `PgOptions::default()`: system PostgreSQL (15), SCRAM, no TLS.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Authentication for `streaming_replica` and non-superuser TCP logins.
    pub auth: AuthMethod,
    /// TLS on (`ssl = on`, `hostssl` lines, so non-TLS logins of `streaming_replica` are
    /// rejected). [`AuthMethod::Cert`] turns it on regardless.
    pub ssl: bool,
    /// `synchronous_standby_names`, verbatim (e.g. `FIRST 1 (klio)`).
    pub synchronous_standby_names: Option<String>,
    /// More `postgresql.conf` settings, written after the harness's own (so they win);
    /// values are quoted by the harness, e.g. `("wal_keep_size", "256MB")`.
    pub extra_conf: Vec<(String, String)>,
    /// PostgreSQL major version; `None` = the system's (15).
    pub major: Option<u32>,
    /// Bound on starting (per attempt), stopping, promoting and waiting for streaming.
    pub timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            auth: AuthMethod::default(),
            ssl: false,
            synchronous_standby_names: None,
            extra_conf: Vec::new(),
            major: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl PgOptions {
    /// Same as `default()`.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn auth(mut self, auth: AuthMethod) -> Self {
        self.auth = auth;
        self
    }

    pub fn ssl(mut self, ssl: bool) -> Self {
        self.ssl = ssl;
        self
    }

    pub fn synchronous_standby_names(mut self, names: impl Into<String>) -> Self {
        self.synchronous_standby_names = Some(names.into());
        self
    }

    /// Adds one `postgresql.conf` setting (see [`PgOptions::extra_conf`]).
    pub fn conf(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_conf.push((name.into(), value.into()));
        self
    }

    pub fn major(mut self, major: u32) -> Self {
        self.major = Some(major);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the instance serves TLS.
    pub fn tls_enabled(&self) -> bool {
        self.ssl || self.auth == AuthMethod::Cert
    }
}

/// Name of the harness's settings file inside the data directory.
pub(crate) const HARNESS_CONF: &str = "klio_harness.conf";

/// The line appended to initdb's `postgresql.conf` (relative includes resolve against the
/// including file's directory, so a standby's copy points at its own file).
pub(crate) fn include_line() -> String {
    format!("\n# Added by klio-harness\ninclude '{HARNESS_CONF}'\n")
}

/// Contents of `klio_harness.conf`.
pub(crate) fn harness_conf(
    opts: &PgOptions,
    port: u16,
    socket_dir: &Path,
    tls: Option<&TlsFiles>,
    primary_conninfo: Option<&str>,
) -> String {
    let mut settings: Vec<(&str, String)> = vec![
        ("port", port.to_string()),
        ("listen_addresses", "127.0.0.1".to_owned()),
        ("unix_socket_directories", path(socket_dir)),
        ("wal_level", "replica".to_owned()),
        ("max_wal_senders", "10".to_owned()),
        ("max_replication_slots", "10".to_owned()),
        ("hot_standby", "on".to_owned()),
        // Durability is under test: never fsync = off.
        ("fsync", "on".to_owned()),
        ("max_connections", "40".to_owned()),
        ("shared_buffers", "16MB".to_owned()),
        (
            "password_encryption",
            opts.auth.password_encryption().to_owned(),
        ),
        ("lc_messages", "C".to_owned()),
        ("log_line_prefix", "%m [%p] %q%u@%d ".to_owned()),
        ("log_connections", "on".to_owned()),
        ("log_disconnections", "on".to_owned()),
        ("log_replication_commands", "on".to_owned()),
    ];
    if let Some(conninfo) = primary_conninfo {
        // Written by us rather than by `pg_basebackup -R`: a newer pg_basebackup writes
        // options (e.g. sslsni) that an older server's libpq rejects.
        settings.push(("primary_conninfo", conninfo.to_owned()));
    }
    if let Some(names) = &opts.synchronous_standby_names {
        settings.push(("synchronous_standby_names", names.clone()));
    }
    match tls {
        Some(tls) => {
            settings.push(("ssl", "on".to_owned()));
            settings.push(("ssl_cert_file", path(&tls.server_cert)));
            settings.push(("ssl_key_file", path(&tls.server_key)));
            settings.push(("ssl_ca_file", path(&tls.ca_cert)));
        }
        None => settings.push(("ssl", "off".to_owned())),
    }
    let mut text = String::from("# Written by klio-harness; rewritten on every start.\n");
    for (name, value) in settings.iter().map(|(n, v)| (*n, v.as_str())).chain(
        opts.extra_conf
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str())),
    ) {
        let _ = writeln!(text, "{name} = {}", quote(value));
    }
    text
}

/// Contents of `pg_hba.conf`.
pub(crate) fn pg_hba(opts: &PgOptions) -> String {
    let host = if opts.tls_enabled() {
        "hostssl"
    } else {
        "host"
    };
    let method = opts.auth.hba_method();
    format!(
        "# Written by klio-harness.\n\
         local all         {SUPERUSER} trust\n\
         local replication {SUPERUSER} trust\n\
         host  all         {SUPERUSER} 127.0.0.1/32 trust\n\
         host  replication {SUPERUSER} 127.0.0.1/32 trust\n\
         {host} replication {REPLICATION_USER} 127.0.0.1/32 {method}\n\
         {host} all all 127.0.0.1/32 {method}\n"
    )
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A `postgresql.conf` string literal (any setting accepts its value quoted).
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
    }

    #[test]
    fn hba_uses_hostssl_and_cert_for_cert_auth() {
        let hba = pg_hba(&PgOptions::new().auth(AuthMethod::Cert));
        assert!(hba.contains("hostssl replication streaming_replica 127.0.0.1/32 cert"));
        assert!(hba.contains("hostssl all all 127.0.0.1/32 cert"));
    }

    #[test]
    fn md5_stores_md5_passwords() {
        let conf = harness_conf(
            &PgOptions::new().auth(AuthMethod::Md5),
            5432,
            Path::new("/s"),
            None,
            None,
        );
        assert!(conf.contains("password_encryption = 'md5'"));
        assert!(conf.contains("ssl = 'off'"));
    }
}

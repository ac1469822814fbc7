//! Helpers for Klio's end-to-end tests: run a Klio server process against real
//! PostgreSQL instances (started by `klio-harness`), talk to its HTTP API, run
//! its client commands.
//!
//! Each [`KlioServer`] owns a temp dir with its data dir, config, master key and
//! tokens, listens on its own free port, and is killed on drop.
//!
//! Writes only in each server's temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use klio_core::Lsn;
use serde_json::Value;

pub use klio_harness::{AuthMethod, PgInstance, PgOptions, StopMode, TestCa};

mod drill;
mod http;
mod wal_compare;

pub use drill::{table_checksums, Restored};
pub use http::{http_get, http_post_json, https_get, served_certificate};
pub use wal_compare::Compared;

/// The `klio` binary under test (built from this package's `klio-e2e` target).
pub fn klio_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KLIO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/klio-e2e
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    dir.join("klio-e2e")
}

/// One cluster in a test server's config.
#[derive(Debug, Clone)]
pub struct ClusterConf {
    pub name: String,
    pub conninfo: String,
    pub slot: String,
    pub token: String,
    /// Extra `key = value` lines for this cluster's table (e.g. `backup_schedule = "* * * * *"`).
    pub extra: Vec<String>,
}

impl ClusterConf {
    pub fn new(name: &str, conninfo: impl Into<String>) -> ClusterConf {
        ClusterConf {
            name: name.into(),
            conninfo: conninfo.into(),
            slot: "klio".into(),
            token: format!("token-{name}-{}", random_hex(16)),
            extra: Vec::new(),
        }
    }
}

fn random_hex(n: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for _ in 0..n {
        let _ = write!(s, "{:02x}", rand::random::<u8>());
    }
    s
}

/// Writes (or rewrites) a secret file with mode 0600, as the server requires.
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A Klio server process under test.
pub struct KlioServer {
    dir: tempfile::TempDir,
    port: u16,
    clusters: Vec<ClusterConf>,
    child: Option<Child>,
    starts: u32,
    env: Vec<(String, String)>,
    /// With TLS: the CA that signed the server's certificate and is its `client_ca_file`.
    ca: Option<TestCa>,
    /// Extra top-level `key = value` lines of the config.
    top_extra: Vec<String>,
}

impl KlioServer {
    /// Writes a config for `clusters` (fresh master key) and starts the server.
    pub fn start(clusters: Vec<ClusterConf>) -> Result<KlioServer> {
        KlioServer::start_prepared(clusters, |_| Ok(()))
    }

    /// [`KlioServer::start`] with extra top-level config lines (e.g. a `[tier2]` table).
    pub fn start_with(clusters: Vec<ClusterConf>, top: Vec<String>) -> Result<KlioServer> {
        KlioServer::start_inner_with(clusters, false, top, None, |_| Ok(()))
    }

    /// [`KlioServer::start_with`] with the master key of `other` (e.g. a read-only server
    /// on the bucket `other` fills).
    pub fn start_with_key_of(
        other: &KlioServer,
        clusters: Vec<ClusterConf>,
        top: Vec<String>,
    ) -> Result<KlioServer> {
        let key = std::fs::read_to_string(other.master_key_path())?;
        KlioServer::start_inner_with(clusters, false, top, Some(key), |_| Ok(()))
    }

    /// [`KlioServer::start`] with `[tls]`: a fresh CA signs the server's certificate
    /// (`127.0.0.1`, `localhost`) and client certificates are accepted (optional).
    pub fn start_tls(clusters: Vec<ClusterConf>) -> Result<KlioServer> {
        KlioServer::start_inner(clusters, true, |_| Ok(()))
    }

    /// [`KlioServer::start`], running `prepare(data_dir)` before the first start (e.g. to
    /// mount a small file system inside the data directory).
    pub fn start_prepared(
        clusters: Vec<ClusterConf>,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<KlioServer> {
        KlioServer::start_inner(clusters, false, prepare)
    }

    fn start_inner(
        clusters: Vec<ClusterConf>,
        tls: bool,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<KlioServer> {
        KlioServer::start_inner_with(clusters, tls, Vec::new(), None, prepare)
    }

    fn start_inner_with(
        clusters: Vec<ClusterConf>,
        tls: bool,
        top_extra: Vec<String>,
        master_key: Option<String>,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<KlioServer> {
        let dir = tempfile::Builder::new().prefix("klio-e2e-").tempdir()?;
        let port = free_port()?;
        let mut s = KlioServer {
            dir,
            port,
            clusters,
            child: None,
            starts: 0,
            env: Vec::new(),
            ca: None,
            top_extra,
        };
        if tls {
            let ca = TestCa::new("klio API test CA")?;
            std::fs::create_dir_all(s.tls_dir())?;
            ca.write_cert(&s.ca_cert())?;
            let (cert, key) = ca.server_cert()?;
            klio_harness::write_file(&s.tls_dir().join("server.crt"), &cert, 0o644)?;
            klio_harness::write_file(&s.tls_dir().join("server.key"), &key, 0o600)?;
            s.ca = Some(ca);
        }
        let key = master_key.unwrap_or_else(|| random_hex(32));
        write_secret(&s.master_key_path(), &key)?;
        write_secret(&s.metrics_token_path(), &s.metrics_token())?;
        s.write_config()?;
        std::fs::create_dir_all(s.data_dir())?;
        prepare(&s.data_dir())?;
        s.restart()?;
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the server keeps each kind of file in its data directory (the names the
    /// server itself uses, from `klio_core::layout`).
    pub fn layout(&self) -> klio_core::layout::DataDir {
        klio_core::layout::DataDir::new(self.data_dir())
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }

    /// The file holding the token `/metrics` wants (`metrics_token_file`).
    pub fn metrics_token_path(&self) -> PathBuf {
        self.dir.path().join("metrics.token")
    }

    /// The token `/metrics` wants (derived from the port, stable across restarts).
    pub fn metrics_token(&self) -> String {
        format!("metrics-token-{}-0123456789", self.port)
    }

    /// `GET /metrics` with the metrics token; the body (fails on a non-200 answer).
    pub fn metrics(&self) -> Result<String> {
        let (code, body) = self.request("/metrics", None, Some(&self.metrics_token()))?;
        ensure!(
            code == 200,
            "GET /metrics: HTTP {code}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(String::from_utf8(body)?)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("klio.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("klio.log")
    }

    pub fn token_file(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(format!("{cluster}.token"))
    }

    pub fn token(&self, cluster: &str) -> String {
        self.clusters
            .iter()
            .find(|c| c.name == cluster)
            .map(|c| c.token.clone())
            .unwrap_or_default()
    }

    /// The klio binary and `cluster`'s token copied where the `postgres` account can use
    /// them (a restore_command runs as that account).
    pub fn tools_for_postgres(&self, cluster: &str) -> Result<ClientTools> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("klio-restore-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let bin = dir.path().join("klio");
        std::fs::copy(klio_bin(), &bin)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        let token = dir.path().join("token");
        std::fs::write(&token, self.token(cluster))?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644))?;
        Ok(ClientTools {
            _dir: dir,
            bin,
            token,
        })
    }

    /// `restore_command` calling `klio wal-restore` for `cluster` with `tools`.
    pub fn restore_command(&self, cluster: &str, tools: &ClientTools) -> String {
        format!(
            "{} wal-restore --server {} --cluster {cluster} --token-file {} %f %p",
            tools.bin.display(),
            self.url(),
            tools.token.display()
        )
    }

    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The API's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where a TLS server's PEM files live.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// The CA certificate of a TLS server (for `--cacert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }

    /// Issues a client certificate from the server's client CA into [`KlioServer::tls_dir`]
    /// as `<name>.crt`/`<name>.key`; returns their paths.
    pub fn issue_client_cert(
        &self,
        name: &str,
        common_name: &str,
        dns: &[&str],
    ) -> Result<(PathBuf, PathBuf)> {
        let ca = self
            .ca
            .as_ref()
            .context("the server was not started with TLS")?;
        ca.write_client_cert(&self.tls_dir(), name, common_name, dns)
    }

    /// GET `path` on this server with optional credentials; over TLS the server's CA is
    /// trusted. Returns (status, body).
    pub fn request(
        &self,
        path: &str,
        client_cert: Option<(&Path, &Path)>,
        bearer: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.url());
        match self.ca {
            Some(_) => https_get(&url, &self.ca_cert(), client_cert, bearer),
            None => http_get(&url, bearer),
        }
    }

    /// Extra top-level config lines for the next (re)write of the config.
    pub fn top_level_mut(&mut self) -> &mut Vec<String> {
        &mut self.top_extra
    }

    pub fn clusters_mut(&mut self) -> &mut Vec<ClusterConf> {
        &mut self.clusters
    }

    /// (Re)writes the config file and token files from `clusters`.
    pub fn write_config(&self) -> Result<()> {
        let mut toml = format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{}\"\nmaster_key_file = {:?}\nmetrics_token_file = {:?}\n",
            self.data_dir().display().to_string(),
            self.port,
            self.master_key_path().display().to_string(),
            self.metrics_token_path().display().to_string()
        );
        for line in &self.top_extra {
            toml.push_str(line);
            toml.push('\n');
        }
        if self.ca.is_some() {
            let d = self.tls_dir();
            toml.push_str(&format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                d.join("server.crt").display().to_string(),
                d.join("server.key").display().to_string(),
            ));
        }
        for c in &self.clusters {
            let tf = self.token_file(&c.name);
            write_secret(&tf, &c.token)?;
            toml.push_str(&format!(
                "\n[[cluster]]\nname = {:?}\ntoken_file = {:?}\n",
                c.name,
                tf.display().to_string()
            ));
            // A read-only server's clusters have no conninfo (nor slot).
            if !c.conninfo.is_empty() {
                toml.push_str(&format!(
                    "conninfo = {:?}\nslot = {:?}\n",
                    c.conninfo, c.slot
                ));
            }
            // With TLS, every cluster trusts the test CA for its client certificates
            // unless the test gives it its own with an `extra` line.
            if self.ca.is_some() && !c.extra.iter().any(|l| l.starts_with("client_ca_file")) {
                toml.push_str(&format!(
                    "client_ca_file = {:?}\n",
                    self.ca_cert().display().to_string()
                ));
            }
            for line in &c.extra {
                toml.push_str(line);
                toml.push('\n');
            }
        }
        std::fs::write(self.config_path(), toml)?;
        Ok(())
    }

    /// Environment for the next starts (e.g. `KLIO_FAILPOINT`); `None` removes it.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    /// Starts the server process without waiting for it to become healthy.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("server already running");
        }
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(klio_bin())
            .arg("server")
            .arg("--config")
            .arg(self.config_path())
            .env(
                "KLIO_LOG",
                "info,klio=debug,klio_receiver=debug,klio_pgwire=debug",
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", klio_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the server process to exit by itself (a failpoint); returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let Some(c) = self.child.as_mut() else {
            return Ok(true);
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if c.try_wait()?.is_some() {
                self.child = None;
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    }

    /// Starts the server process (again) and waits until `/healthz` answers.
    pub fn restart(&mut self) -> Result<()> {
        let mut log_from = self.log().len();
        let mut port_changes = 0;
        self.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                // The port was free when picked; another test may have bound it since.
                // Then the server names the `listen` setting and the port in use: start
                // again on another free port (only the `listen` line of the config file
                // changes, so a test's own edits to it stay).
                let this_start = self.log().get(log_from..).unwrap_or_default().to_owned();
                let old_listen = format!("listen = \"127.0.0.1:{}\"\n", self.port);
                let config = std::fs::read_to_string(self.config_path())?;
                if port_changes < 5
                    && this_start.contains("the `listen` setting")
                    && this_start.contains("Address already in use")
                    && config.contains(&old_listen)
                {
                    port_changes += 1;
                    self.port = free_port()?;
                    let new_listen = format!("listen = \"127.0.0.1:{}\"\n", self.port);
                    std::fs::write(self.config_path(), config.replace(&old_listen, &new_listen))?;
                    log_from = self.log().len();
                    self.spawn()?;
                    continue;
                }
                bail!(
                    "klio server exited during startup ({status}); log:\n{}",
                    self.log_tail(40)
                );
            }
            // Asked only once our process listens: the port was free when picked, and
            // another test's server (or anything else) may have taken it since.
            let ours = self.child.as_ref().map(std::process::Child::id);
            if ours.is_some_and(|pid| klio_harness::net::listens_on(pid, self.port))
                && self.request("/healthz", None, None).ok().map(|(c, _)| c) == Some(200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "klio server did not become healthy; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `klio server` expecting it to fail at startup; returns its exit status and output.
    pub fn start_expecting_failure(&self) -> Result<Output> {
        let mut cmd = Command::new(klio_bin());
        cmd.arg("server").arg("--config").arg(self.config_path());
        let out = run_with_timeout(cmd, Duration::from_secs(60))?;
        Ok(out)
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the server.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(true);
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st.success());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// GET a cluster endpoint with that cluster's token; returns (status, body).
    pub fn get(&self, cluster: &str, path: &str) -> Result<(u16, Vec<u8>)> {
        self.request(path, None, Some(&self.token(cluster)))
    }

    /// The cluster's status JSON.
    pub fn status(&self, cluster: &str) -> Result<Value> {
        let (code, body) = self.get(cluster, &format!("/v1/clusters/{cluster}/status"))?;
        if code != 200 {
            bail!(
                "status of {cluster}: HTTP {code}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Polls the cluster status until `pred` holds.
    pub fn wait_status(
        &self,
        cluster: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_status_every(cluster, timeout, Duration::from_millis(100), what, pred)
    }

    /// [`KlioServer::wait_status`], asking every `every` (benchmarks time with it).
    pub fn wait_status_every(
        &self,
        cluster: &str,
        timeout: Duration,
        every: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Ok(v) = self.status(cluster) {
                if pred(&v) {
                    return Ok(v);
                }
                last = v;
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; last status {last}; log:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(every);
        }
    }

    /// Waits until this server streams `cluster` and `pg` counts it (application name
    /// `klio`) as its synchronous standby.
    pub fn wait_sync_standby(&self, pg: &PgInstance, cluster: &str) -> Result<()> {
        self.wait_status(cluster, Duration::from_secs(60), "streaming", |v| {
            v["state"] == "streaming"
        })?;
        wait_until(
            Duration::from_secs(30),
            "klio to be the sync standby",
            || {
                Ok(pg.psql(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'klio'",
                )? == "sync")
            },
        )
    }

    /// Waits until the server's flushed LSN for `cluster` reaches `lsn` (text `X/Y`).
    pub fn wait_flushed(&self, cluster: &str, lsn: &str, timeout: Duration) -> Result<Value> {
        self.wait_flushed_every(cluster, lsn, timeout, Duration::from_millis(100))
    }

    /// [`KlioServer::wait_flushed`], asking every `every`.
    pub fn wait_flushed_every(
        &self,
        cluster: &str,
        lsn: &str,
        timeout: Duration,
        every: Duration,
    ) -> Result<Value> {
        let target = parse_lsn(lsn)?;
        self.wait_status_every(
            cluster,
            timeout,
            every,
            &format!("flush to reach {lsn}"),
            |v| {
                v["flushed_lsn"]
                    .as_str()
                    .and_then(|s| parse_lsn(s).ok())
                    .is_some_and(|f| f >= target)
            },
        )
    }

    /// Waits until Klio streams `cluster` on timeline `tli` and has it durable up to `lsn`.
    pub fn wait_timeline_flushed(
        &self,
        cluster: &str,
        tli: u32,
        lsn: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let target = parse_lsn(lsn)?;
        self.wait_status(
            cluster,
            timeout,
            &format!("timeline {tli} durable up to {lsn}"),
            |v| {
                v["timeline"] == tli
                    && v["flushed_lsn"]
                        .as_str()
                        .and_then(|s| parse_lsn(s).ok())
                        .is_some_and(|f| f >= target)
            },
        )
    }

    /// Names of the WAL files Klio lists for `cluster` (history, sealed and partial).
    pub fn wal_names(&self, cluster: &str) -> Result<Vec<String>> {
        let (code, body) = self.get(cluster, &format!("/v1/clusters/{cluster}/wal"))?;
        if code != 200 {
            bail!(
                "list wal of {cluster}: HTTP {code}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body)?;
        let files = v["files"].as_array().context("list wal: no files array")?;
        Ok(files
            .iter()
            .filter_map(|e| e["name"].as_str().map(String::from))
            .collect())
    }

    /// Names of the sealed segments Klio lists for `cluster`.
    pub fn sealed_segments(&self, cluster: &str) -> Result<Vec<String>> {
        Ok(self
            .wal_names(cluster)?
            .into_iter()
            .filter(|n| n.len() == 24)
            .collect())
    }

    /// Runs `klio wal-restore FILE DEST` for `cluster` with its token file.
    pub fn wal_restore(&self, cluster: &str, file: &str, dest: &Path) -> Result<Output> {
        self.wal_restore_with_token(cluster, file, dest, &self.token_file(cluster))
    }

    pub fn wal_restore_with_token(
        &self,
        cluster: &str,
        file: &str,
        dest: &Path,
        token_file: &Path,
    ) -> Result<Output> {
        let mut cmd = Command::new(klio_bin());
        cmd.arg("wal-restore")
            .arg(file)
            .arg(dest)
            .env("KLIO_SERVER", self.url())
            .env("KLIO_CLUSTER", cluster)
            .env("KLIO_TOKEN_FILE", token_file);
        if self.ca.is_some() {
            cmd.env("KLIO_CACERT", self.ca_cert());
        }
        run_with_timeout(cmd, Duration::from_secs(60))
    }

    /// Runs a client subcommand against this server (e.g. `["list", "wal", "--cluster", "a"]`).
    pub fn client(&self, args: &[&str]) -> Result<Output> {
        self.client_with_timeout(args, Duration::from_secs(60))
    }

    /// [`KlioServer::client`] for commands that may run long (`backup --wait`, `verify`).
    pub fn client_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new(klio_bin());
        cmd.args(args).env("KLIO_SERVER", self.url());
        if self.ca.is_some() {
            cmd.env("KLIO_CACERT", self.ca_cert());
        }
        run_with_timeout(cmd, timeout)
    }

    /// `klio <args> --cluster <cluster> --token-file <its token>`, with a long timeout;
    /// fails unless the command exits 0. Returns stdout.
    pub fn client_ok(&self, cluster: &str, args: &[&str]) -> Result<String> {
        let token = self.token_file(cluster);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cluster", cluster, "--token-file"]);
        let token = token.to_str().context("token path is not UTF-8")?;
        all.push(token);
        let out = self.client_with_timeout(&all, Duration::from_secs(1800))?;
        ensure!(
            out.status.success(),
            "klio {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for KlioServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- klio server log ({}) ---\n{}",
                self.log_path().display(),
                self.log_tail(80)
            );
        }
    }
}

fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Set to `1` to let a test that needs root (it mounts a tmpfs) pass without running
/// when it cannot set itself up. CI runs as root and never sets it.
pub const ALLOW_UNPRIVILEGED: &str = "KLIO_TEST_ALLOW_UNPRIVILEGED";

/// A set-up step that needs privileges failed with `err`: the test fails, naming the
/// cause and the opt-out, unless [`ALLOW_UNPRIVILEGED`] is `1`; then this says that the
/// test did not run and returns `Ok`, and the caller returns without testing.
pub fn privileged_setup_failed(err: anyhow::Error) -> Result<()> {
    if std::env::var(ALLOW_UNPRIVILEGED).as_deref() == Ok("1") {
        eprintln!("NOT RUN ({ALLOW_UNPRIVILEGED}=1): {err:#}");
        return Ok(());
    }
    Err(err.context(format!(
        "this test needs root, as in CI; run it as root, or set {ALLOW_UNPRIVILEGED}=1 to let it pass without running"
    )))
}

/// The `start=` positions of the "streaming WAL" lines in a server log, oldest first:
/// where Klio started streaming each time.
pub fn stream_starts(log: &str) -> Vec<Lsn> {
    log.lines()
        .filter(|l| l.contains("streaming WAL"))
        .filter_map(|l| l.split("start=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|lsn| parse_lsn(lsn).ok())
        .collect()
}

/// An LSN as `psql` or the API prints it (`X/Y`; surrounding whitespace ignored), by
/// [`Lsn`]'s parser.
pub fn parse_lsn(s: &str) -> Result<Lsn> {
    Ok(s.trim().parse::<Lsn>()?)
}

/// The `klio` binary and a token where the `postgres` account can use them; see
/// [`KlioServer::tools_for_postgres`].
pub struct ClientTools {
    _dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub token: PathBuf,
}

/// A PostgreSQL holding a `pgbench -i -s scale` database, checkpointed (benchmarks).
pub fn pgbench_database(scale: u32) -> Result<PgInstance> {
    let pg = PgInstance::start(
        PgOptions::new()
            .conf("max_wal_size", "4GB")
            .conf("checkpoint_timeout", "1h"),
    )?;
    eprintln!("creating the database: pgbench -i -s {scale} ...");
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    pg.psql("CHECKPOINT")?;
    Ok(pg)
}

/// Bytes in the files under `p` (recursively; unreadable entries count 0).
pub fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Peak resident set size (VmHWM, KiB) of process `pid`.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Waits until `standby` has replayed the primary's WAL up to `lsn`.
pub fn wait_replayed(standby: &PgInstance, lsn: &str) -> Result<()> {
    let target = parse_lsn(lsn)?;
    wait_until(
        Duration::from_secs(60),
        &format!("the standby to replay up to {lsn}"),
        || Ok(parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()")?)? >= target),
    )
}

pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("waiting for {what}")))
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

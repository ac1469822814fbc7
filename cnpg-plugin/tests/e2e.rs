//! End to end without Kubernetes: a real PostgreSQL streamed by a real Klio Server;
//! the instance sidecar's Backup, then the restore sidecar's RestoreJobHooks.Restore
//! into an empty PGDATA, and PostgreSQL started on it with the returned configuration,
//! its restore_command going through WAL.Restore over the unix socket
//! (`klio-cnpg-plugin wal-restore` standing in for CloudNativePG's instance manager).
//! It must recover to the target time with table checksums equal to the source's.
//!
//! The Klio Server binary: `$KLIO_BIN`, else `klio-e2e` or `klio` beside this test's
//! target directory (a workspace build has them). The sidecars run as the `postgres`
//! account when the test runs as root, as they run as PostgreSQL's user in a Pod.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use klio_api::client::{Client, Credentials};
use klio_cnpg_plugin::proto::backup::backup_client::BackupClient;
use klio_cnpg_plugin::proto::backup::BackupRequest;
use klio_cnpg_plugin::proto::identity::identity_client::IdentityClient;
use klio_cnpg_plugin::proto::identity::ProbeRequest;
use klio_cnpg_plugin::proto::wal::restore_job_hooks_client::RestoreJobHooksClient;
use klio_cnpg_plugin::proto::wal::wal_client::WalClient;
use klio_cnpg_plugin::proto::wal::{RestoreRequest, WalRestoreRequest};
use klio_cnpg_plugin::PLUGIN_NAME;
use klio_harness::{PgInstance, PgOptions};
use serde_json::json;

const CLUSTER: &str = "pg-e2e";
const SECRET: &str = "pg-e2e-klio";

/// The Klio Server binary (see the module documentation).
fn klio_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KLIO_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test>-<hash> → target/<profile>/
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for name in ["klio-e2e", "klio"] {
        if dir.join(name).is_file() {
            return dir.join(name);
        }
    }
    panic!(
        "no Klio Server binary: neither klio-e2e nor klio in {}; build the workspace (cargo build) or set KLIO_BIN",
        dir.display()
    )
}

/// This crate's binary, built by cargo for integration tests.
fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_klio-cnpg-plugin"))
}

/// The account the sidecars and PostgreSQL run as: `postgres` when we are root.
fn postgres_ids() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("running as root: the postgres account must exist");
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn chown(p: &Path) {
    if let Some((u, g)) = postgres_ids() {
        std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut &f, &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_private(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Waits until `f` is true, polling; the condition is what is awaited.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Klio Server streaming `pg` as cluster [`CLUSTER`].
struct KlioServer {
    _dir: tempfile::TempDir,
    _child: Killed,
    url: String,
    token: String,
    log: PathBuf,
}

impl KlioServer {
    async fn start(pg: &PgInstance) -> KlioServer {
        let dir = tempfile::Builder::new()
            .prefix("klio-cnpg-e2e-")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path();
        let token = format!("token-{}", random_hex(16));
        write_private(&d.join("master.key"), &random_hex(32));
        write_private(&d.join("metrics.token"), &random_hex(16));
        write_private(&d.join("cluster.token"), &token);
        std::fs::create_dir_all(d.join("data")).unwrap();
        let config = format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nmaster_key_file = {:?}\nmetrics_token_file = {:?}\n\n[[cluster]]\nname = {CLUSTER:?}\ntoken_file = {:?}\nconninfo = {:?}\nslot = \"klio\"\n",
            d.join("data").display().to_string(),
            d.join("master.key").display().to_string(),
            d.join("metrics.token").display().to_string(),
            d.join("cluster.token").display().to_string(),
            pg.replication_conninfo(),
        );
        std::fs::write(d.join("klio.toml"), config).unwrap();
        let log = d.join("klio.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(klio_bin())
            .arg("server")
            .arg("--config")
            .arg(d.join("klio.toml"))
            .env("KLIO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", klio_bin().display()));
        let s = KlioServer {
            _dir: dir,
            _child: Killed(child),
            url: format!("http://127.0.0.1:{port}"),
            token,
            log,
        };
        let c = s.client();
        wait_for(
            "the Klio Server to answer",
            Duration::from_secs(60),
            || async { c.status().await.is_ok() },
        )
        .await;
        s
    }

    fn client(&self) -> Client {
        let token = self._dir.path().join("cluster.token");
        Client::connect(
            &self.url,
            &Credentials {
                token_file: Some(token),
                ..Credentials::default()
            },
        )
        .unwrap()
    }

    /// Waits until the server has durably received `pg`'s WAL up to its current end.
    async fn wait_flushed(&self, pg: &PgInstance) {
        let lsn: klio_core::Lsn = pg
            .psql("SELECT pg_current_wal_flush_lsn()")
            .unwrap()
            .parse()
            .unwrap();
        let c = self.client();
        let cluster: klio_core::ClusterName = CLUSTER.parse().unwrap();
        wait_for(
            "the Klio Server to flush the WAL",
            Duration::from_secs(60),
            || async {
                c.status()
                    .await
                    .ok()
                    .and_then(|s| s.clusters.into_iter().find(|v| v.cluster == cluster))
                    .and_then(|v| v.flushed_lsn)
                    .is_some_and(|f| f >= lsn)
            },
        )
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A sidecar process on its own socket, with the plugin Secret mounted as files.
struct Sidecar {
    _child: Killed,
    socket: PathBuf,
}

/// A directory the sidecars and PostgreSQL's account can use.
fn shared_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(d.path());
    d
}

/// This crate's binary copied where the `postgres` account can run it.
fn plugin_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("klio-cnpg-plugin");
    if !bin.exists() {
        std::fs::copy(plugin_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

async fn start_sidecar(dir: &Path, server: &KlioServer, args: &[&str], pgdata: &Path) -> Sidecar {
    let creds = dir.join("credentials");
    std::fs::create_dir_all(creds.join(SECRET)).unwrap();
    write_private(&creds.join(SECRET).join("token"), &server.token);
    for p in [
        creds.clone(),
        creds.join(SECRET),
        creds.join(SECRET).join("token"),
    ] {
        chown(&p);
    }
    let socket = dir.join(format!("{}-{}", args[0], PLUGIN_NAME));
    let mut cmd = Command::new(plugin_copy(dir));
    cmd.args(args)
        .arg("--socket")
        .arg(&socket)
        .arg("--pgdata")
        .arg(pgdata)
        .arg("--credentials-dir")
        .arg(&creds)
        .env("KLIO_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{}.log", args[0]))).unwrap());
    if let Some((u, g)) = postgres_ids() {
        cmd.uid(u).gid(g);
    }
    let child = Killed(cmd.spawn().unwrap());
    let s = Sidecar {
        _child: child,
        socket,
    };
    wait_for(
        "the sidecar to answer Probe",
        Duration::from_secs(30),
        || async {
            match klio_cnpg_plugin::unix_channel(&s.socket).await {
                Ok(ch) => IdentityClient::new(ch)
                    .probe(ProbeRequest {})
                    .await
                    .is_ok_and(|r| r.into_inner().ready),
                Err(_) => false,
            }
        },
    )
    .await;
    s
}

fn params(server: &KlioServer) -> serde_json::Value {
    json!({"server": server.url, "cluster": CLUSTER, "secret": SECRET})
}

fn table_checksums(pg: &PgInstance) -> String {
    pg.psql("SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM t")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_then_restore_job_recovers_to_the_target_time_through_wal_restore() {
    let pg = PgInstance::start(PgOptions::new()).unwrap();
    pg.psql("CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
        .unwrap();
    let klio = KlioServer::start(&pg).await;
    klio.wait_flushed(&pg).await;

    // --- Backup through the instance sidecar.
    let work = shared_dir("klio-cnpg-e2e-");
    let instance = start_sidecar(work.path(), &klio, &["instance"], pg.data_dir()).await;
    let own = json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
        "metadata": {"name": CLUSTER, "namespace": "db"},
        "spec": {"plugins": [{"name": PLUGIN_NAME, "parameters": params(&klio)}]},
        "status": {"currentPrimary": "pg-e2e-1"},
    });
    let backup_object = json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
        "metadata": {"name": "nightly-1", "namespace": "db"},
        "spec": {"cluster": {"name": CLUSTER}, "method": "plugin", "online": true,
                 "onlineConfiguration": {"immediateCheckpoint": true},
                 "pluginConfiguration": {"name": PLUGIN_NAME}},
    });
    let ch = klio_cnpg_plugin::unix_channel(&instance.socket)
        .await
        .unwrap();
    let b = BackupClient::new(ch)
        .backup(BackupRequest {
            cluster_definition: serde_json::to_vec(&own).unwrap(),
            backup_definition: serde_json::to_vec(&backup_object).unwrap(),
            parameters: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("Backup: {e:?}\nKlio Server log:\n{}", klio.log()))
        .into_inner();
    let label = String::from_utf8(b.backup_label_file.clone()).unwrap();
    assert!(
        label.contains(&format!(
            "START WAL LOCATION: {} (file {})",
            b.begin_lsn, b.begin_wal
        )),
        "begin LSN {} and WAL {} as backup_label states them:\n{label}",
        b.begin_lsn,
        b.begin_wal
    );
    assert!(label.contains("LABEL: nightly-1"), "{label}");
    assert!(b.online);
    assert_eq!(b.backup_name, "nightly-1");
    assert!(b.started_at > 0 && b.stopped_at >= b.started_at);
    let (begin, end): (klio_core::Lsn, klio_core::Lsn) =
        (b.begin_lsn.parse().unwrap(), b.end_lsn.parse().unwrap());
    assert!(begin <= end, "{begin} <= {end}");
    let current: klio_core::Lsn = pg
        .psql("SELECT pg_current_wal_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        end <= current,
        "the backup ends ({end}) before PostgreSQL's current WAL ({current})"
    );
    // The end WAL file holds the end LSN (16 MB segments here).
    let seg = u64::from_str_radix(&b.end_wal[16..24], 16).unwrap();
    assert_eq!(
        seg,
        (end.0 % (1 << 32)) >> 24,
        "end WAL {} for {end}",
        b.end_wal
    );
    // The server agrees.
    let view = klio
        .client()
        .backup(&CLUSTER.parse().unwrap(), &b.backup_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(view.start_lsn, Some(begin));
    assert_eq!(view.end_lsn, Some(end));

    // --- After the backup: rows to keep, the target time, rows to leave out.
    pg.psql("INSERT INTO t SELECT g, 'kept' FROM generate_series(2001, 3000) g")
        .unwrap();
    let expected = table_checksums(&pg);
    let target = pg
        .psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
        .unwrap();
    pg.psql("INSERT INTO t SELECT g, 'after the target' FROM generate_series(3001, 4000) g")
        .unwrap();
    pg.psql("SELECT pg_switch_wal()").unwrap();
    klio.wait_flushed(&pg).await;

    // --- The restore Job: its sidecar fills an empty PGDATA ...
    let mut restored = PgInstance::empty(PgOptions::new()).unwrap();
    let tools = shared_dir("klio-cnpg-tools-");
    let bin = plugin_copy(tools.path());
    let recovering = json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
        "metadata": {"name": "pg-restored", "namespace": "db"},
        "spec": {
            "bootstrap": {"recovery": {"source": "origin", "recoveryTarget": {"targetTime": target}}},
            "externalClusters": [{"name": "origin", "plugin": {"name": PLUGIN_NAME, "parameters": params(&klio)}}],
        },
        "status": {},
    });
    let definition = tools.path().join("cluster.json");
    std::fs::write(&definition, serde_json::to_vec(&recovering).unwrap()).unwrap();
    let socket = tools.path().join(format!("restore-{PLUGIN_NAME}"));
    let wal_restore = format!(
        "{} wal-restore --socket {} --cluster-definition {} %f %p",
        bin.display(),
        socket.display(),
        definition.display()
    );
    let restore_sidecar = start_sidecar(
        tools.path(),
        &klio,
        &["restore", "--wal-restore-command", &wal_restore],
        restored.data_dir(),
    )
    .await;
    assert_eq!(restore_sidecar.socket, socket);
    let ch = klio_cnpg_plugin::unix_channel(&socket).await.unwrap();
    let r = RestoreJobHooksClient::new(ch)
        .restore(RestoreRequest {
            cluster_definition: serde_json::to_vec(&recovering).unwrap(),
            check_empty_wal_archive: Some(false),
        })
        .await
        .unwrap_or_else(|e| panic!("Restore: {e:?}"))
        .into_inner();
    assert!(
        r.restore_config
            .contains(&format!("restore_command = '{wal_restore}'")),
        "{}",
        r.restore_config
    );
    assert!(r
        .restore_config
        .contains("recovery_target_action = 'promote'"));
    let data = restored.data_dir().to_path_buf();
    assert!(
        data.join("backup_label").is_file(),
        "the backup's backup_label is restored"
    );
    assert!(
        !data.join("recovery.signal").exists(),
        "recovery is CloudNativePG's to set up, not the plugin's"
    );

    // ... and the instance manager configures recovery as CloudNativePG does: the
    // plugin's restore_config, then the Cluster's recovery target, and recovery.signal.
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut auto,
        format!("\n{}recovery_target_time = '{target}'\n", r.restore_config).as_bytes(),
    )
    .unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    restored.start_restored(&[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while restored.psql("SELECT pg_is_in_recovery()").unwrap() != "f" {
        assert!(
            Instant::now() < deadline,
            "recovery did not end; log:\n{}",
            restored.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        table_checksums(&restored),
        expected,
        "the restored table is the source's at the target time; log:\n{}",
        restored.log_tail(40)
    );
    let log = restored.log_tail(200);
    assert!(
        log.contains("recovery stopping before commit"),
        "recovery stopped at the target, not at the end of the WAL:\n{log}"
    );
    // WAL.Restore prefetched segments into the spool beside PGDATA, as `klio wal-restore`.
    let spool = klio::wal_restore::prefetch::default_spool(&data);
    assert!(
        spool.is_dir(),
        "{} was created by the prefetcher",
        spool.display()
    );

    // A segment the Klio Server does not have is NotFound, and nothing is written.
    let dest = data.join("pg_wal").join("KLIO-NOT-FOUND");
    let e = WalClient::new(klio_cnpg_plugin::unix_channel(&socket).await.unwrap())
        .restore(WalRestoreRequest {
            cluster_definition: serde_json::to_vec(&recovering).unwrap(),
            source_wal_name: "0000000100000000000000F0".into(),
            destination_file_name: dest.display().to_string(),
            parameters: Default::default(),
            mode: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(!dest.exists());
}

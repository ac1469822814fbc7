//! The API against hostile clients and careless set-ups, on a real server streaming from
//! a real PostgreSQL: slow clients cannot hold connections or starve synchronous
//! commits; `/metrics` needs its own credential; secret files readable by others stop
//! the server; client certificates count only for the cluster whose CA issued them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_tests::{klio_bin, parse_lsn, ClusterConf, KlioServer, PgInstance, PgOptions, TestCa};

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// 500 connections that send half a request line are all closed within the header
/// timeout; while they are open, `/healthz` answers and synchronous commits on the
/// primary keep being acknowledged by Klio.
#[test]
fn slow_clients_are_closed_and_do_not_starve_the_server() -> Result<()> {
    const SLOW: usize = 500;
    const HEADER_TIMEOUT: u64 = 3;
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("slow", pg.replication_conninfo())])?;
    klio.stop()?;
    klio.top_level_mut()
        .push(format!("api_header_timeout_secs = {HEADER_TIMEOUT}"));
    klio.write_config()?;
    klio.restart()?;
    klio.wait_sync_standby(&pg, "slow")?;
    pg.psql("CREATE TABLE t (i int)")?;

    let opened = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(("127.0.0.1", klio.port()))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: klio")?;
        slow.push(s);
    }
    // While they hold their connections: the API answers and commits are acknowledged.
    let (code, body) = klio.request("/healthz", None, None)?;
    ensure!(code == 200 && body == b"ok", "healthz: {code}");
    for i in 0..20 {
        let t0 = Instant::now();
        let lsn = pg.psql(&format!(
            "INSERT INTO t VALUES ({i}); SELECT pg_current_wal_insert_lsn()"
        ))?;
        ensure!(
            t0.elapsed() < Duration::from_secs(2),
            "synchronous commit {i} took {:?} while slow clients were connected",
            t0.elapsed()
        );
        let flushed =
            pg.psql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'klio'")?;
        ensure!(
            parse_lsn(&flushed)? >= parse_lsn(&lsn)?,
            "commit {i} at {lsn} acknowledged but Klio reports flush {flushed}"
        );
    }
    // Every slow connection is closed by the server within the header timeout.
    let deadline = opened + Duration::from_secs(HEADER_TIMEOUT + 5);
    for (i, s) in slow.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a 408 or similar before the close is fine
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => {
                    anyhow::bail!(
                        "slow connection {i} still open {:?} after it was opened ({e})",
                        opened.elapsed()
                    )
                }
            }
        }
    }
    println!(
        "{SLOW} slow connections closed within {:?} (header timeout {HEADER_TIMEOUT} s)",
        opened.elapsed()
    );
    Ok(())
}

#[test]
fn metrics_need_the_metrics_token() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let klio = KlioServer::start(vec![ClusterConf::new("m", pg.replication_conninfo())])?;
    let (code, body) = klio.request("/metrics", None, None)?;
    ensure!(code == 401, "/metrics without credentials: {code}");
    ensure!(
        !String::from_utf8_lossy(&body).contains("klio_"),
        "a refused /metrics leaked metrics"
    );
    let (code, _) = klio.request("/metrics", None, Some(&klio.token("m")))?;
    ensure!(code == 401, "/metrics with a cluster's token: {code}");
    let metrics = klio.metrics()?;
    ensure!(metrics.contains("cluster=\"m\""), "{metrics}");
    Ok(())
}

/// The master key, a token file and the TLS key must be readable by their owner only;
/// `keys generate --output` creates such a file; the data directory's contents are 0700.
#[test]
fn secret_files_open_to_others_stop_the_server() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let mut klio = KlioServer::start_tls(vec![ClusterConf::new("s", pg.replication_conninfo())])?;
    klio.wait_status("s", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    let (layout, s) = (klio.layout(), "s".parse()?);
    for dir in [
        layout.catalog_dir(),
        layout.clusters_dir(),
        layout.cluster_dir(&s),
        layout.wal(&s).path().to_path_buf(),
    ] {
        let m = mode(&dir)?;
        ensure!(m == 0o700, "{} was created with mode {m:o}", dir.display());
    }
    klio.stop()?;
    let key = klio.tls_dir().join("server.key");
    for file in [klio.master_key_path(), klio.token_file("s"), key] {
        chmod(&file, 0o644)?;
        let out = klio.start_expecting_failure()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "started with {} at 0644",
            file.display()
        );
        ensure!(
            stderr.contains(&file.display().to_string())
                && stderr.contains(&format!("chmod 600 {}", file.display())),
            "the error does not name {} and the fix: {stderr}",
            file.display()
        );
        chmod(&file, 0o600)?;
    }
    klio.restart()?;

    let dir = tempfile::tempdir()?;
    let out_file = dir.path().join("master.key");
    let gen = |path: &Path| {
        Command::new(klio_bin())
            .args(["keys", "generate", "--output"])
            .arg(path)
            .output()
    };
    let o = gen(&out_file)?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ensure!(
        mode(&out_file)? == 0o600,
        "keys generate made {:o}",
        mode(&out_file)?
    );
    ensure!(std::fs::read_to_string(&out_file)?.trim().len() == 64);
    let before = std::fs::read(&out_file)?;
    let o = gen(&out_file)?;
    ensure!(
        !o.status.success(),
        "keys generate replaced an existing key"
    );
    ensure!(
        std::fs::read(&out_file)? == before,
        "the existing key changed"
    );
    Ok(())
}

/// Each cluster trusts its own client CA: a certificate issued by cluster a's CA that
/// names cluster b is no credential for b; b's own CA works; a DNS SAN names a cluster
/// only when it is one of the cluster's configured names.
#[test]
fn client_certificates_count_only_for_their_cluster_ca() -> Result<()> {
    let a = PgInstance::start(PgOptions::new())?;
    let b = PgInstance::start(PgOptions::new())?;
    let ca_b = TestCa::new("cluster b CA")?;
    let pki = tempfile::tempdir()?;
    let ca_b_file = pki.path().join("b-ca.crt");
    ca_b.write_cert(&ca_b_file)?;
    let mut conf_b = ClusterConf::new("b", b.replication_conninfo());
    conf_b.extra.push(format!(
        "client_ca_file = {:?}",
        ca_b_file.display().to_string()
    ));
    conf_b
        .extra
        .push("client_cert_dns_names = [\"klio-b.db.svc\"]".into());
    let klio = KlioServer::start_tls(vec![
        ClusterConf::new("a", a.replication_conninfo()),
        conf_b,
    ])?;
    // Issued by a's CA (the server's test CA), naming b by CN or by SAN.
    let a_for_b = klio.issue_client_cert("a-for-b", "x@b", &[])?;
    let a_san_b = klio.issue_client_cert("a-san-b", "x", &["b", "klio-b.db.svc"])?;
    let a_own = klio.issue_client_cert("a-own", "x@a", &[])?;
    let b_own = ca_b.write_client_cert(pki.path(), "b-own", "x@b", &[])?;
    let b_san = ca_b.write_client_cert(pki.path(), "b-san", "x", &["klio-b.db.svc"])?;
    let b_evil = ca_b.write_client_cert(pki.path(), "b-evil", "x", &["b.evil.example"])?;
    let get = |cert: &(std::path::PathBuf, std::path::PathBuf), path: &str| {
        klio.request(path, Some((cert.0.as_path(), cert.1.as_path())), None)
            .map(|(c, _)| c)
    };
    ensure!(get(&a_own, "/v1/clusters/a/wal")? == 200);
    ensure!(get(&b_own, "/v1/clusters/b/wal")? == 200);
    ensure!(get(&b_san, "/v1/clusters/b/wal")? == 200);
    for (what, cert) in [
        ("a's CA naming b by CN", &a_for_b),
        ("a's CA naming b by SAN", &a_san_b),
        ("a SAN that only starts with b's name", &b_evil),
    ] {
        let code = get(cert, "/v1/clusters/b/wal")?;
        ensure!(
            code == 401 || code == 403,
            "{what}: GET b's WAL answered {code}"
        );
    }
    // b's certificates are no credential for a either.
    let code = get(&b_own, "/v1/clusters/a/wal")?;
    ensure!(code == 401 || code == 403, "b's certificate on a: {code}");
    Ok(())
}

/// The harness picks each server's port when it writes the config; when another process
/// binds that port before the server does, the server names the `listen` setting and
/// exits, and the harness starts it again on another free port (tests run in parallel,
/// so this happens) instead of failing the test.
#[test]
fn a_server_whose_port_was_taken_meanwhile_starts_on_another() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("main", pg.replication_conninfo())])?;
    klio.kill9();
    let taken = klio.port();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", taken))?;
    klio.restart()?;
    ensure!(klio.port() != taken, "still on the taken port {taken}");
    let log = klio.log();
    ensure!(
        log.contains("the `listen` setting") && log.contains("Address already in use"),
        "the first start did not fail on the taken port; log:\n{}",
        klio.log_tail(20)
    );
    Ok(())
}

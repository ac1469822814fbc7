//! The HTTP API over TLS with client certificates (mTLS), against a real server and real
//! PostgreSQL: HTTPS works with `--cacert` and plain HTTP to the port does not; a client
//! certificate `CN=x@cluster-a` reads cluster A (a sealed segment through
//! `klio wal-restore` is byte-identical to pg_wal) and gets 403 on B; a certificate of
//! another CA is refused; a wrong token is still 401; `klio restore` of A with B's
//! certificate fails with 403 and writes nothing, with A's it writes a restore_command
//! carrying the TLS options, and PostgreSQL recovers through it.
//! A renewed server certificate is served without a restart, within 2 s, and the old one
//! no longer (the certificate each handshake presents is compared); a renewal whose key
//! does not match is refused while the previous certificate stays in use.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_tests::{
    http_get, https_get, klio_bin, served_certificate, wait_until, ClusterConf, KlioServer,
    PgInstance, PgOptions, TestCa,
};

/// Runs `klio <args> --server <url> --cacert <ca> [--cert C --key K]`.
fn run_klio(klio: &KlioServer, cert: Option<&(PathBuf, PathBuf)>, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(klio_bin());
    cmd.args(args)
        .args(["--server", &klio.url(), "--cacert"])
        .arg(klio.ca_cert());
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    Ok(cmd.env_remove("KLIO_TOKEN_FILE").output()?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

#[test]
fn client_certificates_authenticate_their_cluster_over_https() -> Result<()> {
    let a = PgInstance::start(PgOptions::new())?;
    let b = PgInstance::start(PgOptions::new())?;
    a.pgbench(&["-i", "-s", "1"])?;
    let klio = KlioServer::start_tls(vec![
        ClusterConf::new("cluster-a", a.replication_conninfo()),
        ClusterConf::new("cluster-b", b.replication_conninfo()),
    ])?;
    let cert_a = klio.issue_client_cert("a", "x@cluster-a", &[])?;
    let cert_b = klio.issue_client_cert("b", "x@cluster-b", &[])?;
    let foreign = TestCa::new("some other CA")?.write_client_cert(
        &klio.tls_dir(),
        "foreign",
        "x@cluster-a",
        &[],
    )?;

    // HTTPS with the CA answers; plain HTTP to the same port gets no HTTP answer.
    let (code, body) = klio.request("/healthz", None, None)?;
    ensure!(code == 200 && body == b"ok", "healthz over https: {code}");
    let plain = http_get(&format!("http://127.0.0.1:{}/healthz", klio.port()), None);
    ensure!(
        plain.is_err() || plain.as_ref().is_ok_and(|(c, _)| *c != 200),
        "plain HTTP to the TLS port answered: {plain:?}"
    );

    // A sealed segment of cluster A, and a base backup taken with A's certificate alone.
    a.psql("SELECT pg_switch_wal()")?;
    a.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")?;
    let lsn = a.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("cluster-a", &lsn, Duration::from_secs(60))?;
    let out = run_klio(
        &klio,
        Some(&cert_a),
        &["backup", "--cluster", "cluster-a", "--wait"],
    )?;
    ensure!(
        out.status.success(),
        "backup with A's certificate: {}",
        stderr(&out)
    );
    a.psql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g")?;
    a.psql("SELECT pg_switch_wal()")?;
    let lsn = a.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("cluster-a", &lsn, Duration::from_secs(60))?;

    // wal-restore with A's certificate (no token) is byte-identical to pg_wal.
    let sealed = klio.sealed_segments("cluster-a")?;
    let seg = sealed.last().context("no sealed segment")?;
    let out_dir = tempfile::tempdir()?;
    let dest = out_dir.path().join(seg);
    let dest_arg = dest.to_str().context("utf-8")?;
    let o = run_klio(
        &klio,
        Some(&cert_a),
        &[
            "wal-restore",
            seg,
            dest_arg,
            "--cluster",
            "cluster-a",
            "--prefetch",
            "0",
        ],
    )?;
    ensure!(
        o.status.success(),
        "wal-restore with A's certificate: {}",
        stderr(&o)
    );
    let theirs = std::fs::read(a.wal_dir().join(seg)).context("the segment left pg_wal")?;
    ensure!(std::fs::read(&dest)? == theirs, "{seg} differs from pg_wal");

    // A's certificate on cluster B: 403, through the client and on the wire.
    let o = run_klio(
        &klio,
        Some(&cert_a),
        &["list", "wal", "--cluster", "cluster-b"],
    )?;
    ensure!(
        !o.status.success() && stderr(&o).contains("403"),
        "A's certificate listed B's WAL: {}",
        stderr(&o)
    );
    let with_a = Some((cert_a.0.as_path(), cert_a.1.as_path()));
    for (path, want) in [
        ("/v1/clusters/cluster-a/wal", 200),
        ("/v1/clusters/cluster-a/backups", 200),
        ("/v1/clusters/cluster-b/wal", 403),
        ("/v1/clusters/cluster-b/backups", 403),
    ] {
        let (code, _) = klio.request(path, with_a, None)?;
        ensure!(
            code == want,
            "{path} with A's certificate: {code}, want {want}"
        );
    }
    // A certificate of another CA fails the handshake; a wrong token is 401 over TLS;
    // no credentials at all are 401.
    let rogue = https_get(
        &format!("{}/v1/clusters/cluster-a/wal", klio.url()),
        &klio.ca_cert(),
        Some((foreign.0.as_path(), foreign.1.as_path())),
        None,
    );
    ensure!(
        rogue.is_err(),
        "a foreign CA's certificate was accepted: {rogue:?}"
    );
    let o = run_klio(
        &klio,
        Some(&foreign),
        &["list", "wal", "--cluster", "cluster-a"],
    )?;
    ensure!(
        !o.status.success(),
        "klio with a foreign certificate succeeded"
    );
    let (code, _) = klio.request(
        "/v1/clusters/cluster-a/wal",
        None,
        Some("not-the-token-0123456789"),
    )?;
    ensure!(code == 401, "wrong token: {code}");
    let (code, _) = klio.request("/v1/clusters/cluster-a/wal", None, None)?;
    ensure!(code == 401, "no credentials: {code}");
    let (code, _) = klio.get("cluster-b", "/v1/clusters/cluster-b/wal")?;
    ensure!(code == 200, "B's token over TLS: {code}");

    // Restore of A with B's certificate: 403, the target stays empty.
    let mut restored = PgInstance::empty(PgOptions::new())?;
    std::fs::create_dir_all(restored.data_dir())?;
    let pgdata = restored.data_dir().to_str().context("utf-8")?.to_string();
    let pgdata = pgdata.as_str();
    let o = run_klio(
        &klio,
        Some(&cert_b),
        &["restore", "--cluster", "cluster-a", "--pgdata", pgdata],
    )?;
    ensure!(
        !o.status.success() && stderr(&o).contains("403"),
        "restore with B's certificate: {}",
        stderr(&o)
    );
    ensure!(
        is_empty_dir(restored.data_dir())?,
        "a refused restore wrote into the target"
    );

    // With A's certificate: restored, and PostgreSQL recovers through a restore_command
    // that carries --cacert, --cert and --key (files the postgres account can read).
    let tools = postgres_readable(&klio, &cert_a)?;
    let o = Command::new(&tools.bin)
        .args(["restore", "--cluster", "cluster-a", "--pgdata", pgdata])
        .args(["--server", &klio.url(), "--target-action", "promote"])
        .arg("--cacert")
        .arg(&tools.ca)
        .arg("--cert")
        .arg(&tools.cert)
        .arg("--key")
        .arg(&tools.key)
        .output()?;
    ensure!(
        o.status.success(),
        "restore with A's certificate: {}",
        stderr(&o)
    );
    let auto = std::fs::read_to_string(restored.data_dir().join("postgresql.auto.conf"))?;
    for flag in ["--cacert", "--cert", "--key"] {
        ensure!(auto.contains(flag), "restore_command lacks {flag}:\n{auto}");
    }
    ensure!(!auto.contains("--token-file"), "{auto}");
    restored.start_restored(&[])?;
    wait_until(Duration::from_secs(120), "recovery to end", || {
        Ok(restored.psql("SELECT pg_is_in_recovery()")? == "f")
    })?;
    let rows = restored.psql("SELECT count(*) FROM t")?;
    ensure!(
        rows == "2000",
        "recovered {rows} rows, want 2000 (WAL after the backup was not replayed); log:\n{}",
        restored.log_tail(30)
    );
    Ok(())
}

/// The klio binary and A's TLS files where the `postgres` account (restore_command)
/// can read them.
struct Tools {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn postgres_readable(klio: &KlioServer, cert: &(PathBuf, PathBuf)) -> Result<Tools> {
    let dir = tempfile::Builder::new().prefix("klio-tls-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let copy = |from: &Path, name: &str, mode: u32| -> Result<PathBuf> {
        let to = dir.path().join(name);
        std::fs::copy(from, &to)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(to)
    };
    // A test key, readable by the postgres account only through these permissions.
    Ok(Tools {
        bin: copy(&klio_bin(), "klio", 0o755)?,
        ca: copy(&klio.ca_cert(), "ca.crt", 0o644)?,
        cert: copy(&cert.0, "client.crt", 0o644)?,
        key: copy(&cert.1, "client.key", 0o644)?,
        _dir: dir,
    })
}

/// Replaces `path` the way a Kubernetes Secret update does: a new file renamed over it.
fn replace(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("new");
    klio_harness::write_file(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The DER of the first certificate in a PEM text.
fn der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

#[test]
fn a_renewed_api_certificate_is_served_without_a_restart() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let klio = KlioServer::start_tls(vec![ClusterConf::new("rot", pg.replication_conninfo())])?;
    let hostport = format!("127.0.0.1:{}", klio.port());
    let url = format!("{}/healthz", klio.url());
    let (code, _) = https_get(&url, &klio.ca_cert(), None, None)?;
    ensure!(code == 200, "healthz: {code}");
    let old = der(&std::fs::read_to_string(klio.tls_dir().join("server.crt"))?)?;
    ensure!(
        served_certificate(&hostport)? == old,
        "the server does not present its configured certificate"
    );
    // The renewal comes from a new CA (as after a CA rotation), so which certificate is
    // served also shows in which CA a client must trust.
    let ca2 = TestCa::new("rotated API CA")?;
    let ca2_file = klio.dir().join("ca2.crt");
    ca2.write_cert(&ca2_file)?;
    ensure!(
        https_get(&url, &ca2_file, None, None).is_err(),
        "the new CA is trusted before any renewal"
    );
    let (cert2, key2) = ca2.server_cert()?;
    let (_, unrelated_key) = ca2.server_cert()?;
    let new = der(&cert2)?;
    ensure!(new != old);

    // A renewal that does not load (the key is not the certificate's): logged, and the
    // previous certificate keeps being served, on every connection meanwhile.
    replace(&klio.tls_dir().join("server.key"), &unrelated_key, 0o600)?;
    replace(&klio.tls_dir().join("server.crt"), &cert2, 0o644)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !klio
        .log()
        .contains("cannot be used; still serving the previous certificate")
    {
        ensure!(
            served_certificate(&hostport)? == old,
            "a certificate other than the previous one is served"
        );
        ensure!(
            Instant::now() < deadline,
            "the refused reload was not logged within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(served_certificate(&hostport)? == old);
    ensure!(https_get(&url, &ca2_file, None, None).is_err());

    // The matching key arrives: within 2 s, new connections get the new certificate, and
    // the old one is no longer served to anybody.
    replace(&klio.tls_dir().join("server.key"), &key2, 0o600)?;
    let replaced = Instant::now();
    let deadline = replaced + Duration::from_secs(2);
    loop {
        if served_certificate(&hostport)? == new {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the renewed certificate is not served {:?} after its key was replaced",
            replaced.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = replaced.elapsed();
    for _ in 0..5 {
        ensure!(
            served_certificate(&hostport)? == new,
            "the old certificate is served again after the renewal"
        );
    }
    let (code, _) = https_get(&url, &ca2_file, None, None)?;
    ensure!(code == 200, "healthz through the new CA: {code}");
    let refused = https_get(&url, &klio.ca_cert(), None, None);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("UnknownIssuer")),
        "a client trusting only the old CA was not refused for the certificate: {refused:?}"
    );
    ensure!(klio
        .log()
        .contains("new connections use the reloaded certificate"));
    println!("renewed certificate served {took:?} after its key was replaced, without a restart; a bad renewal was refused first");
    Ok(())
}

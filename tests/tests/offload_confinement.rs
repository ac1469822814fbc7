//! Offload reads only inside the cluster's `offload_roots`, and no backup stores a file
//! from outside the data directory, against real PostgreSQL and a real Klio server:
//! no roots → 403 naming the setting; `from` outside the roots (existing or not, directly,
//! through a link or with `..`) → the same 403 text; a tablespace link leaving the root
//! and a copy of another database system are refused; a copy inside a root offloads, a
//! link in it that leads outside is skipped and nothing of its target is stored; a
//! primary whose PGDATA holds such a link backs up without storing the target either.
//! (A file swapped for a link between scan and read is covered by the unit tests of
//! `klio_basebackup::offload`, `confine` and `job`; archives with hostile members by
//! those of `tar`, `archive_rule` and `job`.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_tests::{wait_until, ClusterConf, KlioServer, PgInstance, PgOptions};
use serde_json::Value;

const CLUSTER: &str = "conf";

/// A test's directories: `snaps` (the offload root), `outside`, and `secret` (outside
/// the root, holding `master.key` with [`Dirs::secret_bytes`]).
struct Dirs {
    t: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Result<Dirs> {
        let t = tempfile::Builder::new().prefix("klio-offload-").tempdir()?;
        let d = Dirs { t };
        for sub in ["snaps", "outside", "secret"] {
            std::fs::create_dir_all(d.path(sub))?;
        }
        std::fs::write(d.path("secret").join("master.key"), d.secret_bytes())?;
        Ok(d)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.t.path().join(sub)
    }

    /// Unlike anything PostgreSQL writes, and long enough not to match by chance.
    fn secret_bytes(&self) -> Vec<u8> {
        format!(
            "KLIO-TEST-SECRET-{}-0123456789abcdef",
            self.t.path().display()
        )
        .into_bytes()
    }
}

/// A Klio server for `pg`, with `offload_roots` set to `roots`, streaming.
fn start_klio(pg: &PgInstance, roots: &[PathBuf]) -> Result<KlioServer> {
    let mut conf = ClusterConf::new(CLUSTER, pg.replication_conninfo());
    if !roots.is_empty() {
        let list: Vec<String> = roots
            .iter()
            .map(|r| format!("{:?}", r.display().to_string()))
            .collect();
        conf.extra
            .push(format!("offload_roots = [{}]", list.join(", ")));
    }
    let klio = KlioServer::start(vec![conf])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    Ok(klio)
}

/// A primary, the test's directories, and a Klio server whose offload root is `snaps`.
fn with_root() -> Result<(PgInstance, Dirs, KlioServer)> {
    let pg = PgInstance::start(PgOptions::new())?;
    let d = Dirs::new()?;
    let klio = start_klio(&pg, &[d.path("snaps")])?;
    Ok((pg, d, klio))
}

/// A plain copy of `pg` with its backup_label (what a snapshot between
/// pg_backup_start and pg_backup_stop holds), at `dest`; `extra` goes to pg_basebackup.
fn copy_of(pg: &PgInstance, dest: &Path, extra: &[String]) -> Result<()> {
    let st = Command::new(pg.tool("pg_basebackup"))
        .arg("--dbname")
        .arg(pg.replication_conninfo())
        .arg("--pgdata")
        .arg(dest)
        .args(["--wal-method=none", "--checkpoint=fast", "--no-password"])
        .args(extra)
        .status()?;
    ensure!(st.success(), "pg_basebackup: {st}");
    ensure!(dest.join("backup_label").exists(), "no backup_label");
    Ok(())
}

/// POST `body` to `path` with the cluster's token; (status, body text).
fn post(klio: &KlioServer, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", klio.port()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        klio.token(CLUSTER),
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked answer: {head}"
    );
    let code = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((code, body.to_string()))
}

fn offload(klio: &KlioServer, from: &Path) -> Result<(u16, String)> {
    let body = serde_json::json!({ "from": from.display().to_string() });
    post(
        klio,
        &format!("/v1/clusters/{CLUSTER}/offloads"),
        &body.to_string(),
    )
}

fn backups(klio: &KlioServer) -> Result<Vec<Value>> {
    let out = klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["backups"].as_array().cloned().unwrap_or_default())
}

/// Every file of backup `id` and every chunk it lists: no path under `evil`, and no
/// chunk holding `secret`. Returns the number of chunks read.
fn assert_nothing_from_outside(klio: &KlioServer, id: &str, secret: &[u8]) -> Result<usize> {
    let (code, body) = klio.get(
        CLUSTER,
        &format!("/v1/clusters/{CLUSTER}/backups/{id}/manifest"),
    )?;
    ensure!(code == 200, "manifest: HTTP {code}");
    let m: Value = serde_json::from_slice(&body)?;
    let files = m["files"].as_array().context("manifest files")?;
    ensure!(files.len() > 100, "suspiciously few files: {}", files.len());
    let mut chunks = std::collections::BTreeSet::new();
    for f in files {
        let path = f["path"].as_str().context("path")?;
        ensure!(
            path != "evil" && !path.starts_with("evil/"),
            "the link's target was stored: {f}"
        );
        for c in f["chunks"].as_array().into_iter().flatten() {
            chunks.insert(c.as_str().context("chunk id")?.to_string());
        }
    }
    for c in &chunks {
        let (code, bytes) = klio.get(CLUSTER, &format!("/v1/clusters/{CLUSTER}/chunks/{c}"))?;
        ensure!(code == 200, "chunk {c}: HTTP {code}");
        ensure!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "chunk {c} holds the secret from outside the data directory"
        );
    }
    Ok(chunks.len())
}

#[test]
fn offload_without_offload_roots_is_forbidden_naming_the_setting() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let klio = start_klio(&pg, &[])?;
    let (code, body) = offload(&klio, pg.data_dir())?;
    ensure!(code == 403, "HTTP {code}: {body}");
    ensure!(body.contains("offload_roots"), "{body}");
    // The command line says the same.
    let token = klio.token_file(CLUSTER);
    let out = klio.client(&[
        "offload",
        "--cluster",
        CLUSTER,
        "--token-file",
        token.to_str().context("utf-8")?,
        "--from",
        pg.data_dir().to_str().context("utf-8")?,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("offload_roots"),
        "{stderr}"
    );
    ensure!(backups(&klio)?.is_empty());
    Ok(())
}

#[test]
fn from_outside_the_roots_is_refused_alike_whether_it_exists_or_not() -> Result<()> {
    let (pg, d, klio) = with_root()?;
    // A complete, valid copy of this very cluster, only outside the root.
    let copy = d.path("outside").join("pgdata");
    copy_of(&pg, &copy, &[])?;
    std::os::unix::fs::symlink(&copy, d.path("snaps").join("link"))?;
    let tries = [
        copy.clone(),
        d.path("outside").join("missing"),
        d.path("snaps").join("link"),
        d.path("snaps").join("../outside/pgdata"),
        d.path("snaps").join("../outside/missing"),
        klio.master_key_path(),
        PathBuf::from("/etc"),
        PathBuf::from("/no/such/dir"),
    ];
    let mut first: Option<String> = None;
    for from in &tries {
        let (code, body) = offload(&klio, from)?;
        ensure!(code == 403, "{}: HTTP {code}: {body}", from.display());
        match &first {
            None => {
                ensure!(body.contains("offload_roots"), "{body}");
                first = Some(body);
            }
            Some(f) => ensure!(
                *f == body,
                "{}: the answer differs, telling what exists:\n{f}\n{body}",
                from.display()
            ),
        }
    }
    ensure!(backups(&klio)?.is_empty(), "{:?}", backups(&klio)?);
    Ok(())
}

#[test]
fn tablespace_link_escaping_the_root_is_refused() -> Result<()> {
    let (pg, d, klio) = with_root()?;
    let copy = d.path("snaps").join("pgdata");
    copy_of(&pg, &copy, &[])?;
    let link = copy.join("pg_tblspc").join("16999");
    std::os::unix::fs::symlink(d.path("secret"), &link)?;
    let (code, existing) = offload(&klio, &copy)?;
    ensure!(code == 400, "HTTP {code}: {existing}");
    ensure!(existing.contains("tablespace 16999"), "{existing}");
    // The same answer when the target does not exist.
    std::fs::remove_dir_all(d.path("secret"))?;
    let (code, missing) = offload(&klio, &copy)?;
    ensure!(code == 400 && missing == existing, "{missing}\n{existing}");
    ensure!(backups(&klio)?.is_empty(), "{:?}", backups(&klio)?);
    Ok(())
}

#[test]
fn copy_of_another_database_system_is_refused() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let other = PgInstance::start(PgOptions::new())?;
    let d = Dirs::new()?;
    let klio = start_klio(&pg, &[d.path("snaps")])?;
    let copy = d.path("snaps").join("other");
    copy_of(&other, &copy, &[])?;
    let ours = pg.psql("SELECT system_identifier FROM pg_control_system()")?;
    let theirs = other.psql("SELECT system_identifier FROM pg_control_system()")?;
    ensure!(ours != theirs, "two initdb runs gave one system identifier");
    let (code, body) = offload(&klio, &copy)?;
    ensure!(code == 400, "HTTP {code}: {body}");
    ensure!(
        body.contains(theirs.trim()) && body.contains(ours.trim()),
        "the error names neither identifier: {body}"
    );
    ensure!(backups(&klio)?.is_empty(), "{:?}", backups(&klio)?);
    Ok(())
}

#[test]
fn offload_inside_a_root_works_and_skips_a_link_leading_outside() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let ts = pg.owned_dir("ts1")?;
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.display()
    ))?;
    pg.psql("CREATE TABLE in_ts TABLESPACE extra AS SELECT generate_series(1, 1000) AS i")?;
    let d = Dirs::new()?;
    let klio = start_klio(&pg, &[d.path("snaps")])?;
    // The copy and its tablespace inside the root; a link to the secret in the copy.
    let copy = d.path("snaps").join("pgdata");
    let ts_copy = d.path("snaps").join("ts1");
    copy_of(
        &pg,
        &copy,
        &[format!(
            "--tablespace-mapping={}={}",
            ts.display(),
            ts_copy.display()
        )],
    )?;
    std::os::unix::fs::symlink(d.path("secret"), copy.join("evil"))?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let (code, body) = offload(&klio, &copy)?;
    ensure!(code == 202, "HTTP {code}: {body}");
    let started: Value = serde_json::from_str(&body)?;
    let id = started["id"].as_str().context("id")?;
    let view = format!("/v1/clusters/{CLUSTER}/backups/{id}");
    let mut b = Value::Null;
    wait_until(Duration::from_secs(300), "the offload to finish", || {
        let (code, body) = klio.get(CLUSTER, &view)?;
        ensure!(code == 200, "HTTP {code}");
        b = serde_json::from_slice(&body)?;
        Ok(b["state"] != "running")
    })?;
    ensure!(b["state"] == "complete" && b["kind"] == "offload", "{b}");
    let (code, body) = klio.get(
        CLUSTER,
        &format!("/v1/clusters/{CLUSTER}/backups/{id}/manifest"),
    )?;
    ensure!(code == 200);
    let m: Value = serde_json::from_slice(&body)?;
    let in_tablespace = m["files"]
        .as_array()
        .context("files")?
        .iter()
        .filter(|f| f["tablespace"].is_u64() && f["kind"] == "file")
        .count();
    ensure!(in_tablespace > 0, "the tablespace was not offloaded: {m}");
    let n = assert_nothing_from_outside(&klio, id, &d.secret_bytes())?;
    println!("offload {id}: {n} chunks read back, none from outside the root");
    ensure!(
        klio.log().contains("skipping a symbolic link"),
        "no warning about the skipped link:\n{}",
        klio.log_tail(40)
    );
    Ok(())
}

#[test]
fn base_backup_of_a_primary_with_a_link_out_of_pgdata_stores_nothing_from_outside() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let d = Dirs::new()?;
    std::os::unix::fs::symlink(d.path("secret"), pg.data_dir().join("evil"))?;
    let klio = start_klio(&pg, &[])?;
    // PostgreSQL leaves such a link out with a warning (only pg_tblspc links are sent);
    // were one sent, Klio would refuse the archive (`archive_rule`, unit-tested).
    let out = klio.client_ok(CLUSTER, &["backup", "--wait", "--output", "json"])?;
    let b: Value = serde_json::from_str(&out)?;
    ensure!(b["state"] == "complete", "{b}");
    ensure!(
        pg.log_tail(500)
            .contains("skipping special file \"./evil\""),
        "PostgreSQL did not report skipping the link:\n{}",
        pg.log_tail(40)
    );
    let id = b["id"].as_str().context("id")?;
    let n = assert_nothing_from_outside(&klio, id, &d.secret_bytes())?;
    println!("backup {id}: {n} chunks read back, none from outside PGDATA");
    Ok(())
}

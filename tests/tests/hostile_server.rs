//! A hostile "Klio server": a small HTTP server inside the test (not Klio) answers the
//! real `klio` binary with manifests built to escape PGDATA: absolute paths, `..`, a
//! link then a file through it, Klio's own files as links, setuid modes, a tablespace
//! in a non-empty directory. Each restore must fail naming the entry, and a canary
//! directory beside PGDATA must stay exactly as it was (contents, modes, link targets,
//! times). The same fake server shows that client commands never send a token over
//! plain http:// to another machine without `--insecure-http`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use klio_api::{BackupKindView, BackupList, BackupStateView, BackupView};
use serde_json::{json, Value};

const TOKEN: &str = "hostile-test-token-0123456789";
const BACKUP: &str = "20260101T000000Z";

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    bearer: bool,
}

/// An HTTP/1.1 server answering GETs from a fixed table (everything else: 404).
struct FakeServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<Mutex<u32>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(bind: &str, routes: BTreeMap<String, Vec<u8>>) -> Result<FakeServer> {
        let listener = TcpListener::bind((bind, 0))?;
        let port = listener.local_addr()?.port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, st) = (seen.clone(), connections.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                *c.lock().unwrap() += 1;
                let _ = answer(conn, &routes, &s);
            }
        });
        Ok(FakeServer {
            port,
            seen,
            connections,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> u32 {
        *self.connections.lock().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request and answers it, closing the connection.
fn answer(
    conn: TcpStream,
    routes: &BTreeMap<String, Vec<u8>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut bearer = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with(&format!(
            "authorization: bearer {}",
            TOKEN.to_ascii_lowercase()
        )) {
            bearer = true;
        }
    }
    let path = request.split(' ').nth(1).unwrap_or_default().to_string();
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        bearer,
    });
    let (status, body) = match routes.get(&path) {
        Some(b) => ("200 OK", b.clone()),
        None => ("404 Not Found", br#"{"error":"no such thing"}"#.to_vec()),
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    w.write_all(&body)?;
    w.flush()
}

/// The backup list every scenario serves: one complete backup.
fn backup_list() -> Result<Vec<u8>> {
    let list = BackupList {
        cluster: "x".parse()?,
        backups: vec![BackupView {
            cluster: "x".parse()?,
            id: BACKUP.parse()?,
            label: "hostile".into(),
            kind: BackupKindView::Stream,
            state: BackupStateView::Complete,
            error: None,
            start_lsn: Some("0/2000028".parse()?),
            start_timeline: Some(1),
            end_lsn: Some("0/2000100".parse()?),
            end_timeline: Some(1),
            started_at: 1_767_225_600,
            finished_at: Some(1_767_225_601),
            pg_version: Some(150_000),
            logical_bytes: 3,
            stored_bytes: 3,
            new_bytes: 3,
            files: 1,
            chunks: 1,
            new_chunks: 0,
            progress: None,
            tiers: None,
        }],
    };
    Ok(serde_json::to_vec(&list)?)
}

/// A backup built to be served: manifest entries plus chunk contents.
struct Scenario {
    tablespaces: Vec<Value>,
    files: Vec<Value>,
    chunks: BTreeMap<String, Vec<u8>>,
    pg_manifest: bool,
}

impl Scenario {
    /// An ordinary little backup: two directories and a file with content.
    fn new() -> Scenario {
        let mut s = Scenario {
            tablespaces: vec![],
            files: vec![],
            chunks: BTreeMap::new(),
            pg_manifest: true,
        };
        s.dir("base", 0o700);
        s.dir("global", 0o700);
        s.file("PG_VERSION", 0o600, b"15\n");
        s
    }

    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.files.push(json!({
            "path": path, "kind": "directory", "mode": mode, "mtime": 0, "size": 0
        }));
        self
    }

    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> &mut Self {
        let id = format!("{:064x}", self.chunks.len() + 1);
        self.chunks.insert(id.clone(), content.to_vec());
        self.files.push(json!({
            "path": path, "kind": "file", "mode": mode, "mtime": 0,
            "size": content.len(), "crc32c": crc32c::crc32c(content), "chunks": [id]
        }));
        self
    }

    /// A zero-length file: no chunks.
    fn empty_file(&mut self, path: &str) -> &mut Self {
        self.files.push(json!({
            "path": path, "kind": "file", "mode": 0o600, "mtime": 0, "size": 0, "crc32c": 0
        }));
        self
    }

    fn tablespace_file(&mut self, oid: u32, path: &str, content: &[u8]) -> &mut Self {
        self.file(path, 0o600, content);
        if let Some(f) = self.files.last_mut() {
            f["tablespace"] = json!(oid);
        }
        self
    }

    fn link(&mut self, path: &str, target: &str) -> &mut Self {
        self.files.push(json!({
            "path": path, "kind": "symlink", "mode": 0o777, "mtime": 0, "size": 0,
            "link_target": target
        }));
        self
    }

    fn tablespace(&mut self, oid: u32, location: &Path) -> &mut Self {
        self.tablespaces
            .push(json!({ "oid": oid, "location": location.display().to_string() }));
        self
    }

    fn routes(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let base = "/v1/clusters/x";
        let manifest = json!({
            "version": 1, "backup_id": BACKUP, "cluster": "x", "label": "hostile",
            "start_lsn": "0/2000028", "start_tli": 1, "end_lsn": "0/2000100", "end_tli": 1,
            "pg_version": 150000, "chunk_size": 1048576,
            "tablespaces": self.tablespaces, "files": self.files,
        });
        let mut r = BTreeMap::new();
        r.insert(format!("{base}/backups"), backup_list()?);
        r.insert(
            format!("{base}/backups/{BACKUP}/manifest"),
            serde_json::to_vec(&manifest)?,
        );
        if self.pg_manifest {
            r.insert(
                format!("{base}/backups/{BACKUP}/backup_manifest"),
                b"{\"PostgreSQL-Backup-Manifest-Version\": 1}\n".to_vec(),
            );
        }
        for (id, data) in &self.chunks {
            r.insert(format!("{base}/chunks/{id}"), data.clone());
        }
        Ok(r)
    }
}

/// Everything observable about a tree, without following links: per entry its type,
/// full mode, owner, size, modification time, content or link target.
fn fingerprint(root: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        let m = std::fs::symlink_metadata(dir)?;
        let rel = dir.strip_prefix(root)?.display().to_string();
        let mut line = format!(
            "mode {:o} uid {} gid {} size {} mtime {}.{}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        );
        if m.file_type().is_symlink() {
            line.push_str(&format!(" -> {}", std::fs::read_link(dir)?.display()));
        } else if m.is_file() {
            line.push_str(&format!(" content {:?}", std::fs::read(dir)?));
        } else if m.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for n in names {
                walk(root, &n, out)?;
            }
        }
        out.insert(rel, line);
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// A directory of things an attacker would like to change.
fn make_canary(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("sub"))?;
    std::fs::write(dir.join("victim"), b"original victim\n")?;
    std::fs::set_permissions(dir.join("victim"), std::fs::Permissions::from_mode(0o644))?;
    std::fs::write(dir.join("sub/deep"), b"deep\n")?;
    std::os::unix::fs::symlink("victim", dir.join("link"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Runs the real `klio` binary with a clean KLIO_* environment.
fn klio(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(klio_tests::klio_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("KLIO_") {
            cmd.env_remove(k);
        }
    }
    Ok(cmd.args(args).output()?)
}

struct Work {
    dir: tempfile::TempDir,
    token: PathBuf,
}

impl Work {
    fn new() -> Result<Work> {
        let dir = tempfile::tempdir()?;
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN)?;
        make_canary(&dir.path().join("canary"))?;
        Ok(Work { dir, token })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn canary(&self) -> PathBuf {
        self.path("canary")
    }

    fn restore(&self, server: &FakeServer, pgdata: &Path) -> Result<Output> {
        klio(&[
            "restore",
            "--server",
            &server.url("127.0.0.1"),
            "--cluster",
            "x",
            "--token-file",
            self.token.to_str().context("utf-8")?,
            "--pgdata",
            pgdata.to_str().context("utf-8")?,
        ])
    }
}

#[test]
fn hostile_manifests_are_refused_and_nothing_outside_pgdata_changes() -> Result<()> {
    let work = Work::new()?;
    let canary = work.canary();
    let c = canary.display().to_string();
    let before = fingerprint(&canary)?;
    let ts_new = work.path("ts_new");

    // (what, scenario, the entry the error must name)
    let mut cases: Vec<(&str, Scenario, String)> = Vec::new();
    let mut s = Scenario::new();
    s.file(&format!("{c}/evil"), 0o600, b"pwn");
    cases.push(("absolute file path", s, format!("{c}/evil")));
    let mut s = Scenario::new();
    s.dir(&format!("{c}/newdir"), 0o777);
    cases.push(("absolute directory, mode 0777", s, format!("{c}/newdir")));
    let mut s = Scenario::new();
    s.file("../canary/victim", 0o600, b"pwn");
    cases.push(("'..' out of PGDATA", s, "../canary/victim".into()));
    let mut s = Scenario::new();
    s.file("base/../../canary/evil", 0o600, b"pwn");
    cases.push(("'..' inside a path", s, "base/../../canary/evil".into()));
    let mut s = Scenario::new();
    s.link("evil", &c)
        .file("evil/setuid", 0o4755, b"#!/bin/sh\n");
    cases.push((
        "a link, then a setuid file through it",
        s,
        "\"evil\"".into(),
    ));
    let mut s = Scenario::new();
    s.tablespace(16400, &ts_new)
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16400", &c)
        .file("pg_tblspc/16400/evil", 0o600, b"pwn");
    cases.push((
        "a tablespace link, then a file through it",
        s,
        "pg_tblspc/16400/evil".into(),
    ));
    let mut s = Scenario::new();
    s.link("backup_manifest", &format!("{c}/victim"));
    cases.push(("backup_manifest as a link", s, "\"backup_manifest\"".into()));
    let mut s = Scenario::new();
    s.link("recovery.signal", &format!("{c}/victim"));
    cases.push(("recovery.signal as a link", s, "\"recovery.signal\"".into()));
    let mut s = Scenario::new();
    s.link("postgresql.auto.conf", &format!("{c}/victim"));
    cases.push((
        "postgresql.auto.conf as a link",
        s,
        "\"postgresql.auto.conf\"".into(),
    ));
    let mut s = Scenario::new();
    s.file("base/suid", 0o4755, b"#!/bin/sh\n");
    cases.push(("a setuid file", s, "\"base/suid\"".into()));
    let mut s = Scenario::new();
    s.dir("base/sticky", 0o1777);
    cases.push((
        "a sticky world-writable directory",
        s,
        "\"base/sticky\"".into(),
    ));
    let mut s = Scenario::new();
    s.tablespace(16400, &canary)
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16400", &c)
        .tablespace_file(16400, "PG_15_202209061/evil", b"pwn");
    cases.push((
        "a tablespace in a non-empty directory",
        s,
        "tablespace 16400".into(),
    ));
    let mut s = Scenario::new();
    s.tablespace_file(16401, "evil", b"pwn");
    cases.push((
        "a file of a tablespace the backup does not have",
        s,
        "tablespace 16401".into(),
    ));

    for (i, (what, scenario, entry)) in cases.into_iter().enumerate() {
        let server = FakeServer::start("127.0.0.1", scenario.routes()?)?;
        let pgdata = work.path(&format!("pgdata-{i}"));
        let out = work.restore(&server, &pgdata)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "{what}: the restore succeeded\n{stderr}"
        );
        ensure!(
            stderr.contains(&entry),
            "{what}: the error does not name {entry}:\n{stderr}"
        );
        ensure!(
            !pgdata.exists() && !ts_new.exists(),
            "{what}: something was written before the manifest was refused"
        );
        let after = fingerprint(&canary)?;
        ensure!(
            after == before,
            "{what}: the canary changed\nbefore: {before:#?}\nafter: {after:#?}"
        );
        // The fake server really answered: the refusal came after the manifest.
        ensure!(
            server.seen().iter().any(|s| s.path.ends_with("/manifest")),
            "{what}: the manifest was never asked for"
        );
        println!("{what}: refused, naming {entry}");
    }
    Ok(())
}

/// A backup id that is not an id (a path, here) in the server's backup list: the client
/// refuses the answer as it decodes it, before asking for a manifest or touching a disk.
#[test]
fn a_backup_id_that_is_a_path_is_refused_before_any_request_for_it() -> Result<()> {
    let work = Work::new()?;
    let canary = work.canary();
    let before = fingerprint(&canary)?;
    let mut list: serde_json::Value = serde_json::from_slice(&backup_list()?)?;
    list["backups"][0]["id"] = json!("../../canary");
    let mut routes = Scenario::new().routes()?;
    routes.insert("/v1/clusters/x/backups".into(), serde_json::to_vec(&list)?);
    let server = FakeServer::start("127.0.0.1", routes)?;
    let pgdata = work.path("pgdata");
    let out = work.restore(&server, &pgdata)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the restore succeeded\n{stderr}");
    ensure!(
        stderr.contains("invalid backup id"),
        "the error does not say the id is invalid:\n{stderr}"
    );
    ensure!(!pgdata.exists(), "the data directory was created");
    ensure!(fingerprint(&canary)? == before, "the canary changed");
    let asked: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    ensure!(
        asked.iter().all(|p| !p.contains("canary")),
        "the hostile id was used in a request: {asked:?}"
    );
    Ok(())
}

#[test]
fn the_fake_server_serves_a_restorable_backup() -> Result<()> {
    // The control for the test above: the same fake server with an honest manifest
    // restores, with the tablespace linked where it belongs and PostgreSQL's modes.
    let work = Work::new()?;
    let before = fingerprint(&work.canary())?;
    let ts = work.path("ts");
    let mut s = Scenario::new();
    s.tablespace(16400, &ts)
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16400", "/elsewhere/entirely")
        .dir("base/1", 0o2755)
        .file("base/1/1259", 0o644, b"relation")
        .empty_file("empty")
        .tablespace_file(16400, "PG_15_202209061/5/16401", b"table");
    s.files.push(json!({
        "path": "PG_15_202209061", "kind": "directory", "mode": 0o700, "mtime": 0,
        "size": 0, "tablespace": 16400
    }));
    let server = FakeServer::start("127.0.0.1", s.routes()?)?;
    let pgdata = work.path("pgdata");
    let out = work.restore(&server, &pgdata)?;
    ensure!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(std::fs::read(pgdata.join("PG_VERSION"))? == b"15\n");
    ensure!(std::fs::read(pgdata.join("base/1/1259"))? == b"relation");
    ensure!(std::fs::read(ts.join("PG_15_202209061/5/16401"))? == b"table");
    ensure!(std::fs::read_link(pgdata.join("pg_tblspc/16400"))? == ts);
    ensure!(pgdata.join("recovery.signal").is_file());
    ensure!(
        std::fs::read_to_string(pgdata.join("postgresql.auto.conf"))?.contains("restore_command")
    );
    let mode = |p: &Path| -> Result<u32> { Ok(std::fs::metadata(p)?.mode() & 0o7777) };
    ensure!(mode(&pgdata)? == 0o700 && mode(&pgdata.join("base/1"))? == 0o700);
    ensure!(mode(&pgdata.join("base/1/1259"))? == 0o600);
    ensure!(mode(&ts.join("PG_15_202209061"))? == 0o700);
    ensure!(std::fs::read(pgdata.join("empty"))?.is_empty());
    ensure!(fingerprint(&work.canary())? == before);
    Ok(())
}

/// An address of this machine that is not loopback (the source address of its
/// default route).
fn non_loopback_address() -> Result<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // No packet is sent: connecting a UDP socket only picks the route.
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("198.51.100.1:9"))
        .context("this machine has no route off loopback, so the test cannot name a non-loopback address of it")?;
    let ip = s.local_addr()?.ip();
    ensure!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no non-loopback address found (got {ip})"
    );
    Ok(ip.to_string())
}

#[test]
fn clients_never_send_a_token_in_clear_to_another_machine() -> Result<()> {
    let work = Work::new()?;
    let mut routes = Scenario::new().routes()?;
    routes.insert("/v1/status".into(), br#"{"clusters":[]}"#.to_vec());
    let server = FakeServer::start("0.0.0.0", routes)?;
    let ip = non_loopback_address()?;
    let remote = server.url(&ip);
    let token = work.token.to_str().context("utf-8")?;
    let pgdata = work.path("pgdata");
    let pgdata = pgdata.to_str().context("utf-8")?;
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["list", "backups", "--cluster", "x"],
        vec!["list", "wal", "--cluster", "x"],
        vec!["backup", "--cluster", "x"],
        vec!["verify", "--cluster", "x"],
        vec!["restore", "--cluster", "x", "--pgdata", pgdata],
        vec![
            "wal-restore",
            "000000010000000000000001",
            "/nonexistent/x",
            "--cluster",
            "x",
        ],
    ];
    for cmd in &commands {
        let mut args = cmd.clone();
        args.extend(["--server", &remote, "--token-file", token]);
        let out = klio(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "klio {}: {:?}\n{stderr}",
            cmd.join(" "),
            out.status
        );
        ensure!(
            stderr.contains("--insecure-http") && stderr.contains("https://"),
            "klio {}: the error names neither the flag nor https:\n{stderr}",
            cmd.join(" ")
        );
    }
    ensure!(
        server.connections() == 0,
        "a refused command connected anyway: {:?}",
        server.seen()
    );
    ensure!(!Path::new(pgdata).exists());

    // With --insecure-http (or KLIO_INSECURE_HTTP) the same command goes through.
    let out = klio(&[
        "status",
        "--server",
        &remote,
        "--token-file",
        token,
        "--insecure-http",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(klio_tests::klio_bin());
    let out = cmd
        .args([
            "list",
            "backups",
            "--cluster",
            "x",
            "--server",
            &remote,
            "--token-file",
            token,
        ])
        .env("KLIO_INSECURE_HTTP", "true")
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Loopback needs no flag.
    for host in ["127.0.0.1", "localhost"] {
        let out = klio(&[
            "list",
            "backups",
            "--cluster",
            "x",
            "--server",
            &server.url(host),
            "--token-file",
            token,
        ])?;
        ensure!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let seen = server.seen();
    ensure!(seen.len() == 4 && seen.iter().all(|s| s.bearer), "{seen:?}");
    Ok(())
}

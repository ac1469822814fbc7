//! A real S3-compatible server for tests: moto's server mode (`moto_server`, PyPI
//! `moto[server]` >= 5.2.5), one process per [`S3Server`] on 127.0.0.1 and a free port,
//! in memory, killed on drop. Writes only moto's log, in a temp directory of its own.
//!
//! Moto implements the S3 behaviours Tier 2 depends on the way S3 does: a create-only PUT
//! answers 412, multipart uploads have real ETags and can be listed and aborted, and
//! ListObjectsV2 honours `start-after`. It accepts any credentials and does not check
//! request signatures, which lets a test talk to it with a plain HTTP request (see
//! [`S3Server::multipart_uploads`]).
//!
//! `moto_server` is looked up as `$KLIO_MOTO_SERVER`, then in the virtualenv
//! `scripts/setup.sh` creates (`$HOME/.cache/klio-venv/bin`), then on `PATH`. Missing, the
//! start fails with the command that installs it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The bucket every [`S3Server`] has from the start.
pub const DEFAULT_BUCKET: &str = "klio-test";

/// How long moto may take to answer after being started (it imports a lot of Python).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// A running `moto_server` (see the module documentation).
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts moto on a free port of 127.0.0.1, waits until it answers, and creates
    /// [`DEFAULT_BUCKET`]. Call it from the test's own thread: the server is also killed
    /// if that thread dies without dropping it.
    pub fn start() -> Result<S3Server> {
        let program = moto_server()?;
        let mut last = None;
        // The port is free when picked but may be taken before moto binds it.
        for _ in 0..3 {
            match Self::start_once(&program) {
                Ok(server) => {
                    server.create_bucket(DEFAULT_BUCKET)?;
                    server.check_create_only_put(&program)?;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("moto_server did not start")))
    }

    fn start_once(program: &PathBuf) -> Result<S3Server> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("picking a free port")?
            .local_addr()?
            .port();
        let dir = tempfile::Builder::new()
            .prefix("klio-s3-")
            .tempdir()
            .context("creating a directory for moto's log")?;
        let log = File::create(dir.path().join("moto.log")).context("creating moto.log")?;
        // setpriv: the kernel kills moto if the test process dies without dropping us.
        let mut cmd = if which("setpriv").is_some() {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut server = S3Server { child, port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "moto_server exited with {status} before answering:\n{}",
                    server.log()
                );
            }
            if let Ok((200, _)) = server.request("GET", "/") {
                // The port was free when picked, but another test's server may have taken
                // it since (and answers for ours, which then fails to bind and exits).
                if crate::net::listens_on(server.child.id(), port) {
                    return Ok(server);
                }
                bail!("port {port} is served by another process than our moto_server");
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer on port {port} within {START_TIMEOUT:?}:\n{}",
                    server.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails unless a second create-only PUT of one key answers 412 as S3 does (the issue
    /// that chose moto reports 500 from 5.2.0-5.2.4): a moto that does not would make
    /// Tier 2 tests fail for reasons that have nothing to do with Klio.
    fn check_create_only_put(&self, program: &std::path::Path) -> Result<()> {
        let path = format!("/{DEFAULT_BUCKET}/klio-harness-probe");
        let create = [("If-None-Match", "*")];
        let first = self.request_with("PUT", &path, &create)?.0;
        let second = self.request_with("PUT", &path, &create)?.0;
        self.request("DELETE", &path)?;
        if (first, second) != (200, 412) {
            bail!(
                "{} answers {first} then {second} (not 200 then 412) to two create-only PUTs, \
                 so it cannot stand in for S3: run `bash scripts/setup.sh` (it installs \
                 moto[server] >= 5.2.5 into $HOME/.cache/klio-venv)",
                program.display()
            );
        }
        Ok(())
    }

    /// `http://127.0.0.1:<port>`, for `tier2.endpoint` (with `allow_http`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a bucket (tests that share a server each take their own).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        match self.request("PUT", &format!("/{bucket}"))? {
            (200, _) => Ok(()),
            (status, body) => bail!("creating bucket {bucket}: HTTP {status}: {body}"),
        }
    }

    /// The keys of the multipart uploads in progress (started, neither completed nor
    /// aborted) in `bucket`, from S3's ListMultipartUploads.
    pub fn multipart_uploads(&self, bucket: &str) -> Result<Vec<String>> {
        let (status, body) = self.request("GET", &format!("/{bucket}?uploads"))?;
        if status != 200 {
            bail!("listing multipart uploads of {bucket}: HTTP {status}: {body}");
        }
        Ok(body
            .split("<Upload>")
            .skip(1)
            .filter_map(|upload| xml_text(upload, "Key"))
            .collect())
    }

    /// The keys of the objects in `bucket`, in order (ListObjectsV2, every page).
    pub fn object_keys(&self, bucket: &str) -> Result<Vec<String>> {
        Ok(self.objects(bucket)?.into_iter().map(|o| o.key).collect())
    }

    /// Every object of the bucket in key order, with its ETag and size (ListObjectsV2,
    /// all pages).
    pub fn objects(&self, bucket: &str) -> Result<Vec<ListedObject>> {
        let mut objects: Vec<ListedObject> = Vec::new();
        loop {
            let mut path = format!("/{bucket}?list-type=2");
            if let Some(last) = objects.last() {
                path.push_str("&start-after=");
                path.push_str(&query_escape(&last.key));
            }
            let (status, body) = self.request("GET", &path)?;
            if status != 200 {
                bail!("listing {bucket}: HTTP {status}: {body}");
            }
            let page = body.split("<Contents>").skip(1).map(|object| {
                Ok(ListedObject {
                    key: xml_text(object, "Key").context("a listed object without Key")?,
                    etag: xml_text(object, "ETag").unwrap_or_default(),
                    size: xml_text(object, "Size")
                        .and_then(|s| s.parse().ok())
                        .context("a listed object without Size")?,
                })
            });
            let page: Vec<ListedObject> = page.collect::<Result<_>>()?;
            let truncated = xml_text(&body, "IsTruncated").as_deref() == Some("true");
            objects.extend(page);
            if !truncated {
                return Ok(objects);
            }
        }
    }

    /// moto's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// One HTTP/1.0 request without a body and with a dummy signature (moto checks none);
    /// returns the status and the body.
    fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        self.request_with(method, path, &[])
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String)> {
        let (status, body) = self.request_raw(method, path, headers, &[])?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// One HTTP/1.0 request with `body`; returns the status and the body's bytes.
    fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        // moto answers some unsigned requests (a refused conditional PUT, a DELETE) with
        // 403; it checks no signature, so a SigV4-shaped header is enough.
        head.push_str(
            "Authorization: AWS4-HMAC-SHA256 \
             Credential=klio/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00\r\n",
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                anyhow!(
                    "moto sent no complete HTTP response: {:?}",
                    String::from_utf8_lossy(&response)
                )
            })?;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("moto sent a malformed status line: {head:?}"))?;
        Ok((status, response[split + 4..].to_vec()))
    }

    /// The bytes of object `key` in `bucket`.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        match self.request_raw("GET", &format!("/{bucket}/{key}"), &[], &[])? {
            (200, body) => Ok(body),
            (status, body) => bail!(
                "GET {bucket}/{key}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Writes object `key` in `bucket` (replacing it), as another writer would.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> Result<()> {
        match self.request_raw("PUT", &format!("/{bucket}/{key}"), &[], body)? {
            (200, _) => Ok(()),
            (status, body) => bail!(
                "PUT {bucket}/{key}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Removes object `key` from `bucket`.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        match self.request("DELETE", &format!("/{bucket}/{key}"))? {
            (200 | 204, _) => Ok(()),
            (status, body) => bail!("DELETE {bucket}/{key}: HTTP {status}: {body}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` for a URL query value (unreserved characters kept, the rest %-escaped).
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_string())
}

fn moto_server() -> Result<PathBuf> {
    find_moto_server(
        std::env::var_os("KLIO_MOTO_SERVER"),
        std::env::var_os("HOME"),
        std::env::var_os("PATH"),
    )
}

fn find_moto_server(
    explicit: Option<OsString>,
    home: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(PathBuf::from(p));
    }
    if let Some(home) = home {
        let venv = PathBuf::from(home).join(".cache/klio-venv/bin/moto_server");
        if venv.is_file() {
            return Ok(venv);
        }
    }
    which_in(path, "moto_server").ok_or_else(|| {
        anyhow!(
            "moto_server (PyPI moto[server] >= 5.2.5) is not installed, and the Tier 2 tests \
             need it: run `bash scripts/setup.sh` (it installs moto into \
             $HOME/.cache/klio-venv), or `pip install 'moto[server]>=5.2.5'`, or point \
             KLIO_MOTO_SERVER at a moto_server executable"
        )
    })
}

fn which(program: &str) -> Option<PathBuf> {
    which_in(std::env::var_os("PATH"), program)
}

fn which_in(path: Option<OsString>, program: &str) -> Option<PathBuf> {
    path.and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_moto_fails_with_the_install_command() {
        let err = find_moto_server(
            None,
            Some("/nonexistent-klio-home".into()),
            Some("/nonexistent-klio-bin".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bash scripts/setup.sh"), "{err}");
        assert!(err.contains("moto[server] >= 5.2.5"), "{err}");
    }

    #[test]
    fn the_venv_comes_before_path() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join(".cache/klio-venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("moto_server"), "").unwrap();
        let found = find_moto_server(None, Some(home.path().into()), None).unwrap();
        assert_eq!(found, bin.join("moto_server"));
        let explicit = find_moto_server(Some("/x/moto".into()), Some(home.path().into()), None);
        assert_eq!(explicit.unwrap(), PathBuf::from("/x/moto"));
    }
}

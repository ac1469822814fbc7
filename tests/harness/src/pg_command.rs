//! Running PostgreSQL programs for the harness: as the unprivileged `postgres` account when
//! the tests run as root (PostgreSQL refuses to run as root), with a scrubbed libpq
//! environment, a working directory that account can enter, and a bounded wait. Writes
//! nothing itself; `chown`s the paths it is asked to hand over.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Uid, User};

/// libpq and server variables that would silently redirect or reconfigure a program.
const SCRUBBED_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLROOTCERT",
    "PGAPPNAME",
    "PGDATA",
    "PGTZ",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
];

/// The account PostgreSQL programs run as: `postgres` when we are root, ourselves otherwise.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    /// `Some` only when we are root and must switch to the `postgres` account.
    switch_to: Option<(Uid, Gid)>,
}

impl Owner {
    pub(crate) fn detect() -> Result<Owner> {
        if !Uid::effective().is_root() {
            return Ok(Owner { switch_to: None });
        }
        let user = User::from_name("postgres")
            .context("looking up the `postgres` account")?
            .context(
                "running as root, but there is no `postgres` account to run PostgreSQL as \
                 (PostgreSQL refuses to run as root): create it, e.g. install postgresql-15",
            )?;
        Ok(Owner {
            switch_to: Some((user.uid, user.gid)),
        })
    }

    /// Group of the account, when we switch to it (for files root shares with it).
    pub(crate) fn gid(&self) -> Option<Gid> {
        self.switch_to.map(|(_, gid)| gid)
    }

    /// Hands `path` to the account (no-op when we are not root).
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.switch_to {
            nix::unistd::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
        Ok(())
    }

    /// Fails when the account cannot traverse every ancestor of `dir` (checks the
    /// "other" execute bit, which is what a 0700 /root lacks).
    pub(crate) fn check_traversable(&self, dir: &Path) -> Result<()> {
        if self.switch_to.is_none() {
            return Ok(());
        }
        for ancestor in dir.ancestors().skip(1) {
            let mode = fs::metadata(ancestor)
                .with_context(|| format!("stat {}", ancestor.display()))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                bail!(
                    "the postgres account cannot traverse {} (mode {:o}) to reach {}: \
                     point TMPDIR (temp dirs) or KLIO_PG_CACHE (binaries) at a \
                     world-traversable directory",
                    ancestor.display(),
                    mode & 0o7777,
                    dir.display()
                );
            }
        }
        Ok(())
    }

    /// A command for `program` that runs as the account, in `cwd` (which the account must
    /// be able to enter: initdb and pg_ctl resolve their working directory), with `HOME`
    /// set to `home` so no stray `~/.pgpass` or `~/.postgresql/` is read.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>, cwd: &Path, home: &Path) -> Command {
        let mut cmd = Command::new(program);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C")
            .env("PGCLIENTENCODING", "UTF8")
            .env("HOME", home)
            .current_dir(cwd)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.switch_to {
            // std drops root's supplementary groups when it switches uid.
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }
}

/// What a finished program printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        let mut text = format!("exit status: {}", self.status);
        for (name, out) in [("stderr", &self.stderr), ("stdout", &self.stdout)] {
            let out = out.trim();
            if !out.is_empty() {
                text.push_str(&format!("\n{name}:\n{}", tail(out, 40)));
            }
        }
        text
    }
}

/// Runs `cmd` to completion, feeding it `stdin`, killing it after `timeout`. Does not look
/// at the exit status.
pub(crate) fn output(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Finished> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take();
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            if let Some(pipe) = pipe.as_mut() {
                // A program that exits early closes the pipe; its status tells why.
                let _ = pipe.write_all(&bytes);
            }
        })
    });
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let status = wait_bounded(&mut child, timeout);
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status? {
        Some(status) => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{what} did not finish within {timeout:?} and was killed\nstderr:\n{}",
            tail(&stderr, 40)
        ),
    }
}

/// Runs `cmd` like [`output`] and fails unless it exits with status 0; the error carries
/// `what`, the status and the program's output.
pub(crate) fn run(
    cmd: Command,
    what: &str,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Finished> {
    let finished = output(cmd, stdin, timeout).with_context(|| what.to_owned())?;
    if !finished.status.success() {
        bail!("{what} failed: {}", finished.describe());
    }
    Ok(finished)
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Polls `child` until it exits (`Some(status)`) or `timeout` passes (killed, `None`).
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

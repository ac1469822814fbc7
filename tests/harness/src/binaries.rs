//! Where PostgreSQL programs of a given major version live: the system's PostgreSQL (Debian's
//! 15, found with `pg_config --bindir`) or a major installed by `tests/install-postgres.sh`
//! under `$KLIO_PG_CACHE/<major>/bin`. Reads only; writes nothing.

use std::collections::HashMap;
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

/// Installed by `tests/install-postgres.sh` when run as root (root's home is 0700, and
/// PostgreSQL runs as `postgres`, which must reach the binaries).
const ROOT_CACHE: &str = "/opt/klio-pg";

/// Debian's location, used when `pg_config` is not on `PATH`.
const DEBIAN_DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Client programs whose newer versions work against older servers (or, for
/// `pg_verifybackup`, read older backups' manifests). An instance whose own bin dir lacks
/// one of them (the npm builds ship only initdb, pg_ctl and postgres) borrows the
/// system's when that is at least as new.
const BACKWARD_COMPATIBLE_CLIENTS: &[&str] = &[
    "psql",
    "pgbench",
    "pg_isready",
    "pg_basebackup",
    "pg_receivewal",
    "pg_recvlogical",
    "pg_dump",
    "pg_dumpall",
    "pg_restore",
    "pg_verifybackup",
];

/// Where `tests/install-postgres.sh` puts extra majors: `$KLIO_PG_CACHE`, else
/// `/opt/klio-pg` for root, else `$HOME/.cache/klio-pg`.
pub fn pg_cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("KLIO_PG_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from(ROOT_CACHE);
    }
    match env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".cache/klio-pg"),
        None => PathBuf::from(ROOT_CACHE),
    }
}

/// The bin directory of PostgreSQL `major` (`None`: the system's, 15 on Debian). Fails,
/// naming the install script, when that major is not installed.
pub fn pg_bin_dir(major: Option<u32>) -> Result<PathBuf> {
    let system = system_bin_dir();
    let Some(major) = major else {
        return system.clone().context(
            "no system PostgreSQL found (`pg_config --bindir` failed and \
             /usr/lib/postgresql/15/bin does not exist): install postgresql-15",
        );
    };
    if let Some(system) = system {
        if server_major(system).ok() == Some(major) {
            return Ok(system.clone());
        }
    }
    let cache = pg_cache_dir();
    let dir = cache.join(major.to_string()).join("bin");
    if !dir.join("postgres").is_file() {
        bail!(
            "PostgreSQL {major} binaries not found in {}: run `tests/install-postgres.sh {major}` \
             (it installs into KLIO_PG_CACHE={}; the tests must see the same KLIO_PG_CACHE)",
            dir.display(),
            cache.display()
        );
    }
    let found = server_major(&dir)?;
    if found != major {
        bail!("{} holds PostgreSQL {found}, not {major}", dir.display());
    }
    Ok(dir)
}

/// The system's PostgreSQL bin dir, looked up once.
pub(crate) fn system_bin_dir() -> &'static Option<PathBuf> {
    static SYSTEM: OnceLock<Option<PathBuf>> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        from_pg_config
            .into_iter()
            .chain([PathBuf::from(DEBIAN_DEFAULT_BIN)])
            .find(|dir| dir.join("postgres").is_file())
    })
}

/// Major version of the `postgres` in `bin_dir` (`postgres --version`), cached per dir.
pub(crate) fn server_major(bin_dir: &Path) -> Result<u32> {
    static MAJORS: OnceLock<Mutex<HashMap<PathBuf, u32>>> = OnceLock::new();
    let cache = MAJORS.get_or_init(Default::default);
    if let Some(major) = cache.lock().ok().and_then(|m| m.get(bin_dir).copied()) {
        return Ok(major);
    }
    let postgres = bin_dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", postgres.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): {}{}",
            postgres.display(),
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let major = parse_major(&text)
        .with_context(|| format!("unexpected `postgres --version` output: {}", text.trim()))?;
    if let Ok(mut map) = cache.lock() {
        map.insert(bin_dir.to_path_buf(), major);
    }
    Ok(major)
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> 15.
fn parse_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split(") ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Path of program `name` for an instance of `major` whose binaries are in `bin_dir`:
/// its own if present, else the system's for backward-compatible clients when the system
/// PostgreSQL is at least as new, else the (missing) path in `bin_dir`, so that running
/// it fails naming the file.
pub(crate) fn tool_path(bin_dir: &Path, major: u32, name: &str) -> PathBuf {
    let own = bin_dir.join(name);
    if own.exists() || !BACKWARD_COMPATIBLE_CLIENTS.contains(&name) {
        return own;
    }
    if let Some(system) = system_bin_dir() {
        let candidate = system.join(name);
        if candidate.exists() && server_major(system).is_ok_and(|m| m >= major) {
            return candidate;
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_lines() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 13.23\n"), Some(13));
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1\n"), Some(17));
        assert_eq!(parse_major("garbage"), None);
    }
}

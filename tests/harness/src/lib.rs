//! Test harness for Klio's end-to-end tests: starts real, throwaway PostgreSQL servers.
//!
//! Each [`PgInstance`] gets its own temp directory, TCP port on 127.0.0.1 and unix socket
//! directory, so tests run in parallel. When the tests run as root, every PostgreSQL program
//! runs as the `postgres` account (PostgreSQL refuses root). Besides the system PostgreSQL
//! (15), majors installed by `tests/install-postgres.sh` are available ([`pg_bin_dir`]).
//!
//! ```no_run
//! use klio_harness::{AuthMethod, PgInstance, PgOptions};
//! # fn main() -> anyhow::Result<()> {
//! let primary = PgInstance::start(PgOptions::new().auth(AuthMethod::ScramSha256))?;
//! assert_eq!(primary.psql("SELECT 1")?, "1");
//! let standby = primary.start_standby(PgOptions::new())?;
//! standby.promote()?;
//! # Ok(()) }
//! ```
//!
//! Every instance has a role `streaming_replica` (`REPLICATION LOGIN`, password
//! `replpass`) allowed to replicate from 127.0.0.1 with the chosen [`AuthMethod`]; the
//! superuser `postgres` is trusted on the unix socket and on 127.0.0.1. Set `KLIO_KEEP_PG=1`
//! to keep instance directories (data, log) after a test for inspection.
//!
//! Writes only in the temporary directories it creates (one per instance).

mod binaries;
mod config;
pub mod fault_proxy;
mod instance;
pub mod k8s;
pub mod net;
mod orphans;
mod pg_command;
pub mod s3;
mod tls;

pub use binaries::{pg_bin_dir, pg_cache_dir};

/// The directory of the test's package, for the files a test reads from the checkout
/// (fixtures, golden files, committed manifests): `CARGO_MANIFEST_DIR` as cargo and
/// nextest set it when they run the test, else `compiled` (pass
/// `env!("CARGO_MANIFEST_DIR")`). A test binary reused from a build in another checkout
/// (the target directory is shared) then still reads the files of the checkout being
/// tested, not those of the one it was compiled in.
pub fn manifest_dir(compiled: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(compiled))
}
pub use config::{AuthMethod, PgOptions};
pub use instance::{PgInstance, StopMode};
pub use tls::{write_file, TestCa, TlsFiles};

/// The bootstrap superuser of every instance.
pub const SUPERUSER: &str = "postgres";
/// The replication role every instance has.
pub const REPLICATION_USER: &str = "streaming_replica";
/// Password of [`REPLICATION_USER`].
pub const REPLICATION_PASSWORD: &str = "replpass";

#[cfg(test)]
mod tests {
    /// The directory comes from the running test's environment, not from where the
    /// binary was compiled.
    #[test]
    fn the_manifest_dir_is_the_one_the_test_runs_in() {
        let dir = super::manifest_dir("/nonexistent/compiled/elsewhere");
        assert!(dir.join("Cargo.toml").is_file(), "{}", dir.display());
        assert!(dir.join("src/lib.rs").is_file(), "{}", dir.display());
    }
}

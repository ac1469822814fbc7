//! Shared machinery of the side-by-side benchmarks (the `klio-bench-*` binaries): rounds
//! in rotated order with medians ([`rounds`]), the host's state before each phase
//! ([`host`]), replication slots and synchronous standbys on the primary
//! ([`replication`]), content checks of what a run produced ([`checks`]), a summary of
//! a standby's system calls per commit ([`syscalls`]), starting and stopping tracers
//! ([`perf`]), the standby's round trip as the primary's walsender sees it
//! ([`walsender`]), and each commit's steps as the block device sees them
//! ([`blocktrace`]), the windows in which a Klio server's recompressor rewrote a segment
//! ([`recompress_windows`]); and what the size of a file's zero-filling writes costs the
//! writes that follow ([`fill`]). Writes nothing to disk itself beyond `/proc` controls (page-cache
//! drop, peak-RSS reset).

pub mod blocktrace;
pub mod checks;
pub mod fill;
pub mod host;
pub mod perf;
pub mod recompress_windows;
pub mod replication;
pub mod rounds;
pub mod syscalls;
pub mod walsender;

/// The `n`th command-line argument parsed as `T`, or `default` when absent.
pub fn arg<T: std::str::FromStr>(n: usize, default: T) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::args().nth(n) {
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("argument {n} ({s:?}): {e}")),
        None => Ok(default),
    }
}

//! Replication state on the benchmark's primary: physical slots (copied so that every
//! round's client starts from the same retained WAL, dropped once released) and the
//! synchronous standby named by `synchronous_standby_names`. Writes only through SQL
//! (`ALTER SYSTEM` goes to the primary's `postgresql.auto.conf`).

use std::time::Duration;

use anyhow::Result;
use klio_tests::{wait_until, PgInstance, PgOptions};

/// A primary holding a backlog of WAL for catch-up benchmarks: the slot `keeper`
/// retains everything `pgbench -i -s SCALE` wrote, ending just past a segment switch.
pub struct KeptBacklog {
    pub pg: PgInstance,
    /// `keeper`'s restart LSN before the load (`X/Y`).
    pub start: String,
    /// The flushed end of the load (`X/Y`).
    pub end: String,
}

/// Starts a primary (no checkpoint or WAL recycling during the run), creates `keeper`,
/// runs `pgbench -i -s scale`, switches WAL and writes a little past the end, so no
/// client waits for a keepalive to notice the end.
pub fn kept_backlog(scale: u32) -> Result<KeptBacklog> {
    let pg = PgInstance::start(
        PgOptions::new()
            .conf("max_wal_size", "8GB")
            .conf("checkpoint_timeout", "1h")
            .conf("wal_keep_size", "8GB"),
    )?;
    pg.psql("SELECT pg_create_physical_replication_slot('keeper', true)")?;
    let start =
        pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'keeper'")?;
    eprintln!("generating WAL: pgbench -i -s {scale} ...");
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    pg.psql("CREATE TABLE bench_tail AS SELECT generate_series(1, 100000) AS i")?;
    Ok(KeptBacklog { pg, start, end })
}

/// Creates slot `to` as a copy of `from`: same restart LSN, so a client streaming from
/// `to` starts where `from` holds the WAL.
pub fn copy_slot(pg: &PgInstance, from: &str, to: &str) -> Result<()> {
    pg.psql(&format!(
        "SELECT pg_copy_physical_replication_slot('{from}', '{to}')"
    ))?;
    Ok(())
}

/// Waits until no client uses `slot`, then drops it (no-op when it does not exist).
pub fn drop_slot(pg: &PgInstance, slot: &str) -> Result<()> {
    wait_until(Duration::from_secs(30), "the slot to be released", || {
        Ok(pg.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
        ))? == "0")
    })?;
    pg.psql(&format!(
        "SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))?;
    Ok(())
}

/// Sets `synchronous_standby_names` (empty: none) and reloads the configuration.
pub fn set_sync_names(pg: &PgInstance, names: &str) -> Result<()> {
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
    ))?;
    pg.psql("SELECT pg_reload_conf()")?;
    Ok(())
}

/// Waits until the standby with `application_name` `app` is the synchronous one.
pub fn wait_sync(pg: &PgInstance, app: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(120),
        &format!("{app} as sync standby"),
        || {
            Ok(pg.psql(&format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{app}'"
            ))? == "sync")
        },
    )
}

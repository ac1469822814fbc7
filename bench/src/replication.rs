//! Replication state on the benchmark's primary: physical slots (copied so that every
//! round's client starts from the same retained WAL, dropped once released) and the
//! synchronous standby named by `synchronous_standby_names`. Writes only through SQL
//! (`ALTER SYSTEM` goes to the primary's `postgresql.auto.conf`).

use std::time::Duration;

use anyhow::Result;
use klio_tests::{wait_until, PgInstance};

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

//! Content checks of what a benchmark produced: an order-independent digest of tables
//! (row count and a sum of per-row md5 prefixes), cheap enough for tables of millions of
//! rows where [`klio_tests::table_checksums`] would aggregate one string over all rows.
//! Reads only, through SQL.

use anyhow::{ensure, Result};
use klio_tests::PgInstance;

/// The pgbench tables.
pub const PGBENCH_TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

/// One line per table: its name, row count and the sum of the first 60 bits of each
/// row's md5.
pub fn table_digest(pg: &PgInstance, tables: &[&str]) -> Result<String> {
    let mut out = String::new();
    for t in tables {
        let d = pg.psql(&format!(
            "SELECT count(*) || ':' || coalesce(sum(('x' || substr(md5(x::text), 1, 15))::bit(60)::bigint), 0) FROM {t} x"
        ))?;
        out.push_str(&format!("{t} {d}\n"));
    }
    Ok(out)
}

/// Fails unless `pg`'s tables digest to `expected` (from [`table_digest`] of the source).
pub fn same_tables(pg: &PgInstance, expected: &str, what: &str) -> Result<()> {
    let got = table_digest(pg, &PGBENCH_TABLES)?;
    ensure!(
        got == expected,
        "{what}: the tables differ from the source's\nsource:\n{expected}got:\n{got}"
    );
    Ok(())
}

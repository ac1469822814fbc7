//! Streaming smoke test on other PostgreSQL majors (replication command syntax
//! differs before 15). Binaries come from `tests/install-postgres.sh`.

use std::time::Duration;

use anyhow::{ensure, Result};
use klio_tests::{ClusterConf, KlioServer, PgInstance, PgOptions};

fn smoke(major: u32) -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().major(major).conf("wal_keep_size", "1GB"))?;
    let name = format!("pg{major}");
    let klio = KlioServer::start(vec![ClusterConf::new(&name, pg.replication_conninfo())])?;
    klio.wait_status(&name, Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 200000) AS i")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(&name, &flush, Duration::from_secs(60))?;
    let sealed = klio.sealed_segments(&name)?;
    ensure!(
        !sealed.is_empty(),
        "no sealed segment on PostgreSQL {major}"
    );
    let out = tempfile::tempdir()?;
    let compared = klio
        .compare_with_pg_wal(&name, &pg.wal_dir(), out.path(), &sealed)?
        .total();
    ensure!(
        compared == sealed.len(),
        "{compared} of {} compared on {major}",
        sealed.len()
    );
    println!(
        "PostgreSQL {major}: {} sealed segments identical",
        sealed.len()
    );
    Ok(())
}

#[test]
fn streams_from_postgres_13() -> Result<()> {
    smoke(13)
}

#[test]
fn streams_from_postgres_17() -> Result<()> {
    smoke(17)
}

#[test]
fn streams_over_tls_with_a_client_certificate() -> Result<()> {
    // CloudNativePG's streaming_replica authenticates with a client certificate.
    let pg = PgInstance::start(PgOptions::new().auth(klio_tests::AuthMethod::Cert))?;
    let conninfo = pg.replication_conninfo();
    assert!(conninfo.contains("sslcert="), "{conninfo}");
    let klio = KlioServer::start(vec![ClusterConf::new("tls", conninfo)])?;
    klio.wait_status("tls", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS i")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("tls", &flush, Duration::from_secs(60))?;
    let ssl =
        pg.psql("SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)")?;
    ensure!(ssl == "t", "the replication connection is not encrypted");
    Ok(())
}

//! Self-tests of the harness against real PostgreSQL: each test asserts the property it is
//! named after. The 13 and 17 tests fail (not skip) when `tests/install-postgres.sh 13 17`
//! has not been run: CI installs them.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use klio_harness::{
    pg_bin_dir, AuthMethod, PgInstance, PgOptions, StopMode, REPLICATION_PASSWORD, REPLICATION_USER,
};

fn start(opts: PgOptions) -> PgInstance {
    PgInstance::start(opts).unwrap_or_else(|e| panic!("starting PostgreSQL: {e:#}"))
}

/// Connects with tokio-postgres (no TLS) using `conninfo`, returning the login error if any.
async fn login(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs the instance's psql as the current user (root in CI) with a libpq conninfo.
fn psql_as_caller(pg: &PgInstance, conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(pg.tool("psql"))
        .env("HOME", "/nonexistent")
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
        .output()
        .expect("running psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn system_instance_answers_psql_and_client() {
    let pg = start(PgOptions::new());
    assert_eq!(pg.major(), 15);
    assert_eq!(pg.psql("SELECT 1").unwrap(), "1");

    let client = pg.client().await.unwrap();
    let row = client.query_one("SELECT 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);

    // The configuration the rest of the tests rely on.
    let settings = pg
        .psql("SELECT current_setting('fsync'), current_setting('wal_level'), current_setting('port')")
        .unwrap();
    assert_eq!(settings, format!("on|replica|{}", pg.port()));
    let err = pg.psql("SELECT no_such_column").unwrap_err();
    assert!(format!("{err:#}").contains("no_such_column"), "{err:#}");

    if nix::unistd::Uid::effective().is_root() {
        let owner = std::fs::metadata(pg.data_dir()).unwrap().uid();
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(
            owner,
            postgres.uid.as_raw(),
            "data dir must belong to postgres"
        );
    }
    assert!(pg.wal_dir().is_dir());
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_its_directory() {
    let pg = start(PgOptions::new());
    let data_dir = pg.data_dir().to_path_buf();
    let conninfo = pg.superuser_conninfo();
    drop(pg);
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(
        login(&conninfo).await.is_err(),
        "server still accepts connections"
    );
}

#[tokio::test]
async fn scram_admits_the_right_password_and_rejects_a_wrong_one() {
    let pg = start(PgOptions::new().auth(AuthMethod::ScramSha256));
    let stored = pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'streaming_replica'")
        .unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");

    let client = login(&pg.replication_conninfo()).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), REPLICATION_USER);
    assert!(row.get::<_, bool>(1));

    let wrong = pg
        .replication_conninfo()
        .replace(REPLICATION_PASSWORD, "not-the-password");
    let err = login(&wrong).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err}"
    );
}

#[tokio::test]
async fn md5_stores_md5_and_checks_the_password() {
    let pg = start(PgOptions::new().auth(AuthMethod::Md5));
    let stored = pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'streaming_replica'")
        .unwrap();
    assert!(stored.starts_with("md5"), "{stored}");
    login(&pg.replication_conninfo()).await.unwrap();
    let wrong = pg
        .replication_conninfo()
        .replace(REPLICATION_PASSWORD, "nope");
    assert!(login(&wrong).await.is_err());
}

#[test]
fn cert_auth_requires_tls_and_the_client_certificate() {
    let pg = start(PgOptions::new().auth(AuthMethod::Cert).ssl(true));
    let tls = pg.tls().expect("TLS files");
    for file in [
        &tls.ca_cert,
        &tls.server_cert,
        &tls.client_cert,
        &tls.client_key,
    ] {
        std::fs::read(file).unwrap_or_else(|e| panic!("{} unreadable: {e}", file.display()));
    }
    assert_eq!(pg.psql("SHOW ssl").unwrap(), "on");

    let conninfo = pg.replication_conninfo();
    assert!(conninfo.contains("sslmode=verify-full"), "{conninfo}");
    let who = psql_as_caller(
        &pg,
        &conninfo,
        "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap_or_else(|e| panic!("cert login failed: {e}"));
    assert_eq!(who, "streaming_replica true");

    // Same TLS, no client certificate: the cert method refuses.
    let no_cert = format!(
        "host=127.0.0.1 port={} user=streaming_replica dbname=postgres sslmode=verify-full \
         sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent",
        pg.port(),
        tls.ca_cert.display()
    );
    let err = psql_as_caller(&pg, &no_cert, "SELECT 1").unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // Without TLS there is no hba line for streaming_replica at all.
    let plain = format!(
        "host=127.0.0.1 port={} user=streaming_replica dbname=postgres sslmode=disable",
        pg.port()
    );
    let err = psql_as_caller(&pg, &plain, "SELECT 1").unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
}

#[test]
fn scram_over_tls_verifies_the_server_certificate() {
    let pg = start(PgOptions::new().ssl(true));
    let ssl = psql_as_caller(
        &pg,
        &pg.replication_conninfo(),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap_or_else(|e| panic!("TLS + SCRAM login failed: {e}"));
    assert_eq!(ssl, "t");
}

#[test]
fn standby_streams_and_promotes() {
    let primary = start(PgOptions::new());
    primary
        .psql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .unwrap();
    let standby = primary
        .start_standby(PgOptions::new())
        .unwrap_or_else(|e| panic!("starting standby: {e:#}"));
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
    assert_eq!(
        primary
            .psql("SELECT usename || ' ' || state FROM pg_stat_replication")
            .unwrap(),
        "streaming_replica streaming"
    );

    primary.psql("INSERT INTO t VALUES (2)").unwrap();
    wait_for("row 2 on the standby", || {
        standby.psql("SELECT count(*) FROM t").unwrap() == "2"
    });

    standby
        .promote()
        .unwrap_or_else(|e| panic!("promote: {e:#}"));
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    standby.psql("INSERT INTO t VALUES (3)").unwrap();
    assert_eq!(standby.psql("SELECT count(*) FROM t").unwrap(), "3");
}

#[test]
fn standby_of_a_cert_primary_streams_over_tls() {
    let primary = start(PgOptions::new().auth(AuthMethod::Cert));
    let standby = primary
        .start_standby(PgOptions::new())
        .unwrap_or_else(|e| panic!("starting standby: {e:#}"));
    let state = primary
        .psql(
            "SELECT r.usename || ' ' || r.state || ' ' || s.ssl \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
        )
        .unwrap();
    assert_eq!(state, "streaming_replica streaming true");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
}

#[test]
fn stop_and_restart_keep_port_and_data() {
    let mut pg = start(PgOptions::new());
    let port = pg.port();
    pg.psql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .unwrap();
    pg.stop(StopMode::Immediate).unwrap();
    assert!(pg.psql("SELECT 1").is_err(), "stopped server answered");
    pg.restart().unwrap_or_else(|e| panic!("restart: {e:#}"));
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT v FROM kept").unwrap(), "42");
    pg.stop(StopMode::Fast).unwrap();
    pg.stop(StopMode::Fast).unwrap();
}

#[test]
fn parallel_starts_do_not_clash() {
    let instances: Vec<PgInstance> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| start(PgOptions::new())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ports: HashSet<u16> = instances.iter().map(PgInstance::port).collect();
    let dirs: HashSet<&Path> = instances.iter().map(PgInstance::data_dir).collect();
    let sockets: HashSet<&Path> = instances.iter().map(PgInstance::socket_dir).collect();
    assert_eq!(ports.len(), 3);
    assert_eq!(dirs.len(), 3);
    assert_eq!(sockets.len(), 3);
    for pg in &instances {
        let port = pg.psql("SHOW port").unwrap();
        assert_eq!(port, pg.port().to_string());
    }
}

#[test]
fn pgbench_runs() {
    let pg = start(PgOptions::new());
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let out = pg.pgbench(&["-t", "20", "-c", "2"]).unwrap();
    assert!(
        out.contains("number of transactions actually processed: 40"),
        "{out}"
    );
}

#[test]
fn a_missing_major_names_the_install_script() {
    let err = pg_bin_dir(Some(99)).unwrap_err();
    assert!(
        format!("{err:#}").contains("tests/install-postgres.sh 99"),
        "{err:#}"
    );
}

/// Starts `major` (installed by tests/install-postgres.sh), checks its version, and that a
/// standby of it streams.
fn check_major(major: u32) {
    let bin = pg_bin_dir(Some(major)).unwrap_or_else(|e| panic!("{e:#}"));
    let primary = start(PgOptions::new().major(major));
    assert_eq!(primary.major(), major);
    assert_eq!(primary.bin_dir(), bin);
    let version: u32 = primary
        .psql("SHOW server_version_num")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(version / 10000, major);
    let standby = primary
        .start_standby(PgOptions::new())
        .unwrap_or_else(|e| panic!("standby of {major}: {e:#}"));
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
}

#[test]
fn postgres_13_starts() {
    check_major(13);
}

#[test]
fn postgres_17_starts() {
    check_major(17);
    // 17 comes with its own client tools; WAL tools must match the server's major.
    let bin = pg_bin_dir(Some(17)).unwrap();
    for tool in [
        "pg_waldump",
        "pg_receivewal",
        "pg_verifybackup",
        "pg_basebackup",
    ] {
        assert!(
            bin.join(tool).exists(),
            "{tool} missing in {}",
            bin.display()
        );
    }
}

//! RPO 0 you can prove: with Klio as the only synchronous standby, every commit
//! PostgreSQL acknowledged survives Klio being SIGKILLed at random moments and
//! crashing at each failpoint, and is recovered from a base copy taken before the
//! load plus only Klio's WAL (through `klio wal-restore`).
//!
//! Short variant by default (≥ 5 kill cycles); `KLIO_TORTURE_CYCLES=50` for the long one,
//! run with nextest's `long` profile (`.config/nextest.toml`), whose timeout allows it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_tests::{
    parse_lsn, stream_starts, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions, StopMode,
};
use rand::Rng;

const FAILPOINTS: [&str; 4] = [
    "wal-after-write",
    "wal-after-fsync",
    "wal-seal-rename",
    "wal-before-catalog",
];

fn load(conninfo: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<i64>>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut id: i64 = 0;
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            client
                .execute("INSERT INTO acked VALUES ($1, repeat('x', 300))", &[&id])
                .await
                .with_context(|| format!("insert {id}"))?;
            // COMMIT returned: the primary says this row is durable (in Klio).
            acked.lock().expect("acked lock").push(id);
        }
        Ok(())
    })
}

#[test]
fn acknowledged_commits_survive_klio_crashes() -> Result<()> {
    let cycles: usize = std::env::var("KLIO_TORTURE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .max(FAILPOINTS.len() + 1);
    let mut pg = PgInstance::start(
        PgOptions::new()
            .synchronous_standby_names("klio")
            .conf("synchronous_commit", "on")
            .conf("wal_keep_size", "4GB"),
    )?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("t", pg.replication_conninfo())])?;
    klio.wait_status("t", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    wait_until(Duration::from_secs(30), "klio as sync standby", || {
        Ok(
            pg.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'klio'")?
                == "sync",
        )
    })?;
    pg.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)")?;
    let mut copy = pg.base_copy(PgOptions::new())?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let loader = {
        let (c, s, a) = (pg.superuser_conninfo(), stop.clone(), acked.clone());
        std::thread::spawn(move || load(c, s, a))
    };
    let mut rng = rand::thread_rng();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        let how = match FAILPOINTS.get(cycle) {
            Some(fp) => {
                // Restart with the failpoint armed and push WAL until it fires.
                klio.kill9();
                klio.set_env("KLIO_FAILPOINT", Some(fp));
                klio.spawn()?;
                let mut fired = false;
                for _ in 0..300 {
                    if klio.wait_exit(Duration::from_millis(200))? {
                        fired = true;
                        break;
                    }
                    pg.psql("SELECT pg_switch_wal()")?;
                }
                klio.set_env("KLIO_FAILPOINT", None);
                ensure!(
                    fired,
                    "failpoint {fp} was never reached:\n{}",
                    klio.log_tail(30)
                );
                format!("failpoint {fp}")
            }
            None => {
                klio.kill9();
                "SIGKILL".to_string()
            }
        };
        // What the primary was told is durable must be where Klio resumes, or before.
        let confirmed =
            pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'klio'")?;
        klio.restart()?;
        klio.wait_status("t", Duration::from_secs(60), "streaming again", |v| {
            v["state"] == "streaming"
        })?;
        // Commits that waited while Klio was down go through once it is back.
        let n = acked.lock().expect("acked").len();
        wait_until(
            Duration::from_secs(30),
            "commits to be acknowledged again",
            || Ok(acked.lock().expect("acked").len() > n),
        )?;
        let resumed = *stream_starts(&klio.log())
            .last()
            .context("no 'streaming WAL' log line")?;
        ensure!(
            resumed >= parse_lsn(&confirmed)?,
            "cycle {cycle} ({how}): primary was told {confirmed} is flushed, Klio resumed at {resumed}"
        );
        println!(
            "cycle {cycle}: {how}; confirmed {confirmed}, resumed at {resumed}, acknowledged so far {}",
            acked.lock().expect("acked").len()
        );
    }
    let before = acked.lock().expect("acked").len();
    wait_until(
        Duration::from_secs(30),
        "more commits after the last restart",
        || Ok(acked.lock().expect("acked").len() > before + 50),
    )?;
    stop.store(true, Ordering::SeqCst);
    loader.join().expect("load thread")?;
    let acked: Vec<i64> = acked.lock().expect("acked").clone();
    ensure!(!acked.is_empty(), "nothing was acknowledged");

    // The primary is gone: only the base copy and Klio's WAL remain.
    pg.stop(StopMode::Immediate)?;
    drop(pg);

    let tools = klio.tools_for_postgres("t")?;
    let restore = klio.restore_command("t", &tools);
    copy.start_recovery(&restore)?;
    // Ready for (read-only) connections is not done: wait for the end of recovery.
    wait_until(
        Duration::from_secs(180),
        "recovery to replay all of Klio's WAL",
        || Ok(copy.psql("SELECT pg_is_in_recovery()")? == "f"),
    )?;
    let got: HashSet<i64> = copy
        .psql("SELECT id FROM acked")?
        .lines()
        .map(|l| l.trim().parse())
        .collect::<Result<_, _>>()?;
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !got.contains(id))
        .collect();
    println!(
        "cycles={cycles} acknowledged={} recovered={} lost={}",
        acked.len(),
        got.len(),
        lost.len()
    );
    ensure!(
        lost.is_empty(),
        "acknowledged commits lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    Ok(())
}

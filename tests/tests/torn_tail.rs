//! Crash recovery of a torn tail. Failpoints abort the process, so the page cache keeps
//! whatever was written; a power loss can leave the last frame of the open `.partial`
//! incomplete (the file ends inside it) or torn in place (its bytes garbled). Here Klio
//! is SIGKILLed, the open `.partial` is damaged so while it is down, and on restart:
//! reconciliation drops exactly the torn bytes (its report counts them), streaming
//! resumes at the end of the valid frames, and every sealed segment — the repaired one
//! included — is byte-identical to the primary's `pg_wal`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use klio_tests::{stream_starts, ClusterConf, KlioServer, PgInstance, PgOptions};
use rand::RngCore;

const CLUSTER: &str = "torn";
/// The object header and a frame header (`docs/FORMATS.md`, `klio_core::frame`).
const HEADER_LEN: usize = 48;
const FRAME_HEADER_LEN: usize = 32;

/// One frame of a stored object, located by its header alone (no key needed).
#[derive(Debug)]
struct Frame {
    start: usize,
    end: usize,
    plain_offset: u64,
    plain_len: u64,
}

/// The complete frames of a `.partial` file, up to the zeros the writer fills ahead.
fn frames(bytes: &[u8]) -> Result<Vec<Frame>> {
    let le32 =
        |at: usize| -> Result<u64> { Ok(u32::from_le_bytes(bytes[at..at + 4].try_into()?).into()) };
    ensure!(bytes.starts_with(b"KLIOOBJ1"), "not a Klio object");
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    let mut plain = 0;
    while pos + FRAME_HEADER_LEN <= bytes.len() {
        let stored = le32(pos)? as usize;
        if stored == 0 {
            break;
        }
        let plain_offset = u64::from_le_bytes(bytes[pos + 4..pos + 12].try_into()?);
        let plain_len = le32(pos + 12)?;
        let end = pos + FRAME_HEADER_LEN + stored;
        ensure!(end <= bytes.len(), "frame at {pos} runs past the end");
        ensure!(
            plain_offset == plain,
            "frame at {pos} carries offset {plain_offset}, expected {plain}"
        );
        out.push(Frame {
            start: pos,
            end,
            plain_offset,
            plain_len,
        });
        plain += plain_len;
        pos = end;
    }
    Ok(out)
}

/// The one `.partial` in the cluster's WAL directory (the segment being written).
fn open_partial(klio: &KlioServer) -> Result<PathBuf> {
    let dir = klio.layout().wal(&CLUSTER.parse()?).path().to_path_buf();
    let partials: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "partial"))
        .collect();
    match partials.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one .partial in {}: {partials:?}", dir.display()),
    }
}

/// `torn_bytes_dropped` from the reconciliation report in `log`.
fn torn_bytes_dropped(log: &str) -> Result<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("Tier 1 WAL store reconciled"))
        .context("no reconciliation report in the log")?;
    let n = line
        .split("torn_bytes_dropped: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .with_context(|| format!("no torn_bytes_dropped in {line:?}"))?;
    Ok(n.parse()?)
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// A next frame whose write stopped half way: its header and part of its body, and
    /// the file ends there.
    CutShort,
    /// The last frame's bytes garbled in place (a sector torn mid-write).
    Garbled,
}

/// Writes some WAL, waits until Klio has it durable, kills Klio, damages the open
/// `.partial`, restarts, and checks the report and where streaming resumed. Returns the
/// damaged segment's name.
fn crash_and_damage(
    pg: &PgInstance,
    klio: &mut KlioServer,
    seg_size: u64,
    damage: Damage,
) -> Result<String> {
    for _ in 0..4 {
        pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")?;
    }
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    klio.kill9();

    let path = open_partial(klio)?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("partial name")?
        .to_string();
    let seg_start = (u64::from_str_radix(&name[8..16], 16)? << 32)
        + u64::from_str_radix(&name[16..24], 16)? * seg_size;
    let mut bytes = std::fs::read(&path)?;
    let found = frames(&bytes)?;
    let last = found.last().context("the open .partial holds no frame")?;
    let (dropped, resume) = match damage {
        Damage::CutShort => {
            let mut torn = vec![0u8; FRAME_HEADER_LEN + 2000];
            torn[0..4].copy_from_slice(&4112u32.to_le_bytes());
            torn[4..12].copy_from_slice(&(last.plain_offset + last.plain_len).to_le_bytes());
            torn[12..16].copy_from_slice(&8192u32.to_le_bytes());
            torn[16] = 1;
            rand::thread_rng().fill_bytes(&mut torn[17..29]);
            rand::thread_rng().fill_bytes(&mut torn[FRAME_HEADER_LEN..]);
            bytes.truncate(last.end);
            bytes.extend_from_slice(&torn);
            (torn.len() as u64, last.plain_offset + last.plain_len)
        }
        Damage::Garbled => {
            let mid =
                last.start + FRAME_HEADER_LEN + (last.end - last.start - FRAME_HEADER_LEN) / 2;
            bytes[mid] ^= 0x55;
            ((bytes.len() - last.start) as u64, last.plain_offset)
        }
    };
    std::fs::write(&path, &bytes)?;
    println!(
        "{damage:?}: {} frames in {name}.partial; damaged from byte {}",
        found.len(),
        match damage {
            Damage::CutShort => last.end,
            Damage::Garbled => last.start,
        }
    );

    let before = klio.log().len();
    klio.restart()?;
    klio.wait_status(CLUSTER, Duration::from_secs(60), "streaming again", |v| {
        v["state"] == "streaming"
    })?;
    let log = klio.log().split_off(before);
    let reported = torn_bytes_dropped(&log)?;
    ensure!(
        reported == dropped,
        "{damage:?}: reconciliation dropped {reported} torn bytes, expected {dropped}"
    );
    let resumed = *stream_starts(&log)
        .first()
        .context("no 'streaming WAL' line after the restart")?;
    let expected = klio_core::Lsn(seg_start + resume);
    ensure!(
        resumed == expected,
        "{damage:?}: streaming resumed at {resumed}, expected the end of the valid frames {expected}"
    );
    println!("{damage:?}: {reported} torn bytes dropped; streaming resumed at {resumed}");
    Ok(name)
}

#[test]
fn a_torn_tail_is_dropped_at_restart_and_streaming_resumes_identically() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())])?;
    klio.wait_status(CLUSTER, Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    let seg_size: u64 = pg
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
        .parse()?;
    pg.psql("CREATE TABLE t (i int, pad text)")?;

    let mut damaged = vec![
        crash_and_damage(&pg, &mut klio, seg_size, Damage::CutShort)?,
        crash_and_damage(&pg, &mut klio, seg_size, Damage::Garbled)?,
    ];
    damaged.dedup();

    // The damaged segments fill up and are sealed; everything equals pg_wal.
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &end, Duration::from_secs(60))?;
    let sealed = klio.sealed_segments(CLUSTER)?;
    for d in &damaged {
        ensure!(sealed.contains(d), "{d} was not sealed: {sealed:?}");
    }
    let out = tempfile::tempdir()?;
    let compared = klio.compare_with_pg_wal(CLUSTER, &pg.wal_dir(), out.path(), &sealed)?;
    ensure!(compared.total() == sealed.len());
    println!("sealed segments identical to pg_wal ({compared}), the repaired {damaged:?} included");
    Ok(())
}

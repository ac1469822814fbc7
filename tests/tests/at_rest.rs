//! Data at rest is encrypted: a unique marker written into a table — so into WAL, and
//! into the table's file that a base backup copies — never appears in Klio's data
//! directory (WAL segments, backup packs and manifests, the catalog): neither in the
//! clear nor inside a zstd frame that anyone could decompress without the key. The same
//! search finds the marker in PostgreSQL's own `pg_wal` and data files, and inside a zstd
//! frame made for the purpose, so a search that finds nothing is a search that works.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_tests::{ClusterConf, KlioServer, PgInstance, PgOptions};

const CLUSTER: &str = "rest";
/// Every zstd frame starts with it (what a compressed but unencrypted frame would hold).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Frames Klio writes carry at most 4 MiB of plaintext.
const MAX_DECOMPRESSED: u64 = 8 << 20;

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(p) = hay[from..].iter().position(|&b| b == first) {
        let at = from + p;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The offset of the first zstd frame in `bytes` whose decompressed content holds
/// `needle`.
fn find_in_zstd_frames(bytes: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = find(&bytes[from..], &ZSTD_MAGIC) {
        let at = from + p;
        let mut plain = Vec::new();
        let decoded = zstd::stream::read::Decoder::with_buffer(&bytes[at..])
            .map(|d| d.single_frame())
            .and_then(|d| d.take(MAX_DECOMPRESSED).read_to_end(&mut plain));
        if decoded.is_ok() && find(&plain, needle).is_some() {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// What a search of a tree found: the files holding the needle (and how), and how much
/// it read.
#[derive(Debug, Default)]
struct Search {
    hits: Vec<String>,
    files: usize,
    bytes: u64,
}

/// Searches every regular file under `dir` for `needle`, in the clear and inside zstd
/// frames.
fn search(dir: &Path, needle: &[u8]) -> Result<Search> {
    let mut s = Search::default();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            let p = e.path();
            if t.is_dir() {
                dirs.push(p);
            } else if t.is_file() {
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                s.files += 1;
                s.bytes += bytes.len() as u64;
                if let Some(at) = find(&bytes, needle) {
                    s.hits
                        .push(format!("{} at byte {at}, in the clear", p.display()));
                } else if let Some(at) = find_in_zstd_frames(&bytes, needle) {
                    s.hits
                        .push(format!("{} in a zstd frame at byte {at}", p.display()));
                }
            }
        }
    }
    Ok(s)
}

fn packs(klio: &KlioServer) -> Result<Vec<PathBuf>> {
    let dir = klio.layout().backups(&CLUSTER.parse()?).packs_dir();
    Ok(std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?)
}

#[test]
fn a_marker_row_never_appears_in_klios_data_directory() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())])?;
    klio.wait_status(CLUSTER, Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    let marker = format!("klio-at-rest-marker-{:032x}", rand::random::<u128>());
    let needle = marker.as_bytes();
    pg.psql(&format!(
        "CREATE TABLE secret (v text); INSERT INTO secret SELECT '{marker}' FROM generate_series(1, 100)"
    ))?;
    pg.psql("CHECKPOINT")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;

    // Controls: the search finds the marker in PostgreSQL's WAL and in the table's file,
    // and inside a zstd frame of that WAL (compressed as Klio compresses).
    let in_wal = search(&pg.wal_dir(), needle)?;
    ensure!(
        !in_wal.hits.is_empty(),
        "control: the marker is not in pg_wal"
    );
    let in_base = search(&pg.data_dir().join("base"), needle)?;
    ensure!(
        !in_base.hits.is_empty(),
        "control: the marker is not in base/"
    );
    let segment = std::fs::read(
        in_wal.hits[0]
            .split(" at byte ")
            .next()
            .context("hit without a path")?,
    )?;
    let mut framed = vec![0x5a; 100];
    framed.extend(zstd::bulk::compress(&segment, 1)?);
    ensure!(
        find_in_zstd_frames(&framed, needle).is_some(),
        "control: the marker is not found inside a zstd frame of a segment that holds it"
    );

    // Klio's data directory: the WAL it streamed.
    let streamed = search(&klio.data_dir(), needle)?;
    ensure!(
        streamed.hits.is_empty(),
        "the marker is readable in Klio's data directory: {:?}",
        streamed.hits
    );
    ensure!(
        streamed.bytes > 1 << 20,
        "only {} bytes searched in Klio's data directory",
        streamed.bytes
    );

    // And with a base backup of the table stored, after a clean stop (everything on disk).
    klio.client_ok(CLUSTER, &["backup", "--wait"])?;
    ensure!(klio.stop()?, "clean shutdown");
    ensure!(!packs(&klio)?.is_empty(), "the backup wrote no pack");
    let stored = search(&klio.data_dir(), needle)?;
    ensure!(
        stored.hits.is_empty(),
        "the marker is readable in Klio's data directory: {:?}",
        stored.hits
    );
    println!(
        "marker found by the same search in pg_wal ({}) and base/ ({}); absent from Klio's {} files, {} bytes",
        in_wal.hits.len(),
        in_base.hits.len(),
        stored.files,
        stored.bytes
    );
    Ok(())
}

//! Tests of the chunk store, its writer pool and verify, on a real catalog in a
//! temporary directory.

use super::*;
use klio_core::manifest::{FileKind, FileMeta};
use klio_core::{BackupId, Lsn, TimelineId};

struct Fixture {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    catalog: Arc<Catalog>,
    key: DataKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        let catalog = Arc::new(Catalog::open(&DataDir::new(&data_dir).catalog_dir()).unwrap());
        Fixture {
            _dir: dir,
            data_dir,
            catalog,
            key: DataKey::generate(),
        }
    }

    fn store(&self) -> ChunkStore {
        ChunkStore::open(
            &self.data_dir,
            "pg".parse().unwrap(),
            self.key.clone(),
            self.catalog.clone(),
        )
        .unwrap()
    }
}

fn meta(path: &str, size: usize) -> FileMeta {
    FileMeta {
        tablespace: None,
        path: path.into(),
        kind: FileKind::File,
        mode: 0o600,
        mtime: 0,
        size: size as u64,
        link_target: None,
    }
}

fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 7) as u8 // compressible but not trivially
        })
        .collect()
}

/// A backup id from a test's literal.
fn bid(id: &str) -> BackupId {
    id.parse().unwrap()
}

fn write_backup(store: &ChunkStore, id: &str, files: &[(&str, Vec<u8>)]) -> BackupRecord {
    let mut w = store
        .begin(
            &bid(id),
            "t",
            BackupKind::Stream,
            Lsn(0x100),
            TimelineId::new(1).unwrap(),
            None,
        )
        .unwrap();
    for (p, d) in files {
        w.begin_file(meta(p, d.len())).unwrap();
        for piece in d.chunks(77_777) {
            w.write(piece).unwrap();
        }
        w.end_file().unwrap();
    }
    w.commit(Lsn(0x200), TimelineId::new(1).unwrap(), vec![], None)
        .unwrap()
}

/// Starts a backup `id` at LSN 0 on timeline 1.
fn begin(store: &ChunkStore, id: &str) -> Result<BackupWriter> {
    store.begin(
        &bid(id),
        "t",
        BackupKind::Stream,
        Lsn(0),
        TimelineId::new(1).unwrap(),
        None,
    )
}

fn pack_count(f: &Fixture) -> usize {
    let packs = DataDir::new(&f.data_dir)
        .backups(&"pg".parse().unwrap())
        .packs_dir();
    std::fs::read_dir(packs).unwrap().count()
}

#[test]
fn round_trip_and_dedup() {
    let f = Fixture::new();
    let s = f.store();
    let big = pseudo(3 * CHUNK_SIZE + 5, 1);
    let files = vec![
        ("empty", vec![]),
        ("exact", pseudo(CHUNK_SIZE, 2)),
        ("plus1", pseudo(CHUNK_SIZE + 1, 3)),
        ("big", big.clone()),
        ("big-copy", big.clone()),
        ("small", b"hello".to_vec()),
    ];
    let r = write_backup(&s, "B1", &files);
    assert_eq!(r.state, BackupState::Complete);
    assert_eq!(r.files, 6);
    // big-copy shares all 4 chunks with big.
    assert_eq!(r.chunks, 1 + 2 + 4 + 1);
    assert_eq!(r.new_chunks, r.chunks);
    let m = s.read_manifest(&bid("B1")).unwrap();
    for (p, d) in &files {
        let mf = m.files.iter().find(|x| x.path == *p).unwrap();
        let mut back = Vec::new();
        for c in &mf.chunks {
            back.extend(s.read_chunk(c).unwrap());
        }
        assert_eq!(&back, d, "{p}");
        assert_eq!(mf.crc32c, Some(crc32c::crc32c(d)));
    }
    let v = s.verify_backup(&bid("B1")).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);

    // A second backup with ~1% of `big` changed stores about one chunk.
    let mut big2 = big.clone();
    big2[CHUNK_SIZE + 10] ^= 0xff;
    let files2 = vec![("big", big2), ("small", b"hello".to_vec())];
    let r2 = write_backup(&s, "B2", &files2);
    assert_eq!(r2.new_chunks, 1);
    assert!(
        r2.new_bytes < r.new_bytes / 3,
        "{} vs {}",
        r2.new_bytes,
        r.new_bytes
    );
    assert_eq!(
        f.catalog
            .chunk(&"pg".parse().unwrap(), &s.chunk_id(b"hello").0)
            .unwrap()
            .unwrap()
            .refs,
        2
    );
}

#[test]
fn crash_and_abort_leave_nothing() {
    let f = Fixture::new();
    {
        let s = f.store();
        let mut w = begin(&s, "C1").unwrap();
        let d = pseudo(3 * CHUNK_SIZE, 9);
        w.begin_file(meta("f", d.len())).unwrap();
        w.write(&d).unwrap();
        w.end_file().unwrap();
        w.drain().unwrap();
        assert!(pack_count(&f) > 0);
        // Simulated crash: the writer vanishes without commit or abort.
        drop(w);
    }
    let s = f.store();
    let rep = s.recover().unwrap();
    assert_eq!(rep.failed_backups, 1);
    assert_eq!(pack_count(&f), 0);
    let b = s.backup(&bid("C1")).unwrap().unwrap();
    assert_eq!(b.state, BackupState::Failed);
    assert!(s.chunk_id(b"x") != ChunkId([0; 32]));
    // No chunk record of it exists.
    let id = s.chunk_id(&pseudo(3 * CHUNK_SIZE, 9)[..CHUNK_SIZE]);
    assert!(f
        .catalog
        .chunk(&"pg".parse().unwrap(), &id.0)
        .unwrap()
        .is_none());

    let mut w = begin(&s, "C2").unwrap();
    w.begin_file(meta("f", 10)).unwrap();
    w.write(&[1; 10]).unwrap();
    w.end_file().unwrap();
    w.drain().unwrap();
    w.abort("test").unwrap();
    assert_eq!(pack_count(&f), 0);
    assert_eq!(
        s.backup(&bid("C2")).unwrap().unwrap().state,
        BackupState::Failed
    );
}

#[test]
fn tampering_and_wrong_keys_are_detected() {
    let f = Fixture::new();
    let s = f.store();
    let files = vec![("a", pseudo(CHUNK_SIZE + 100, 4)), ("b", pseudo(5000, 5))];
    write_backup(&s, "T1", &files);
    let m = s.read_manifest(&bid("T1")).unwrap();
    let a = &m.files[0];
    let rec = f
        .catalog
        .chunk(&"pg".parse().unwrap(), &a.chunks[0].0)
        .unwrap()
        .unwrap();
    let pack = s.pack_path(&rec.pack).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(rec.offset + 100) as usize] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    let e = s.read_chunk(&a.chunks[0]).unwrap_err().to_string();
    assert!(
        e.contains(&a.chunks[0].to_string()) && e.contains("tampered"),
        "{e}"
    );
    let v = s.verify_backup(&bid("T1")).unwrap();
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].contains("backup T1: file a:"),
        "{:?}",
        v.problems
    );

    // Another key (another cluster's store over the same files) cannot read it.
    let other = ChunkStore::open(
        &f.data_dir,
        "pg".parse().unwrap(),
        DataKey::generate(),
        f.catalog.clone(),
    )
    .unwrap();
    assert!(other.read_chunk(&m.files[1].chunks[0]).is_err());
    assert!(other.read_manifest(&bid("T1")).is_err());
}

#[test]
fn wrong_sizes_and_bad_ids_are_refused() {
    let f = Fixture::new();
    let s = f.store();
    let mut w = begin(&s, "S1").unwrap();
    w.begin_file(meta("f", 10)).unwrap();
    w.write(&[1; 5]).unwrap();
    assert!(w
        .end_file()
        .unwrap_err()
        .to_string()
        .contains("announced 10"));
    // Ids that are not ids never reach the store: `BackupId` refuses them.
    assert!("../x".parse::<BackupId>().is_err());
    // A valid id, but the name of the packs directory: refused, never removed.
    let e = begin(&s, "packs").unwrap_err();
    assert!(e.to_string().contains("invalid backup id"), "{e}");
    assert!(matches!(
        s.read_manifest(&bid("packs")),
        Err(BackupStoreError::NoSuchBackup(_))
    ));
    let id = s.new_backup_id().unwrap();
    assert!(id.as_str().ends_with('Z'), "{id}");
}

/// A backup id may itself end in `-<n>` (`T1-2` is made when `T1` is taken): removing
/// `T1`'s data leaves `T1-2`'s packs alone.
#[test]
fn removing_a_backup_leaves_the_packs_of_a_backup_whose_id_extends_its_own() {
    let f = Fixture::new();
    let s = f.store();
    write_backup(&s, "T1-2", &[("a", pseudo(2 * CHUNK_SIZE, 11))]);
    let kept = pack_count(&f);
    assert!(kept > 0);
    let mut w = begin(&s, "T1").unwrap();
    let d = pseudo(CHUNK_SIZE, 12);
    w.begin_file(meta("b", d.len())).unwrap();
    w.write(&d).unwrap();
    w.end_file().unwrap();
    w.drain().unwrap();
    assert!(pack_count(&f) > kept);
    w.abort("test").unwrap();
    assert_eq!(pack_count(&f), kept);
    assert_eq!(
        s.verify_backup(&bid("T1-2")).unwrap().problems,
        Vec::<String>::new()
    );
}

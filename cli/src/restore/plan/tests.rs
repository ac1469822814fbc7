//! Unit tests of the restore plan: a normal PostgreSQL backup is accepted as it is;
//! each hostile manifest is refused with the entry named; a bounded proptest feeds the
//! validator arbitrary manifests (it never panics, and what it accepts is normalised).

use super::*;
use klio_core::manifest::{ManifestFile, ManifestTablespace};
use klio_core::{Lsn, TimelineId};
use proptest::prelude::*;

const TS_OLD: &str = "/srv/ts_src";
const PGDATA: &str = "/restore/pgdata";

fn entry(ts: Option<u32>, path: &str, kind: FileKind, mode: u32) -> ManifestFile {
    let size = if kind == FileKind::File { 10 } else { 0 };
    ManifestFile {
        tablespace: ts,
        path: path.into(),
        kind,
        mode,
        mtime: 0,
        size,
        crc32c: (kind == FileKind::File).then_some(7),
        link_target: (kind == FileKind::Symlink).then(|| TS_OLD.to_string()),
        chunks: if size > 0 {
            vec![ChunkId([1; 32])]
        } else {
            vec![]
        },
    }
}

fn dir(path: &str) -> ManifestFile {
    entry(None, path, FileKind::Directory, 0o700)
}

fn file(path: &str) -> ManifestFile {
    entry(None, path, FileKind::File, 0o600)
}

fn link(path: &str) -> ManifestFile {
    entry(None, path, FileKind::Symlink, 0o777)
}

/// What PostgreSQL 15's BASE_BACKUP of a cluster with one tablespace looks like.
fn normal() -> BackupManifest {
    BackupManifest {
        version: 1,
        backup_id: "20260101T000000Z".parse().unwrap(),
        cluster: "pg-a".parse().unwrap(),
        label: "l".into(),
        start_lsn: Lsn(0x200_0028),
        start_tli: TimelineId::new(1).unwrap(),
        end_lsn: Lsn(0x200_0100),
        end_tli: TimelineId::new(1).unwrap(),
        pg_version: Some(150_000),
        chunk_size: 1 << 20,
        tablespaces: vec![ManifestTablespace {
            oid: 16400,
            location: Some(TS_OLD.into()),
        }],
        files: vec![
            entry(Some(16400), "PG_15_202209061", FileKind::Directory, 0o700),
            entry(Some(16400), "PG_15_202209061/5", FileKind::Directory, 0o700),
            entry(
                Some(16400),
                "PG_15_202209061/5/16401",
                FileKind::File,
                0o600,
            ),
            file("backup_label"),
            dir("base"),
            dir("base/1"),
            file("base/1/1259"),
            // Inherited from a setgid parent directory: dropped, not refused.
            entry(None, "global", FileKind::Directory, 0o2700),
            file("global/pg_control"),
            file("postgresql.auto.conf"),
            dir("pg_tblspc"),
            link("pg_tblspc/16400"),
            dir("pg_wal"),
            dir("pg_wal/archive_status"),
            entry(None, "pg_notify", FileKind::File, 0o600),
            file("standby.signal"),
            entry(None, "empty", FileKind::File, 0o600),
        ],
        started_unix: None,
        finished_unix: None,
    }
}

fn plan(m: BackupManifest) -> Result<RestorePlan, PlanError> {
    plan_restore(m, Path::new(PGDATA), &[])
}

fn refused(m: BackupManifest) -> PlanError {
    plan(m).expect_err("the manifest was accepted")
}

#[test]
fn a_normal_backup_is_planned_as_it_is() {
    let mut m = normal();
    // A zero-length file has no chunks.
    m.files.last_mut().unwrap().size = 0;
    m.files.last_mut().unwrap().chunks.clear();
    let p = plan(m).unwrap();
    assert_eq!(
        p.roots,
        vec![
            (Root::Pgdata, PathBuf::from(PGDATA)),
            (Root::Tablespace(16400), PathBuf::from(TS_OLD))
        ]
    );
    let dirs: Vec<(Root, &str)> = p.dirs.iter().map(|(r, d)| (*r, d.as_str())).collect();
    assert_eq!(
        dirs,
        [
            (Root::Pgdata, "base"),
            (Root::Pgdata, "base/1"),
            (Root::Pgdata, "global"),
            (Root::Pgdata, "pg_tblspc"),
            (Root::Pgdata, "pg_wal"),
            (Root::Pgdata, "pg_wal/archive_status"),
            (Root::Tablespace(16400), "PG_15_202209061"),
            (Root::Tablespace(16400), "PG_15_202209061/5"),
        ]
    );
    let files: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        files,
        [
            "PG_15_202209061/5/16401",
            "backup_label",
            "base/1/1259",
            "global/pg_control",
            "postgresql.auto.conf",
            "pg_notify",
            "empty"
        ]
    );
    assert_eq!(p.files[0].root, Root::Tablespace(16400));
    assert_eq!(
        p.links,
        vec![PlannedLink {
            path: SafeRelPath::parse("pg_tblspc/16400").unwrap(),
            oid: 16400,
            target: TS_OLD.into()
        }]
    );
    assert_eq!(p.skipped.len(), 1);
    assert_eq!(p.skipped[0].0.as_str(), "standby.signal");
}

#[test]
fn a_mapped_tablespace_is_linked_to_its_new_place_not_the_servers_target() {
    let mut m = normal();
    m.files
        .iter_mut()
        .find(|f| f.kind == FileKind::Symlink)
        .unwrap()
        .link_target = Some("/etc".into());
    let p = plan_restore(
        m,
        Path::new(PGDATA),
        &[(TS_OLD.into(), PathBuf::from("/restore/ts_new"))],
    )
    .unwrap();
    assert_eq!(p.links[0].target, Path::new("/restore/ts_new"));
    assert_eq!(
        p.root_path(Root::Tablespace(16400)),
        Some(Path::new("/restore/ts_new"))
    );
}

#[test]
fn implicit_parents_are_created_as_directories() {
    let mut m = normal();
    m.files = vec![file("a/b/c")];
    let p = plan(m).unwrap();
    let dirs: Vec<&str> = p.dirs.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(dirs, ["a", "a/b"]);
}

#[test]
fn a_linked_pg_wal_becomes_a_directory() {
    let mut m = normal();
    m.files
        .retain(|f| f.path != "pg_wal" && f.path != "pg_wal/archive_status");
    m.files.push(link("pg_wal"));
    m.files.push(dir("pg_wal/archive_status"));
    let p = plan(m).unwrap();
    assert!(p.dirs.iter().any(|(_, d)| d.as_str() == "pg_wal"));
    assert!(p.links.iter().all(|l| l.path.as_str() != "pg_wal"));
}

/// Asserts that `m` is refused naming `entry`, with `why` in the reason.
#[track_caller]
fn assert_refused(m: BackupManifest, entry: &str, why: &str) {
    let e = refused(m);
    assert!(
        e.entry.contains(entry),
        "entry {:?}, wanted {entry:?}",
        e.entry
    );
    assert!(
        e.reason.contains(why),
        "reason {:?}, wanted {why:?}",
        e.reason
    );
    let text = e.to_string();
    assert!(
        text.contains(entry) && text.contains("nothing was written"),
        "{text}"
    );
}

#[test]
fn hostile_paths_are_refused_with_the_entry_named() {
    for (path, why) in [
        ("/etc/cron.d/evil", "absolute"),
        ("../outside", "'..'"),
        ("base/../../outside", "'..'"),
        ("base/./x", "'.'"),
        ("base//x", "empty component"),
        ("base/", "empty component"),
        ("", "empty"),
        ("base/x\0y", "NUL"),
    ] {
        let mut m = normal();
        m.files.push(file(path));
        assert_refused(m, &format!("{path:?}"), why);
        let mut m = normal();
        m.files
            .push(entry(Some(16400), path, FileKind::Directory, 0o700));
        assert_refused(m, "of tablespace 16400", why);
    }
}

#[test]
fn duplicates_are_refused() {
    let mut m = normal();
    m.files.push(file("base/1/1259"));
    assert_refused(m, "\"base/1/1259\"", "listed twice");
    let mut m = normal();
    m.files.push(dir("base/1/1259"));
    assert_refused(m, "\"base/1/1259\"", "listed twice");
}

#[test]
fn links_only_where_postgres_puts_them() {
    for path in [
        "evil",
        "base/1/evil",
        "pg_tblspc/16401",
        "pg_tblspc/016400",
        "pg_tblspc/x",
        "pg_tblspc",
    ] {
        let mut m = normal();
        if path == "pg_tblspc" {
            m.files.retain(|f| f.path != "pg_tblspc");
        }
        m.files.push(link(path));
        assert_refused(m, &format!("{path:?}"), "symbolic link where PostgreSQL");
    }
    // A tablespace's own archive holds no link at all.
    let mut m = normal();
    m.files.push(entry(
        Some(16400),
        "pg_tblspc/16400",
        FileKind::Symlink,
        0o777,
    ));
    assert_refused(m, "of tablespace 16400", "symbolic link where PostgreSQL");
}

#[test]
fn nothing_is_planned_below_a_link_or_a_file() {
    // A link then a file through it (the link is allowed; the file is not).
    let mut m = normal();
    m.files.push(file("pg_tblspc/16400/PG_15_202209061/evil"));
    assert_refused(
        m,
        "\"pg_tblspc/16400/PG_15_202209061/evil\"",
        "below the symbolic link \"pg_tblspc/16400\"",
    );
    let mut m = normal();
    m.files.insert(0, file("base/1/1259/x"));
    assert_refused(
        m,
        "\"base/1/1259/x\"",
        "below the regular file \"base/1/1259\"",
    );
}

#[test]
fn special_mode_bits_are_refused() {
    for (kind, mode, why) in [
        (FileKind::File, 0o4755, "setuid"),
        (FileKind::Directory, 0o4700, "setuid"),
        (FileKind::Directory, 0o1777, "sticky"),
        (FileKind::File, 0o2600, "setgid"),
        (FileKind::File, 0o102600, "setgid"),
    ] {
        let mut m = normal();
        m.files.push(entry(None, "base/evil", kind, mode));
        assert_refused(m, "\"base/evil\"", why);
    }
}

#[test]
fn klios_own_files_must_be_regular_files() {
    for name in KLIO_FILES {
        let mut m = normal();
        m.files.retain(|f| f.path != *name);
        m.files.push(dir(name));
        assert_refused(m, &format!("{name:?}"), "Klio writes this file itself");
        let mut m = normal();
        m.files.retain(|f| f.path != *name);
        m.files.push(link(name));
        assert_refused(m, &format!("{name:?}"), "Klio writes this file itself");
    }
    // Not at the top of PGDATA, the names mean nothing special.
    let mut m = normal();
    m.files.push(dir("base/recovery.signal"));
    plan(m).unwrap();
}

#[test]
fn files_must_have_chunks_exactly_when_they_have_bytes() {
    let mut m = normal();
    let mut f = file("base/x");
    f.chunks.clear();
    m.files.push(f);
    assert_refused(m, "\"base/x\"", "no chunks");
    let mut m = normal();
    let mut f = file("base/x");
    f.size = 0;
    m.files.push(f);
    assert_refused(m, "\"base/x\"", "empty file with content chunks");
}

#[test]
fn tablespaces_are_checked() {
    // An entry of a tablespace the backup does not have.
    let mut m = normal();
    m.files
        .push(entry(Some(1), "PG_15/x", FileKind::File, 0o600));
    assert_refused(m, "of tablespace 1", "not one of the backup's tablespaces");
    let located = |loc: Option<&str>| {
        let mut m = normal();
        m.tablespaces[0].location = loc.map(String::from);
        m
    };
    assert_refused(
        located(Some("relative/ts")),
        "tablespace 16400",
        "not absolute",
    );
    assert_refused(
        located(Some("/srv/../etc")),
        "tablespace 16400",
        "not a normalised",
    );
    assert_refused(located(None), "tablespace 16400", "no recorded location");
    assert_refused(
        located(Some("")),
        "tablespace 16400",
        "no recorded location",
    );
    assert_refused(located(Some("/")), "tablespace 16400", "file system root");
    assert_refused(located(Some(PGDATA)), "tablespace 16400", "overlaps PGDATA");
    assert_refused(
        located(Some("/restore/pgdata/base/ts")),
        "tablespace 16400",
        "overlaps PGDATA",
    );
    assert_refused(
        located(Some("/restore")),
        "tablespace 16400",
        "overlaps PGDATA",
    );
    // Two tablespaces in one place.
    let mut m = normal();
    m.tablespaces.push(ManifestTablespace {
        oid: 16500,
        location: Some(format!("{TS_OLD}/inner")),
    });
    assert_refused(m, "tablespace 16500", "overlaps tablespace 16400");
    let mut m = normal();
    m.tablespaces.push(m.tablespaces[0].clone());
    assert_refused(m, "tablespace 16400", "listed twice");
    // A map for a tablespace the backup does not have, or given twice.
    let e = plan_restore(
        normal(),
        Path::new(PGDATA),
        &[("/nowhere".into(), "/x".into())],
    )
    .unwrap_err();
    assert!(e.reason.contains("no tablespace at /nowhere"), "{e}");
    let twice = [
        (TS_OLD.to_string(), PathBuf::from("/a")),
        (TS_OLD.to_string(), PathBuf::from("/b")),
    ];
    let e = plan_restore(normal(), Path::new(PGDATA), &twice).unwrap_err();
    assert!(e.reason.contains("given twice"), "{e}");
    // A map into PGDATA is refused too.
    let e = plan_restore(
        normal(),
        Path::new(PGDATA),
        &[(TS_OLD.into(), PathBuf::from("/restore/x/../pgdata/ts"))],
    )
    .unwrap_err();
    assert!(e.reason.contains("overlaps PGDATA"), "{e}");
}

/// Components that make hostile and ordinary paths alike.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("base".to_string()),
        Just("pg_tblspc".to_string()),
        Just("16400".to_string()),
        Just("pg_wal".to_string()),
        Just("backup_manifest".to_string()),
        Just("standby.signal".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("/".to_string()),
        "[a-c\0]{1,2}",
    ]
}

fn arb_entry() -> impl Strategy<Value = ManifestFile> {
    (
        prop::option::of(prop_oneof![Just(16400u32), Just(1u32)]),
        prop::collection::vec(component(), 0..4),
        prop_oneof![
            Just(FileKind::File),
            Just(FileKind::Directory),
            Just(FileKind::Symlink)
        ],
        any::<u32>(),
        0u64..3,
        0usize..2,
        prop::option::of("(/|\\.\\./)?[a-z]{0,3}"),
    )
        .prop_map(
            |(ts, parts, kind, mode, size, chunks, target)| ManifestFile {
                tablespace: ts,
                path: parts.join("/"),
                kind,
                mode,
                mtime: 0,
                size,
                crc32c: None,
                link_target: target,
                chunks: vec![ChunkId([0; 32]); chunks],
            },
        )
}

fn arb_location() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just(TS_OLD.to_string()),
        Just(PGDATA.to_string()),
        Just("/".to_string()),
        "(/|\\.\\./)?[a-z/.]{0,8}",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Never panics; whatever it accepts is relative, normalised, listed once, below a
    /// directory, with links only at pg_tblspc/<oid> to a tablespace root.
    #[test]
    fn the_validator_never_panics_and_accepts_only_normalised_paths(
        files in prop::collection::vec(arb_entry(), 0..12),
        locations in prop::collection::vec(arb_location(), 0..3),
    ) {
        let mut m = normal();
        m.files = files;
        m.tablespaces = locations
            .into_iter()
            .enumerate()
            .map(|(i, location)| ManifestTablespace {
                oid: if i == 0 { 16400 } else { 1 },
                location,
            })
            .collect();
        if let Ok(p) = plan(m) {
            let normalised = |s: &str| {
                !s.is_empty()
                    && !s.starts_with('/')
                    && !s.contains('\0')
                    && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            };
            let mut seen = std::collections::HashSet::new();
            for (root, d) in &p.dirs {
                prop_assert!(normalised(d.as_str()), "{d:?}");
                prop_assert!(p.root_path(*root).is_some());
                prop_assert!(seen.insert((*root, d.as_str())), "{d:?} twice");
                if let (Some(parent), _) = d.split_last() {
                    prop_assert!(p.dirs.iter().take_while(|x| x.1 != *d).any(|x| x.0 == *root && x.1.as_str() == parent));
                }
            }
            for f in &p.files {
                prop_assert!(normalised(f.path.as_str()), "{:?}", f.path);
                prop_assert!(seen.insert((f.root, f.path.as_str())), "{:?} twice", f.path);
                if let (Some(parent), _) = f.path.split_last() {
                    prop_assert!(p.dirs.iter().any(|x| x.0 == f.root && x.1.as_str() == parent));
                }
            }
            for l in &p.links {
                prop_assert!(normalised(l.path.as_str()));
                prop_assert_eq!(l.path.as_str(), format!("pg_tblspc/{}", l.oid));
                prop_assert_eq!(p.root_path(Root::Tablespace(l.oid)), Some(l.target.as_path()));
                prop_assert!(seen.insert((Root::Pgdata, l.path.as_str())));
            }
            for (_, root) in &p.roots {
                prop_assert!(root.is_absolute());
                prop_assert!(!root.components().any(|c| c == Component::ParentDir));
            }
        }
    }
}

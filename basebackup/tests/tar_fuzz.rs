//! Fuzzing of the tar parser with what a hostile or broken server could send as a
//! `BASE_BACKUP` archive, through the public API only: bounded proptest runs (raise them with
//! `PROPTEST_CASES`, see docs/FUZZING.md). Properties: no panic; the events do not depend
//! on how the bytes were split; every entry path the parser lets through is relative and
//! stays inside the archive; a file's data is exactly its size; archives built by
//! `TarBuilder` read back as built.

use std::convert::Infallible;

use klio_basebackup::tar::{EntryKind, TarBuilder, TarEntry, TarEvent, TarParser};
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Entry(TarEntry),
    Data(Vec<u8>),
    EntryEnd,
    End,
}

/// Parses `archive` fed in pieces cut at `cuts`; the events up to the first error, and
/// whether the archive was accepted (including `finish`).
fn parse(archive: &[u8], cuts: &[usize]) -> (Vec<Ev>, bool) {
    let mut parser = TarParser::new();
    let mut events: Vec<Ev> = Vec::new();
    let mut sink = |e: TarEvent<'_>| -> Result<(), Infallible> {
        match e {
            TarEvent::Entry(x) => events.push(Ev::Entry(x)),
            TarEvent::Data(d) => match events.last_mut() {
                Some(Ev::Data(v)) => v.extend_from_slice(d),
                _ => events.push(Ev::Data(d.to_vec())),
            },
            TarEvent::EntryEnd => events.push(Ev::EntryEnd),
            TarEvent::End => events.push(Ev::End),
        }
        Ok(())
    };
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (archive.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(archive.len());
    let mut from = 0;
    let mut ok = true;
    for to in cuts {
        if parser.feed(&archive[from..to], &mut sink).is_err() {
            ok = false;
            break;
        }
        from = to;
    }
    ok = ok && parser.finish().is_ok();
    (events, ok)
}

/// Checks what the parser promises about the entries it emits.
fn check_events(events: &[Ev]) -> Result<(), TestCaseError> {
    let mut current: Option<(u64, u64)> = None; // (size, data seen)
    for ev in events {
        match ev {
            Ev::Entry(e) => {
                prop_assert!(current.is_none(), "entry inside an entry");
                prop_assert!(
                    !e.path.is_empty() && !e.path.starts_with('/'),
                    "{:?}",
                    e.path
                );
                prop_assert!(
                    e.path
                        .split('/')
                        .all(|p| !p.is_empty() && p != "." && p != ".."),
                    "unsafe path {:?}",
                    e.path
                );
                prop_assert!(!e.path.contains('\0'));
                prop_assert_eq!(e.link_target.is_some(), e.kind == EntryKind::Symlink);
                if e.kind != EntryKind::File {
                    prop_assert_eq!(e.size, 0);
                }
                current = Some((e.size, 0));
            }
            Ev::Data(d) => {
                let Some((size, seen)) = current.as_mut() else {
                    return Err(TestCaseError::fail("data outside an entry"));
                };
                *seen += d.len() as u64;
                prop_assert!(*seen <= *size, "more data than the entry's size");
            }
            Ev::EntryEnd => {
                let Some((size, seen)) = current.take() else {
                    return Err(TestCaseError::fail("EntryEnd outside an entry"));
                };
                prop_assert_eq!(size, seen, "entry ended short");
            }
            Ev::End => prop_assert!(current.is_none(), "End inside an entry"),
        }
    }
    Ok(())
}

/// A 512-byte header with the given fields and a correct checksum, so the parser gets
/// past the checksum to the fields themselves.
fn header(
    name: &[u8],
    typeflag: u8,
    size: &[u8],
    link: &[u8],
    prefix: &[u8],
    mode: &[u8],
) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    let put = |h: &mut Vec<u8>, at: usize, len: usize, v: &[u8]| {
        let n = v.len().min(len);
        h[at..at + n].copy_from_slice(&v[..n]);
    };
    put(&mut h, 0, 100, name);
    put(&mut h, 100, 8, mode);
    put(&mut h, 124, 12, size);
    put(&mut h, 136, 12, b"14747147147\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = typeflag;
    put(&mut h, 157, 100, link);
    put(&mut h, 257, 8, b"ustar\x0000");
    put(&mut h, 345, 155, prefix);
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

fn octal_size(n: u64) -> Vec<u8> {
    format!("{n:011o}\0").into_bytes()
}

/// One member: a header (plausible to hostile fields) and a body.
fn member() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        "[a-z0-9_]{1,8}(/[a-z0-9_.]{1,8}){0,3}/?".prop_map(String::into_bytes),
        prop_oneof![
            Just("../etc/passwd"),
            Just("/etc/passwd"),
            Just("a/../../b"),
            Just("./"),
            Just("."),
            Just("a//b/./c"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
        vec(any::<u8>(), 0..24),
    ];
    let typeflag = prop_oneof![
        Just(b'0'),
        Just(0u8),
        Just(b'5'),
        Just(b'2'),
        Just(b'L'),
        Just(b'K'),
        Just(b'x'),
        Just(b'g'),
        any::<u8>(),
    ];
    let body = prop_oneof![
        vec(any::<u8>(), 0..700),
        // pax records, well formed or not.
        (
            prop_oneof![Just("path"), Just("linkpath"), Just("size"), Just("x")],
            "[a-z0-9/. ]{0,12}"
        )
            .prop_map(|(k, v)| {
                let rec = format!(" {k}={v}\n");
                let mut len = rec.len() + 1;
                if format!("{len}{rec}").len() != len {
                    len += 1;
                }
                format!("{len}{rec}").into_bytes()
            }),
        "[0-9]{0,3} [a-z]{0,6}=?[a-z0-9]{0,6}\n?".prop_map(String::into_bytes),
    ];
    let size_field = prop_oneof![
        3 => Just(None),
        1 => vec(any::<u8>(), 0..12).prop_map(Some),
        1 => any::<u64>().prop_map(|n| Some(octal_size(n))),
    ];
    (
        name,
        typeflag,
        body,
        size_field,
        vec(any::<u8>(), 0..12),
        proptest::option::of("[a-z]{1,6}"),
        any::<bool>(),
    )
        .prop_map(|(name, typeflag, body, size, link, prefix, pad)| {
            let size = size.unwrap_or_else(|| octal_size(body.len() as u64));
            let prefix = prefix.unwrap_or_default();
            let mut m = header(
                &name,
                typeflag,
                &size,
                &link,
                prefix.as_bytes(),
                b"0000644\0",
            );
            m.extend_from_slice(&body);
            if pad {
                m.resize(m.len().div_ceil(512) * 512, 0);
            }
            m
        })
}

fn archive() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(member(), 0..5),
        prop_oneof![Just(0usize), Just(512), Just(1024), Just(1536)],
    )
        .prop_map(|(members, zeros)| {
            let mut a = members.concat();
            a.resize(a.len() + zeros, 0);
            a
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Fuzz: random bytes never panic the parser, however they are split.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048), cuts in vec(any::<usize>(), 0..4)) {
        let (events, _) = parse(&bytes, &cuts);
        check_events(&events)?;
    }

    /// Fuzz: archives of hostile members (paths, types, sizes, extended headers) with
    /// valid checksums: events are independent of the split, and every entry emitted is
    /// safe and consistent.
    #[test]
    fn hostile_archives_parse_the_same_however_split(a in archive(), cuts in vec(any::<usize>(), 0..6)) {
        let whole = parse(&a, &[]);
        check_events(&whole.0)?;
        prop_assert_eq!(parse(&a, &cuts), whole);
    }

    /// Fuzz: edits to a valid archive never panic, and what comes out is still safe.
    #[test]
    fn edited_archives_stay_safe(
        files in vec(("[a-z]{1,6}(/[a-z]{1,6}){0,2}", vec(any::<u8>(), 0..1200)), 1..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut t = TarBuilder::default();
        for (name, data) in &files {
            t.file(name, data);
        }
        t.end();
        let mut a = t.out.clone();
        for (at, value) in &edits {
            let i = at.index(a.len());
            a[i] = *value;
        }
        let (events, _) = parse(&a, &[]);
        check_events(&events)?;
    }

    /// Round trip: what `TarBuilder` writes (long names included) reads back as written.
    #[test]
    fn built_archives_read_back(
        files in vec(("[a-z]{1,6}(/[a-z0-9]{1,40}){0,4}", vec(any::<u8>(), 0..1500)), 0..5),
        cuts in vec(any::<usize>(), 0..4),
    ) {
        let mut t = TarBuilder::default();
        for (name, data) in &files {
            t.file(name, data);
        }
        t.end();
        let (events, ok) = parse(&t.out, &cuts);
        prop_assert!(ok);
        check_events(&events)?;
        let entries: Vec<&TarEntry> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Entry(x) => Some(x),
                _ => None,
            })
            .collect();
        prop_assert_eq!(entries.len(), files.len());
        let mut expected = Vec::new();
        for ((name, data), entry) in files.iter().zip(entries) {
            prop_assert_eq!(&entry.path, name);
            prop_assert_eq!(entry.kind, EntryKind::File);
            prop_assert_eq!(entry.size, data.len() as u64);
            expected.push(Ev::Entry(entry.clone()));
            if !data.is_empty() {
                expected.push(Ev::Data(data.clone()));
            }
            expected.push(Ev::EntryEnd);
        }
        expected.push(Ev::End);
        prop_assert_eq!(events, expected);
    }
}

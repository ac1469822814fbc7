use super::*;
use proptest::prelude::*;

const LABEL: &str = "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n";

fn entry(path: &str, kind: UploadKind, size: u64) -> UploadEntry {
    UploadEntry {
        tablespace: None,
        path: path.into(),
        kind,
        mode: 0o600,
        mtime: 1_700_000_000,
        size,
        link_target: (kind == UploadKind::Symlink).then(|| "/srv/ts".to_string()),
    }
}

/// A well-formed body: label, a directory, a 5-byte file in two data frames, an empty
/// file, a link, the end.
fn body() -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend(frame(TAG_LABEL, LABEL.as_bytes()));
    b.extend(entry_frame(&entry("base", UploadKind::Directory, 0)));
    b.extend(entry_frame(&entry("base/1", UploadKind::File, 5)));
    b.extend(frame(TAG_DATA, b"ab"));
    b.extend(frame(TAG_DATA, b"cde"));
    b.extend(entry_frame(&entry("empty", UploadKind::File, 0)));
    b.extend(entry_frame(&entry(
        "pg_tblspc/16399",
        UploadKind::Symlink,
        0,
    )));
    b.extend(frame(TAG_END, b""));
    b
}

#[derive(Debug, PartialEq)]
enum Ev {
    Label(String),
    Entry(String),
    Data(Vec<u8>),
    EntryEnd,
    End,
}

fn decode(body: &[u8], cuts: &[usize]) -> Result<Vec<Ev>, String> {
    let mut d = UploadDecoder::new();
    let mut evs = Vec::new();
    let mut sink = |ev: UploadEvent<'_>| -> Result<(), String> {
        match ev {
            UploadEvent::Label(t) => evs.push(Ev::Label(t)),
            UploadEvent::Entry(e) => evs.push(Ev::Entry(e.path)),
            UploadEvent::Data(p) => match evs.last_mut() {
                Some(Ev::Data(v)) => v.extend_from_slice(p),
                _ => evs.push(Ev::Data(p.to_vec())),
            },
            UploadEvent::EntryEnd => evs.push(Ev::EntryEnd),
            UploadEvent::End => evs.push(Ev::End),
        }
        Ok(())
    };
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut last = 0;
    for c in cuts.into_iter().chain([body.len()]) {
        d.feed(&body[last..c], &mut sink)
            .map_err(|e| e.to_string())?;
        last = c;
    }
    d.finish().map_err(|e| e.to_string())?;
    Ok(evs)
}

#[test]
fn a_well_formed_body_decodes_to_its_entries() {
    let evs = decode(&body(), &[]).unwrap();
    assert_eq!(
        evs,
        [
            Ev::Label(LABEL.into()),
            Ev::Entry("base".into()),
            Ev::EntryEnd,
            Ev::Entry("base/1".into()),
            Ev::Data(b"abcde".to_vec()),
            Ev::EntryEnd,
            Ev::Entry("empty".into()),
            Ev::EntryEnd,
            Ev::Entry("pg_tblspc/16399".into()),
            Ev::EntryEnd,
            Ev::End,
        ]
    );
}

proptest! {
    #[test]
    fn any_split_of_the_body_decodes_the_same(cuts in proptest::collection::vec(0usize..400, 0..12)) {
        prop_assert_eq!(decode(&body(), &cuts).unwrap(), decode(&body(), &[]).unwrap());
    }

    #[test]
    fn every_truncation_is_refused(cut in 0usize..200) {
        let b = body();
        let cut = cut % b.len();
        let e = decode(&b[..cut], &[]).unwrap_err();
        prop_assert!(e.contains("cut off"), "{}", e);
    }
}

#[test]
fn grammar_violations_are_refused_with_the_reason() {
    let base = || {
        let mut b = MAGIC.to_vec();
        b.extend(frame(TAG_LABEL, LABEL.as_bytes()));
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"NOTKLIO!".to_vec(), "wrong magic"),
        (
            [
                MAGIC.to_vec(),
                entry_frame(&entry("a", UploadKind::Directory, 0)),
            ]
            .concat(),
            "first frame must be the backup_label",
        ),
        (
            [base(), frame(TAG_LABEL, LABEL.as_bytes())].concat(),
            "second backup_label",
        ),
        (
            [base(), frame(TAG_DATA, b"x")].concat(),
            "data outside a regular file",
        ),
        (
            [
                base(),
                entry_frame(&entry("f", UploadKind::File, 2)),
                frame(TAG_DATA, b"xyz"),
            ]
            .concat(),
            "more data than its size",
        ),
        (
            [
                base(),
                entry_frame(&entry("f", UploadKind::File, 2)),
                frame(TAG_DATA, b"x"),
                frame(TAG_END, b""),
            ]
            .concat(),
            "cut short",
        ),
        ([base(), frame(b'Q', b"")].concat(), "unknown frame tag"),
        (
            [base(), frame(TAG_END, b""), frame(TAG_END, b"")].concat(),
            "after the end frame",
        ),
        (
            [
                base(),
                entry_frame(&entry("../etc/passwd", UploadKind::File, 0)),
            ]
            .concat(),
            "climbs out",
        ),
        (
            [
                base(),
                entry_frame(&entry("/etc/passwd", UploadKind::File, 0)),
            ]
            .concat(),
            "absolute path",
        ),
        (
            [base(), entry_frame(&entry("base//1", UploadKind::File, 0))].concat(),
            "normal form",
        ),
        (
            [base(), entry_frame(&entry("./base", UploadKind::File, 0))].concat(),
            "normal form",
        ),
        (
            [base(), frame(TAG_ENTRY, br#"{"path":"a"}"#)].concat(),
            "entry header",
        ),
        (
            [base(), frame(TAG_LABEL.wrapping_add(0), &[0xff, 0xfe])].concat(),
            "second backup_label",
        ),
        (
            [MAGIC.to_vec(), frame(TAG_LABEL, &[0xff, 0xfe])].concat(),
            "not UTF-8",
        ),
        (
            [
                base(),
                frame(
                    TAG_ENTRY,
                    &serde_json::to_vec(&UploadEntry {
                        link_target: None,
                        ..entry("pg_tblspc/1", UploadKind::Symlink, 0)
                    })
                    .unwrap(),
                ),
            ]
            .concat(),
            "has no target",
        ),
        (
            [base(), entry_frame(&entry("d", UploadKind::Directory, 7))].concat(),
            "not a regular file but has a size",
        ),
    ];
    for (body, want) in cases {
        let e = decode(&body, &[]).unwrap_err();
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
    // An oversized data frame header is refused before any payload arrives.
    let mut b = base();
    b.extend(entry_frame(&entry("f", UploadKind::File, 10 << 20)));
    b.extend(frame_header(TAG_DATA, MAX_FRAME + 1));
    let e = decode(&b, &[]).unwrap_err();
    assert!(e.contains("data frame of"), "{e}");
}

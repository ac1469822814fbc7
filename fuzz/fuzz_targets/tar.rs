//! `BASE_BACKUP` tar archives: fed in pieces (the first byte picks the piece size), the
//! parser never panics and lets through only safe, consistent entries.
#![no_main]

use klio_basebackup::tar::{EntryKind, TarEvent, TarParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((piece, archive)) = data.split_first() else {
        return;
    };
    let piece = usize::from(*piece).max(1) * 7;
    let mut parser = TarParser::new();
    let mut left: Option<u64> = None;
    let mut sink = |e: TarEvent<'_>| -> Result<(), std::convert::Infallible> {
        match e {
            TarEvent::Entry(entry) => {
                assert!(left.is_none(), "entry inside an entry");
                assert!(!entry.path.starts_with('/'), "{:?}", entry.path);
                assert!(
                    entry.path.split('/').all(|p| !p.is_empty() && p != "." && p != ".."),
                    "unsafe path {:?}",
                    entry.path
                );
                assert_eq!(entry.link_target.is_some(), entry.kind == EntryKind::Symlink);
                left = Some(entry.size);
            }
            TarEvent::Data(d) => {
                let l = left.as_mut().expect("data inside an entry");
                *l = l.checked_sub(d.len() as u64).expect("no more data than the size");
            }
            TarEvent::EntryEnd => assert_eq!(left.take(), Some(0), "entry ended short"),
            TarEvent::End => assert!(left.is_none()),
        }
        Ok(())
    };
    for chunk in archive.chunks(piece) {
        if parser.feed(chunk, &mut sink).is_err() {
            return;
        }
    }
    let _ = parser.finish();
});

//! An incremental (push) parser for the tar archives `BASE_BACKUP` sends.
//!
//! Bytes arrive in pieces of any size; events come out as soon as they are known,
//! with file data borrowed from the input (nothing but one 512-byte header block, and
//! the bodies of GNU long-name and pax extended headers, is ever buffered).
//! PostgreSQL writes ustar headers; GNU `L`/`K` long names and pax `x` headers (`path`,
//! `linkpath`, `size`) are understood too. Header checksums are verified; paths that
//! are absolute or climb out with `..` are rejected.

use std::convert::Infallible;
use std::fmt;

const BLOCK: usize = 512;
/// Longest GNU long name or pax header body accepted.
const MAX_META: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative, `/`-separated, without a leading `./` or a trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub link_target: Option<String>,
}

#[derive(Debug)]
pub enum TarEvent<'a> {
    Entry(TarEntry),
    /// A piece of the current entry's data.
    Data(&'a [u8]),
    EntryEnd,
    /// The end-of-archive marker (two zero blocks) was read.
    End,
}

#[derive(Debug)]
pub enum TarError<E> {
    /// Malformed archive at this byte offset.
    Format { offset: u64, why: String },
    /// The event sink failed.
    Sink(E),
}

impl<E: fmt::Display> fmt::Display for TarError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::Format { offset, why } => {
                write!(f, "malformed tar archive at byte {offset}: {why}")
            }
            TarError::Sink(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TarError<E> {}

#[derive(Debug)]
enum State {
    Header,
    /// Entry data still to deliver, then padding.
    Data {
        left: u64,
        pad: u64,
    },
    /// Body of a GNU long name/link or pax header being collected.
    Meta {
        kind: u8,
        left: u64,
        pad: u64,
    },
    Padding {
        left: u64,
    },
    /// After one zero block: the next must be zero too.
    SecondZero,
    End,
}

/// The parser. See the module documentation.
#[derive(Debug)]
pub struct TarParser {
    state: State,
    block: Vec<u8>,
    offset: u64,
    meta: Vec<u8>,
    long_name: Option<String>,
    long_link: Option<String>,
    pax_path: Option<String>,
    pax_link: Option<String>,
    pax_size: Option<u64>,
}

impl Default for TarParser {
    fn default() -> Self {
        TarParser::new()
    }
}

fn padding(left: u64) -> State {
    if left == 0 {
        State::Header
    } else {
        State::Padding { left }
    }
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // base-256 (GNU): big-endian, first byte's top bit set.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Normalises and checks an archive path.
fn clean_path(raw: &str) -> Result<String, String> {
    if raw.contains('\0') {
        return Err(format!("path {raw:?} contains NUL"));
    }
    if raw.starts_with('/') {
        return Err(format!("absolute path {raw:?}"));
    }
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(format!("path {raw:?} climbs out with '..'")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("empty path {raw:?}"));
    }
    Ok(parts.join("/"))
}

impl TarParser {
    pub fn new() -> TarParser {
        TarParser {
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            offset: 0,
            meta: Vec::new(),
            long_name: None,
            long_link: None,
            pax_path: None,
            pax_link: None,
            pax_size: None,
        }
    }

    fn format<E>(&self, why: impl Into<String>) -> TarError<E> {
        TarError::Format {
            offset: self.offset,
            why: why.into(),
        }
    }

    /// Feeds the next piece of the archive.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(TarEvent<'_>) -> Result<(), E>,
    ) -> Result<(), TarError<E>> {
        while !input.is_empty() {
            match &mut self.state {
                State::End => {
                    // Trailing zero blocks (tar pads archives to a record size) are fine.
                    if input.iter().any(|&b| b != 0) {
                        return Err(self.format("data after the end-of-archive marker"));
                    }
                    self.offset += input.len() as u64;
                    return Ok(());
                }
                State::Data { left, pad } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    let (piece, rest) = input.split_at(take);
                    *left -= take as u64;
                    let (done, pad) = (*left == 0, *pad);
                    input = rest;
                    self.offset += take as u64;
                    if !piece.is_empty() {
                        sink(TarEvent::Data(piece)).map_err(TarError::Sink)?;
                    }
                    if done {
                        sink(TarEvent::EntryEnd).map_err(TarError::Sink)?;
                        self.state = padding(pad);
                    }
                }
                State::Meta { kind, left, pad } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    self.meta.extend_from_slice(&input[..take]);
                    *left -= take as u64;
                    let (done, kind, pad) = (*left == 0, *kind, *pad);
                    input = &input[take..];
                    self.offset += take as u64;
                    if done {
                        self.apply_meta(kind)?;
                        self.state = padding(pad);
                    }
                }
                State::Padding { left } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    *left -= take as u64;
                    let done = *left == 0;
                    input = &input[take..];
                    self.offset += take as u64;
                    if done {
                        self.state = State::Header;
                    }
                }
                State::Header | State::SecondZero => {
                    let need = BLOCK - self.block.len();
                    let take = need.min(input.len());
                    self.block.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.block.len() < BLOCK {
                        self.offset += take as u64;
                        continue;
                    }
                    let block = std::mem::take(&mut self.block);
                    self.header(&block, sink)?;
                    self.offset += take as u64;
                    self.block = block;
                    self.block.clear();
                }
            }
        }
        Ok(())
    }

    fn header<E>(
        &mut self,
        b: &[u8],
        sink: &mut impl FnMut(TarEvent<'_>) -> Result<(), E>,
    ) -> Result<(), TarError<E>> {
        if b.iter().all(|&x| x == 0) {
            match self.state {
                State::SecondZero => {
                    self.state = State::End;
                    sink(TarEvent::End).map_err(TarError::Sink)?;
                }
                _ => self.state = State::SecondZero,
            }
            return Ok(());
        }
        if matches!(self.state, State::SecondZero) {
            return Err(self.format("a lone zero block inside the archive"));
        }
        let stored = octal(&b[148..156]).ok_or_else(|| self.format("bad header checksum field"))?;
        let sum: u64 = b
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(x)
                }
            })
            .sum();
        if sum != stored {
            return Err(self.format(format!(
                "header checksum mismatch (stored {stored}, computed {sum}): not a tar archive, or corrupt"
            )));
        }
        let typeflag = b[156];
        let size = octal(&b[124..136]).ok_or_else(|| self.format("bad size field"))?;
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        match typeflag {
            b'L' | b'K' | b'x' | b'g' => {
                if size > MAX_META {
                    return Err(
                        self.format(format!("extended header of {size} bytes is too large"))
                    );
                }
                self.meta.clear();
                self.state = if size == 0 {
                    self.apply_meta(typeflag)?;
                    State::Header
                } else {
                    State::Meta {
                        kind: typeflag,
                        left: size,
                        pad,
                    }
                };
                return Ok(());
            }
            _ => {}
        }
        let kind = match typeflag {
            b'0' | 0 | b'7' => EntryKind::File,
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink,
            other => {
                return Err(self.format(format!(
                    "unsupported tar entry type {:?} (hard links, devices and FIFOs are not part of a data directory)",
                    other as char
                )))
            }
        };
        let name = match (self.pax_path.take(), self.long_name.take()) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                let name = cstr(&b[0..100]);
                let magic = &b[257..263];
                let prefix = if magic == b"ustar\0" || magic == b"ustar " {
                    cstr(&b[345..500])
                } else {
                    &[]
                };
                let mut full = Vec::new();
                if !prefix.is_empty() {
                    full.extend_from_slice(prefix);
                    full.push(b'/');
                }
                full.extend_from_slice(name);
                String::from_utf8(full).map_err(|_| self.format("file name is not UTF-8"))?
            }
        };
        let path = clean_path(&name).map_err(|why| self.format(why))?;
        let link = match (self.pax_link.take(), self.long_link.take()) {
            (Some(l), _) | (None, Some(l)) => Some(l),
            (None, None) => {
                let l = cstr(&b[157..257]);
                (!l.is_empty())
                    .then(|| String::from_utf8(l.to_vec()))
                    .transpose()
                    .map_err(|_| self.format("link target is not UTF-8"))?
            }
        };
        let size = match kind {
            EntryKind::File => self.pax_size.take().unwrap_or(size),
            _ => {
                self.pax_size = None;
                0
            }
        };
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let mode = octal(&b[100..108]).ok_or_else(|| self.format("bad mode field"))? as u32;
        let mtime = octal(&b[136..148]).ok_or_else(|| self.format("bad mtime field"))? as i64;
        let entry = TarEntry {
            path,
            kind,
            mode: mode & 0o7777,
            size,
            mtime,
            link_target: if kind == EntryKind::Symlink {
                Some(link.ok_or_else(|| self.format("symlink without a target"))?)
            } else {
                None
            },
        };
        sink(TarEvent::Entry(entry)).map_err(TarError::Sink)?;
        if size == 0 {
            sink(TarEvent::EntryEnd).map_err(TarError::Sink)?;
            self.state = State::Header;
        } else {
            self.state = State::Data { left: size, pad };
        }
        Ok(())
    }

    fn apply_meta<E>(&mut self, kind: u8) -> Result<(), TarError<E>> {
        let body = std::mem::take(&mut self.meta);
        match kind {
            b'L' | b'K' => {
                let s = String::from_utf8(cstr(&body).to_vec())
                    .map_err(|_| self.format("long name is not UTF-8"))?;
                if kind == b'L' {
                    self.long_name = Some(s);
                } else {
                    self.long_link = Some(s);
                }
            }
            b'x' => {
                // Records: "<len> <key>=<value>\n".
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let sp = rest
                        .iter()
                        .position(|&c| c == b' ')
                        .ok_or_else(|| self.format("malformed pax record"))?;
                    let len: usize = std::str::from_utf8(&rest[..sp])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .filter(|&l| l > sp + 1 && l <= rest.len())
                        .ok_or_else(|| self.format("malformed pax record length"))?;
                    let rec = &rest[sp + 1..len];
                    let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
                    if let Some(eq) = rec.iter().position(|&c| c == b'=') {
                        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
                        let v = String::from_utf8(v.to_vec())
                            .map_err(|_| self.format("pax value is not UTF-8"))?;
                        match k {
                            b"path" => self.pax_path = Some(v),
                            b"linkpath" => self.pax_link = Some(v),
                            b"size" => {
                                self.pax_size = Some(
                                    v.parse()
                                        .map_err(|_| self.format("pax size is not a number"))?,
                                )
                            }
                            _ => {}
                        }
                    }
                    rest = &rest[len..];
                }
            }
            _ => {} // 'g': global pax header, nothing we use
        }
        Ok(())
    }

    /// At the end of input: the archive must have ended at an entry boundary.
    /// The end-of-archive marker is optional (checked with [`TarParser::saw_end`]).
    pub fn finish(&mut self) -> Result<(), TarError<Infallible>> {
        match self.state {
            State::Header if self.block.is_empty() => Ok(()),
            State::End | State::SecondZero => Ok(()),
            State::Padding { .. } | State::Header => {
                Err(self.format("archive truncated inside a header or padding"))
            }
            State::Data { left, .. } => Err(self.format(format!(
                "archive truncated: {left} bytes of the last file are missing"
            ))),
            State::Meta { .. } => Err(self.format("archive truncated inside an extended header")),
        }
    }

    /// Whether the end-of-archive marker was read.
    pub fn saw_end(&self) -> bool {
        matches!(self.state, State::End)
    }
}

/// Builds ustar archives (used by tests, and by callers that need to emit tar).
#[derive(Debug, Default)]
pub struct TarBuilder {
    pub out: Vec<u8>,
}

impl TarBuilder {
    fn header(&mut self, name: &str, typeflag: u8, mode: u32, size: u64, mtime: i64, link: &str) {
        let mut h = [0u8; BLOCK];
        let put = |h: &mut [u8; BLOCK], at: usize, len: usize, v: &[u8]| {
            h[at..at + v.len().min(len)].copy_from_slice(&v[..v.len().min(len)]);
        };
        put(&mut h, 0, 100, name.as_bytes());
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
        put(&mut h, 136, 12, format!("{mtime:011o}\0").as_bytes());
        h[148..156].copy_from_slice(b"        ");
        h[156] = typeflag;
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 8, b"ustar\x0000");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&h);
    }

    fn pad(&mut self) {
        let rem = self.out.len() % BLOCK;
        if rem != 0 {
            self.out.resize(self.out.len() + BLOCK - rem, 0);
        }
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        if name.len() > 99 {
            let mut body = name.as_bytes().to_vec();
            body.push(0);
            self.header("././@LongLink", b'L', 0, body.len() as u64, 0, "");
            self.out.extend_from_slice(&body);
            self.pad();
        }
        self.header(name, b'0', 0o600, data.len() as u64, 1_700_000_000, "");
        self.out.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.header(name, b'5', 0o700, 0, 1_700_000_000, "");
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name, b'2', 0o777, 0, 1_700_000_000, target);
        self
    }

    pub fn end(&mut self) -> &mut Self {
        self.out.extend_from_slice(&[0u8; 2 * BLOCK]);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Entry(TarEntry),
        Data(Vec<u8>),
        EntryEnd,
        End,
    }

    fn parse_pieces(archive: &[u8], cuts: &[usize]) -> Result<Vec<Ev>, String> {
        let mut p = TarParser::new();
        let mut evs: Vec<Ev> = Vec::new();
        let mut sink = |e: TarEvent<'_>| -> Result<(), Infallible> {
            match e {
                TarEvent::Entry(x) => evs.push(Ev::Entry(x)),
                TarEvent::Data(d) => match evs.last_mut() {
                    Some(Ev::Data(v)) => v.extend_from_slice(d),
                    _ => evs.push(Ev::Data(d.to_vec())),
                },
                TarEvent::EntryEnd => evs.push(Ev::EntryEnd),
                TarEvent::End => evs.push(Ev::End),
            }
            Ok(())
        };
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(archive.len())).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([archive.len()]) {
            p.feed(&archive[last..c], &mut sink)
                .map_err(|e| e.to_string())?;
            last = c;
        }
        p.finish().map_err(|e| e.to_string())?;
        Ok(evs)
    }

    fn sample() -> Vec<u8> {
        let long = format!("base/16384/{}", "x".repeat(120));
        let mut t = TarBuilder::default();
        t.file("backup_label", b"START WAL LOCATION: 0/2000028\n")
            .dir("base/")
            .dir("./base/1")
            .file("base/1/1259", &vec![7u8; 8192 * 3 + 100])
            .file("empty", b"")
            .symlink("pg_tblspc/16385", "/srv/ts")
            .file(&long, b"long name")
            .end();
        t.out
    }

    #[test]
    fn parses_entries_and_data() {
        let evs = parse_pieces(&sample(), &[]).unwrap();
        let entries: Vec<&TarEntry> = evs
            .iter()
            .filter_map(|e| match e {
                Ev::Entry(x) => Some(x),
                _ => None,
            })
            .collect();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backup_label",
                "base",
                "base/1",
                "base/1/1259",
                "empty",
                "pg_tblspc/16385",
                &format!("base/16384/{}", "x".repeat(120))
            ]
        );
        assert_eq!(entries[3].size, 8192 * 3 + 100);
        assert_eq!(entries[1].kind, EntryKind::Directory);
        assert_eq!(entries[5].link_target.as_deref(), Some("/srv/ts"));
        assert_eq!(entries[0].mode, 0o600);
        assert!(evs.contains(&Ev::Data(vec![7u8; 8192 * 3 + 100])));
        assert_eq!(evs.last(), Some(&Ev::End));
    }

    #[test]
    fn hostile_and_corrupt_archives_are_rejected() {
        for bad in ["/etc/passwd", "base/../../x", "..", "./"] {
            let mut t = TarBuilder::default();
            t.file(bad, b"x").end();
            let e = parse_pieces(&t.out, &[]).unwrap_err();
            assert!(e.contains("path") || e.contains("climbs"), "{bad}: {e}");
        }
        let mut a = sample();
        a[10] ^= 1;
        assert!(parse_pieces(&a, &[]).unwrap_err().contains("checksum"));
        let mut t = TarBuilder::default();
        t.header("dev", b'3', 0o600, 0, 0, "");
        assert!(parse_pieces(&t.out, &[])
            .unwrap_err()
            .contains("unsupported"));
    }

    #[test]
    fn archive_without_end_marker_is_accepted_at_a_boundary() {
        let mut t = TarBuilder::default();
        t.file("a", b"abc");
        let mut p = TarParser::new();
        p.feed(&t.out, &mut |_| Ok::<(), Infallible>(())).unwrap();
        p.finish().unwrap();
        assert!(!p.saw_end());
    }

    #[test]
    fn pax_headers_override_name_and_size() {
        let mut t = TarBuilder::default();
        let rec = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            if format!("{len}{body}").len() != len {
                len += 1;
            }
            format!("{len}{body}")
        };
        let pax = format!("{}{}", rec("path", "pg_tblspc/1/PG_17/x"), rec("size", "5"));
        t.header("PaxHeader", b'x', 0, pax.len() as u64, 0, "");
        t.out.extend_from_slice(pax.as_bytes());
        t.pad();
        t.header("short", b'0', 0o600, 5, 0, "");
        t.out.extend_from_slice(b"hello");
        t.pad();
        t.end();
        let evs = parse_pieces(&t.out, &[]).unwrap();
        match &evs[0] {
            Ev::Entry(e) => {
                assert_eq!(e.path, "pg_tblspc/1/PG_17/x");
                assert_eq!(e.size, 5);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(evs[1], Ev::Data(b"hello".to_vec()));
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(cuts in proptest::collection::vec(0usize..40_000, 0..12)) {
            let a = sample();
            prop_assert_eq!(parse_pieces(&a, &cuts).unwrap(), parse_pieces(&a, &[]).unwrap());
        }

        #[test]
        fn truncation_is_reported(cut in 1usize..30_000) {
            let a = sample();
            let cut = cut.min(a.len() - 2 * BLOCK - 1);
            // Cutting at an entry boundary is a clean end; anywhere else is an error.
            let boundaries: Vec<usize> = {
                let mut v = vec![];
                let mut p = TarParser::new();
                let mut pos = 0;
                for chunk in a.chunks(BLOCK) {
                    p.feed(chunk, &mut |_| Ok::<(), Infallible>(())).unwrap();
                    pos += chunk.len();
                    if matches!(p.state, State::Header) && p.block.is_empty() {
                        v.push(pos);
                    }
                }
                v
            };
            let r = parse_pieces(&a[..cut], &[]);
            prop_assert_eq!(r.is_ok(), boundaries.contains(&cut) || cut == 0);
        }
    }
}

//! The body of an offload upload (`POST /v1/clusters/{cluster}/offloads/upload`): a
//! PGDATA copy read on the client (a volume snapshot mounted in a Kubernetes Job), sent
//! to the Klio Server as a stream of frames.
//!
//! ```text
//! "KLIOUP01"                          magic, once
//! frame*: tag (1 byte) | length (u32, big-endian) | payload (length bytes)
//!   'L'  the backup_label text (UTF-8, at most 1 MiB); the first frame, once
//!   'F'  an entry: JSON UploadEntry; a regular file's data follows in 'D' frames
//!   'D'  data of the current file (1 byte to 1 MiB); exactly its size in all
//!   'Z'  the end (empty); nothing may follow
//! ```
//!
//! The decoder is a push parser: bytes arrive in pieces of any size and file data is
//! handed on as it arrives (only a frame header and the small 'L'/'F' payloads are ever
//! buffered). It refuses, with the byte offset, anything out of this grammar: a wrong
//! magic, an unknown tag, an oversized frame, data beyond a file's size or a file cut
//! short, an entry path that is absolute, climbs with `..` or is not in normal form
//! (`a/b`, no empty or `.` components), a link without a target, bytes after the end. A
//! body that stops before 'Z' is incomplete ([`UploadDecoder::finish`]). What the
//! entries may be (links only for tablespaces, the copy's system identifier) is the
//! receiver's check. Writes nothing.

use serde::{Deserialize, Serialize};

/// First bytes of every upload body.
pub const MAGIC: &[u8; 8] = b"KLIOUP01";
/// Largest payload of a frame.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest `backup_label`.
pub const MAX_LABEL: u32 = 1 << 20;
/// Largest 'F' payload (a path of PostgreSQL's 1 KiB limit plus metadata fits easily).
const MAX_ENTRY: u32 = 16 << 10;

pub const TAG_LABEL: u8 = b'L';
pub const TAG_ENTRY: u8 = b'F';
pub const TAG_DATA: u8 = b'D';
pub const TAG_END: u8 = b'Z';

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadKind {
    File,
    Directory,
    Symlink,
}

/// One entry of the copy, in the order it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadEntry {
    /// `None`: the data directory; else the tablespace's OID (its link
    /// `pg_tblspc/<oid>` comes first, in the data directory).
    pub tablespace: Option<u32>,
    /// Relative, `/`-separated, normal form.
    pub path: String,
    pub kind: UploadKind,
    pub mode: u32,
    pub mtime: i64,
    /// Bytes of data that follow (regular files; 0 otherwise).
    pub size: u64,
    /// A link's target (links only).
    pub link_target: Option<String>,
}

/// The header of one frame.
pub fn frame_header(tag: u8, len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [tag, l[0], l[1], l[2], l[3]]
}

/// One complete frame (for the small frames; data goes as header + bytes).
pub fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits u32");
    let mut v = Vec::with_capacity(5 + payload.len());
    v.extend_from_slice(&frame_header(tag, len));
    v.extend_from_slice(payload);
    v
}

/// The 'F' frame of `e`.
pub fn entry_frame(e: &UploadEntry) -> Vec<u8> {
    frame(
        TAG_ENTRY,
        &serde_json::to_vec(e).expect("an entry serialises"),
    )
}

/// Is `path` relative, `/`-separated and in normal form?
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains NUL"));
    }
    if path.starts_with('/') {
        return Err(format!("absolute path {path:?}"));
    }
    for part in path.split('/') {
        match part {
            ".." => return Err(format!("path {path:?} climbs out with '..'")),
            "" | "." => return Err(format!("path {path:?} is not in normal form")),
            _ => {}
        }
    }
    Ok(())
}

/// What the decoder found.
#[derive(Debug)]
pub enum UploadEvent<'a> {
    Label(String),
    Entry(UploadEntry),
    /// A piece of the current file's data.
    Data(&'a [u8]),
    /// The current entry is complete (for a regular file: after its last `Data`).
    EntryEnd,
    End,
}

#[derive(Debug)]
pub enum UploadError<E> {
    /// The body breaks the grammar at this byte offset.
    Format { offset: u64, why: String },
    /// The event sink failed.
    Sink(E),
}

impl<E: std::fmt::Display> std::fmt::Display for UploadError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::Format { offset, why } => {
                write!(f, "malformed upload at byte {offset}: {why}")
            }
            UploadError::Sink(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for UploadError<E> {}

#[derive(Debug)]
enum State {
    Magic,
    Header,
    /// Collecting an 'L' or 'F' payload.
    Small {
        tag: u8,
        left: u32,
    },
    /// Passing on a 'D' payload.
    Data {
        left: u32,
    },
    End,
}

/// The push decoder (see the module documentation).
#[derive(Debug)]
pub struct UploadDecoder {
    state: State,
    buf: Vec<u8>,
    offset: u64,
    seen_label: bool,
    /// Data still owed by the current regular file.
    file_left: Option<u64>,
}

impl Default for UploadDecoder {
    fn default() -> Self {
        UploadDecoder {
            state: State::Magic,
            buf: Vec::with_capacity(64),
            offset: 0,
            seen_label: false,
            file_left: None,
        }
    }
}

impl UploadDecoder {
    pub fn new() -> UploadDecoder {
        UploadDecoder::default()
    }

    /// Has the end frame been read?
    pub fn ended(&self) -> bool {
        matches!(self.state, State::End)
    }

    /// Fails unless the whole body, through its end frame, has been read.
    pub fn finish(&self) -> Result<(), UploadError<std::convert::Infallible>> {
        if self.ended() {
            return Ok(());
        }
        Err(UploadError::Format {
            offset: self.offset,
            why: "the body ended before its end frame: the upload was cut off (client stopped or connection lost)".into(),
        })
    }

    fn bad<E>(&self, why: impl Into<String>) -> UploadError<E> {
        UploadError::Format {
            offset: self.offset,
            why: why.into(),
        }
    }

    /// Feeds the next bytes; events go to `sink` as soon as they are known.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(UploadEvent<'_>) -> Result<(), E>,
    ) -> Result<(), UploadError<E>> {
        while !input.is_empty() {
            match self.state {
                State::Magic => {
                    let take = (MAGIC.len() - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.offset += take as u64;
                    if self.buf.len() == MAGIC.len() {
                        if self.buf != MAGIC {
                            return Err(self.bad(
                                "not a Klio upload (wrong magic): send it with `klio offload --upload`",
                            ));
                        }
                        self.buf.clear();
                        self.state = State::Header;
                    }
                }
                State::Header => {
                    let take = (5 - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.buf.len() < 5 {
                        self.offset += take as u64;
                        continue;
                    }
                    let tag = self.buf[0];
                    let len =
                        u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                    self.buf.clear();
                    self.header(tag, len, sink)?;
                    self.offset += take as u64;
                }
                State::Small { tag, left } => {
                    let take = (left as usize).min(input.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.offset += take as u64;
                    let left = left - take as u32;
                    if left > 0 {
                        self.state = State::Small { tag, left };
                        continue;
                    }
                    let payload = std::mem::take(&mut self.buf);
                    self.state = State::Header;
                    self.small(tag, &payload, sink)?;
                }
                State::Data { left } => {
                    let take = (left as usize).min(input.len());
                    let (piece, rest) = input.split_at(take);
                    sink(UploadEvent::Data(piece)).map_err(UploadError::Sink)?;
                    input = rest;
                    self.offset += take as u64;
                    let left = left - take as u32;
                    let owed = self.file_left.as_mut().expect("data only within a file");
                    *owed -= take as u64;
                    if left > 0 {
                        self.state = State::Data { left };
                    } else {
                        self.state = State::Header;
                        if *owed == 0 {
                            self.file_left = None;
                            sink(UploadEvent::EntryEnd).map_err(UploadError::Sink)?;
                        }
                    }
                }
                State::End => return Err(self.bad("bytes after the end frame")),
            }
        }
        Ok(())
    }

    /// A frame header was read.
    fn header<E>(
        &mut self,
        tag: u8,
        len: u32,
        sink: &mut dyn FnMut(UploadEvent<'_>) -> Result<(), E>,
    ) -> Result<(), UploadError<E>> {
        if tag != TAG_LABEL && !self.seen_label {
            return Err(self.bad("the first frame must be the backup_label ('L')"));
        }
        if tag != TAG_DATA {
            if let Some(owed) = self.file_left {
                return Err(self.bad(format!(
                    "frame {:?} while the current file still owes {owed} bytes of data: a file was cut short",
                    tag as char
                )));
            }
        }
        match tag {
            TAG_LABEL => {
                if self.seen_label {
                    return Err(self.bad("a second backup_label frame"));
                }
                if len > MAX_LABEL {
                    return Err(
                        self.bad(format!("backup_label of {len} bytes (at most {MAX_LABEL})"))
                    );
                }
                self.state = State::Small { tag, left: len };
            }
            TAG_ENTRY => {
                if len > MAX_ENTRY {
                    return Err(
                        self.bad(format!("entry header of {len} bytes (at most {MAX_ENTRY})"))
                    );
                }
                self.state = State::Small { tag, left: len };
            }
            TAG_DATA => {
                let Some(owed) = self.file_left else {
                    return Err(self.bad("data outside a regular file"));
                };
                if len == 0 || len > MAX_FRAME {
                    return Err(self.bad(format!("data frame of {len} bytes (1 to {MAX_FRAME})")));
                }
                if u64::from(len) > owed {
                    return Err(self.bad(format!(
                        "data frame of {len} bytes where the file owes only {owed}: more data than its size"
                    )));
                }
                self.state = State::Data { left: len };
            }
            TAG_END => {
                if len != 0 {
                    return Err(self.bad("the end frame has a payload"));
                }
                self.state = State::End;
                sink(UploadEvent::End).map_err(UploadError::Sink)?;
            }
            other => return Err(self.bad(format!("unknown frame tag 0x{other:02x}"))),
        }
        if matches!(self.state, State::Small { left: 0, .. }) {
            // An empty payload: complete now.
            self.state = State::Header;
            self.small(tag, &[], sink)?;
        }
        Ok(())
    }

    /// An 'L' or 'F' payload is complete.
    fn small<E>(
        &mut self,
        tag: u8,
        payload: &[u8],
        sink: &mut dyn FnMut(UploadEvent<'_>) -> Result<(), E>,
    ) -> Result<(), UploadError<E>> {
        if tag == TAG_LABEL {
            let text = String::from_utf8(payload.to_vec())
                .map_err(|_| self.bad("the backup_label is not UTF-8 text"))?;
            self.seen_label = true;
            return sink(UploadEvent::Label(text)).map_err(UploadError::Sink);
        }
        let e: UploadEntry = serde_json::from_slice(payload)
            .map_err(|err| self.bad(format!("entry header: {err}")))?;
        check_path(&e.path).map_err(|why| self.bad(why))?;
        match e.kind {
            UploadKind::Symlink => match e.link_target.as_deref() {
                None | Some("") => return Err(self.bad(format!("link {} has no target", e.path))),
                Some(t) if t.contains('\0') => {
                    return Err(self.bad(format!("link {} target contains NUL", e.path)))
                }
                Some(_) => {}
            },
            _ if e.link_target.is_some() => {
                return Err(self.bad(format!("{} is not a link but has a link target", e.path)))
            }
            _ => {}
        }
        if e.kind != UploadKind::File && e.size != 0 {
            return Err(self.bad(format!("{} is not a regular file but has a size", e.path)));
        }
        let (kind, size) = (e.kind, e.size);
        sink(UploadEvent::Entry(e)).map_err(UploadError::Sink)?;
        if kind == UploadKind::File && size > 0 {
            self.file_left = Some(size);
            Ok(())
        } else {
            sink(UploadEvent::EntryEnd).map_err(UploadError::Sink)
        }
    }
}

#[cfg(test)]
mod tests;

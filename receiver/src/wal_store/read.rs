//! Reading stored WAL back, one frame at a time: [`WalStore::open_read`] picks the file
//! a WAL name stands for and returns a [`WalReader`] that yields its plaintext in
//! pieces, so serving a segment holds one frame in memory, not the whole segment.
//! Reads only.
//!
//! A sealed segment must come out whole (its final frame present) with the size and
//! CRC-32C the catalog recorded; a mismatch is an error at the end of the stream, and
//! the bytes already handed out must then be discarded by the consumer (the HTTP
//! response is cut short, so `klio wal-restore` never installs such a file).

use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use klio_catalog::SegmentState;
use klio_core::frame::FrameError;
use klio_core::frame_reader::{FrameReadError, FrameReader};
use klio_core::{WalFileKind, WalFileName};

use super::{io_err, StoreError, WalStore};

/// Zeros handed out at a time when padding a `.partial` to the segment size.
const PAD_PIECE: usize = 1 << 20;

/// The plaintext of one stored WAL file, piece by piece.
pub struct WalReader {
    frames: FrameReader<Box<dyn Read + Send>>,
    path: PathBuf,
    /// Sealed segment: the size and checksum the catalog recorded.
    expect: Option<(u64, Option<u32>)>,
    crc: u32,
    /// Zero-pad the output up to this many bytes.
    pad_to: Option<u64>,
    produced: u64,
    len: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl WalReader {
    /// How many bytes it yields in all, when known in advance (sealed and padded
    /// segments; not history files or a raw `.partial`).
    pub fn known_len(&self) -> Option<u64> {
        self.len
    }

    /// The next piece of plaintext; `None` once everything was read and checked.
    pub fn next_piece(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let frame = self.frames.next_frame().map_err(|e| match e {
            FrameReadError::Io(source) => StoreError::Io {
                path: self.path.clone(),
                source,
            },
            FrameReadError::Frame(source) => StoreError::Frame {
                path: self.path.clone(),
                source,
            },
        })?;
        if let Some(data) = frame {
            self.crc = crc32c::crc32c_append(self.crc, &data);
            self.produced += data.len() as u64;
            return Ok(Some(data));
        }
        if let Some((size, crc)) = self.expect {
            if self.frames.plain_len() != size || crc.is_some_and(|c| c != self.crc) {
                self.done = true;
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    why: "content does not match the catalog's size and checksum".into(),
                });
            }
        }
        if let Some(to) = self.pad_to {
            if self.produced < to {
                let n = (to - self.produced).min(PAD_PIECE as u64) as usize;
                self.produced += n as u64;
                return Ok(Some(vec![0u8; n]));
            }
        }
        self.done = true;
        Ok(None)
    }

    /// Everything, in one buffer.
    pub fn read_all(mut self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(self.len.unwrap_or(0).min(64 << 20) as usize);
        while let Some(piece) = self.next_piece()? {
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }
}

impl WalStore {
    /// Opens a stored WAL file for reading. `Ok(None)` when it is not stored. A
    /// segment asked for by its full name that only exists as `.partial` (the newest
    /// WAL, or the end of a timeline) is served zero-padded to the segment size:
    /// recovery replays up to the end of what Klio has and stops at the zeros.
    pub fn open_read(&self, name: &WalFileName) -> Result<Option<WalReader>, StoreError> {
        let Some(plan) = self.read_plan(name)? else {
            return Ok(None);
        };
        let Some(file) = super::spare::open_locked(&plan.path).map_err(io_err(&plan.path))? else {
            return Ok(None);
        };
        let source: Box<dyn Read + Send> = Box::new(BufReader::with_capacity(256 << 10, file));
        self.reader(name, plan, source).map(Some)
    }

    /// Reads a copy of a final WAL file (a sealed segment or a history file) that is
    /// not in Tier 1, e.g. fetched from Tier 2: `object` is the stored file as Tier 1
    /// held it, `origin` names it in errors. It is decrypted and checked like a Tier 1
    /// file (the final frame, and a segment the catalog knows against its size and
    /// checksum).
    pub fn open_read_copy(
        &self,
        name: &WalFileName,
        object: Vec<u8>,
        origin: PathBuf,
    ) -> Result<WalReader, StoreError> {
        let inner = &self.inner;
        let expect = match name.kind() {
            WalFileKind::History => None,
            WalFileKind::Segment => match name.segno(inner.seg_size) {
                Ok(Some(segno)) => inner
                    .catalog
                    .segment(&inner.cluster, name.timeline(), segno)?
                    .filter(|r| r.state == SegmentState::Sealed)
                    .map(|r| (r.plain_size, r.crc32c))
                    .or(Some((inner.seg_size.bytes(), None))),
                _ => {
                    return Err(StoreError::Corrupt {
                        path: origin,
                        why: "not a segment of this cluster's segment size".into(),
                    })
                }
            },
            WalFileKind::Partial => {
                return Err(StoreError::Corrupt {
                    path: origin,
                    why: "a partial segment is never copied out of Tier 1".into(),
                })
            }
        };
        let plan = ReadPlan {
            path: origin,
            sealed: true,
            expect,
            pad_to: None,
        };
        self.reader(name, plan, Box::new(io::Cursor::new(object)))
    }

    /// Which file `name` stands for and how to check it; `None` when it is not stored.
    fn read_plan(&self, name: &WalFileName) -> Result<Option<ReadPlan>, StoreError> {
        let inner = &self.inner;
        let mut path = self.path(name);
        let mut pad_to = None;
        let (sealed, expect) = match name.kind() {
            WalFileKind::History => (true, None),
            kind => {
                let segno = match name.segno(inner.seg_size) {
                    Ok(Some(s)) => s,
                    _ => return Ok(None),
                };
                let Some(rec) = inner
                    .catalog
                    .segment(&inner.cluster, name.timeline(), segno)?
                else {
                    return Ok(None);
                };
                match (kind, rec.state) {
                    (WalFileKind::Segment, SegmentState::Sealed) => {
                        (true, Some((rec.plain_size, rec.crc32c)))
                    }
                    (WalFileKind::Partial, SegmentState::Partial) => (false, None),
                    (WalFileKind::Segment, SegmentState::Partial) => {
                        pad_to = Some(inner.seg_size.bytes());
                        path = self.path(&WalFileName::partial(
                            name.timeline(),
                            segno,
                            inner.seg_size,
                        ));
                        (false, None)
                    }
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(ReadPlan {
            path,
            sealed,
            expect,
            pad_to,
        }))
    }

    fn reader(
        &self,
        name: &WalFileName,
        plan: ReadPlan,
        source: Box<dyn Read + Send>,
    ) -> Result<WalReader, StoreError> {
        let inner = &self.inner;
        let ReadPlan {
            path,
            sealed,
            expect,
            pad_to,
        } = plan;
        let frames = FrameReader::new(&inner.key, &self.object_id(name), source, sealed).map_err(
            |e| match e {
                FrameReadError::Io(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
                    StoreError::Frame {
                        path: path.clone(),
                        source: FrameError::BadHeader,
                    }
                }
                FrameReadError::Io(source) => StoreError::Io {
                    path: path.clone(),
                    source,
                },
                FrameReadError::Frame(source) => StoreError::Frame {
                    path: path.clone(),
                    source,
                },
            },
        )?;
        let len = expect.map(|(size, _)| size).or(pad_to);
        Ok(WalReader {
            frames,
            path,
            expect,
            crc: 0,
            pad_to,
            produced: 0,
            len,
            done: false,
        })
    }
}

/// What [`WalStore::read_plan`] decided.
struct ReadPlan {
    path: PathBuf,
    /// A final file: it must end with the FINAL frame.
    sealed: bool,
    /// The catalog's size and checksum of a sealed segment.
    expect: Option<(u64, Option<u32>)>,
    /// Zero-pad a partial read as a segment to this size.
    pad_to: Option<u64>,
}

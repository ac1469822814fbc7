//! Reading a stored object frame by frame from any `Read` (a file), so a reader holds
//! one frame in memory, not the whole object. The same rules as
//! [`crate::frame::decode_object`]: frames contiguous from offset 0, each authenticated;
//! a sealed object must end with its final frame and nothing after it. Reads only.

use std::io::{self, Read};

use crate::frame::{FrameError, FrameOpener, ObjectId, FRAME_HEADER_LEN, HEADER_LEN};

/// Why the next frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads an object's frames one at a time (see the module documentation).
pub struct FrameReader<R> {
    inner: R,
    opener: FrameOpener,
    /// Stored offset of the next frame.
    pos: u64,
    /// Plaintext returned so far.
    plain: u64,
    finished: bool,
    /// `false`: the object is still being appended to (a `.partial`), and its end is
    /// wherever the last complete, authentic frame ends.
    sealed: bool,
    done: bool,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Reads and checks the object header. `sealed`: the object must end with its
    /// final frame (an error otherwise); without it, reading stops quietly at the
    /// first incomplete frame, as for a file being appended to.
    pub fn new(
        key: &crate::keys::DataKey,
        id: &ObjectId,
        mut inner: R,
        sealed: bool,
    ) -> Result<FrameReader<R>, FrameReadError> {
        let mut header = [0u8; HEADER_LEN];
        read_full(&mut inner, &mut header)?;
        let opener = FrameOpener::new(key, id, &header)?;
        Ok(FrameReader {
            inner,
            opener,
            pos: HEADER_LEN as u64,
            plain: 0,
            finished: false,
            sealed,
            done: false,
            buf: Vec::new(),
        })
    }

    /// Plaintext bytes returned so far.
    pub fn plain_len(&self) -> u64 {
        self.plain
    }

    /// The final frame has been read.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next frame's plaintext, or `None` at the end of the object.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameReadError> {
        if self.done {
            return Ok(None);
        }
        let end = |r: &mut Self| -> Result<Option<Vec<u8>>, FrameReadError> {
            r.done = true;
            if r.sealed && !r.finished {
                return Err(FrameError::Truncated { plain_len: r.plain }.into());
            }
            Ok(None)
        };
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_LEN, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        let zeros = self.buf[..got].iter().all(|&b| b == 0);
        if self.finished {
            if !zeros {
                return Err(self.malformed("data after the final frame"));
            }
            self.done = true;
            return Ok(None);
        }
        if got < FRAME_HEADER_LEN || zeros {
            if self.sealed && !zeros {
                return Err(self.malformed("trailing bytes that are not a complete frame"));
            }
            return end(self);
        }
        let stored_len = u32::from_le_bytes(
            self.buf[0..4]
                .try_into()
                .map_err(|_| self.malformed("short header"))?,
        ) as usize;
        // FrameOpener checks the lengths; bound the read so a hostile length cannot
        // make us allocate more than a frame can hold.
        if stored_len > crate::frame::MAX_FRAME_PLAIN + 16 + 1024 {
            return Err(self.malformed("impossible lengths or flags"));
        }
        self.buf.resize(FRAME_HEADER_LEN + stored_len, 0);
        let got = read_full(&mut self.inner, &mut self.buf[FRAME_HEADER_LEN..])?;
        if got < stored_len {
            if self.sealed {
                return Err(FrameError::Truncated {
                    plain_len: self.plain,
                }
                .into());
            }
            return end(self);
        }
        match self.opener.open(&self.buf, self.pos, self.plain) {
            Ok(Some(f)) => {
                self.pos += f.stored_len as u64;
                self.plain += f.data.len() as u64;
                if f.is_final {
                    self.finished = true;
                }
                Ok(Some(f.data))
            }
            Ok(None) => end(self),
            // A file being appended to ends at its first frame that does not open.
            Err(_) if !self.sealed => end(self),
            Err(e) => Err(e.into()),
        }
    }

    fn malformed(&self, why: &str) -> FrameReadError {
        FrameError::Malformed {
            at: self.pos,
            why: why.to_string(),
        }
        .into()
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_object, FrameSealer, ObjectKind};
    use crate::keys::DataKey;

    fn id() -> ObjectId {
        ObjectId {
            cluster: "pg-a".parse().unwrap(),
            kind: ObjectKind::WalSegment,
            name: "000000010000000000000001".into(),
        }
    }

    fn object(key: &DataKey, parts: &[&[u8]], sealed: bool) -> Vec<u8> {
        let (mut s, header) = FrameSealer::create(key, &id());
        let mut out = header.to_vec();
        for p in parts {
            s.seal(p, &mut out);
        }
        if sealed {
            s.seal_final(&mut out);
        }
        out
    }

    fn read_all(key: &DataKey, bytes: &[u8], sealed: bool) -> Result<Vec<u8>, FrameReadError> {
        let mut r = FrameReader::new(key, &id(), bytes, sealed)?;
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.extend_from_slice(&f);
        }
        Ok(out)
    }

    #[test]
    fn reads_what_decode_object_reads() {
        let key = DataKey::generate();
        let parts: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; 100_000 + usize::from(i)])
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let sealed = object(&key, &refs, true);
        let whole = decode_object(&key, &id(), &sealed, false).unwrap().data;
        assert_eq!(read_all(&key, &sealed, true).unwrap(), whole);
        // A partial with preallocated zeros after it.
        let mut partial = object(&key, &refs, false);
        partial.extend_from_slice(&[0u8; 4096]);
        assert_eq!(read_all(&key, &partial, false).unwrap(), whole);
    }

    #[test]
    fn sealed_objects_must_be_whole() {
        let key = DataKey::generate();
        let sealed = object(&key, &[b"abc", b"def"], true);
        // Any truncation of a sealed object is an error, never a shorter success.
        for n in HEADER_LEN..sealed.len() {
            assert!(
                read_all(&key, &sealed[..n], true).is_err(),
                "truncated at {n}"
            );
        }
        // Any flipped byte is an error.
        for n in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[n] ^= 0x40;
            assert!(read_all(&key, &bad, true).is_err(), "flipped at {n}");
        }
        let mut extra = sealed.clone();
        extra.extend_from_slice(b"x");
        assert!(read_all(&key, &extra, true).is_err());
        // Another key cannot read it.
        assert!(read_all(&DataKey::generate(), &sealed, true).is_err());
    }

    #[test]
    fn a_torn_partial_ends_at_its_last_good_frame() {
        let key = DataKey::generate();
        let full = object(&key, &[b"abc", b"def"], false);
        let first = object(&key, &[b"abc"], false).len();
        assert_eq!(read_all(&key, &full[..first + 7], false).unwrap(), b"abc");
        let mut garbled = full.clone();
        let last = garbled.len() - 1;
        garbled[last] ^= 1;
        assert_eq!(read_all(&key, &garbled, false).unwrap(), b"abc");
    }
}

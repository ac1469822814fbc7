//! The Tier 1 object format: a header and a sequence of compressed, encrypted frames.
//!
//! Every byte Klio stores at rest goes through here. See `docs/FORMATS.md`.
//!
//! ```text
//! header (48 bytes): magic "KLIOOBJ1" | version u16 | kind u8 | 0u8 | salt [32] | crc32c u32
//! frame:             stored_len u32 | plain_offset u64 | plain_len u32 | flags u8 |
//!                    nonce [12] | 0 [3] | ciphertext+tag [stored_len]
//! ```
//! All integers little-endian. Each object gets its own AES-256-GCM key, derived
//! with HKDF-SHA256 from the cluster's data key and the header's random salt.
//! A frame's associated data binds the cluster name, the object's identity (for a
//! WAL segment its 24-digit name without `.partial`, so sealing by rename keeps it
//! valid), the salt and every frame header field. Readers require frames to be
//! contiguous from offset 0; a sealed object ends with an empty `FINAL` frame, so a
//! truncation at a frame boundary is detected too.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

use crate::cluster::ClusterName;
use crate::keys::DataKey;

pub const HEADER_LEN: usize = 48;
pub const FRAME_HEADER_LEN: usize = 32;
const TAG_LEN: usize = 16;
const MAGIC: &[u8; 8] = b"KLIOOBJ1";
const VERSION: u16 = 1;
/// Largest plaintext one frame may carry.
pub const MAX_FRAME_PLAIN: usize = 4 << 20;
const FLAG_ZSTD: u8 = 1;
const FLAG_FINAL: u8 = 2;
const ZSTD_LEVEL: i32 = 1;

/// What an object holds; part of its identity.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ObjectKind {
    WalSegment = 1,
    TimelineHistory = 2,
    /// One base-backup chunk inside a pack file; named by its chunk id (hex).
    Chunk = 3,
    /// Klio's manifest of one base backup; named by the backup id.
    BackupManifest = 4,
    /// PostgreSQL's own `backup_manifest` of one base backup; named by the backup id.
    PgManifest = 5,
    /// Where one base backup's new chunks are stored; named by the backup id.
    ChunkIndex = 6,
    /// Where a repacked pack's chunks are; named by the pack's name.
    PackIndex = 7,
}

impl ObjectKind {
    fn from_u8(v: u8) -> Option<ObjectKind> {
        match v {
            1 => Some(ObjectKind::WalSegment),
            2 => Some(ObjectKind::TimelineHistory),
            3 => Some(ObjectKind::Chunk),
            4 => Some(ObjectKind::BackupManifest),
            5 => Some(ObjectKind::PgManifest),
            6 => Some(ObjectKind::ChunkIndex),
            7 => Some(ObjectKind::PackIndex),
            _ => None,
        }
    }
}

/// Who an object belongs to and what it is: bound into every frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub cluster: ClusterName,
    pub kind: ObjectKind,
    /// e.g. the segment's 24-hex-digit name, or `00000002.history`.
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a Klio object (bad magic or header checksum)")]
    BadHeader,
    #[error("unsupported object format version {0}")]
    UnsupportedVersion(u16),
    #[error("object kind mismatch: expected {expected:?}, found {found}")]
    WrongKind { expected: ObjectKind, found: u8 },
    #[error("frame at stored offset {at} failed authentication: the data is corrupt, truncated, or belongs to another cluster or file")]
    Authentication { at: u64 },
    #[error("frame at stored offset {at} is malformed: {why}")]
    Malformed { at: u64, why: String },
    #[error("object is truncated: it ends after {plain_len} bytes without its final frame")]
    Truncated { plain_len: u64 },
    #[error("frame at stored offset {at} decompresses to the wrong length")]
    Decompress { at: u64 },
}

fn derive_cipher(key: &DataKey, salt: &[u8; 32]) -> Aes256Gcm {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.bytes());
    let mut okm = zeroize::Zeroizing::new([0u8; 32]);
    hk.expand(b"klio tier1 object v1", &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Aes256Gcm::new_from_slice(&okm[..]).expect("a 32-byte AES-256 key")
}

fn ad_prefix(id: &ObjectId, salt: &[u8; 32]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(64 + id.name.len());
    ad.extend_from_slice(b"klio-frame-v1");
    let c = id.cluster.as_str().as_bytes();
    ad.extend_from_slice(&(c.len() as u16).to_le_bytes());
    ad.extend_from_slice(c);
    ad.push(id.kind as u8);
    ad.extend_from_slice(&(id.name.len() as u16).to_le_bytes());
    ad.extend_from_slice(id.name.as_bytes());
    ad.extend_from_slice(salt);
    ad
}

/// Encrypts frames for one object.
///
/// Nonces: each sealer (a new object, or an object resumed after a restart) draws a
/// random 8-byte prefix once and counts frames in the last 4 bytes, so sealing a frame
/// makes no system call. Nonces never repeat within a sealer; two sealers of the same
/// object (the only ones sharing its key) would need the same random prefix and
/// overlapping counts. Readers take the nonce from the frame header and do not care
/// how it was made.
pub struct FrameSealer {
    cipher: Aes256Gcm,
    ad_prefix: Vec<u8>,
    next_offset: u64,
    compress: bool,
    nonce_prefix: [u8; 8],
    nonce_count: u32,
}

/// A fresh random nonce prefix.
fn nonce_prefix() -> [u8; 8] {
    let mut p = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut p);
    p
}

impl FrameSealer {
    /// Starts a new object; returns the sealer and the header to write first.
    pub fn create(key: &DataKey, id: &ObjectId) -> (FrameSealer, [u8; HEADER_LEN]) {
        // The salt and the nonce prefix in one draw.
        let mut random = [0u8; 40];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&random[..32]);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&random[32..]);
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_le_bytes());
        header[10] = id.kind as u8;
        header[12..44].copy_from_slice(&salt);
        let crc = crc32c::crc32c(&header[..44]);
        header[44..48].copy_from_slice(&crc.to_le_bytes());
        let sealer = FrameSealer {
            cipher: derive_cipher(key, &salt),
            ad_prefix: ad_prefix(id, &salt),
            next_offset: 0,
            compress: true,
            nonce_prefix: prefix,
            nonce_count: 0,
        };
        (sealer, header)
    }

    /// Continues an existing object whose valid frames end at `next_offset`.
    pub fn resume(
        key: &DataKey,
        id: &ObjectId,
        header: &[u8],
        next_offset: u64,
    ) -> Result<FrameSealer, FrameError> {
        let salt = parse_header(header, id.kind)?;
        Ok(FrameSealer {
            cipher: derive_cipher(key, &salt),
            ad_prefix: ad_prefix(id, &salt),
            next_offset,
            compress: true,
            nonce_prefix: nonce_prefix(),
            nonce_count: 0,
        })
    }

    /// Turns compression of the following frames off or on (a WAL segment's small
    /// frames are stored plain on the synchronous commit path and compressed later).
    pub fn set_compression(&mut self, on: bool) {
        self.compress = on;
    }

    /// Plaintext bytes sealed so far.
    pub fn plain_len(&self) -> u64 {
        self.next_offset
    }

    /// Appends one or more frames carrying `plain` to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        for piece in plain.chunks(MAX_FRAME_PLAIN) {
            self.seal_one(piece, 0, out);
        }
    }

    /// Appends the empty final frame that marks the object complete.
    pub fn seal_final(&mut self, out: &mut Vec<u8>) {
        self.seal_one(&[], FLAG_FINAL, out);
    }

    fn seal_one(&mut self, plain: &[u8], mut flags: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + FRAME_HEADER_LEN, 0);
        let body_start = out.len();
        let mut compressed = false;
        if self.compress && plain.len() >= 64 {
            // One compression context per thread: creating one per frame costs more than
            // compressing a small frame.
            thread_local! {
                static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            let bound = zstd::zstd_safe::compress_bound(plain.len());
            out.reserve(bound);
            let start_len = out.len();
            let written = CCTX.with(|c| {
                let mut c = c.borrow_mut();
                if c.is_none() {
                    *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
                }
                let comp = c.as_mut()?;
                out.resize(start_len + bound, 0);
                comp.compress_to_buffer(plain, &mut out[start_len..]).ok()
            });
            match written {
                Some(n) if n < plain.len() => {
                    out.truncate(start_len + n);
                    compressed = true;
                }
                _ => out.truncate(start_len),
            }
        }
        if !compressed {
            out.extend_from_slice(plain);
        } else {
            flags |= FLAG_ZSTD;
        }
        let body_len = out.len() - body_start;
        let stored_len = (body_len + TAG_LEN) as u32;
        let nonce = self.next_nonce();
        {
            let h = &mut out[start..body_start];
            h[0..4].copy_from_slice(&stored_len.to_le_bytes());
            h[4..12].copy_from_slice(&self.next_offset.to_le_bytes());
            h[12..16].copy_from_slice(&(plain.len() as u32).to_le_bytes());
            h[16] = flags;
            h[17..29].copy_from_slice(&nonce);
        }
        let mut ad = Vec::with_capacity(self.ad_prefix.len() + FRAME_HEADER_LEN);
        ad.extend_from_slice(&self.ad_prefix);
        ad.extend_from_slice(&out[start..body_start]);
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &ad, (&mut out[body_start..]).into())
            .expect("AES-GCM encryption cannot fail for frames under 64 GiB");
        out.extend_from_slice(&tag);
        self.next_offset += plain.len() as u64;
    }

    /// The next frame's nonce: the prefix and the frame count (a new random prefix after
    /// 2^32 frames).
    fn next_nonce(&mut self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.nonce_prefix);
        nonce[8..].copy_from_slice(&self.nonce_count.to_be_bytes());
        match self.nonce_count.checked_add(1) {
            Some(n) => self.nonce_count = n,
            None => {
                self.nonce_prefix = nonce_prefix();
                self.nonce_count = 0;
            }
        }
        nonce
    }
}

fn parse_header(header: &[u8], kind: ObjectKind) -> Result<[u8; 32], FrameError> {
    if header.len() < HEADER_LEN || &header[0..8] != MAGIC {
        return Err(FrameError::BadHeader);
    }
    let crc = u32::from_le_bytes(header[44..48].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[..44]) != crc {
        return Err(FrameError::BadHeader);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    if ObjectKind::from_u8(header[10]) != Some(kind) {
        return Err(FrameError::WrongKind {
            expected: kind,
            found: header[10],
        });
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&header[12..44]);
    Ok(salt)
}

/// One decrypted frame.
#[derive(Debug)]
pub struct OpenedFrame {
    pub plain_offset: u64,
    pub data: Vec<u8>,
    pub is_final: bool,
    /// The frame's plaintext was stored compressed.
    pub compressed: bool,
    /// Stored bytes this frame occupied (header + ciphertext + tag).
    pub stored_len: usize,
}

/// Decrypts the frames of one object.
pub struct FrameOpener {
    cipher: Aes256Gcm,
    ad_prefix: Vec<u8>,
}

impl FrameOpener {
    pub fn new(key: &DataKey, id: &ObjectId, header: &[u8]) -> Result<FrameOpener, FrameError> {
        let salt = parse_header(header, id.kind)?;
        Ok(FrameOpener {
            cipher: derive_cipher(key, &salt),
            ad_prefix: ad_prefix(id, &salt),
        })
    }

    /// Opens the frame at the start of `buf` (found at stored offset `at`),
    /// which must carry plaintext offset `expected_offset`.
    /// Returns `Ok(None)` when `buf` holds no complete frame (end of data, or zeros).
    pub fn open(
        &self,
        buf: &[u8],
        at: u64,
        expected_offset: u64,
    ) -> Result<Option<OpenedFrame>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let h = &buf[..FRAME_HEADER_LEN];
        let stored_len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        if stored_len == 0 {
            return Ok(None);
        }
        let malformed = |why: &str| FrameError::Malformed {
            at,
            why: why.to_string(),
        };
        let plain_offset = u64::from_le_bytes(h[4..12].try_into().expect("8 bytes"));
        let plain_len = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
        let flags = h[16];
        if stored_len < TAG_LEN
            || plain_len > MAX_FRAME_PLAIN
            || stored_len > MAX_FRAME_PLAIN + TAG_LEN + 1024
            || flags & !(FLAG_ZSTD | FLAG_FINAL) != 0
        {
            return Err(malformed("impossible lengths or flags"));
        }
        if buf.len() < FRAME_HEADER_LEN + stored_len {
            return Ok(None);
        }
        if plain_offset != expected_offset {
            return Err(malformed(&format!(
                "carries offset {plain_offset}, expected {expected_offset} (reordered or spliced)"
            )));
        }
        let mut ad = Vec::with_capacity(self.ad_prefix.len() + FRAME_HEADER_LEN);
        ad.extend_from_slice(&self.ad_prefix);
        ad.extend_from_slice(h);
        let body = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + stored_len];
        let (ct, tag) = body.split_at(stored_len - TAG_LEN);
        let mut data = ct.to_vec();
        self.cipher
            .decrypt_inout_detached(
                &Nonce::try_from(&h[17..29]).expect("12 bytes"),
                &ad,
                (&mut data[..]).into(),
                &Tag::try_from(tag).expect("16 bytes"),
            )
            .map_err(|_| FrameError::Authentication { at })?;
        if flags & FLAG_ZSTD != 0 {
            data = zstd::bulk::decompress(&data, plain_len)
                .map_err(|_| FrameError::Decompress { at })?;
        }
        if data.len() != plain_len {
            return Err(FrameError::Decompress { at });
        }
        Ok(Some(OpenedFrame {
            plain_offset,
            data,
            is_final: flags & FLAG_FINAL != 0,
            compressed: flags & FLAG_ZSTD != 0,
            stored_len: FRAME_HEADER_LEN + stored_len,
        }))
    }
}

/// The result of reading a whole stored object.
#[derive(Debug)]
pub struct DecodedObject {
    pub data: Vec<u8>,
    /// The final frame was present: the object is complete.
    pub finished: bool,
    /// Stored bytes (from the start of the file) covered by valid frames.
    pub valid_stored_len: u64,
    /// Plaintext bytes whose frames were stored without compression.
    pub plain_uncompressed: u64,
}

/// Decodes a whole object. With `tolerate_torn_tail`, decoding stops at the first
/// frame that is incomplete or fails authentication and reports the valid prefix
/// (crash recovery of a file being appended to); otherwise any such frame is an error.
pub fn decode_object(
    key: &DataKey,
    id: &ObjectId,
    bytes: &[u8],
    tolerate_torn_tail: bool,
) -> Result<DecodedObject, FrameError> {
    let opener = FrameOpener::new(key, id, bytes)?;
    let mut pos = HEADER_LEN;
    let mut data = Vec::new();
    let mut finished = false;
    let mut plain_uncompressed = 0u64;
    loop {
        let res = opener.open(&bytes[pos..], pos as u64, data.len() as u64);
        match res {
            Ok(Some(f)) => {
                pos += f.stored_len;
                if !f.compressed {
                    plain_uncompressed += f.data.len() as u64;
                }
                data.extend_from_slice(&f.data);
                if f.is_final {
                    finished = true;
                    break;
                }
            }
            Ok(None) => {
                let rest = &bytes[pos..];
                if !tolerate_torn_tail && !rest.iter().all(|&b| b == 0) {
                    return Err(FrameError::Malformed {
                        at: pos as u64,
                        why: "trailing bytes that are not a complete frame".into(),
                    });
                }
                break;
            }
            Err(e) if tolerate_torn_tail => {
                let _ = e;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if finished && bytes[pos..].iter().any(|&b| b != 0) {
        return Err(FrameError::Malformed {
            at: pos as u64,
            why: "data after the final frame".into(),
        });
    }
    Ok(DecodedObject {
        data,
        finished,
        valid_stored_len: pos as u64,
        plain_uncompressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(cluster: &str, name: &str) -> ObjectId {
        ObjectId {
            cluster: cluster.parse().unwrap(),
            kind: ObjectKind::WalSegment,
            name: name.into(),
        }
    }

    fn build(key: &DataKey, id: &ObjectId, pieces: &[&[u8]], finish: bool) -> Vec<u8> {
        let (mut s, header) = FrameSealer::create(key, id);
        let mut out = header.to_vec();
        for p in pieces {
            s.seal(p, &mut out);
        }
        if finish {
            s.seal_final(&mut out);
        }
        out
    }

    /// A data key wrapped, a key check value and a WAL object sealed by Klio built with
    /// aes-gcm 0.10.3 (master key 32 × 0x4b): what earlier builds wrote to Tier 1 and
    /// Tier 2 must stay readable across library upgrades.
    #[test]
    fn objects_written_by_an_earlier_build_still_open() {
        use crate::keys::MasterKey;
        let master = MasterKey::from_bytes(&[0x4b; 32]).unwrap();
        let cluster: crate::cluster::ClusterName = "main".parse().unwrap();
        master
            .verify_check_value(&hex::decode("0165804ef37cdd6e8aa38cced105fd6838f04d497a14a5e05f3cd5ce9e5b68551e4f6b77a0d02eee363a478115b5f80d31c5").unwrap())
            .unwrap();
        let key = master
            .unwrap(
                &hex::decode("019d0b1ffeff8c543d654b484d2e1d3ee8bc268a0553c25827178c361a09cf23d7a2dda141dd74be254e1aa4a3ae42b5f2e0353e34a702cc45f1e450f7").unwrap(),
                &cluster,
            )
            .unwrap();
        let object = hex::decode(
            "4b4c494f4f424a31010001005ebb32be09066998cc6fcb2b47261a8a293db0d46f0f7185ce718ae9\
390e287469b1fb42340000000000000000000000240000000020c6753819fea45000000000000000\
54c012857552e6b6e67d73d948aa14f2e66713c10cea64e64de13b0bf5920d252491e10761241a40\
4c8da11360e10f833323c7421f0100002400000000000000b80b00000120c6753819fea450000000\
01000000899eb239565b38b97a2bd83cc4794264130b72451d06e0b8d9e16d3d692bebdbfe355871\
7126b6fa59921f674f4ff5bf714fb41c7830d8106030708ab9eddd6df4e6dae59c37a82bb42d8d7d\
1ca936aa03936f0a4e9dc7de5e5ec3ee8f81c349adceb204e5d8f54b0e56d91e849dbed06bbccc49\
5f9d530ee1ebb07a033a6429375a6e6fa6e3ce1aec0653734cd9f6cb44edb6de97a392738f2169cf\
a9595213a8065ef4f90816bf3a09ddb2b0079273700f4071a334ae6d16e443ce50042e840548f2c3\
488c4310b3f20ae2184474e67a420bb89a37d3100497904b95476ca54fa60934e15a771b64c7098e\
d56ab0b521af7ca1ebc321ce26efbe5895b62b4461bcedc4a78fb8898e60913c31e88937f232923e\
ee4d2af76e844100ddbc6f10000000dc0b000000000000000000000220c6753819fea45000000002\
00000061322ddbd840553fe692a05937b11f33",
        )
        .unwrap();
        let i = ObjectId {
            cluster,
            kind: ObjectKind::WalSegment,
            name: "000000010000000000000002".into(),
        };
        let d = decode_object(&key, &i, &object, false).unwrap();
        assert!(d.finished);
        let mut want = b"klio frame written by aes-gcm 0.10.3".to_vec();
        want.extend((0..3000u32).map(|i| (i % 251) as u8));
        assert_eq!(d.data, want);
        // One flipped bit in the first frame's ciphertext (it starts after the 48-byte
        // object header and the 32-byte frame header) is refused, not decoded.
        let mut bad = object.clone();
        bad[HEADER_LEN + FRAME_HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            decode_object(&key, &i, &bad, false),
            Err(FrameError::Authentication { .. })
        ));
    }

    #[test]
    fn round_trip_and_final() {
        let k = DataKey::generate();
        let i = id("a", "000000010000000000000001");
        let big = vec![7u8; 100_000];
        let bytes = build(&k, &i, &[b"hello", &big, b""], true);
        let d = decode_object(&k, &i, &bytes, false).unwrap();
        assert!(d.finished);
        assert_eq!(d.data.len(), 5 + 100_000);
        assert!(bytes.len() < 20_000, "compressible data was compressed");
    }

    /// The nonce of every frame in `bytes` (an object with its header).
    fn nonces(bytes: &[u8]) -> Vec<[u8; 12]> {
        let mut out = Vec::new();
        let mut at = HEADER_LEN;
        while at + FRAME_HEADER_LEN <= bytes.len() {
            let h = &bytes[at..at + FRAME_HEADER_LEN];
            let stored = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
            out.push(h[17..29].try_into().unwrap());
            at += FRAME_HEADER_LEN + stored;
        }
        out
    }

    #[test]
    fn nonces_never_repeat_within_an_object_or_across_its_resumptions() {
        let k = DataKey::generate();
        let i = id("a", "000000010000000000000001");
        let pieces: Vec<Vec<u8>> = (0..50u8).map(|n| vec![n; 100]).collect();
        let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let mut bytes = build(&k, &i, &refs, false);
        let first = nonces(&bytes);
        assert_eq!(first.len(), 50);
        // Resumed (as after a restart): same key, new nonces.
        let next = decode_object(&k, &i, &bytes, false).unwrap().data.len() as u64;
        let mut resumed = FrameSealer::resume(&k, &i, &bytes[..HEADER_LEN], next).unwrap();
        for p in &refs {
            resumed.seal(p, &mut bytes);
        }
        resumed.seal_final(&mut bytes);
        let all = nonces(&bytes);
        assert_eq!(all.len(), 101);
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(
            distinct.len(),
            all.len(),
            "a nonce repeated under one object key"
        );
        let d = decode_object(&k, &i, &bytes, false).unwrap();
        assert!(d.finished);
        assert_eq!(d.data.len(), 100 * 100);
    }

    #[test]
    fn the_nonce_counter_wraps_onto_a_new_prefix() {
        let (mut s, _) = FrameSealer::create(&DataKey::generate(), &id("a", "X"));
        s.nonce_count = u32::MAX;
        let last = s.next_nonce();
        let wrapped = s.next_nonce();
        assert_eq!(&last[8..], &u32::MAX.to_be_bytes());
        assert_eq!(&wrapped[8..], &0u32.to_be_bytes());
        assert_ne!(last[..8], wrapped[..8], "a new prefix after 2^32 frames");
    }

    #[test]
    fn wrong_cluster_name_or_key_fails() {
        let k = DataKey::generate();
        let bytes = build(&k, &id("a", "X"), &[b"secret data"], true);
        assert!(matches!(
            decode_object(&k, &id("b", "X"), &bytes, false),
            Err(FrameError::Authentication { .. })
        ));
        assert!(matches!(
            decode_object(&k, &id("a", "Y"), &bytes, false),
            Err(FrameError::Authentication { .. })
        ));
        assert!(decode_object(&DataKey::generate(), &id("a", "X"), &bytes, false).is_err());
    }

    #[test]
    fn truncation_and_reordering_detected() {
        let k = DataKey::generate();
        let i = id("a", "X");
        let (mut s, header) = FrameSealer::create(&k, &i);
        let mut f1 = Vec::new();
        s.seal(b"first frame data", &mut f1);
        let mut f2 = Vec::new();
        s.seal(b"second frame data", &mut f2);
        let mut fin = Vec::new();
        s.seal_final(&mut fin);
        let whole = [header.to_vec(), f1.clone(), f2.clone(), fin.clone()].concat();
        assert!(decode_object(&k, &i, &whole, false).unwrap().finished);
        // Dropped final frame: decodes, but not finished.
        let no_final = [header.to_vec(), f1.clone(), f2.clone()].concat();
        assert!(!decode_object(&k, &i, &no_final, false).unwrap().finished);
        // Swapped frames: offset check.
        let swapped = [header.to_vec(), f2.clone(), f1.clone(), fin.clone()].concat();
        assert!(decode_object(&k, &i, &swapped, false).is_err());
        // Torn tail: error strictly, valid prefix when tolerated.
        let torn = &whole[..HEADER_LEN + f1.len() + 10];
        assert!(decode_object(&k, &i, torn, false).is_err());
        let d = decode_object(&k, &i, torn, true).unwrap();
        assert_eq!(d.data, b"first frame data");
        assert_eq!(d.valid_stored_len as usize, HEADER_LEN + f1.len());
    }

    proptest! {
        #[test]
        fn any_single_byte_flip_is_detected(
            data in proptest::collection::vec(any::<u8>(), 1..2000),
            pos_frac in 0.0f64..1.0, bit in 0u8..8,
        ) {
            let k = DataKey::generate();
            let i = id("a", "X");
            let mut bytes = build(&k, &i, &[&data], true);
            let pos = ((bytes.len() as f64) * pos_frac) as usize % bytes.len();
            bytes[pos] ^= 1 << bit;
            match decode_object(&k, &i, &bytes, false) {
                Err(_) => {}
                Ok(d) => prop_assert!(!d.finished || d.data != data, "flip at {} undetected", pos),
            }
        }

        #[test]
        fn round_trip(pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..6)) {
            let k = DataKey::generate();
            let i = id("c1", "N");
            let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
            let bytes = build(&k, &i, &refs, true);
            let d = decode_object(&k, &i, &bytes, false).unwrap();
            prop_assert!(d.finished);
            prop_assert_eq!(d.data, pieces.concat());
        }
    }
}

/// Fuzzing of stored objects as a reader meets them (a damaged or hostile Tier 1 or Tier 2
/// file): bounded proptest runs; `PROPTEST_CASES` raises the count (docs/FUZZING.md).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn id() -> ObjectId {
        ObjectId {
            cluster: "fuzz".parse().expect("valid cluster name"),
            kind: ObjectKind::WalSegment,
            name: "000000010000000000000001".into(),
        }
    }

    /// A frame header with the given fields, followed by `body` as its ciphertext and tag.
    fn frame(offset: u64, plain_len: u32, flags: u8, stored_len: u32, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; FRAME_HEADER_LEN];
        f[0..4].copy_from_slice(&stored_len.to_le_bytes());
        f[4..12].copy_from_slice(&offset.to_le_bytes());
        f[12..16].copy_from_slice(&plain_len.to_le_bytes());
        f[16] = flags;
        f.extend_from_slice(body);
        f
    }

    fn frame_shaped() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(0u64), any::<u64>()],
            prop_oneof![0u32..128, any::<u32>()],
            any::<u8>(),
            vec(any::<u8>(), 0..80),
            prop_oneof![Just(None), Just(Some(0u32)), any::<u32>().prop_map(Some)],
        )
            .prop_map(|(offset, plain_len, flags, body, stored)| {
                let stored_len = stored.unwrap_or(body.len() as u32);
                frame(offset, plain_len, flags, stored_len, &body)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Fuzz: any bytes as a whole object never panic the decoder.
        #[test]
        fn arbitrary_objects_never_panic(bytes in vec(any::<u8>(), 0..200)) {
            let key = DataKey::generate();
            let _ = decode_object(&key, &id(), &bytes, false);
            let _ = decode_object(&key, &id(), &bytes, true);
        }

        /// Fuzz: a valid header followed by frame-shaped garbage (lengths and flags from
        /// any value to plausible ones) never panics, and never decodes as complete.
        #[test]
        fn forged_frames_never_panic_or_finish(
            frames in vec(frame_shaped(), 0..4),
            tail in vec(any::<u8>(), 0..40),
        ) {
            let key = DataKey::generate();
            let (_, header) = FrameSealer::create(&key, &id());
            let bytes = [header.to_vec(), frames.concat(), tail].concat();
            for tolerate in [false, true] {
                if let Ok(d) = decode_object(&key, &id(), &bytes, tolerate) {
                    prop_assert!(!d.finished, "a forged frame was accepted");
                    prop_assert!(d.data.is_empty());
                }
            }
            let opener = FrameOpener::new(&key, &id(), &header).expect("own header");
            let _ = opener.open(&bytes[HEADER_LEN..], HEADER_LEN as u64, 0);
        }

        /// Several edits and a truncation of a sealed object: it either fails, or reads
        /// back a prefix of what was sealed (a complete object only if untouched).
        #[test]
        fn edited_objects_never_decode_to_other_data(
            pieces in vec(vec(any::<u8>(), 0..300), 1..4),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let key = DataKey::generate();
            let (mut sealer, header) = FrameSealer::create(&key, &id());
            let mut bytes = header.to_vec();
            for p in &pieces {
                sealer.seal(p, &mut bytes);
            }
            sealer.seal_final(&mut bytes);
            let original = pieces.concat();
            let pristine = bytes.clone();
            for (at, value) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            for tolerate in [false, true] {
                if let Ok(d) = decode_object(&key, &id(), &bytes, tolerate) {
                    prop_assert!(original.starts_with(&d.data), "decoded data that was never sealed");
                    if d.finished {
                        prop_assert_eq!(&d.data, &original);
                        prop_assert_eq!(&bytes[..d.valid_stored_len as usize],
                                        &pristine[..d.valid_stored_len as usize]);
                    }
                }
            }
        }
    }
}

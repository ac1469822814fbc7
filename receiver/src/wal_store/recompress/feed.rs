//! Compressing a synchronous standby's segment while it is being written.
//!
//! Rewriting a sealed segment from its file means reading 16 MiB back and decrypting
//! and authenticating every plain frame before compressing it: about half of the
//! rewrite's CPU on this project's hosts (AES-GCM runs at ~2 GB/s here, zstd level 1 at
//! ~1.2 GB/s on WAL), all of it in one burst after each seal, beside the commits in
//! flight (`docs/BENCHMARKS.md`, sessions 23 and 24). Instead, the segment writer hands
//! the plaintext of each segment it creates to the recompressor as it writes it, a
//! [`FRAME`] at a time ([`Feed`]); the idle recompressor thread compresses and encrypts
//! each piece as it comes ([`Prepared`]), and once the writer has sealed the segment
//! and the catalog marks it, `recompress_segment` writes the prepared form without
//! reading the file at all.
//!
//! What is prepared is only ever used if it is the whole segment: its pieces arrived
//! in order from offset 0 and its length and CRC-32C match what the writer sealed
//! (which are the catalog's). Otherwise, and whenever the feed is cut short (a frame
//! compressed inline while catching up, a segment resumed after a restart, a write
//! error, more than [`QUEUE_CAP`] waiting for a busy recompressor), the segment is
//! rewritten from its file as before. Memory: the piece being filled, at most
//! [`QUEUE_CAP`] queued, and the compressed form of at most [`KEEP`] segments.
//!
//! Nothing here touches the disk; the crash-safety of a rewrite is `recompress_segment`'s.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use klio_core::frame::FrameSealer;
use klio_core::{SegNo, TimelineId};

use super::{Shared, FRAME};
use crate::wal_store::WalStore;

pub(super) type Key = (TimelineId, SegNo);

/// Plaintext queued for the idle thread at most; beyond it the segment is left to be
/// rewritten from its file (a recompressor that cannot keep up must not hold WAL in
/// memory without bound).
pub(super) const QUEUE_CAP: usize = 8 * FRAME;
/// Segments prepared (or being prepared) at most, oldest forgotten first.
const KEEP: usize = 2;
/// Segments larger than this are not fed (their compressed form would be held in
/// memory whole); PostgreSQL's default is 16 MiB.
pub(super) const MAX_SEGMENT: u64 = 64 << 20;
/// Emptied piece buffers kept for reuse, so that filling one does not fault in fresh
/// pages on the commit path.
const POOL: usize = 2;

/// What the writer sends the idle thread, in order.
pub(super) enum Item {
    /// Plaintext of the segment from offset `at`.
    Piece { key: Key, at: u64, data: Vec<u8> },
    /// The writer sealed the segment: `plain_len` bytes with CRC-32C `crc`.
    Sealed { key: Key, plain_len: u64, crc: u32 },
    /// The feed was cut short: forget the segment.
    Forget { key: Key },
}

impl Item {
    fn bytes(&self) -> usize {
        match self {
            Item::Piece { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// The queue between the writer and the idle thread (inside the recompressor's lock).
#[derive(Default)]
pub(super) struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    pool: Vec<Vec<u8>>,
}

impl Queue {
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Plaintext queued.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Shared {
    /// Queues `item` for the idle thread and wakes it; refused (false) once the
    /// recompressor is stopping, or for a piece that would take the queue past
    /// [`QUEUE_CAP`].
    pub(super) fn enqueue(&self, item: Item) -> bool {
        {
            let mut st = self.state();
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let bytes = item.bytes();
            if bytes > 0 && st.queue.bytes + bytes > QUEUE_CAP {
                return false;
            }
            st.queue.bytes += bytes;
            st.queue.items.push_back(item);
        }
        self.idle_cond.notify_one();
        true
    }

    fn take_buffer(&self) -> Vec<u8> {
        self.state()
            .queue
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME))
    }

    /// The next item for the idle thread, if any.
    pub(super) fn next_item(&self) -> Option<Item> {
        let mut st = self.state();
        let item = st.queue.items.pop_front()?;
        st.queue.bytes -= item.bytes();
        Some(item)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut st = self.state();
        if st.queue.pool.len() < POOL && buf.capacity() == FRAME {
            st.queue.pool.push(buf);
        }
    }
}

/// The writer's end of the feed for one segment it created: every byte it writes to
/// the segment, in order, until it seals it or cuts the feed short (dropping it).
pub struct Feed {
    shared: Arc<Shared>,
    key: Key,
    buf: Vec<u8>,
    /// Plaintext bytes sent so far.
    sent: u64,
    /// Still feeding: not sealed, not cut short.
    live: bool,
}

impl Feed {
    pub(super) fn new(shared: Arc<Shared>, key: Key) -> Feed {
        Feed {
            shared,
            key,
            buf: Vec::new(),
            sent: 0,
            live: true,
        }
    }

    /// Appends plaintext written to the segment (a copy; on the commit path, so a
    /// piece is sent, one lock and one wake-up, only once per [`FRAME`]).
    pub fn push(&mut self, mut plain: &[u8]) {
        while self.live && !plain.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = self.shared.take_buffer();
            }
            let take = (FRAME - self.buf.len()).min(plain.len());
            self.buf.extend_from_slice(&plain[..take]);
            plain = &plain[take..];
            if self.buf.len() == FRAME {
                self.send_piece();
            }
        }
    }

    fn send_piece(&mut self) {
        let data = std::mem::take(&mut self.buf);
        let at = self.sent;
        self.sent += data.len() as u64;
        if !self.shared.enqueue(Item::Piece {
            key: self.key,
            at,
            data,
        }) {
            self.cut();
        }
    }

    /// The segment is sealed with `plain_len` bytes of CRC-32C `crc` and marked for
    /// recompression: what is left goes to the idle thread, which finishes the
    /// prepared form.
    pub fn sealed(mut self, plain_len: u64, crc: u32) {
        if self.live && !self.buf.is_empty() {
            self.send_piece();
        }
        if self.live {
            self.live = false;
            let key = self.key;
            if !self.shared.enqueue(Item::Sealed {
                key,
                plain_len,
                crc,
            }) {
                self.shared.enqueue(Item::Forget { key });
            }
        }
    }

    /// Stops feeding this segment; the idle thread forgets what it prepared.
    fn cut(&mut self) {
        if std::mem::replace(&mut self.live, false) {
            self.shared.enqueue(Item::Forget { key: self.key });
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.cut();
        if self.buf.capacity() > 0 {
            self.shared.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// A segment's compressed form as the idle thread builds it from the feed.
pub(super) struct Prepared {
    key: Key,
    sealer: FrameSealer,
    /// Header and frames so far (and the final frame once complete).
    pub(super) out: Vec<u8>,
    plain_len: u64,
    crc: u32,
    complete: bool,
}

impl Prepared {
    /// Whether this is the whole segment `plain_len` bytes long with CRC-32C `crc`.
    pub(super) fn matches(&self, plain_len: u64, crc: Option<u32>) -> bool {
        self.complete && self.plain_len == plain_len && crc == Some(self.crc)
    }
}

/// The idle thread's segments being prepared, oldest first.
#[derive(Default)]
pub(super) struct Preparing {
    list: Vec<Prepared>,
}

impl Preparing {
    /// Takes every queued item and applies it (compressing the pieces).
    pub(super) fn drain(&mut self, store: &WalStore, shared: &Shared) {
        while let Some(item) = shared.next_item() {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            self.apply(store, shared, item);
        }
    }

    fn apply(&mut self, store: &WalStore, shared: &Shared, item: Item) {
        match item {
            Item::Piece { key, at, data } => {
                if at == 0 {
                    self.list.retain(|p| p.key != key);
                    let name = store.segment_names(key.0, key.1).0;
                    let (sealer, header) =
                        FrameSealer::create(&store.inner.key, &store.object_id(&name));
                    self.list.push(Prepared {
                        key,
                        sealer,
                        out: header.to_vec(),
                        plain_len: 0,
                        crc: 0,
                        complete: false,
                    });
                    if self.list.len() > KEEP {
                        self.list.remove(0);
                    }
                }
                match self.list.iter().position(|p| p.key == key) {
                    Some(i) if !self.list[i].complete && self.list[i].plain_len == at => {
                        let p = &mut self.list[i];
                        p.sealer.seal(&data, &mut p.out);
                        p.crc = crc32c::crc32c_append(p.crc, &data);
                        p.plain_len += data.len() as u64;
                    }
                    // Out of order (never expected): not the whole segment.
                    Some(i) => {
                        self.list.remove(i);
                    }
                    None => {}
                }
                shared.give_back(data);
            }
            Item::Sealed {
                key,
                plain_len,
                crc,
            } => {
                if let Some(i) = self.list.iter().position(|p| p.key == key) {
                    let p = &mut self.list[i];
                    if p.complete || p.plain_len != plain_len || p.crc != crc {
                        self.list.remove(i);
                    } else {
                        p.sealer.seal_final(&mut p.out);
                        p.complete = true;
                    }
                }
            }
            Item::Forget { key } => self.list.retain(|p| p.key != key),
        }
    }

    /// Takes what was prepared for `key`, complete or not.
    pub(super) fn take(&mut self, key: Key) -> Option<Prepared> {
        let i = self.list.iter().position(|p| p.key == key)?;
        Some(self.list.remove(i))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }
}

//! [`Tier2::put_multipart`]: large objects in parts, a bounded number in flight, each part
//! retried on its own; on any failure the upload is aborted before the error is returned,
//! so no parts are left behind. Writes only the one object (and its pending parts).
//!
//! Create-only as far as the backends allow: S3 (and GCS, Azure) complete a multipart
//! upload by replacing whatever is at the key, and `object_store`'s multipart API sends no
//! `If-None-Match`. So the key is checked (while the parts go up, and answered before the
//! upload is completed: a taken key aborts it, and the existing object is compared as by
//! [`Tier2::put_create`] and never replaced), and the object is checked after completion
//! (its size). The body is hashed (SHA-256) on a blocking thread as its parts go out. A second writer creating the same key between the check and the
//! completion is not detected; Klio's keys have one writer each. The local filesystem
//! store stages the parts in a temporary file and renames it into place on completion.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::error::Tier2Error;
use crate::store::{PutOutcome, Tier2};

/// What [`Tier2::put_multipart_hashed`] stored: the outcome, and the size and SHA-256 of
/// the body it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    pub outcome: PutOutcome,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// How [`Tier2::upload_parts`] ended without an error.
enum Sent {
    /// Completed: this many bytes.
    Uploaded(u64),
    /// The key was taken; the upload was aborted.
    Exists,
}

impl Tier2 {
    /// Uploads `body` (any chunking) to `key` in parts of the configured size, never
    /// replacing an existing object (see the module documentation). A failing `body`
    /// (its `io::Error`) aborts the upload like a failing part does.
    pub async fn put_multipart<S>(&self, key: &Path, body: S) -> Result<PutOutcome, Tier2Error>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        Ok(self.put_multipart_hashed(key, body).await?.outcome)
    }

    /// [`Tier2::put_multipart`], also returning the size and SHA-256 of what `body` gave
    /// (hashed on a blocking thread while the parts go up).
    pub async fn put_multipart_hashed<S>(&self, key: &Path, body: S) -> Result<Hashed, Tier2Error>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        self.check_writable("put", key)?;
        let mut body = Rechunk::new(body, self.part_size);
        let sent = match &self.multipart {
            Some(mp) => self.upload_parts(mp.as_ref(), key, &mut body).await?,
            None => match self.head(key).await {
                Ok(_) => Sent::Exists,
                Err(Tier2Error::NotFound { .. }) => {
                    Sent::Uploaded(self.upload_local(key, &mut body).await?)
                }
                Err(e) => return Err(e),
            },
        };
        match sent {
            Sent::Exists => {
                // Already there: compare without writing anything (more).
                while next_part(key, &mut body).await?.is_some() {}
                let (size, sha256) = body.finish(key).await?;
                let outcome = self.compare_existing(key, size, sha256).await?;
                Ok(Hashed {
                    outcome,
                    size,
                    sha256,
                })
            }
            Sent::Uploaded(size) => {
                let meta = self.head(key).await?;
                if meta.size != size {
                    return Err(Tier2Error::Verify {
                        key: key.to_string(),
                        detail: format!("{} bytes stored, {size} bytes sent", meta.size),
                    });
                }
                let (read, sha256) = body.finish(key).await?;
                debug_assert_eq!(read, size);
                Ok(Hashed {
                    outcome: PutOutcome::Created,
                    size,
                    sha256,
                })
            }
        }
    }

    /// S3, GCS, Azure: create, parts (at most `parts_in_flight` at once), complete; abort
    /// on any failure. Whether the key is taken is asked while the parts go up (its answer
    /// is not on the critical path), and nothing is completed before it said "absent":
    /// a taken key aborts the upload and answers [`Sent::Exists`].
    async fn upload_parts(
        &self,
        mp: &dyn MultipartStore,
        key: &Path,
        body: &mut Rechunk<impl Stream<Item = io::Result<Bytes>> + Unpin>,
    ) -> Result<Sent, Tier2Error> {
        let full = self.full(key);
        let taken = async {
            match self.head(key).await {
                Ok(_) => Ok(true),
                Err(Tier2Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let upload = async {
            let id = self
                .retry
                .run("create multipart", key.as_ref(), || {
                    mp.create_multipart(&full)
                })
                .await?;
            let sent = self.send_parts(mp, key, &full, &id, body).await;
            Ok::<_, Tier2Error>((id, sent))
        };
        let (taken, upload) = tokio::join!(taken, upload);
        let (id, sent) = upload?;
        let (parts, size) = match (taken, sent) {
            (Ok(false), Ok(sent)) => sent,
            (Ok(true), _) => {
                self.abort(mp, key, &full, &id).await;
                return Ok(Sent::Exists);
            }
            (Err(e), _) | (_, Err(e)) => {
                self.abort(mp, key, &full, &id).await;
                return Err(e);
            }
        };
        let done = self
            .retry
            .run("complete multipart", key.as_ref(), || {
                mp.complete_multipart(&full, &id, parts.clone())
            })
            .await;
        match done {
            Ok(_) => Ok(Sent::Uploaded(size)),
            Err(e) => {
                self.abort(mp, key, &full, &id).await;
                Err(e)
            }
        }
    }

    async fn send_parts(
        &self,
        mp: &dyn MultipartStore,
        key: &Path,
        full: &Path,
        id: &MultipartId,
        body: &mut Rechunk<impl Stream<Item = io::Result<Bytes>> + Unpin>,
    ) -> Result<(Vec<PartId>, u64), Tier2Error> {
        let mut parts: Vec<Option<PartId>> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut size = 0u64;
        let mut exhausted = false;
        loop {
            while !exhausted && in_flight.len() < self.parts_in_flight {
                match next_part(key, body).await? {
                    None => exhausted = true,
                    Some(data) => {
                        size += data.len() as u64;
                        let idx = parts.len();
                        parts.push(None);
                        let payload = PutPayload::from_bytes(data);
                        in_flight.push(async move {
                            let part = self
                                .retry
                                .run("upload part", key.as_ref(), || {
                                    mp.put_part(full, id, idx, payload.clone())
                                })
                                .await;
                            (idx, part)
                        });
                    }
                }
            }
            match in_flight.next().await {
                None => break,
                Some((idx, part)) => parts[idx] = Some(part?),
            }
        }
        if parts.is_empty() {
            // An empty object: S3 needs at least one (possibly empty) part.
            let part = self
                .retry
                .run("upload part", key.as_ref(), || {
                    mp.put_part(full, id, 0, PutPayload::default())
                })
                .await?;
            return Ok((vec![part], 0));
        }
        Ok((parts.into_iter().flatten().collect(), size))
    }

    async fn abort(&self, mp: &dyn MultipartStore, key: &Path, full: &Path, id: &MultipartId) {
        let aborted = self
            .retry
            .run("abort multipart", key.as_ref(), || {
                mp.abort_multipart(full, id)
            })
            .await;
        if let Err(e) = aborted {
            // The upload's parts stay billed until a lifecycle rule removes them.
            tracing::warn!(key = %key, upload_id = %id, error = %e, "tier2: aborting a failed multipart upload failed");
        }
    }

    /// `file://`: the store's staged upload (a temporary file renamed into place).
    async fn upload_local(
        &self,
        key: &Path,
        body: &mut Rechunk<impl Stream<Item = io::Result<Bytes>> + Unpin>,
    ) -> Result<u64, Tier2Error> {
        let full = self.full(key);
        let store_err = |op, e| Tier2Error::store(op, key.as_ref(), e);
        let mut upload = self
            .store
            .put_multipart(&full)
            .await
            .map_err(|e| store_err("create multipart", e))?;
        let mut size = 0u64;
        let sent: Result<(), Tier2Error> = async {
            while let Some(data) = next_part(key, body).await? {
                size += data.len() as u64;
                upload
                    .put_part(PutPayload::from_bytes(data))
                    .await
                    .map_err(|e| store_err("upload part", e))?;
            }
            upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| store_err("complete multipart", e))
        }
        .await;
        if let Err(e) = sent {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key = %key, error = %abort, "tier2: aborting a failed upload failed");
            }
            return Err(e);
        }
        Ok(size)
    }
}

/// The next part of `body`; a read error names the object it was for.
async fn next_part(
    key: &Path,
    body: &mut Rechunk<impl Stream<Item = io::Result<Bytes>> + Unpin>,
) -> Result<Option<Bytes>, Tier2Error> {
    body.next_part().await.map_err(|source| Tier2Error::Source {
        key: key.to_string(),
        source,
    })
}

/// Turns a stream of arbitrary chunks into parts of exactly `part_size` bytes (the last
/// one shorter), and hashes what it hands out (SHA-256, on a blocking thread, so hashing
/// a part overlaps with sending it).
struct Rechunk<S> {
    inner: S,
    part_size: usize,
    buf: BytesMut,
    ended: bool,
    size: u64,
    hasher: Option<Hasher>,
}

/// A blocking task hashing the parts sent to it, in order.
struct Hasher {
    parts: std::sync::mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<[u8; 32]>,
}

impl Hasher {
    fn start() -> Hasher {
        let (parts, rx) = std::sync::mpsc::channel::<Bytes>();
        let done = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            for part in rx {
                h.update(&part);
            }
            h.finalize().into()
        });
        Hasher { parts, done }
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Rechunk<S> {
    fn new(inner: S, part_size: usize) -> Self {
        Rechunk {
            inner,
            part_size,
            buf: BytesMut::new(),
            ended: false,
            size: 0,
            hasher: None,
        }
    }

    async fn next_part(&mut self) -> io::Result<Option<Bytes>> {
        let part = self.fill().await?;
        if let Some(p) = &part {
            self.size += p.len() as u64;
            let hasher = self.hasher.get_or_insert_with(Hasher::start);
            // The receiver lives until `finish`: a send cannot fail before.
            let _ = hasher.parts.send(p.clone());
        }
        Ok(part)
    }

    async fn fill(&mut self) -> io::Result<Option<Bytes>> {
        while !self.ended && self.buf.len() < self.part_size {
            match self.inner.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    if self.buf.is_empty() && chunk.len() == self.part_size {
                        // Already a whole part: handed on without a copy.
                        return Ok(Some(chunk));
                    }
                    if self.buf.capacity() == 0 {
                        self.buf.reserve(self.part_size.max(chunk.len()));
                    }
                    self.buf.extend_from_slice(&chunk)
                }
                None => self.ended = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let n = self.part_size.min(self.buf.len());
        Ok(Some(self.buf.split_to(n).freeze()))
    }

    /// The size and SHA-256 of every part handed out so far.
    async fn finish(&mut self, key: &Path) -> Result<(u64, [u8; 32]), Tier2Error> {
        let sha = match self.hasher.take() {
            None => Sha256::digest([]).into(),
            Some(Hasher { parts, done }) => {
                drop(parts);
                match done.await {
                    Ok(sha) => sha,
                    // Hashing cannot fail; a panic there is a bug worth surfacing.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => {
                        return Err(Tier2Error::Source {
                            key: key.to_string(),
                            source: io::Error::other(format!("hashing the upload stopped: {e}")),
                        })
                    }
                }
            }
        };
        Ok((self.size, sha))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rechunk_gives_full_parts_and_a_short_last_one() {
        let chunks: Vec<io::Result<Bytes>> =
            (0..10u8).map(|i| Ok(Bytes::from(vec![i; 3]))).collect();
        let mut r = Rechunk::new(futures_util::stream::iter(chunks), 7);
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(p) = r.next_part().await.unwrap() {
            sizes.push(p.len());
            all.extend_from_slice(&p);
        }
        assert_eq!(sizes, vec![7, 7, 7, 7, 2]);
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(all, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rechunk_hashes_what_it_hands_out_and_passes_whole_parts_on_uncopied() {
        let whole = Bytes::from(vec![7u8; 8]);
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(whole.clone()),
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defghij")),
        ];
        let mut r = Rechunk::new(futures_util::stream::iter(chunks), 8);
        let first = r.next_part().await.unwrap().unwrap();
        assert_eq!(first.as_ptr(), whole.as_ptr(), "a whole part is not copied");
        let mut all = first.to_vec();
        while let Some(p) = r.next_part().await.unwrap() {
            all.extend_from_slice(&p);
        }
        assert_eq!(all.len(), 18);
        let (size, sha) = r.finish(&Path::from("k")).await.unwrap();
        assert_eq!(size, 18);
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&all)));
    }

    #[tokio::test]
    async fn rechunk_of_nothing_hashes_the_empty_body() {
        let mut r = Rechunk::new(
            futures_util::stream::iter(Vec::<io::Result<Bytes>>::new()),
            4,
        );
        assert!(r.next_part().await.unwrap().is_none());
        let (size, sha) = r.finish(&Path::from("k")).await.unwrap();
        assert_eq!((size, sha), (0, Sha256::digest([]).into()));
    }

    #[tokio::test]
    async fn rechunk_passes_a_source_error_on() {
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("disk gone")),
        ];
        let mut r = Rechunk::new(futures_util::stream::iter(chunks), 2);
        assert_eq!(r.next_part().await.unwrap().unwrap().as_ref(), b"ab");
        // The next part needs more bytes than are buffered, so the error surfaces.
        assert!(r.next_part().await.is_err());
    }
}

//! [`Tier2::put_multipart`]: large objects in parts, a bounded number in flight, each part
//! retried on its own; on any failure the upload is aborted before the error is returned,
//! so no parts are left behind. Writes only the one object (and its pending parts).
//!
//! Create-only as far as the backends allow: S3 (and GCS, Azure) complete a multipart
//! upload by replacing whatever is at the key, and `object_store`'s multipart API sends no
//! `If-None-Match`. So the key is checked first (an existing object is compared as by
//! [`Tier2::put_create`] and never replaced), and the object is checked after completion
//! (its size). A second writer creating the same key between the check and the
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

impl Tier2 {
    /// Uploads `body` (any chunking) to `key` in parts of the configured size, never
    /// replacing an existing object (see the module documentation). A failing `body`
    /// (its `io::Error`) aborts the upload like a failing part does.
    pub async fn put_multipart<S>(&self, key: &Path, body: S) -> Result<PutOutcome, Tier2Error>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        self.check_writable("put", key)?;
        let mut body = Rechunk::new(body, self.part_size);
        match self.head(key).await {
            Ok(_) => {
                // Already there: compare without writing anything.
                let (size, sha) = drain(key, &mut body).await?;
                return self.compare_existing(key, size, sha).await;
            }
            Err(Tier2Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let size = match &self.multipart {
            Some(mp) => self.upload_parts(mp.as_ref(), key, &mut body).await?,
            None => self.upload_local(key, &mut body).await?,
        };
        let meta = self.head(key).await?;
        if meta.size != size {
            return Err(Tier2Error::Verify {
                key: key.to_string(),
                detail: format!("{} bytes stored, {size} bytes sent", meta.size),
            });
        }
        Ok(PutOutcome::Created)
    }

    /// S3, GCS, Azure: create, parts (at most `parts_in_flight` at once), complete; abort
    /// on any failure. Returns the bytes uploaded.
    async fn upload_parts(
        &self,
        mp: &dyn MultipartStore,
        key: &Path,
        body: &mut Rechunk<impl Stream<Item = io::Result<Bytes>> + Unpin>,
    ) -> Result<u64, Tier2Error> {
        let full = self.full(key);
        let id = self
            .retry
            .run("create multipart", key.as_ref(), || {
                mp.create_multipart(&full)
            })
            .await?;
        match self.send_parts(mp, key, &full, &id, body).await {
            Ok((parts, size)) => {
                let done = self
                    .retry
                    .run("complete multipart", key.as_ref(), || {
                        mp.complete_multipart(&full, &id, parts.clone())
                    })
                    .await;
                match done {
                    Ok(_) => Ok(size),
                    Err(e) => {
                        self.abort(mp, key, &full, &id).await;
                        Err(e)
                    }
                }
            }
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

/// Reads the rest of `body`, returning its size and SHA-256.
async fn drain(
    key: &Path,
    body: &mut Rechunk<impl Stream<Item = io::Result<Bytes>> + Unpin>,
) -> Result<(u64, [u8; 32]), Tier2Error> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(part) = next_part(key, body).await? {
        size += part.len() as u64;
        hasher.update(&part);
    }
    Ok((size, hasher.finalize().into()))
}

/// Turns a stream of arbitrary chunks into parts of exactly `part_size` bytes (the last
/// one shorter).
struct Rechunk<S> {
    inner: S,
    part_size: usize,
    buf: BytesMut,
    ended: bool,
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Rechunk<S> {
    fn new(inner: S, part_size: usize) -> Self {
        Rechunk {
            inner,
            part_size,
            buf: BytesMut::new(),
            ended: false,
        }
    }

    async fn next_part(&mut self) -> io::Result<Option<Bytes>> {
        while !self.ended && self.buf.len() < self.part_size {
            match self.inner.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => self.ended = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let n = self.part_size.min(self.buf.len());
        Ok(Some(self.buf.split_to(n).freeze()))
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

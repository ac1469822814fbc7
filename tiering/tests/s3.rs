//! Tier 2 against a real S3-compatible server (moto, started per test by the harness):
//! create-only PUTs, multipart uploads and their abort, the prefix, listing from an offset.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use klio_harness::s3::{S3Server, DEFAULT_BUCKET};
use klio_tiering::{PutOutcome, Tier2Error};
use object_store::path::Path;
use sha2::{Digest, Sha256};

use common::{check_create_only, check_reads_and_delete, s3_tier2};

#[tokio::test]
async fn create_only_put_never_overwrites() {
    let server = S3Server::start().unwrap();
    let t = s3_tier2(&server, DEFAULT_BUCKET, "");
    check_create_only(&t).await;
}

#[tokio::test]
async fn reads_ranges_heads_and_deletes() {
    let server = S3Server::start().unwrap();
    let t = s3_tier2(&server, DEFAULT_BUCKET, "p");
    check_reads_and_delete(&t).await;
}

#[tokio::test]
async fn the_prefix_is_applied_to_every_key() {
    let server = S3Server::start().unwrap();
    let t = s3_tier2(&server, "prefixed", "site-a/klio");
    let key = Path::from("wal/000000010000000000000002");
    t.put_create(&key, Bytes::from_static(b"segment"))
        .await
        .unwrap();
    assert_eq!(
        server.object_keys("prefixed").unwrap(),
        vec!["site-a/klio/wal/000000010000000000000002".to_string()]
    );
    // Another prefix on the same bucket sees nothing, and may use the same key.
    let neighbour = common::open_at(&server.endpoint(), "prefixed", "site-b");
    assert!(matches!(
        neighbour.get(&key).await.unwrap_err(),
        Tier2Error::NotFound { .. }
    ));
    let listed: Vec<_> = neighbour.list(None, None).try_collect().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(
        neighbour
            .put_create(&key, Bytes::from_static(b"other"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    // Keys come back relative to the prefix.
    let listed: Vec<_> = t.list(None, None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key);
    assert_eq!(t.get(&key).await.unwrap().as_ref(), b"segment");
}

#[tokio::test]
async fn list_starts_after_the_offset_in_key_order() {
    let server = S3Server::start().unwrap();
    let t = s3_tier2(&server, DEFAULT_BUCKET, "klio");
    for i in [5u32, 1, 3, 2, 4] {
        let key = Path::from(format!("wal/{i:024X}"));
        t.put_create(&key, Bytes::from(vec![i as u8; 10]))
            .await
            .unwrap();
    }
    // Outside the listed directory: never returned.
    t.put_create(&Path::from("walrus"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let names = |v: Vec<object_store::ObjectMeta>| {
        v.into_iter()
            .map(|m| m.location.to_string())
            .collect::<Vec<_>>()
    };
    let wal = Path::from("wal");
    let all = names(t.list(Some(&wal), None).try_collect().await.unwrap());
    assert_eq!(all.len(), 5);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    let offset = Path::from(format!("wal/{:024X}", 2));
    let after = names(
        t.list(Some(&wal), Some(&offset))
            .try_collect()
            .await
            .unwrap(),
    );
    assert_eq!(after, all[2..].to_vec());
}

/// `len` bytes of a deterministic pattern, in chunks of `chunk` bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x9E37_79B9;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chunks(data: &[u8], chunk: usize) -> Vec<io::Result<Bytes>> {
    data.chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

#[tokio::test]
async fn multipart_round_trip_of_40_mib() {
    let server = S3Server::start().unwrap();
    let t = s3_tier2(&server, DEFAULT_BUCKET, "big").with_multipart(8 << 20, 3);
    let data = pattern(40 << 20);
    let key = Path::from("packs/p1.pack");
    let out = t
        .put_multipart_hashed(&key, stream::iter(chunks(&data, 1 << 20)))
        .await
        .unwrap();
    assert_eq!(out.outcome, PutOutcome::Created);
    assert_eq!(out.size, data.len() as u64);
    assert_eq!(out.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    let back = t.get(&key).await.unwrap();
    assert_eq!(back.len(), data.len());
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    // A real multipart object: S3's ETag for 5 parts ends in "-5".
    let etag = t.head(&key).await.unwrap().e_tag.unwrap();
    assert!(etag.trim_matches('"').ends_with("-5"), "{etag}");
    assert!(server.multipart_uploads(DEFAULT_BUCKET).unwrap().is_empty());

    // The same again: already there, not replaced (parts sent while the key was checked
    // are aborted); different content: refused.
    let again = t
        .put_multipart(&key, stream::iter(chunks(&data, 3 << 20)))
        .await
        .unwrap();
    assert_eq!(again, PutOutcome::AlreadyThere);
    let mut changed = data.clone();
    changed[20 << 20] ^= 1;
    let err = t
        .put_multipart(&key, stream::iter(chunks(&changed, 1 << 20)))
        .await
        .unwrap_err();
    assert!(matches!(err, Tier2Error::Conflict { .. }), "{err}");
    assert_eq!(t.head(&key).await.unwrap().e_tag.unwrap(), etag);
    assert_eq!(
        server.multipart_uploads(DEFAULT_BUCKET).unwrap(),
        Vec::<String>::new(),
        "the uploads over a taken key were not aborted"
    );
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted() {
    let server = Arc::new(S3Server::start().unwrap());
    let t = s3_tier2(&server, DEFAULT_BUCKET, "").with_multipart(5 << 20, 2);
    let key = Path::from("packs/broken.pack");
    let data = pattern(12 << 20);
    let was_in_progress = Arc::new(AtomicBool::new(false));
    // 12 MiB of data, then the source fails (a disk error while reading the pack).
    let good = stream::iter(chunks(&data, 1 << 20));
    let (srv, seen) = (Arc::clone(&server), Arc::clone(&was_in_progress));
    let failing = stream::once(async move {
        // By now the first parts have been sent: the upload is in progress.
        let uploads = srv.multipart_uploads(DEFAULT_BUCKET).unwrap();
        seen.store(
            uploads == vec!["packs/broken.pack".to_string()],
            Ordering::SeqCst,
        );
        Err(io::Error::other("injected read failure"))
    });
    let err = t
        .put_multipart(&key, good.chain(failing).boxed())
        .await
        .unwrap_err();
    assert!(matches!(err, Tier2Error::Source { .. }), "{err}");
    assert!(err.to_string().contains("injected read failure"), "{err}");
    assert!(
        was_in_progress.load(Ordering::SeqCst),
        "the upload was never in progress, so the abort was not tested"
    );
    assert_eq!(
        server.multipart_uploads(DEFAULT_BUCKET).unwrap(),
        Vec::<String>::new(),
        "parts were left behind"
    );
    assert!(matches!(
        t.head(&key).await.unwrap_err(),
        Tier2Error::NotFound { .. }
    ));
}

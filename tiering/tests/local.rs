//! Tier 2 on the local filesystem store (`file://`): the same create-only rules as S3.

mod common;

use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};
use klio_tiering::{PutOutcome, Tier2Error};
use object_store::path::Path;

use common::{check_create_only, check_reads_and_delete, local_tier2};

#[tokio::test]
async fn create_only_put_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    check_create_only(&local_tier2(dir.path())).await;
}

#[tokio::test]
async fn reads_ranges_heads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    check_reads_and_delete(&local_tier2(dir.path())).await;
}

#[tokio::test]
async fn objects_are_files_below_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let t = local_tier2(dir.path());
    let key = Path::from("wal/000000010000000000000001");
    t.put_create(&key, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("wal/000000010000000000000001")).unwrap(),
        b"abc"
    );
    let listed: Vec<_> = t.list(None, None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key);
}

#[tokio::test]
async fn multipart_on_the_filesystem_is_create_only_too() {
    let dir = tempfile::tempdir().unwrap();
    let t = local_tier2(dir.path()).with_multipart(1 << 20, 2);
    let key = Path::from("packs/p.pack");
    let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
    let parts = || {
        stream::iter(
            data.chunks(100_000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        t.put_multipart(&key, parts()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(t.get(&key).await.unwrap().as_ref(), data.as_slice());
    assert_eq!(
        t.put_multipart(&key, parts()).await.unwrap(),
        PutOutcome::AlreadyThere
    );
    let err = t
        .put_multipart(&key, stream::iter(vec![Ok(Bytes::from_static(b"other"))]))
        .await
        .unwrap_err();
    assert!(matches!(err, Tier2Error::Conflict { .. }), "{err}");
    assert_eq!(t.get(&key).await.unwrap().as_ref(), data.as_slice());
}

#[tokio::test]
async fn a_read_only_tier2_refuses_every_write_and_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let writer = local_tier2(dir.path());
    let key = Path::from("wal/000000010000000000000001");
    writer
        .put_create(&key, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let reader = local_tier2(dir.path()).read_only();
    let other = Path::from("wal/000000010000000000000002");
    for err in [
        reader
            .put_create(&other, Bytes::from_static(b"x"))
            .await
            .unwrap_err(),
        reader
            .put_multipart(&other, stream::iter(vec![Ok(Bytes::from_static(b"x"))]))
            .await
            .unwrap_err(),
        reader.delete(&key).await.unwrap_err(),
    ] {
        assert!(matches!(err, Tier2Error::ReadOnly { .. }), "{err}");
        assert!(err.is_permanent() && err.to_string().contains("read-only mode"));
    }
    assert_eq!(reader.get(&key).await.unwrap().as_ref(), b"abc");
    let listed: Vec<_> = reader.list(None, None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1, "a refused write left something behind");
}

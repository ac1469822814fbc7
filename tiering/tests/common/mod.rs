//! Helpers shared by the Tier 2 tests: opening a [`Tier2`] on a moto bucket or a
//! directory, and the create-only checks every backend must pass.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path as FsPath;
use std::time::Duration;

use bytes::Bytes;
use klio_harness::s3::S3Server;
use klio_harness::write_file;
use klio_tiering::{PutOutcome, RetryPolicy, Tier2, Tier2Config, Tier2Error};
use object_store::path::Path;

/// A retry policy that gives up quickly, so failing tests fail fast.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// `[tier2]` for `s3://bucket/prefix` on `endpoint`, with static keys in 0600 files
/// under `keys_dir`.
pub fn s3_config(endpoint: &str, bucket: &str, prefix: &str, keys_dir: &FsPath) -> Tier2Config {
    let id = keys_dir.join("access_key_id");
    let secret = keys_dir.join("secret_access_key");
    write_file(&id, "klio-test-key-id\n", 0o600).unwrap();
    write_file(&secret, "klio-test-secret\n", 0o600).unwrap();
    Tier2Config {
        url: format!("s3://{bucket}/{prefix}"),
        endpoint: Some(endpoint.to_string()),
        access_key_id_file: Some(id),
        secret_access_key_file: Some(secret),
        allow_http: true,
        ..Tier2Config::default()
    }
}

/// A [`Tier2`] on `bucket` (created if it is not the default one) of `server`.
pub fn s3_tier2(server: &S3Server, bucket: &str, prefix: &str) -> Tier2 {
    if bucket != klio_harness::s3::DEFAULT_BUCKET {
        server.create_bucket(bucket).unwrap();
    }
    open_at(&server.endpoint(), bucket, prefix)
}

/// A [`Tier2`] on an existing bucket reached through `endpoint`.
pub fn open_at(endpoint: &str, bucket: &str, prefix: &str) -> Tier2 {
    let keys = tempfile::tempdir().unwrap();
    let settings = s3_config(endpoint, bucket, prefix, keys.path())
        .validate()
        .unwrap();
    Tier2::open(&settings).unwrap().with_retry(fast_retry(4))
}

/// A [`Tier2`] on the directory `root` (`file://`).
pub fn local_tier2(root: &FsPath) -> Tier2 {
    let cfg = Tier2Config {
        url: format!("file://{}", root.display()),
        ..Tier2Config::default()
    };
    Tier2::open(&cfg.validate().unwrap())
        .unwrap()
        .with_retry(fast_retry(4))
}

/// Create-only semantics, for every backend: the first put creates, an identical second
/// put finds it there, a different one is a permanent conflict and changes nothing.
pub async fn check_create_only(t: &Tier2) {
    let key = Path::from("wal/000000010000000000000001");
    let body = Bytes::from(vec![7u8; 100_000]);
    assert_eq!(
        t.put_create(&key, body.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        t.put_create(&key, body.clone()).await.unwrap(),
        PutOutcome::AlreadyThere
    );

    // Same size, different bytes: the hash tells them apart.
    let mut other = body.to_vec();
    other[50_000] = 8;
    let err = t.put_create(&key, Bytes::from(other)).await.unwrap_err();
    assert!(matches!(err, Tier2Error::Conflict { .. }), "{err}");
    assert!(err.is_permanent());
    assert!(err.to_string().contains(key.as_ref()), "{err}");
    // Different size.
    let err = t
        .put_create(&key, Bytes::from_static(b"short"))
        .await
        .unwrap_err();
    assert!(matches!(err, Tier2Error::Conflict { .. }), "{err}");
    assert_eq!(t.get(&key).await.unwrap(), body, "the object was changed");
}

/// Reads, ranges, heads and deletes on any backend.
pub async fn check_reads_and_delete(t: &Tier2) {
    let key = Path::from("backups/b1/manifest.klio");
    let body = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<_>>());
    t.put_create(&key, body.clone()).await.unwrap();
    assert_eq!(t.get(&key).await.unwrap(), body);
    assert_eq!(
        t.get_range(&key, 100..356).await.unwrap(),
        body.slice(100..356)
    );
    let meta = t.head(&key).await.unwrap();
    assert_eq!(meta.size, 10_000);
    assert_eq!(meta.location, key);
    t.delete(&key).await.unwrap();
    let err = t.get(&key).await.unwrap_err();
    assert!(matches!(err, Tier2Error::NotFound { .. }), "{err}");
    assert!(err.is_permanent());
    // Deleting what is gone succeeds.
    t.delete(&key).await.unwrap();
}

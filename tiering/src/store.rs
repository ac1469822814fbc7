//! [`Tier2`]: one bucket (or directory) and prefix, reached through `object_store`, with
//! create-only uploads, bounded retries and the prefix applied to every key. Writes only
//! objects under its prefix, and only through [`Tier2::put_create`],
//! [`Tier2::put_multipart`] and [`Tier2::delete`]; it never overwrites an object it can
//! check first.
//!
//! Keys are `object_store::path::Path`s relative to the prefix; naming objects is the
//! caller's business (the relay's).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, Certificate, ClientOptions, GetOptions, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};

use crate::config::{Tier2Location, Tier2Settings};
use crate::error::Tier2Error;
use crate::retry::RetryPolicy;

/// The object metadata key holding the hex SHA-256 of an object's body (S3:
/// `x-amz-meta-klio-sha256`), set by [`Tier2::put_create`] where the backend keeps
/// metadata. Lets a retried create-only PUT that meets an existing object compare
/// contents without reading the object back.
pub const SHA256_METADATA: &str = "klio-sha256";

/// What a create-only upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created by this call.
    Created,
    /// An identical object (same size, same SHA-256) was already there, typically from an
    /// earlier attempt whose answer was lost. Nothing was written.
    AlreadyThere,
}

/// Object storage as Klio's Tier 2 (see the module documentation).
pub struct Tier2 {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The same store's low-level multipart API (S3, GCS, Azure); `None` for `file://`.
    pub(crate) multipart: Option<Arc<dyn MultipartStore>>,
    /// Prepended to every key; empty for none.
    prefix: Path,
    /// Whether the backend stores user metadata ([`SHA256_METADATA`]).
    metadata: bool,
    pub(crate) retry: RetryPolicy,
    /// Set for a read-only server: every write is refused before any request is made.
    read_only: bool,
    pub(crate) part_size: usize,
    pub(crate) parts_in_flight: usize,
    description: String,
}

impl fmt::Debug for Tier2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier2")
            .field("location", &self.description)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Tier2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// Default multipart part size: 8 MiB (S3's minimum is 5 MiB for all but the last part).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Default number of parts uploaded at once by one multipart upload.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
/// Objects from this size on should go through [`Tier2::put_multipart`].
pub const MULTIPART_THRESHOLD: usize = 16 << 20;

impl Tier2 {
    /// Opens Tier 2 as configured. Builds clients only: no request is sent.
    pub fn open(settings: &Tier2Settings) -> Result<Tier2, Tier2Error> {
        let build_err = |source| Tier2Error::Build {
            url: describe(&settings.location),
            source,
        };
        // object_store's own retry loop is off: `RetryPolicy` is the one place that retries.
        let no_retry = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let mut client = ClientOptions::new().with_allow_http(settings.allow_http);
        if let Some(pem) = &settings.ca_pem {
            for cert in Certificate::from_pem_bundle(pem).map_err(build_err)? {
                client = client.with_root_certificate(cert);
            }
        }
        let Backend {
            store,
            multipart,
            prefix,
            metadata,
        } = match &settings.location {
            Tier2Location::S3 { bucket, prefix } => {
                let mut b = match &settings.keys {
                    // Static keys: nothing from the environment may mix in.
                    Some(keys) => AmazonS3Builder::new()
                        .with_access_key_id(keys.access_key_id.as_str())
                        .with_secret_access_key(keys.secret_access_key.as_str()),
                    // The usual AWS chain: environment, web identity, ECS, instance metadata.
                    None => AmazonS3Builder::from_env(),
                }
                .with_bucket_name(bucket)
                .with_region(&settings.region)
                .with_retry(no_retry)
                .with_client_options(client);
                if let Some(endpoint) = &settings.endpoint {
                    b = b
                        .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                        .with_virtual_hosted_style_request(false);
                }
                let s3 = Arc::new(b.build().map_err(build_err)?);
                Backend::cloud(s3, prefix)
            }
            Tier2Location::Gcs { bucket, prefix } => {
                let gcs = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(no_retry)
                    .with_client_options(client)
                    .build()
                    .map_err(build_err)?;
                let gcs = Arc::new(gcs);
                Backend::cloud(gcs, prefix)
            }
            Tier2Location::Azure { container, prefix } => {
                let az = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(no_retry)
                    .with_client_options(client)
                    .build()
                    .map_err(build_err)?;
                let az = Arc::new(az);
                Backend::cloud(az, prefix)
            }
            Tier2Location::File { root } => {
                let fs = LocalFileSystem::new_with_prefix(root)
                    .map_err(build_err)?
                    .with_fsync(true);
                Backend {
                    store: Arc::new(fs),
                    multipart: None,
                    prefix: "",
                    metadata: false,
                }
            }
        };
        Ok(Tier2 {
            store,
            multipart,
            prefix: Path::from(prefix),
            metadata,
            retry: RetryPolicy::default(),
            read_only: false,
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            description: describe(&settings.location),
        })
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Tier2 {
        self.retry = retry;
        self
    }

    /// Sets the multipart part size (at least 5 MiB for S3) and how many parts are in
    /// flight at once (at least 1).
    pub fn with_multipart(mut self, part_size: usize, parts_in_flight: usize) -> Tier2 {
        self.part_size = part_size.max(1);
        self.parts_in_flight = parts_in_flight.max(1);
        self
    }

    /// The size of a multipart upload's parts.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Refuses every write from now on ([`Tier2Error::ReadOnly`]), so that a read-only
    /// server cannot write to the bucket whatever its callers do.
    pub fn read_only(mut self) -> Tier2 {
        self.read_only = true;
        self
    }

    /// Whether writes are refused ([`Tier2::read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `Err(ReadOnly)` for a write to `key` on a read-only Tier 2.
    pub(crate) fn check_writable(&self, op: &'static str, key: &Path) -> Result<(), Tier2Error> {
        if self.read_only {
            return Err(Tier2Error::ReadOnly {
                op,
                key: key.to_string(),
            });
        }
        Ok(())
    }

    /// The full key in the bucket (prefix applied).
    pub(crate) fn full(&self, key: &Path) -> Path {
        if self.prefix.as_ref().is_empty() {
            return key.clone();
        }
        Path::from_iter(self.prefix.parts().chain(key.parts()))
    }

    /// Creates `key` with `body`, never replacing an object. If the key exists (an earlier
    /// attempt landed, or another writer), the existing object is compared: the same size
    /// and SHA-256 give [`PutOutcome::AlreadyThere`], anything else a permanent
    /// [`Tier2Error::Conflict`] and the object stays as it was.
    pub async fn put_create(&self, key: &Path, body: Bytes) -> Result<PutOutcome, Tier2Error> {
        let sha: [u8; 32] = Sha256::digest(&body).into();
        self.put_create_hashed(key, body, sha).await
    }

    /// [`Tier2::put_create`] for a caller that has already computed the body's SHA-256
    /// (`sha`), so the bytes are hashed once.
    pub async fn put_create_hashed(
        &self,
        key: &Path,
        body: Bytes,
        sha: [u8; 32],
    ) -> Result<PutOutcome, Tier2Error> {
        self.check_writable("put", key)?;
        let full = self.full(key);
        let mut attributes = Attributes::new();
        if self.metadata {
            attributes.insert(
                Attribute::Metadata(SHA256_METADATA.into()),
                AttributeValue::from(hex::encode(sha)),
            );
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(body.clone());
        let res = self
            .retry
            .run("put", key.as_ref(), || {
                self.store.put_opts(&full, payload.clone(), opts.clone())
            })
            .await;
        match res {
            Ok(_) => Ok(PutOutcome::Created),
            Err(Tier2Error::Store {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => self.compare_existing(key, body.len() as u64, sha).await,
            Err(e) => Err(e),
        }
    }

    /// Compares the object at `key` with a body of `size` bytes and SHA-256 `sha`.
    pub(crate) async fn compare_existing(
        &self,
        key: &Path,
        size: u64,
        sha: [u8; 32],
    ) -> Result<PutOutcome, Tier2Error> {
        let full = self.full(key);
        let conflict = |detail: String| Tier2Error::Conflict {
            key: key.to_string(),
            detail,
        };
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let existing = self
            .retry
            .run("head", key.as_ref(), || {
                self.store.get_opts(&full, head.clone())
            })
            .await?;
        if existing.meta.size != size {
            return Err(conflict(format!(
                "{} bytes there, {size} bytes to upload",
                existing.meta.size
            )));
        }
        let stored = existing
            .attributes
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
            .map(|v| v.as_ref().to_string());
        // Without a readable stored hash (a multipart object, another writer), read it.
        let there = match stored.and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok()) {
            Some(stored) => stored,
            None => self.sha256_of(key).await?,
        };
        if there == sha {
            Ok(PutOutcome::AlreadyThere)
        } else {
            Err(conflict("same size, different SHA-256".to_string()))
        }
    }

    /// The SHA-256 of the object at `key`, read in full (streamed).
    pub(crate) async fn sha256_of(&self, key: &Path) -> Result<[u8; 32], Tier2Error> {
        let full = self.full(key);
        self.retry
            .run("get", key.as_ref(), || async {
                let mut hasher = Sha256::new();
                let mut body = self.store.get(&full).await?.into_stream();
                while let Some(chunk) = body.next().await {
                    hasher.update(chunk?);
                }
                Ok(hasher.finalize().into())
            })
            .await
    }

    /// Writes `body` at `key`, replacing what is there: only for the one object Klio
    /// rewrites, a cluster's `cluster.json` after a master-key rotation.
    pub async fn replace(&self, key: &Path, body: Bytes) -> Result<(), Tier2Error> {
        self.check_writable("put", key)?;
        let full = self.full(key);
        let payload = PutPayload::from_bytes(body);
        self.retry
            .run("put", key.as_ref(), || {
                self.store.put(&full, payload.clone())
            })
            .await
            .map(|_| ())
    }

    /// The whole object at `key`.
    pub async fn get(&self, key: &Path) -> Result<Bytes, Tier2Error> {
        let full = self.full(key);
        self.retry
            .run("get", key.as_ref(), || async {
                self.store.get(&full).await?.bytes().await
            })
            .await
    }

    /// Bytes `range` of the object at `key`.
    pub async fn get_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes, Tier2Error> {
        let full = self.full(key);
        self.retry
            .run("get", key.as_ref(), || {
                self.store.get_range(&full, range.clone())
            })
            .await
    }

    /// The object's size, modification time and ETag; its `location` is the key as given.
    pub async fn head(&self, key: &Path) -> Result<ObjectMeta, Tier2Error> {
        let full = self.full(key);
        let mut meta = self
            .retry
            .run("head", key.as_ref(), || self.store.head(&full))
            .await?;
        meta.location = key.clone();
        Ok(meta)
    }

    /// Removes the object at `key`. Removing a missing object succeeds (as in S3).
    pub async fn delete(&self, key: &Path) -> Result<(), Tier2Error> {
        self.check_writable("delete", key)?;
        let full = self.full(key);
        match self
            .retry
            .run("delete", key.as_ref(), || self.store.delete(&full))
            .await
        {
            Ok(()) | Err(Tier2Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Streams the objects below `prefix` (a directory: `wal` lists `wal/…`, not `walrus`)
    /// in key order, starting after `offset` if given (S3: ListObjectsV2 `start-after`).
    /// Keys come back relative to Tier 2's prefix. A page that fails transiently is asked
    /// for again (from the last key seen) within the retry policy.
    pub fn list(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta, Tier2Error>> {
        let state = ListState {
            store: Arc::clone(&self.store),
            base: self.prefix.clone(),
            dir: prefix
                .map(|p| self.full(p))
                .or_else(|| (!self.prefix.as_ref().is_empty()).then(|| self.prefix.clone())),
            after: offset.map(|o| self.full(o)),
            inner: None,
            failures: 0,
            retry: self.retry,
            done: false,
        };
        futures_util::stream::unfold(state, ListState::next).boxed()
    }
}

/// What [`Tier2::open`] builds for one kind of location.
struct Backend<'a> {
    store: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
    prefix: &'a str,
    /// Whether the store keeps user metadata.
    metadata: bool,
}

impl<'a> Backend<'a> {
    /// S3, GCS, Azure: one client for objects and multipart uploads, metadata kept.
    fn cloud<S: ObjectStore + MultipartStore>(store: Arc<S>, prefix: &'a str) -> Self {
        Backend {
            store: store.clone(),
            multipart: Some(store),
            prefix,
            metadata: true,
        }
    }
}

struct ListState {
    store: Arc<dyn ObjectStore>,
    base: Path,
    dir: Option<Path>,
    /// The last full key returned (or the caller's offset): a restart continues after it.
    after: Option<Path>,
    inner: Option<BoxStream<'static, object_store::Result<ObjectMeta>>>,
    failures: u32,
    retry: RetryPolicy,
    done: bool,
}

impl ListState {
    async fn next(mut self) -> Option<(Result<ObjectMeta, Tier2Error>, ListState)> {
        loop {
            if self.done {
                return None;
            }
            let inner = self.inner.get_or_insert_with(|| match &self.after {
                Some(after) => self.store.list_with_offset(self.dir.as_ref(), after),
                None => self.store.list(self.dir.as_ref()),
            });
            match inner.next().await {
                None => return None,
                Some(Ok(mut meta)) => {
                    self.failures = 0;
                    self.after = Some(meta.location.clone());
                    if !self.base.as_ref().is_empty() {
                        let rel = meta.location.prefix_match(&self.base).map(Path::from_iter);
                        match rel {
                            Some(rel) => meta.location = rel,
                            None => continue,
                        }
                    }
                    return Some((Ok(meta), self));
                }
                Some(Err(e)) => {
                    self.inner = None;
                    self.failures += 1;
                    let transient = crate::error::classify(&e) == crate::error::Retry::Transient;
                    if transient && self.failures < self.retry.max_attempts.max(1) {
                        tokio::time::sleep(self.retry.delay(self.failures)).await;
                        continue;
                    }
                    self.done = true;
                    let key = self.dir.as_ref().map(|d| d.to_string()).unwrap_or_default();
                    return Some((Err(Tier2Error::store("list", &key, e)), self));
                }
            }
        }
    }
}

fn describe(location: &Tier2Location) -> String {
    match location {
        Tier2Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        Tier2Location::Gcs { bucket, prefix } => format!("gs://{bucket}/{prefix}"),
        Tier2Location::Azure { container, prefix } => format!("az://{container}/{prefix}"),
        Tier2Location::File { root } => format!("file://{}", root.display()),
    }
}

//! The Tier 2 relay of one cluster: copies what the catalog's relay queue names from
//! Tier 1 to Tier 2, byte for byte, and records each confirmed upload in the catalog.
//! Reads Tier 1 files; writes Tier 2 objects (create-only) and catalog records (queue
//! entries and [`Tier2Object`]s); deletes nothing.
//!
//! - **Queue.** Entries are written by the WAL store when it seals a segment or stores a
//!   history file, and by the chunk store when it commits a backup, in the same catalog
//!   write. [`Relay::backfill`] (run at start-up) queues whatever Tier 1 holds that
//!   Tier 2 is not known to hold and nothing queued names: objects stored before
//!   `[tier2]` was configured, or queued by an older Klio.
//! - **Uploads.** At most `concurrency` objects at once. Small objects go in one
//!   create-only PUT, large ones (packs) multipart; either way an object already under
//!   the key is compared by size and SHA-256, never replaced, so an upload repeated after a
//!   crash is confirmed, not duplicated.
//! - **Order.** The cluster's key object (`cluster.json`) goes first and alone: until it
//!   is in Tier 2 (or while it conflicts with another cluster's there), nothing else of
//!   the cluster is uploaded. A backup's Klio manifest (what makes the backup visible to
//!   a reader of the bucket) waits until no pack of it or of an older backup, no chunk
//!   index or PostgreSQL manifest of it, and no WAL segment up to the backup's end, is
//!   still queued.
//! - **Failures.** A transient failure (timeouts, 5xx, throttling) puts the entry back
//!   with a backoff (doubling, capped); a permanent one (a conflicting object, refused
//!   credentials, a Tier 1 file that is missing or changed) marks it dead: it stays
//!   visible in the backlog and no longer blocks the others until `klio tier2 retry`
//!   ([`klio_catalog::Catalog::relay_revive`]) queues it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use klio_catalog::{Catalog, CatalogError, RelayItem, RelayKind, SegmentState, Tier2Object};
use klio_core::clock::unix_now;
use klio_core::layout::{DataDir, PackName};
use klio_core::{BackupId, ClusterName, WalFileName, WalSegSize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::Tier2Error;
use crate::objects::{cluster_key, place, BadName, ClusterObject};
use crate::store::{Tier2, MULTIPART_THRESHOLD};

/// Most objects one pass takes on (the queue is read again after each pass).
const MAX_PER_PASS: usize = 256;

/// How the relay paces itself.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Objects uploaded at once.
    pub concurrency: usize,
    /// How often an idle relay looks at the queue again.
    pub idle_poll: Duration,
    /// The first backoff after a transient failure; it doubles with each failure.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            concurrency: 4,
            idle_poll: Duration::from_millis(500),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Counters since start-up (the backlog and what Tier 2 holds are in the catalog).
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub uploaded_objects: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Objects found already in Tier 2 with the same content (a repeated upload).
    pub already_there: AtomicU64,
    pub failures: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// Why one object could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Tier2(#[from] Tier2Error),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error(
        "Tier 1 file {path} cannot be read: {source}; it was queued for Tier 2 and must not \
         be removed before it is uploaded"
    )]
    Tier1 {
        path: String,
        source: std::io::Error,
    },
    #[error("Tier 1 file {path} is {actual} bytes, but {queued} bytes were queued: it changed after it was made final")]
    Changed {
        path: String,
        queued: u64,
        actual: u64,
    },
    #[error("the catalog task failed: {0}")]
    Join(String),
}

impl RelayError {
    /// Whether trying the same object again later cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            RelayError::Tier2(e) => e.is_permanent(),
            RelayError::Catalog(e) => e.is_permanent(),
            RelayError::Tier1 { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            RelayError::BadName(_) | RelayError::Changed { .. } => true,
            RelayError::Join(_) => false,
        }
    }
}

/// What one pass over the queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Objects taken on (uploaded, failed, or left queued because WAL intake needed the
    /// slots meanwhile).
    pub attempted: usize,
    pub uploaded: usize,
    pub failed: usize,
    /// Due entries held back by the ordering rule.
    pub waiting: usize,
    /// Seconds until the earliest entry in backoff is due, if any.
    pub next_due_in: Option<u64>,
}

/// One cluster's relay (see the module documentation).
pub struct Relay {
    tier2: Arc<Tier2>,
    catalog: Arc<Catalog>,
    data: DataDir,
    cluster: ClusterName,
    settings: RelaySettings,
    counters: Arc<RelayCounters>,
    /// True while something more urgent needs the machine (WAL intake catching up):
    /// no new pass starts meanwhile.
    yield_to: Option<YieldTo>,
}

/// See [`Relay::yield_to`].
pub type YieldTo = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long the relay waits before asking [`Relay::yield_to`] again.
const YIELD_POLL: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("cluster", &self.cluster)
            .field("tier2", &self.tier2.to_string())
            .finish()
    }
}

impl Relay {
    pub fn new(
        tier2: Arc<Tier2>,
        catalog: Arc<Catalog>,
        data: DataDir,
        cluster: ClusterName,
        settings: RelaySettings,
    ) -> Relay {
        Relay {
            tier2,
            catalog,
            data,
            cluster,
            settings,
            counters: Arc::default(),
            yield_to: None,
        }
    }

    /// Starts no pass while `busy` says true (the server passes "WAL intake is catching
    /// up": uploads then wait instead of taking CPU and disk from it; the backlog shows
    /// what waits).
    pub fn yield_to(mut self, busy: YieldTo) -> Relay {
        self.yield_to = Some(busy);
        self
    }

    /// Whether the relay should start no upload now (see [`Relay::yield_to`]).
    fn yielding(&self) -> bool {
        self.yield_to.as_ref().is_some_and(|busy| busy())
    }

    pub fn counters(&self) -> Arc<RelayCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs a catalog operation off the async threads (RocksDB's synced writes block).
    async fn catalog<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Catalog, &ClusterName) -> Result<T, CatalogError> + Send + 'static,
    ) -> Result<T, RelayError> {
        let (catalog, cluster) = (Arc::clone(&self.catalog), self.cluster.clone());
        tokio::task::spawn_blocking(move || f(&catalog, &cluster))
            .await
            .map_err(|e| RelayError::Join(e.to_string()))?
            .map_err(RelayError::from)
    }

    /// Queues every object Tier 1 holds (sealed segments, history files, complete
    /// backups' packs and manifests) that has never reached Tier 2 (held or pruned) and no entry
    /// names. Returns how many were queued.
    pub async fn backfill(&self) -> Result<usize, RelayError> {
        let data = self.data.clone();
        self.catalog(move |cat, cluster| backfill(cat, cluster, &data))
            .await
    }

    /// Runs until `stop` turns true: backfill, then passes over the queue, sleeping
    /// while nothing is due.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut delay = self.settings.initial_backoff;
        loop {
            match self.backfill().await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(cluster = %self.cluster, queued = n, "queued Tier 1 objects Tier 2 does not hold yet");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.cluster, error = %e, "tier2 relay: cannot scan Tier 1; retrying");
                    if sleep_or_stop(&mut stop, delay).await {
                        return;
                    }
                    delay = (delay * 2).min(self.settings.max_backoff);
                }
            }
        }
        let mut yielding = false;
        loop {
            if *stop.borrow() {
                return;
            }
            if self.yielding() {
                if !yielding {
                    yielding = true;
                    tracing::info!(cluster = %self.cluster, "tier2 relay: WAL intake is catching up; uploads wait");
                }
                if sleep_or_stop(&mut stop, YIELD_POLL).await {
                    return;
                }
                continue;
            }
            if yielding {
                yielding = false;
                tracing::info!(cluster = %self.cluster, "tier2 relay: WAL intake caught up; uploads resume");
            }
            let wait = match self.pass().await {
                Ok(r) if r.attempted > 0 => continue,
                Ok(r) => r
                    .next_due_in
                    .map_or(self.settings.idle_poll, |s| {
                        Duration::from_secs(s).min(self.settings.idle_poll)
                    })
                    .max(Duration::from_millis(50)),
                Err(e) => {
                    tracing::warn!(cluster = %self.cluster, error = %e, "tier2 relay: cannot read the queue");
                    self.settings.initial_backoff
                }
            };
            if sleep_or_stop(&mut stop, wait).await {
                return;
            }
        }
    }

    /// One pass: uploads the entries due now (at most `concurrency` at once, in queue
    /// order, manifests held back by the ordering rule) and records each outcome.
    pub async fn pass(&self) -> Result<PassReport, RelayError> {
        // A cluster first contacted since start-up: its key object goes first.
        self.catalog(|cat, c| queue_cluster_object(cat, c).map(|_| ()))
            .await?;
        let queue = self.catalog(|cat, c| cat.relay_items(c)).await?;
        // Until the cluster's key object is in Tier 2, nothing else goes: it is what
        // shows that this bucket prefix belongs to this cluster and no other.
        let cluster_first = queue.iter().any(|i| i.kind == RelayKind::Cluster);
        let seg_size = self
            .catalog(|cat, c| Ok(cat.cluster(c)?.map(|r| r.seg_size)))
            .await?;
        let now = unix_now();
        let mut report = PassReport::default();
        let mut due = Vec::new();
        for item in &queue {
            if item.dead {
                continue;
            }
            if cluster_first && item.kind != RelayKind::Cluster {
                report.waiting += 1;
                continue;
            }
            if item.not_before_unix > now {
                let wait = item.not_before_unix - now;
                report.next_due_in = Some(report.next_due_in.map_or(wait, |w| w.min(wait)));
                continue;
            }
            if item.kind == RelayKind::BackupManifest
                && !self.manifest_may_go(item, &queue, seg_size).await?
            {
                report.waiting += 1;
                continue;
            }
            due.push(item.clone());
        }
        due.truncate(MAX_PER_PASS);
        report.attempted = due.len();
        // Uploads go on while finished ones are recorded (those that finish together in
        // one synced write): an upload slot never waits for the catalog's fsync, and each
        // outcome is recorded as soon as the recorder gets to it, so a crash forgets little.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let concurrency = self.settings.concurrency.max(1);
        let uploads = async move {
            // Intake that starts catching up meanwhile gets the next slots: what has
            // not started stays queued for a later pass.
            stream::iter(due)
                .filter(|_| futures_util::future::ready(!self.yielding()))
                .map(|item| async move {
                    let outcome = self.upload(&item).await;
                    (item, outcome)
                })
                .buffer_unordered(concurrency)
                .for_each(|o| {
                    let _ = tx.send(o);
                    futures_util::future::ready(())
                })
                .await;
        };
        let recorder = async {
            let mut recorded: Result<(), RelayError> = Ok(());
            let mut finished = Vec::new();
            while rx.recv_many(&mut finished, 64).await > 0 {
                let mut done = Vec::new();
                for (item, outcome) in finished.drain(..) {
                    match outcome {
                        Ok(held) => done.push((item, held)),
                        Err(e) => {
                            report.failed += 1;
                            if let Err(e) = self.record_failure(item, &e).await {
                                recorded = recorded.and(Err(e));
                            }
                        }
                    }
                }
                let n = done.len();
                match self.record_done(done).await {
                    Ok(()) => report.uploaded += n,
                    Err(e) => recorded = recorded.and(Err(e)),
                }
            }
            recorded
        };
        let ((), recorded) = tokio::join!(uploads, recorder);
        recorded?;
        Ok(report)
    }

    /// The ordering rule for a backup's Klio manifest: no pack of this or an older
    /// backup, no PostgreSQL manifest or chunk index of it, and no WAL segment up to its
    /// end may still be queued (dead entries included: they are not in Tier 2 either) or
    /// waiting to be recompressed (it is queued after that).
    async fn manifest_may_go(
        &self,
        item: &RelayItem,
        queue: &[RelayItem],
        seg_size: Option<WalSegSize>,
    ) -> Result<bool, RelayError> {
        let Ok(id) = item.name.parse::<BackupId>() else {
            // Refused with a clear error by the upload.
            return Ok(true);
        };
        let (end, recompressing) = {
            let id = id.clone();
            let (backup, recompressing) = self
                .catalog(move |cat, c| {
                    let recompressing: Vec<_> = cat
                        .segments(c)?
                        .into_iter()
                        .filter(|s| s.recompress)
                        .collect();
                    Ok((cat.backup(c, &id)?, recompressing))
                })
                .await?;
            let end = backup
                .and_then(|r| Some((r.end_tli?, r.end_lsn?)))
                .zip(seg_size)
                .map(|((tli, lsn), size)| WalFileName::segment(tli, lsn.segno(size), size));
            (end, recompressing)
        };
        if let (Some(end), Some(size)) = (&end, seg_size) {
            if recompressing
                .iter()
                .any(|s| WalFileName::segment(s.tli, s.segno, size) <= *end)
            {
                return Ok(false);
            }
        }
        Ok(!queue.iter().any(|q| match q.kind {
            // A repacked pack (and its index) of before the backup may hold its chunks.
            RelayKind::Pack | RelayKind::PackIndex => {
                q.name.parse::<PackName>().is_ok_and(|p| p.backup() <= &id)
            }
            RelayKind::PgManifest | RelayKind::ChunkIndex => q.name == item.name,
            RelayKind::WalSegment => match (&end, q.name.parse::<WalFileName>()) {
                (Some(end), Ok(w)) => w <= *end,
                _ => false,
            },
            RelayKind::Cluster => true,
            RelayKind::History | RelayKind::BackupManifest => false,
        }))
    }

    /// Uploads one object; returns what Tier 2 now holds.
    async fn upload(&self, item: &RelayItem) -> Result<Tier2Object, RelayError> {
        if item.kind == RelayKind::Cluster {
            return self.upload_cluster_object(item).await;
        }
        let at = place(&self.data, &self.cluster, item.kind, &item.name)?;
        let shown = at.tier1.display().to_string();
        let tier1_err = |source| RelayError::Tier1 {
            path: shown.clone(),
            source,
        };
        let changed = |actual| RelayError::Changed {
            path: shown.clone(),
            queued: item.bytes,
            actual,
        };
        if item.bytes < MULTIPART_THRESHOLD as u64 {
            // Read and hashed in one go on a blocking thread: the async workers stay free
            // for the uploads in flight.
            let path = at.tier1.clone();
            let read = tokio::task::spawn_blocking(move || {
                let body = std::fs::read(path)?;
                let sha: [u8; 32] = Sha256::digest(&body).into();
                Ok::<_, std::io::Error>((body, sha))
            })
            .await
            .map_err(|e| tier1_err(std::io::Error::other(e)))?;
            let (body, sha) = read.map_err(tier1_err)?;
            let size = body.len() as u64;
            if size != item.bytes {
                return Err(changed(size));
            }
            let outcome = self
                .tier2
                .put_create_hashed(&at.key, Bytes::from(body), sha)
                .await?;
            return Ok(self.confirmed(item, &at.key, size, sha, outcome));
        }
        let file = std::fs::File::open(&at.tier1).map_err(tier1_err)?;
        let size = file.metadata().map_err(tier1_err)?.len();
        if size != item.bytes {
            return Err(changed(size));
        }
        let body = part_stream(file, self.tier2.part_size());
        let sent = self.tier2.put_multipart_hashed(&at.key, body).await?;
        if sent.size != size {
            return Err(changed(sent.size));
        }
        let (outcome, sha) = (sent.outcome, sent.sha256);
        Ok(self.confirmed(item, &at.key, size, sha, outcome))
    }

    /// Uploads `cluster.json`, made from the cluster's catalog record.
    async fn upload_cluster_object(&self, item: &RelayItem) -> Result<Tier2Object, RelayError> {
        let rec = self
            .catalog(|cat, c| cat.cluster(c))
            .await?
            .ok_or_else(|| {
                RelayError::BadName(BadName {
                    kind: item.kind,
                    name: item.name.clone(),
                    why: "the cluster has no catalog record yet".into(),
                })
            })?;
        let body = ClusterObject::from_record(&rec).to_bytes();
        let key = cluster_key(&self.cluster);
        let sha: [u8; 32] = Sha256::digest(&body).into();
        let size = body.len() as u64;
        let outcome = self
            .tier2
            .put_create_hashed(&key, Bytes::from(body), sha)
            .await?;
        Ok(self.confirmed(item, &key, size, sha, outcome))
    }

    /// Counts a confirmed upload and returns what Tier 2 now holds.
    fn confirmed(
        &self,
        item: &RelayItem,
        key: &object_store::path::Path,
        size: u64,
        sha: [u8; 32],
        outcome: crate::PutOutcome,
    ) -> Tier2Object {
        match outcome {
            crate::PutOutcome::Created => {
                self.counters
                    .uploaded_objects
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .uploaded_bytes
                    .fetch_add(size, Ordering::Relaxed);
            }
            crate::PutOutcome::AlreadyThere => {
                self.counters.already_there.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cluster = %self.cluster, key = %key, "already in Tier 2 with the same content (an earlier upload whose confirmation was lost)");
            }
        }
        Tier2Object {
            kind: item.kind,
            name: item.name.clone(),
            key: key.to_string(),
            bytes: size,
            sha256: hex::encode(sha),
            uploaded_unix: unix_now(),
            pruned_unix: None,
        }
    }

    /// Removes the entry and records the object as held (a segment's record too), in
    /// one catalog write.
    async fn record_done(&self, done: Vec<(RelayItem, Tier2Object)>) -> Result<(), RelayError> {
        if done.is_empty() {
            return Ok(());
        }
        self.catalog(move |cat, c| {
            let mut records = Vec::with_capacity(done.len());
            for (item, held) in done {
                let segment = match item.kind {
                    RelayKind::WalSegment => segment_of(cat, c, &item.name)?.map(|mut s| {
                        s.tiers.tier2 = true;
                        s
                    }),
                    _ => None,
                };
                records.push((item, held, segment));
            }
            cat.relay_done_many(c, &records)
        })
        .await
    }

    /// Puts a failed entry back, in backoff or dead.
    async fn record_failure(&self, mut item: RelayItem, e: &RelayError) -> Result<(), RelayError> {
        item.attempts = item.attempts.saturating_add(1);
        item.last_error = Some(e.to_string());
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        if e.is_permanent() {
            item.dead = true;
            self.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
            tracing::error!(cluster = %self.cluster, kind = %item.kind, name = %item.name, error = %e,
                "tier2 relay: giving up on this object until `klio tier2 retry`");
        } else {
            let backoff = backoff(self.settings, item.attempts);
            item.not_before_unix = unix_now() + backoff.as_secs().max(1);
            tracing::warn!(cluster = %self.cluster, kind = %item.kind, name = %item.name,
                attempts = item.attempts, retry_in_secs = backoff.as_secs().max(1), error = %e,
                "tier2 relay: upload failed; will retry");
        }
        self.catalog(move |cat, c| cat.relay_failed(c, &item)).await
    }
}

/// The backoff after `attempts` failures: initial × 2^(attempts-1), capped.
/// `file` in chunks of `part` bytes (the last one shorter), each read in one blocking
/// task: a multipart upload's parts, handed on without copying.
fn part_stream(
    file: std::fs::File,
    part: usize,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin {
    Box::pin(stream::try_unfold(Some(file), move |file| async move {
        let Some(mut file) = file else {
            return Ok(None);
        };
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut chunk = Vec::with_capacity(part);
            (&mut file).take(part as u64).read_to_end(&mut chunk)?;
            Ok::<_, std::io::Error>((file, chunk))
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            return Ok(None);
        }
        let more = (chunk.len() == part).then_some(file);
        Ok(Some((Bytes::from(chunk), more)))
    }))
}

fn backoff(s: RelaySettings, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    s.initial_backoff.saturating_mul(factor).min(s.max_backoff)
}

/// Sleeps for `d` unless `stop` turns true first; returns whether to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    !slept || *stop.borrow()
}

/// The segment record of a WAL segment named `name`.
fn segment_of(
    cat: &Catalog,
    cluster: &ClusterName,
    name: &str,
) -> Result<Option<klio_catalog::SegmentRecord>, CatalogError> {
    let Some(seg_size) = cat.cluster(cluster)?.map(|r| r.seg_size) else {
        return Ok(None);
    };
    let Ok(wal) = name.parse::<WalFileName>() else {
        return Ok(None);
    };
    let Ok(Some(segno)) = wal.segno(seg_size) else {
        return Ok(None);
    };
    cat.segment(cluster, wal.timeline(), segno)
}

/// [`Relay::backfill`], on a blocking thread.
fn backfill(cat: &Catalog, cluster: &ClusterName, data: &DataDir) -> Result<usize, CatalogError> {
    let Some(rec) = cat.cluster(cluster)? else {
        return Ok(0);
    };
    let now = unix_now();
    let mut items = Vec::new();
    let queued_cluster = queue_cluster_object(cat, cluster)?;
    let mut want =
        |kind: RelayKind, name: String, bytes: Option<u64>| -> Result<(), CatalogError> {
            if cat.tier2_record(cluster, kind, &name)?.is_some()
                || cat.relay_item(cluster, kind, &name)?.is_some()
            {
                return Ok(());
            }
            let bytes = match bytes {
                Some(b) => b,
                None => match place(data, cluster, kind, &name)
                    .ok()
                    .and_then(|p| std::fs::metadata(p.tier1).ok())
                {
                    Some(m) => m.len(),
                    // No such file (a backup without PostgreSQL's manifest): nothing to queue.
                    None => return Ok(()),
                },
            };
            items.push(RelayItem::new(kind, name, bytes, now));
            Ok(())
        };
    for t in cat.timelines(cluster)? {
        if t.history_stored {
            want(
                RelayKind::History,
                WalFileName::history(t.tli).to_string(),
                None,
            )?;
        }
    }
    for s in cat.segments(cluster)? {
        // A segment still to be recompressed is queued by the recompressor, in its
        // final form.
        if s.state == SegmentState::Sealed && s.tiers.tier1 && !s.tiers.tier2 && !s.recompress {
            let name = WalFileName::segment(s.tli, s.segno, rec.seg_size);
            want(RelayKind::WalSegment, name.to_string(), Some(s.stored_size))?;
        }
    }
    for b in cat.backups(cluster)? {
        if b.state != klio_catalog::BackupState::Complete {
            continue;
        }
        for p in &b.packs {
            let size = cat.pack(cluster, p)?.map(|r| r.size);
            want(RelayKind::Pack, p.clone(), size)?;
        }
        want(RelayKind::PgManifest, b.id.to_string(), None)?;
        want(RelayKind::ChunkIndex, b.id.to_string(), None)?;
        want(RelayKind::BackupManifest, b.id.to_string(), None)?;
    }
    // Packs written by repacking belong to no backup.
    for p in cat.packs(cluster)? {
        if p.name.parse::<PackName>().is_ok_and(|n| n.is_repack()) {
            want(RelayKind::Pack, p.name.clone(), Some(p.size))?;
            want(RelayKind::PackIndex, p.name, None)?;
        }
    }
    let n = items.len();
    if n > 0 {
        cat.relay_enqueue(cluster, &items)?;
    }
    Ok(n + usize::from(queued_cluster))
}

/// Queues the cluster's key object unless Tier 2 holds it or it is queued; returns
/// whether it queued it. Nothing to do before the cluster's first contact.
fn queue_cluster_object(cat: &Catalog, cluster: &ClusterName) -> Result<bool, CatalogError> {
    let Some(rec) = cat.cluster(cluster)? else {
        return Ok(false);
    };
    let name = cluster.as_str();
    if cat
        .tier2_object(cluster, RelayKind::Cluster, name)?
        .is_some()
        || cat.relay_item(cluster, RelayKind::Cluster, name)?.is_some()
    {
        return Ok(false);
    }
    let bytes = ClusterObject::from_record(&rec).to_bytes().len() as u64;
    cat.relay_enqueue(
        cluster,
        &[RelayItem::new(RelayKind::Cluster, name, bytes, unix_now())],
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn part_stream_reads_whole_parts_and_a_short_last_one() {
        let dir = tempfile::tempdir().unwrap();
        for (len, want) in [
            (0usize, vec![]),
            (3, vec![3]),
            (5, vec![4, 1]),
            (8, vec![4, 4]),
            (10, vec![4, 4, 2]),
        ] {
            let path = dir.path().join(format!("f{len}"));
            let data: Vec<u8> = (0..len as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let parts: Vec<Bytes> = part_stream(std::fs::File::open(&path).unwrap(), 4)
                .map(|p| p.unwrap())
                .collect()
                .await;
            assert_eq!(
                parts.iter().map(Bytes::len).collect::<Vec<_>>(),
                want,
                "{len} bytes"
            );
            assert_eq!(parts.concat(), data);
        }
    }
}

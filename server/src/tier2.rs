//! The server's side of Tier 2: one relay task per configured cluster
//! ([`klio_tiering::Relay`]), their status for `/v1/status` and `/metrics`, and
//! `klio tier2 retry`. Also what each tier stores ([`storage_status`]), which the status
//! reports with or without Tier 2. Writes only through the relays and
//! [`klio_catalog::Catalog::relay_revive`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use klio_api::{
    StorageStatus, Tier2DeadLetter, Tier2RescanReport, Tier2RetryReport, Tier2RetryRequest,
    Tier2Status,
};
use klio_catalog::{BackupState, Catalog, CatalogError, RelayKind};
use klio_core::clock::unix_now;
use klio_core::layout::DataDir;
use klio_core::{ClusterName, WalFileName};
use klio_tiering::{Relay, RelayCounters, RelaySettings, Tier2};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::registry::RegistryError;

/// Dead letters listed in the status (the count covers all of them).
const DEAD_LETTERS_SHOWN: usize = 20;

/// The running relays, and Tier 2 as each cluster's read fallback.
pub struct Tier2Relays {
    tier2: Arc<Tier2>,
    catalog: Arc<Catalog>,
    counters: HashMap<ClusterName, Arc<RelayCounters>>,
    readers: HashMap<ClusterName, Arc<Tier2Reader>>,
    /// A read-only server's last rescan of each cluster (`None`: not read-only).
    rescans: Option<HashMap<ClusterName, std::sync::Mutex<Tier2RescanReport>>>,
}

impl std::fmt::Debug for Tier2Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier2Relays")
            .field("tier2", &self.tier2.to_string())
            .finish_non_exhaustive()
    }
}

impl Tier2Relays {
    /// Tier 2 as the read fallback of `clusters`, without relays: a read-only server's.
    pub fn read_only(
        tier2: Arc<Tier2>,
        catalog: Arc<Catalog>,
        data: &DataDir,
        clusters: impl IntoIterator<Item = ClusterName>,
    ) -> Tier2Relays {
        let clusters: Vec<ClusterName> = clusters.into_iter().collect();
        let readers = Self::readers(&tier2, &catalog, data, &clusters);
        let rescans = clusters
            .into_iter()
            .map(|c| (c, std::sync::Mutex::new(Tier2RescanReport::default())))
            .collect();
        Tier2Relays {
            tier2,
            catalog,
            counters: HashMap::new(),
            readers,
            rescans: Some(rescans),
        }
    }

    fn readers(
        tier2: &Arc<Tier2>,
        catalog: &Arc<Catalog>,
        data: &DataDir,
        clusters: &[ClusterName],
    ) -> HashMap<ClusterName, Arc<Tier2Reader>> {
        let handle = tokio::runtime::Handle::current();
        clusters
            .iter()
            .map(|name| {
                let reader = Tier2Reader {
                    tier2: Arc::clone(tier2),
                    catalog: Arc::clone(catalog),
                    data: data.clone(),
                    cluster: name.clone(),
                    handle: handle.clone(),
                };
                (name.clone(), Arc::new(reader))
            })
            .collect()
    }

    /// Starts one relay per cluster; they stop when `stop` turns true.
    /// Each cluster's relay yields while its `busy` says so (WAL intake catching up).
    pub fn start(
        tier2: Arc<Tier2>,
        catalog: Arc<Catalog>,
        data: &DataDir,
        clusters: impl IntoIterator<Item = (ClusterName, klio_tiering::relay::YieldTo)>,
        stop: &watch::Receiver<bool>,
    ) -> (Tier2Relays, Vec<JoinHandle<()>>) {
        let clusters: Vec<(ClusterName, klio_tiering::relay::YieldTo)> =
            clusters.into_iter().collect();
        let names: Vec<ClusterName> = clusters.iter().map(|(n, _)| n.clone()).collect();
        let readers = Self::readers(&tier2, &catalog, data, &names);
        let mut counters = HashMap::new();
        let mut tasks = Vec::new();
        for (name, busy) in clusters {
            let relay = Relay::new(
                Arc::clone(&tier2),
                Arc::clone(&catalog),
                data.clone(),
                name.clone(),
                RelaySettings::default(),
            )
            .yield_to(busy);
            counters.insert(name, relay.counters());
            tasks.push(tokio::spawn(relay.run(stop.clone())));
        }
        tracing::info!(tier2 = %tier2, clusters = counters.len(), "relaying to Tier 2");
        (
            Tier2Relays {
                tier2,
                catalog,
                counters,
                readers,
                rescans: None,
            },
            tasks,
        )
    }

    /// Tier 2 itself.
    pub fn tier2(&self) -> &Arc<Tier2> {
        &self.tier2
    }

    /// Whether this is a read-only server's Tier 2 (readers, no relays).
    pub fn is_read_only(&self) -> bool {
        self.rescans.is_some()
    }

    /// Keeps a read-only server's latest rescan of `cluster` for the status.
    pub fn set_rescan(&self, cluster: &ClusterName, report: Tier2RescanReport) {
        if let Some(slot) = self.rescans.as_ref().and_then(|r| r.get(cluster)) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = report;
        }
    }

    /// Tier 2 as `cluster`'s read fallback.
    pub fn reader(&self, cluster: &ClusterName) -> Option<Arc<Tier2Reader>> {
        self.readers.get(cluster).cloned()
    }

    /// The relay's status for `cluster`, read from the catalog and the counters.
    pub fn status(&self, cluster: &ClusterName) -> Result<Tier2Status, CatalogError> {
        let mut backlog = self.catalog.relay_backlog(cluster)?;
        // Segments the recompressor has yet to rewrite are queued after that: they are
        // waiting for Tier 2 too.
        for s in self
            .catalog
            .segments(cluster)?
            .iter()
            .filter(|s| s.recompress)
        {
            backlog.objects += 1;
            backlog.bytes += s.stored_size;
        }
        let held = self.catalog.tier2_holdings(cluster)?;
        let dead = if backlog.dead > 0 {
            self.catalog
                .relay_items(cluster)?
                .into_iter()
                .filter(|i| i.dead)
                .take(DEAD_LETTERS_SHOWN)
                .map(|i| Tier2DeadLetter {
                    kind: i.kind.to_string(),
                    name: i.name,
                    attempts: i.attempts,
                    error: i.last_error,
                })
                .collect()
        } else {
            Vec::new()
        };
        let c = self.counters.get(cluster);
        let get = |f: fn(&RelayCounters) -> &std::sync::atomic::AtomicU64| {
            c.map_or(0, |c| f(c).load(Ordering::Relaxed))
        };
        Ok(Tier2Status {
            location: self.tier2.to_string(),
            backlog_objects: backlog.objects,
            backlog_bytes: backlog.bytes,
            oldest_age_seconds: backlog.oldest_unix.map(|t| unix_now().saturating_sub(t)),
            dead_letters: backlog.dead,
            dead,
            last_upload_at: held.last_upload_unix,
            uploaded_objects: get(|c| &c.uploaded_objects),
            uploaded_bytes: get(|c| &c.uploaded_bytes),
            upload_failures: get(|c| &c.failures),
            rescan: self
                .rescans
                .as_ref()
                .and_then(|r| r.get(cluster))
                .map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        })
    }

    /// Queues dead letters again (`klio tier2 retry`).
    pub fn retry(
        &self,
        cluster: &ClusterName,
        req: &Tier2RetryRequest,
    ) -> Result<Tier2RetryReport, RegistryError> {
        let only = match (&req.kind, &req.name) {
            (None, None) => None,
            (Some(kind), Some(name)) => Some((
                kind.parse::<RelayKind>().map_err(RegistryError::BadRequest)?,
                name.as_str(),
            )),
            _ => {
                return Err(RegistryError::BadRequest(
                    "give both kind and name to retry one object, or neither to retry every dead letter".into(),
                ))
            }
        };
        if let Some((kind, name)) = only {
            let queued = self.catalog.relay_item(cluster, kind, name)?;
            if queued.is_none() {
                return Err(RegistryError::NotFound(format!(
                    "no {kind} named {name:?} is waiting for Tier 2"
                )));
            }
        }
        let revived = self.catalog.relay_revive(cluster, only)?;
        tracing::info!(cluster = %cluster, revived, "tier2: dead letters queued again");
        Ok(Tier2RetryReport {
            revived: revived as u64,
        })
    }
}

/// Runs `fut` to completion on `handle` from synchronous code, on a thread of its own, so
/// that it works whether or not the caller runs inside the runtime.
pub(crate) fn block_on<F>(handle: &tokio::runtime::Handle, fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| match s.spawn(|| handle.block_on(fut)).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Tier 2 as one cluster's read fallback: objects Tier 1 no longer holds, fetched by the
/// key the catalog recorded when the relay uploaded them. What comes back is the Tier 1
/// file's bytes; the stores decrypt and check it as they would a Tier 1 file (and whole
/// objects are checked against the SHA-256 recorded at upload first).
pub struct Tier2Reader {
    tier2: Arc<Tier2>,
    catalog: Arc<Catalog>,
    data: DataDir,
    cluster: ClusterName,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Tier2Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier2Reader")
            .field("cluster", &self.cluster)
            .field("tier2", &self.tier2.to_string())
            .finish()
    }
}

impl Tier2Reader {
    /// The object `kind`/`name` (or bytes `range` of it) if Tier 2 holds it; with its
    /// key, for errors.
    fn fetch(
        &self,
        kind: RelayKind,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> std::io::Result<Option<(Vec<u8>, String)>> {
        let Some(held) = self
            .catalog
            .tier2_object(&self.cluster, kind, name)
            .map_err(std::io::Error::other)?
        else {
            return Ok(None);
        };
        // The key is derived again from the (validated) name, not taken from the record.
        let place = klio_tiering::objects::place(&self.data, &self.cluster, kind, name)
            .map_err(std::io::Error::other)?;
        let key = place.key;
        let whole = range.is_none();
        let got = block_on(&self.handle, async {
            match range {
                Some(r) => self.tier2.get_range(&key, r).await,
                None => self.tier2.get(&key).await,
            }
        });
        let shown = format!("{}/{key}", self.tier2);
        let bytes = match got {
            Ok(b) => b.to_vec(),
            Err(klio_tiering::Tier2Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        // A read-only server's records come from listing the bucket and carry no hash (the
        // object's own authentication, checked by the caller, still applies).
        if whole {
            use sha2::Digest;
            let sha = match held.sha256.is_empty() {
                true => String::new(),
                false => hex::encode(sha2::Sha256::digest(&bytes)),
            };
            if bytes.len() as u64 != held.bytes || sha != held.sha256 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{shown}: {} bytes with SHA-256 {sha}, but {} bytes with SHA-256 {} were uploaded: the object was replaced or damaged in Tier 2",
                        bytes.len(),
                        held.bytes,
                        held.sha256
                    ),
                ));
            }
        }
        Ok(Some((bytes, shown)))
    }

    /// A final WAL file (sealed segment or history file) and where it came from.
    pub fn wal(
        &self,
        name: &WalFileName,
    ) -> std::io::Result<Option<(Vec<u8>, std::path::PathBuf)>> {
        let kind = match name.kind() {
            klio_core::WalFileKind::Segment => RelayKind::WalSegment,
            klio_core::WalFileKind::History => RelayKind::History,
            klio_core::WalFileKind::Partial => return Ok(None),
        };
        Ok(self
            .fetch(kind, &name.to_string(), None)?
            .map(|(b, shown)| (b, std::path::PathBuf::from(shown))))
    }
}

impl klio_basebackup::store::ObjectSource for Tier2Reader {
    fn pack_range(
        &self,
        pack: &klio_core::layout::PackName,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let end = offset.checked_add(len).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "range past 2^64")
        })?;
        Ok(self
            .fetch(RelayKind::Pack, &pack.to_string(), Some(offset..end))?
            .map(|(b, _)| b))
    }

    fn manifest(&self, id: &klio_core::BackupId, pg: bool) -> std::io::Result<Option<Vec<u8>>> {
        let kind = if pg {
            RelayKind::PgManifest
        } else {
            RelayKind::BackupManifest
        };
        Ok(self.fetch(kind, id.as_str(), None)?.map(|(b, _)| b))
    }

    fn describe(&self) -> String {
        self.tier2.to_string()
    }
}

/// What Tier 1 and Tier 2 store of `cluster`: WAL segments (sealed and partial),
/// history files, packs, backup manifests and chunk indexes (and in Tier 2, the
/// cluster's key object).
pub fn storage_status(
    catalog: &Catalog,
    data: &DataDir,
    cluster: &ClusterName,
) -> Result<StorageStatus, CatalogError> {
    let mut s = StorageStatus::default();
    let mut add = |bytes: u64| {
        s.tier1_objects += 1;
        s.tier1_bytes += bytes;
    };
    let size = |p: std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = data.wal(cluster);
    for t in catalog.timelines(cluster)? {
        if t.history_stored {
            add(size(wal.file(&WalFileName::history(t.tli))));
        }
    }
    let mut recompress_backlog = 0;
    for seg in catalog.segments(cluster)? {
        if seg.tiers.tier1 {
            add(seg.stored_size);
            recompress_backlog += u64::from(seg.recompress);
        }
    }
    s.tier1_recompress_backlog = recompress_backlog;
    for p in catalog.packs(cluster)? {
        add(p.size);
    }
    let backups = data.backups(cluster);
    for b in catalog.backups(cluster)? {
        if b.state != BackupState::Complete {
            continue;
        }
        if let Some(dir) = backups.backup(&b.id) {
            for f in [dir.manifest(), dir.pg_manifest(), dir.chunk_index()] {
                if let Ok(m) = std::fs::metadata(f) {
                    add(m.len());
                }
            }
        }
    }
    let held = catalog.tier2_holdings(cluster)?;
    s.tier2_objects = held.objects;
    s.tier2_bytes = held.bytes;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_catalog::{SegmentRecord, SegmentState, Tiers};
    use klio_core::{SegNo, TimelineId};

    fn segment(n: u64, tier1: bool, recompress: bool) -> SegmentRecord {
        SegmentRecord {
            tli: TimelineId::new(1).unwrap(),
            segno: SegNo(n),
            state: SegmentState::Sealed,
            plain_size: 16 << 20,
            crc32c: Some(1),
            stored_size: 100,
            tiers: Tiers {
                tier1,
                tier2: !tier1,
            },
            recompress,
        }
    }

    /// Segments stored uncompressed on the synchronous commit path count as the
    /// recompressor's backlog while Tier 1 holds them, and stop counting once rewritten.
    #[test]
    fn tier1_segments_waiting_for_recompression_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
        let data = DataDir::new(dir.path().join("data"));
        let c: ClusterName = "pg".parse().unwrap();
        for rec in [
            segment(1, true, true),
            segment(2, true, false),
            segment(3, true, true),
            segment(4, false, false),
        ] {
            catalog.put_segment(&c, &rec).unwrap();
        }
        let s = storage_status(&catalog, &data, &c).unwrap();
        assert_eq!((s.tier1_objects, s.tier1_recompress_backlog), (3, 2));
        catalog.put_segment(&c, &segment(1, true, false)).unwrap();
        let s = storage_status(&catalog, &data, &c).unwrap();
        assert_eq!(s.tier1_recompress_backlog, 1);
    }
}

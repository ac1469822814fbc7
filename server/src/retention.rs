//! Retention on every tier: what each tier's rules keep ([`klio_tiering::retention`]),
//! what that means for the tier's objects (the [`Plan`]), and removing them.
//!
//! For each tier (Tier 2 first, as Tier 1's safety depends on it):
//! - a complete backup the tier holds and its rules do not keep is removed from the tier
//!   (its manifests and chunk index);
//! - a pack the tier holds is removed once no backup the tier still holds after the run
//!   references a chunk in it;
//! - in Tier 1, the bytes of chunks in packs that stay, which no backup Tier 1 still
//!   holds references, are freed in place (the file system's hole punching; offsets do
//!   not move, so the pack's copy in Tier 2 stays valid and reads of those chunks go
//!   there); Tier 2 removes whole packs only;
//! - a sealed WAL segment the tier holds is removed once it ends at or before the start
//!   of the oldest backup the tier still holds (history files stay);
//! - in Tier 1, while Tier 2 is configured, only objects that have reached Tier 2 go, and
//!   WAL only up to the first segment that has not (the Tier 2 frontier).
//!
//! A backup that leaves its last tier leaves the catalog (its chunk references are
//! released; see [`klio_catalog::prune`] for the order that keeps this crash-safe); so do
//! packs and segments no tier holds. Removing is idempotent and every step is derived
//! from what the tiers hold, so a run cut short is completed by the next one. A dry run
//! computes the same plan and removes nothing. Runs only while no backup of the cluster
//! runs (the caller holds the cluster's backup slot).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use klio_api::{KeptBackup, RemovedObject, RetentionReport, RetentionRequest, TierRetention};
use klio_basebackup::store::ChunkStore;
use klio_catalog::{BackupRecord, BackupState, Catalog, CatalogError, RelayKind, SegmentState};
use klio_core::clock::unix_now;
use klio_core::layout::{DataDir, PackName};
use klio_core::{BackupId, ClusterName, Lsn, WalFileName};
use klio_tiering::objects::place;
use klio_tiering::retention::{keep, Candidate, Retention, Rules};
use klio_tiering::{Tier2, Tier2Error};

use crate::registry::{RegistryError, SourceChain};

/// Why retention could not plan or finish.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tier2(#[from] Tier2Error),
    #[error(transparent)]
    Name(#[from] klio_tiering::objects::BadName),
    #[error(transparent)]
    Store(klio_basebackup::store::BackupStoreError),
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RetentionError + '_ {
    move |source| RetentionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What retention removes from one tier.
#[derive(Debug, Default)]
struct TierPlan {
    tier: u8,
    rules: Rules,
    kept: Vec<KeptBackup>,
    backups: Vec<Removal>,
    packs: Vec<Removal>,
    wal: Vec<Removal>,
    /// Tier 1: chunks whose bytes are freed in place in packs that stay (no backup Tier
    /// 1 keeps references them), by pack: (id, offset, stored length).
    freed: Vec<(Removal, Vec<FreedChunk>)>,
    /// Tier 2: packs at most half of whose bytes are still referenced: their live chunks
    /// move to a new pack (the removal's bytes are what the tier frees once the old pack
    /// goes).
    repacks: Vec<Removal>,
    /// Tier 2: every pack the tier keeps using is there, so packs may be repacked.
    may_repack: bool,
    held_back: Vec<String>,
}

/// A chunk freed in place: id, offset in its pack, stored length.
type FreedChunk = ([u8; 32], u64, u32);

/// The chunk records that place chunks in one pack.
type LiveChunks = Vec<([u8; 32], klio_catalog::ChunkRecord)>;

#[derive(Debug, Clone)]
struct Removal {
    name: String,
    bytes: u64,
    why: String,
}

/// What retention removes from each tier (see the module documentation).
#[derive(Debug)]
pub struct Plan {
    cluster: ClusterName,
    tiers: Vec<TierPlan>,
    /// Distinct chunks of each backup (from its manifest).
    chunks: HashMap<BackupId, Vec<[u8; 32]>>,
    /// Backups removed from every tier that holds them: they leave the catalog.
    last_copies: BTreeSet<BackupId>,
}

/// A complete backup and where it is.
struct Held {
    rec: BackupRecord,
    tier1: bool,
    tier2: bool,
}

/// Retention for the server's clusters.
pub struct Retainer {
    pub rules: Retention,
    tier2: Option<Arc<Tier2>>,
    catalog: Arc<Catalog>,
    data: DataDir,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Retainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retainer")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Retainer {
    pub fn new(
        rules: Retention,
        tier2: Option<Arc<Tier2>>,
        catalog: Arc<Catalog>,
        data: DataDir,
        runtime: tokio::runtime::Handle,
    ) -> Retainer {
        Retainer {
            rules,
            tier2,
            catalog,
            data,
            runtime,
        }
    }

    /// Whether retention has anything to do: rules for a tier this server has.
    pub fn active(&self) -> bool {
        self.rules.tier1.any() || (self.tier2.is_some() && self.rules.tier2.any())
    }

    /// Plans and (unless a dry run) applies retention for `cluster`.
    pub fn run(
        &self,
        cluster: &ClusterName,
        store: &ChunkStore,
        req: &RetentionRequest,
    ) -> Result<RetentionReport, RegistryError> {
        let tiers: Vec<u8> = match req.tier {
            None if self.tier2.is_some() => vec![2, 1],
            None => vec![1],
            Some(1) => vec![1],
            Some(2) if self.tier2.is_some() => vec![2],
            Some(2) => {
                return Err(RegistryError::Conflict(
                    crate::registry::TIER2_NOT_CONFIGURED.into(),
                ))
            }
            Some(t) => {
                return Err(RegistryError::BadRequest(format!(
                    "tier {t} does not exist: use 1 (local) or 2 (object storage)"
                )))
            }
        };
        let failed = |e: RetentionError| RegistryError::internal("retention", e);
        let plan = self
            .plan(cluster, store, &tiers, unix_now())
            .map_err(failed)?;
        let mut report = plan.report(false);
        if req.dry_run {
            return Ok(report);
        }
        self.apply(&plan, store, &mut report).map_err(failed)?;
        report.applied = true;
        Ok(report)
    }

    /// Where each complete backup is.
    fn held_backups(&self, cluster: &ClusterName) -> Result<Vec<Held>, RetentionError> {
        let dir = self.data.backups(cluster);
        let mut out = Vec::new();
        for rec in self.catalog.backups(cluster)? {
            if rec.state != BackupState::Complete {
                continue;
            }
            let tier1 = dir.backup(&rec.id).is_some_and(|d| d.manifest().is_file());
            let tier2 = self.tier2.is_some()
                && self
                    .catalog
                    .tier2_object(cluster, RelayKind::BackupManifest, rec.id.as_str())?
                    .is_some();
            out.push(Held { rec, tier1, tier2 });
        }
        Ok(out)
    }

    /// Whether Tier 1 may let an object go: Tier 2 is not configured, or the object has
    /// reached it (held, or pruned by Tier 2's own retention).
    fn reached(
        &self,
        cluster: &ClusterName,
        kind: RelayKind,
        name: &str,
    ) -> Result<bool, RetentionError> {
        Ok(self.tier2.is_none() || self.catalog.tier2_record(cluster, kind, name)?.is_some())
    }

    /// The plan for `tiers` (2 before 1) at `now_unix`.
    pub fn plan(
        &self,
        cluster: &ClusterName,
        store: &ChunkStore,
        tiers: &[u8],
        now_unix: u64,
    ) -> Result<Plan, RetentionError> {
        let held = self.held_backups(cluster)?;
        let mut chunks: HashMap<BackupId, Vec<[u8; 32]>> = HashMap::new();
        let mut unreadable: HashMap<BackupId, String> = HashMap::new();
        for h in &held {
            if !(h.tier1 || h.tier2) {
                continue;
            }
            match store.read_manifest(&h.rec.id) {
                Ok(m) => {
                    let mut ids: Vec<[u8; 32]> = m
                        .files
                        .iter()
                        .flat_map(|f| f.chunks.iter().map(|c| c.0))
                        .collect();
                    ids.sort_unstable();
                    ids.dedup();
                    chunks.insert(h.rec.id.clone(), ids);
                }
                Err(e) => {
                    unreadable.insert(h.rec.id.clone(), SourceChain(&e).to_string());
                }
            }
        }
        let candidates: Vec<Candidate> = held
            .iter()
            .map(|h| Candidate {
                id: h.rec.id.clone(),
                finished_unix: h.rec.finished_unix.unwrap_or(h.rec.started_unix),
            })
            .collect();
        let mut pack_of: HashMap<[u8; 32], Option<String>> = HashMap::new();
        let mut plan = Plan {
            cluster: cluster.clone(),
            tiers: Vec::new(),
            chunks,
            last_copies: BTreeSet::new(),
        };
        let mut removed_from: HashMap<u8, HashSet<BackupId>> = HashMap::new();
        for &tier in tiers {
            let rules = if tier == 1 {
                self.rules.tier1
            } else {
                self.rules.tier2
            };
            let in_tier = |h: &Held| if tier == 1 { h.tier1 } else { h.tier2 };
            let kept = keep(&rules, &candidates, now_unix);
            let mut tp = TierPlan {
                tier,
                rules,
                kept: kept
                    .iter()
                    .map(|(id, reasons)| KeptBackup {
                        id: id.clone(),
                        reasons: reasons.clone(),
                    })
                    .collect(),
                ..TierPlan::default()
            };
            // What the tier holds after the run: the backups it keeps, including those the
            // relay has not brought to Tier 2 yet (their chunks may be in packs of
            // backups being removed), and those held back.
            let mut remain: Vec<&Held> = Vec::new();
            for h in &held {
                let id = &h.rec.id;
                if kept.contains_key(id) {
                    remain.push(h);
                    continue;
                }
                if !in_tier(h) {
                    continue;
                }
                if let Some(why) = unreadable.get(id) {
                    tp.held_back.push(format!(
                        "backup {id}: its manifest cannot be read ({why}), so the chunks it references are unknown"
                    ));
                    remain.push(h);
                    continue;
                }
                if tier == 1 && !self.backup_reached(cluster, id)? {
                    tp.held_back.push(format!(
                        "backup {id}: not in Tier 2 yet; Tier 1 keeps it until the relay has copied it"
                    ));
                    remain.push(h);
                    continue;
                }
                tp.backups.push(Removal {
                    name: id.to_string(),
                    bytes: self.backup_bytes(cluster, id, tier)?,
                    why: format!("kept by no rule ({rules})"),
                });
                removed_from.entry(tier).or_default().insert(id.clone());
            }

            // Packs: those no remaining backup of the tier references.
            let mut needed: HashSet<String> = HashSet::new();
            let mut complete = true;
            for h in &remain {
                let Some(ids) = plan.chunks.get(&h.rec.id) else {
                    complete = false;
                    continue;
                };
                for c in ids {
                    let pack = match pack_of.get(c) {
                        Some(p) => p.clone(),
                        None => {
                            let p = self.catalog.chunk(cluster, c)?.map(|r| r.pack);
                            pack_of.insert(*c, p.clone());
                            p
                        }
                    };
                    if let Some(p) = pack {
                        needed.insert(p);
                    }
                }
            }
            // A chunk Tier 1 stored again (after freeing it) has moved to a new pack; until
            // that pack is in Tier 2, Tier 2's old copy may be the only one off-site, and
            // which old pack held it is no longer recorded: Tier 2 removes no pack then.
            let mut pending: Vec<&String> = Vec::new();
            if tier == 2 && complete {
                for p in &needed {
                    if !self.pack_in_tier(cluster, p, 2)?
                        || !self.pack_index_in_tier2(cluster, p)?
                    {
                        pending.push(p);
                    }
                }
            }
            if !complete {
                tp.held_back.push(
                    "packs: a kept backup's manifest cannot be read, so no pack is removed from this tier".into(),
                );
            } else if let Some(first) = pending.first() {
                tp.held_back.push(format!(
                    "packs: {} pack(s) the kept backups use are not in Tier 2 yet (e.g. {first}); Tier 2 removes no pack until the relay has copied them",
                    pending.len()
                ));
            } else {
                for p in self.catalog.packs(cluster)? {
                    if needed.contains(&p.name) || !self.pack_in_tier(cluster, &p.name, tier)? {
                        continue;
                    }
                    if tier == 1 && !self.reached(cluster, RelayKind::Pack, &p.name)? {
                        tp.held_back.push(format!(
                            "pack {}: not in Tier 2 yet; Tier 1 keeps it until the relay has copied it",
                            p.name
                        ));
                        continue;
                    }
                    tp.packs.push(Removal {
                        name: p.name.clone(),
                        bytes: p.size,
                        why: format!("no backup Tier {tier} keeps references its chunks"),
                    });
                }
            }

            let may_repack = tier == 2 && complete && pending.is_empty();

            if tier == 1 && complete {
                let needed_chunks: HashSet<[u8; 32]> = remain
                    .iter()
                    .filter_map(|h| plan.chunks.get(&h.rec.id))
                    .flatten()
                    .copied()
                    .collect();
                let going: HashSet<&str> = tp.packs.iter().map(|p| p.name.as_str()).collect();
                let mut may_free: HashMap<String, bool> = HashMap::new();
                let mut by_pack: std::collections::BTreeMap<String, Vec<FreedChunk>> =
                    Default::default();
                for (id, c) in self.catalog.chunks(cluster)? {
                    if c.tier1_freed
                        || needed_chunks.contains(&id)
                        || going.contains(c.pack.as_str())
                    {
                        continue;
                    }
                    let ok = match may_free.get(&c.pack) {
                        Some(&ok) => ok,
                        None => {
                            let ok = self.pack_in_tier(cluster, &c.pack, 1)?
                                && self.reached(cluster, RelayKind::Pack, &c.pack)?;
                            may_free.insert(c.pack.clone(), ok);
                            ok
                        }
                    };
                    if ok {
                        by_pack
                            .entry(c.pack)
                            .or_default()
                            .push((id, c.offset, c.stored_len));
                    }
                }
                for (pack, chunks) in by_pack {
                    let bytes = chunks.iter().map(|&(_, _, l)| u64::from(l)).sum();
                    let why = format!(
                        "{} chunk(s) no backup Tier 1 keeps references; their space is freed in place",
                        chunks.len()
                    );
                    tp.freed.push((
                        Removal {
                            name: pack,
                            bytes,
                            why,
                        },
                        chunks,
                    ));
                }
            }

            // WAL before the oldest remaining backup's start.
            let oldest = remain.iter().min_by_key(|h| (h.rec.start_lsn, &h.rec.id));
            if let (Some(oldest), Some(crec)) = (oldest, self.catalog.cluster(cluster)?) {
                let anchor = oldest.rec.start_lsn;
                let seg_size = crec.seg_size;
                let mut segs = self.catalog.segments(cluster)?;
                segs.retain(|s| s.state == SegmentState::Sealed);
                segs.sort_by_key(|s| (s.segno, s.tli));
                for s in segs {
                    let end: Lsn = s.segno.next().start_lsn(seg_size);
                    if end > anchor {
                        break;
                    }
                    let name = WalFileName::segment(s.tli, s.segno, seg_size).to_string();
                    let present = match tier {
                        1 => s.tiers.tier1,
                        _ => self
                            .catalog
                            .tier2_object(cluster, RelayKind::WalSegment, &name)?
                            .is_some(),
                    };
                    if !present {
                        continue;
                    }
                    if tier == 1 && s.recompress {
                        tp.held_back.push(format!(
                            "WAL from {name} on: being recompressed; Tier 1 keeps it until that is done"
                        ));
                        break;
                    }
                    if tier == 1
                        && !(s.tiers.tier2
                            || self.reached(cluster, RelayKind::WalSegment, &name)?)
                    {
                        tp.held_back.push(format!(
                            "WAL from {name} on: not in Tier 2 yet (the Tier 2 frontier); Tier 1 keeps it until the relay has copied it"
                        ));
                        break;
                    }
                    tp.wal.push(Removal {
                        name,
                        bytes: s.stored_size,
                        why: format!(
                            "ends at or before {anchor}, where backup {} (the oldest Tier {tier} keeps) starts",
                            oldest.rec.id
                        ),
                    });
                }
            }
            tp.may_repack = may_repack;
            plan.tiers.push(tp);
        }
        // A backup leaves the catalog when each tier that holds it removes it.
        for h in &held {
            let gone = |tier: u8, holds: bool| {
                !holds
                    || removed_from
                        .get(&tier)
                        .is_some_and(|s| s.contains(&h.rec.id))
            };
            if (h.tier1 || h.tier2) && gone(1, h.tier1) && gone(2, h.tier2) {
                plan.last_copies.insert(h.rec.id.clone());
            }
        }
        // Repacking, once it is known which backups stay in some tier: the chunks they
        // reference are the live ones.
        let mut live: HashSet<[u8; 32]> = HashSet::new();
        let mut known = true;
        for h in held.iter().filter(|h| h.tier1 || h.tier2) {
            if plan.last_copies.contains(&h.rec.id) {
                continue;
            }
            match plan.chunks.get(&h.rec.id) {
                Some(ids) => live.extend(ids.iter().copied()),
                None => known = false,
            }
        }
        if let Some(tp) = plan.tiers.iter_mut().find(|t| t.tier == 2 && t.may_repack) {
            if known {
                tp.repacks = self.repack_candidates(cluster, &tp.packs, &live)?;
            }
        }
        Ok(plan)
    }

    /// Packs Tier 2 holds and keeps of which at most half the bytes are referenced by
    /// `live_chunks` (those of the backups some tier keeps), `going` aside.
    fn repack_candidates(
        &self,
        cluster: &ClusterName,
        going: &[Removal],
        live_chunks: &HashSet<[u8; 32]>,
    ) -> Result<Vec<Removal>, RetentionError> {
        let going: HashSet<&str> = going.iter().map(|p| p.name.as_str()).collect();
        let mut live = self.live_by_pack(cluster)?;
        for chunks in live.values_mut() {
            chunks.retain(|(id, _)| live_chunks.contains(id));
        }
        live.retain(|_, c| !c.is_empty());
        let mut out = Vec::new();
        for p in self.catalog.packs(cluster)? {
            if going.contains(p.name.as_str()) || !self.pack_in_tier(cluster, &p.name, 2)? {
                continue;
            }
            let Some(chunks) = live.get(&p.name) else {
                continue;
            };
            let live_bytes: u64 = chunks.iter().map(|(_, c)| u64::from(c.stored_len)).sum();
            if live_bytes.saturating_mul(2) > p.size {
                continue;
            }
            out.push(Removal {
                name: p.name.clone(),
                bytes: p.size.saturating_sub(live_bytes),
                why: format!(
                    "only {live_bytes} of its {} bytes are still referenced ({} chunk(s)): they move to a new pack, and the pack goes once that is in Tier 2",
                    p.size,
                    chunks.len()
                ),
            });
        }
        Ok(out)
    }

    /// The chunk records of the cluster by the pack that holds them.
    fn live_by_pack(
        &self,
        cluster: &ClusterName,
    ) -> Result<HashMap<String, LiveChunks>, RetentionError> {
        let mut live: HashMap<String, LiveChunks> = HashMap::new();
        for (id, c) in self.catalog.chunks(cluster)? {
            live.entry(c.pack.clone()).or_default().push((id, c));
        }
        Ok(live)
    }

    /// A repacked pack's index is in Tier 2 (other packs have none to wait for).
    fn pack_index_in_tier2(
        &self,
        cluster: &ClusterName,
        pack: &str,
    ) -> Result<bool, RetentionError> {
        if !pack.parse::<PackName>().is_ok_and(|p| p.is_repack()) {
            return Ok(true);
        }
        Ok(self
            .catalog
            .tier2_object(cluster, RelayKind::PackIndex, pack)?
            .is_some())
    }

    /// Every object of a backup has reached Tier 2 (or Tier 2 is not configured).
    fn backup_reached(&self, cluster: &ClusterName, id: &BackupId) -> Result<bool, RetentionError> {
        let has_pg = self
            .data
            .backups(cluster)
            .backup(id)
            .is_some_and(|d| d.pg_manifest().is_file());
        Ok(
            self.reached(cluster, RelayKind::BackupManifest, id.as_str())?
                && self.reached(cluster, RelayKind::ChunkIndex, id.as_str())?
                && (!has_pg || self.reached(cluster, RelayKind::PgManifest, id.as_str())?),
        )
    }

    fn pack_in_tier(
        &self,
        cluster: &ClusterName,
        name: &str,
        tier: u8,
    ) -> Result<bool, RetentionError> {
        Ok(match tier {
            1 => name
                .parse::<PackName>()
                .is_ok_and(|p| self.data.backups(cluster).pack(&p).is_file()),
            _ => self
                .catalog
                .tier2_object(cluster, RelayKind::Pack, name)?
                .is_some(),
        })
    }

    /// The bytes of a backup's manifests and chunk index in a tier.
    fn backup_bytes(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
        tier: u8,
    ) -> Result<u64, RetentionError> {
        let mut total = 0;
        for kind in BACKUP_KINDS {
            total += match tier {
                1 => place(&self.data, cluster, kind, id.as_str())
                    .ok()
                    .and_then(|p| std::fs::metadata(p.tier1).ok())
                    .map_or(0, |m| m.len()),
                _ => self
                    .catalog
                    .tier2_object(cluster, kind, id.as_str())?
                    .map_or(0, |o| o.bytes),
            };
        }
        Ok(total)
    }

    /// Removes what `plan` says, Tier 2 first; records each tier's failure in `report`.
    fn apply(
        &self,
        plan: &Plan,
        store: &ChunkStore,
        report: &mut RetentionReport,
    ) -> Result<(), RetentionError> {
        let cluster = &plan.cluster;
        self.finish_intents(cluster)?;
        let mut done = Vec::new();
        for tp in &plan.tiers {
            let outcome = match tp.tier {
                1 => self.apply_tier1(plan, tp),
                _ => self.apply_tier2(plan, tp),
            };
            match outcome {
                Ok(()) => done.push(tp.tier),
                Err(e) => {
                    let message = SourceChain(&e).to_string();
                    tracing::error!(cluster = %cluster, tier = tp.tier, error = %message, "retention stopped");
                    if let Some(t) = report.tiers.iter_mut().find(|t| t.tier == tp.tier) {
                        t.error = Some(message);
                    }
                    // Tier 1's plan counted on Tier 2's removals: it waits for the next run.
                    break;
                }
            }
        }
        self.forget_last_copies(plan, &done)?;
        self.sweep(cluster)?;
        if done.contains(&2) {
            if let Some(tp) = plan.tiers.iter().find(|t| t.tier == 2) {
                self.repack(cluster, store, &tp.repacks)?;
            }
        }
        Ok(())
    }

    /// Moves the live chunks of each planned pack into a new one (read again now: this
    /// run's removals may have released some).
    fn repack(
        &self,
        cluster: &ClusterName,
        store: &ChunkStore,
        packs: &[Removal],
    ) -> Result<(), RetentionError> {
        if packs.is_empty() {
            return Ok(());
        }
        let mut live = self.live_by_pack(cluster)?;
        for r in packs {
            let Some(chunks) = live.remove(&r.name) else {
                continue;
            };
            let name = store.new_repack_name().map_err(RetentionError::Store)?;
            let done = store
                .repack(&r.name, &chunks, &name)
                .map_err(RetentionError::Store)?;
            tracing::info!(
                cluster = %cluster,
                pack = %r.name,
                new_pack = %done.new,
                chunks = done.chunks,
                bytes = done.bytes,
                "repacked: the live chunks moved to a new pack; the old one goes once that is in Tier 2"
            );
        }
        Ok(())
    }

    fn delete_tier2(
        &self,
        cluster: &ClusterName,
        kind: RelayKind,
        name: &str,
    ) -> Result<(), RetentionError> {
        let t2 = self
            .tier2
            .as_ref()
            .expect("Tier 2 plans exist only with Tier 2");
        let key = place(&self.data, cluster, kind, name)?.key;
        crate::tier2::block_on(&self.runtime, t2.delete(&key))?;
        Ok(())
    }

    fn delete_tier1(
        &self,
        cluster: &ClusterName,
        kind: RelayKind,
        name: &str,
    ) -> Result<(), RetentionError> {
        let Ok(p) = place(&self.data, cluster, kind, name) else {
            return Ok(());
        };
        match std::fs::remove_file(&p.tier1) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p.tier1)(e)),
        }
    }

    fn apply_tier2(&self, plan: &Plan, tp: &TierPlan) -> Result<(), RetentionError> {
        let c = &plan.cluster;
        let now = unix_now();
        for b in &tp.backups {
            let last = plan
                .last_copies
                .contains(&b.name.parse::<BackupId>().expect("planned ids are valid"));
            // A reader of the bucket stops seeing the backup first; its last copy's
            // manifest goes only once the catalog has released its chunks.
            let kinds: &[RelayKind] = if last {
                &BACKUP_KINDS[1..]
            } else {
                &BACKUP_KINDS
            };
            // Its chunk index stays while a pack it wrote stays: it places chunks newer
            // backups still use (the sweep deletes it after the last such pack).
            let keep_index = self.packs_outlive(c, &b.name, &tp.packs)?;
            let mut prune = self.catalog.prune(c);
            for &kind in kinds {
                if kind == RelayKind::ChunkIndex && keep_index {
                    continue;
                }
                self.delete_tier2(c, kind, &b.name)?;
                prune.tier2_pruned(kind, &b.name, now)?;
            }
            prune.commit()?;
        }
        for p in &tp.packs {
            // The pack before its index: a reader never sees a pack it cannot place.
            self.delete_tier2(c, RelayKind::Pack, &p.name)?;
            let mut prune = self.catalog.prune(c);
            prune.tier2_pruned(RelayKind::Pack, &p.name, now)?;
            prune.commit()?;
            if is_repacked(&p.name) {
                self.delete_tier2(c, RelayKind::PackIndex, &p.name)?;
                let mut prune = self.catalog.prune(c);
                prune.tier2_pruned(RelayKind::PackIndex, &p.name, now)?;
                prune.commit()?;
            }
        }
        for w in &tp.wal {
            self.delete_tier2(c, RelayKind::WalSegment, &w.name)?;
            let mut prune = self.catalog.prune(c);
            prune.tier2_pruned(RelayKind::WalSegment, &w.name, now)?;
            if let Some(mut rec) = self.segment(c, &w.name)? {
                rec.tiers.tier2 = false;
                prune.put_segment(&rec);
            }
            prune.commit()?;
        }
        Ok(())
    }

    /// Whether Tier 2 keeps a pack that backup `id` wrote after this run removes `going`.
    fn packs_outlive(
        &self,
        c: &ClusterName,
        id: &str,
        going: &[Removal],
    ) -> Result<bool, RetentionError> {
        let going: HashSet<&str> = going.iter().map(|p| p.name.as_str()).collect();
        Ok(self
            .tier2_packs_of(c, id)?
            .iter()
            .any(|p| !going.contains(p.as_str())))
    }

    /// The packs backup `id` wrote that Tier 2 holds.
    fn tier2_packs_of(&self, c: &ClusterName, id: &str) -> Result<Vec<String>, RetentionError> {
        let mut out = Vec::new();
        for p in self.catalog.packs(c)? {
            let ours = p
                .name
                .parse::<PackName>()
                .is_ok_and(|n| !n.is_repack() && n.backup().as_str() == id);
            if ours && self.pack_in_tier(c, &p.name, 2)? {
                out.push(p.name);
            }
        }
        Ok(out)
    }

    fn apply_tier1(&self, plan: &Plan, tp: &TierPlan) -> Result<(), RetentionError> {
        let c = &plan.cluster;
        let backups = self.data.backups(c);
        for b in &tp.backups {
            let id: BackupId = b.name.parse().expect("planned ids are valid");
            let last = plan.last_copies.contains(&id);
            let kinds: &[RelayKind] = if last {
                &BACKUP_KINDS[1..]
            } else {
                &BACKUP_KINDS
            };
            for &kind in kinds {
                self.delete_tier1(c, kind, &b.name)?;
            }
            if !last {
                remove_backup_dir(&backups, &id)?;
            }
        }
        for p in &tp.packs {
            self.delete_tier1(c, RelayKind::Pack, &p.name)?;
            if is_repacked(&p.name) {
                self.delete_tier1(c, RelayKind::PackIndex, &p.name)?;
            }
        }
        for (r, chunks) in &tp.freed {
            // Reads go to Tier 2 before the bytes go.
            let mut prune = self.catalog.prune(c);
            for (id, _, _) in chunks {
                prune.tier1_freed(id)?;
            }
            prune.commit()?;
            let pack: PackName = r.name.parse().map_err(|e| {
                io(&backups.packs_dir())(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{e}"),
                ))
            })?;
            punch_holes(&backups.pack(&pack), chunks)?;
        }
        let wal_dir = self.data.wal(c);
        for w in &tp.wal {
            self.delete_tier1(c, RelayKind::WalSegment, &w.name)?;
            if let Some(mut rec) = self.segment(c, &w.name)? {
                rec.tiers.tier1 = false;
                let mut prune = self.catalog.prune(c);
                prune.put_segment(&rec);
                prune.commit()?;
            }
        }
        if !tp.packs.is_empty() {
            klio_core::crashsafe::fsync_dir(&backups.packs_dir())
                .map_err(io(&backups.packs_dir()))?;
        }
        if !tp.wal.is_empty() {
            klio_core::crashsafe::fsync_dir(wal_dir.path()).map_err(io(wal_dir.path()))?;
        }
        Ok(())
    }

    fn segment(
        &self,
        c: &ClusterName,
        name: &str,
    ) -> Result<Option<klio_catalog::SegmentRecord>, RetentionError> {
        let Some(crec) = self.catalog.cluster(c)? else {
            return Ok(None);
        };
        let Ok(w) = name.parse::<WalFileName>() else {
            return Ok(None);
        };
        let Ok(Some(segno)) = w.segno(crec.seg_size) else {
            return Ok(None);
        };
        Ok(self.catalog.segment(c, w.timeline(), segno)?)
    }

    /// Backups leaving their last tier: the catalog releases them (recording which
    /// manifests remain to delete), then the manifests go.
    fn forget_last_copies(&self, plan: &Plan, done: &[u8]) -> Result<(), RetentionError> {
        let c = &plan.cluster;
        let removed_in = |tier: u8, id: &str| {
            plan.tiers
                .iter()
                .any(|t| t.tier == tier && t.backups.iter().any(|b| b.name == id))
        };
        // Where each backup is now, after this run's removals.
        let held: HashMap<BackupId, Held> = self
            .held_backups(c)?
            .into_iter()
            .map(|h| (h.rec.id.clone(), h))
            .collect();
        for id in &plan.last_copies {
            let tiers: Vec<u8> = [1u8, 2]
                .into_iter()
                .filter(|&t| removed_in(t, id.as_str()))
                .collect();
            // Only once every planned removal of its other objects happened.
            if !tiers.iter().all(|t| done.contains(t)) {
                continue;
            }
            if let Some(h) = held.get(id) {
                let kept_somewhere =
                    (h.tier1 && !tiers.contains(&1)) || (h.tier2 && !tiers.contains(&2));
                if kept_somewhere {
                    continue;
                }
            }
            let Some(chunks) = plan.chunks.get(id) else {
                continue;
            };
            let mut prune = self.catalog.prune(c);
            prune.forget_backup(id, chunks, &tiers)?;
            prune.commit()?;
            klio_core::failpoint::hit("retention-after-forget");
        }
        self.finish_intents(c)
    }

    /// Deletes the manifests of forgotten backups and clears their intents.
    fn finish_intents(&self, c: &ClusterName) -> Result<(), RetentionError> {
        for intent in self.catalog.forget_intents(c)? {
            for &tier in &intent.tiers {
                match tier {
                    1 => {
                        self.delete_tier1(c, RelayKind::BackupManifest, intent.backup.as_str())?;
                        remove_backup_dir(&self.data.backups(c), &intent.backup)?;
                    }
                    _ => self.delete_tier2(c, RelayKind::BackupManifest, intent.backup.as_str())?,
                }
            }
            let mut prune = self.catalog.prune(c);
            prune.clear_intent(&intent.backup);
            prune.commit()?;
        }
        Ok(())
    }

    /// Forgets packs and segments no tier holds any more, and deletes from Tier 2 the
    /// chunk indexes of forgotten backups once no pack they place is there.
    fn sweep(&self, c: &ClusterName) -> Result<(), RetentionError> {
        if self.tier2.is_some() {
            for h in self.catalog.tier2_objects(c)? {
                if h.kind != RelayKind::ChunkIndex {
                    continue;
                }
                let Ok(id) = h.name.parse::<BackupId>() else {
                    continue;
                };
                if self.catalog.backup(c, &id)?.is_some()
                    || !self.tier2_packs_of(c, &h.name)?.is_empty()
                {
                    continue;
                }
                self.delete_tier2(c, RelayKind::ChunkIndex, &h.name)?;
                let mut prune = self.catalog.prune(c);
                prune.drop_tier2(RelayKind::ChunkIndex, &h.name);
                prune.commit()?;
            }
        }
        let mut prune = self.catalog.prune(c);
        for p in self.catalog.packs(c)? {
            let t2 = self.tier2.is_some() && self.pack_in_tier(c, &p.name, 2)?;
            if !t2 && !self.pack_in_tier(c, &p.name, 1)? {
                prune.forget_pack(&p.name);
            }
        }
        if let Some(crec) = self.catalog.cluster(c)? {
            for s in self.catalog.segments(c)? {
                if s.state == SegmentState::Sealed && !s.tiers.tier1 && !s.tiers.tier2 {
                    prune.delete_segment(s.tli, s.segno);
                    let name = WalFileName::segment(s.tli, s.segno, crec.seg_size).to_string();
                    prune.drop_tier2(RelayKind::WalSegment, &name);
                }
            }
        }
        if !prune.is_empty() {
            prune.commit()?;
        }
        Ok(())
    }
}

/// Frees the bytes of `chunks` (offset, length) in a pack file, keeping its size; a file
/// system that cannot punch holes keeps them (logged).
fn punch_holes(
    path: &std::path::Path,
    chunks: &[([u8; 32], u64, u32)],
) -> Result<(), RetentionError> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    for &(_, offset, len) in chunks {
        let Ok(off) = i64::try_from(offset) else {
            continue;
        };
        let len = i64::from(len);
        if let Err(e) = fallocate(f.as_raw_fd(), mode, off, len) {
            if e == nix::errno::Errno::EOPNOTSUPP {
                tracing::warn!(pack = %path.display(), "the file system cannot punch holes: the freed chunks keep their space until the whole pack goes");
                return Ok(());
            }
            return Err(io(path)(std::io::Error::from(e)));
        }
    }
    f.sync_all().map_err(io(path))
}

/// Whether `pack` was written by repacking (and has an index of its own).
fn is_repacked(pack: &str) -> bool {
    pack.parse::<PackName>().is_ok_and(|p| p.is_repack())
}

/// A backup's manifest objects, Klio's manifest first.
const BACKUP_KINDS: [RelayKind; 3] = [
    RelayKind::BackupManifest,
    RelayKind::PgManifest,
    RelayKind::ChunkIndex,
];

/// Removes a backup's (emptied) directory in Tier 1.
fn remove_backup_dir(
    backups: &klio_core::layout::BackupsDir,
    id: &BackupId,
) -> Result<(), RetentionError> {
    let Some(dir) = backups.backup(id) else {
        return Ok(());
    };
    match std::fs::remove_dir_all(dir.path()) {
        Ok(()) => klio_core::crashsafe::fsync_dir(backups.path()).map_err(io(backups.path())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir.path())(e)),
    }
}

impl Plan {
    /// The plan as the API reports it.
    fn report(&self, applied: bool) -> RetentionReport {
        let tiers = self
            .tiers
            .iter()
            .rev()
            .map(|tp| {
                let mut removed = Vec::new();
                let freed: Vec<Removal> = tp.freed.iter().map(|(r, _)| r.clone()).collect();
                for (kind, list) in [
                    ("backup", &tp.backups),
                    ("pack", &tp.packs),
                    ("chunks", &freed),
                    ("repack", &tp.repacks),
                    ("wal_segment", &tp.wal),
                ] {
                    removed.extend(list.iter().map(|r| RemovedObject {
                        kind: kind.into(),
                        name: r.name.clone(),
                        bytes: r.bytes,
                        why: r.why.clone(),
                    }));
                }
                TierRetention {
                    tier: tp.tier,
                    rules: tp.rules.to_string(),
                    kept: tp.kept.clone(),
                    removed_bytes: removed.iter().map(|r| r.bytes).sum(),
                    removed,
                    held_back: tp.held_back.clone(),
                    error: None,
                }
            })
            .collect();
        RetentionReport {
            cluster: self.cluster.clone(),
            applied,
            tiers,
        }
    }
}

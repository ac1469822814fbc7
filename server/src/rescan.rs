//! A read-only server's catalog, rebuilt from Tier 2 alone: the bucket is self-describing
//! (`docs/FORMATS.md`, Tier 2), so listing it and reading `cluster.json`, the history
//! files, Klio's manifests and the chunk indexes gives every record a restore needs.
//!
//! A scan adds what is new and forgets what the bucket no longer has (the writing server's
//! retention removed it). Objects it has not seen before become `h/` records (with an empty
//! SHA-256, which the reader then does not check; sizes and the objects' own
//! authentication still are), WAL segments and timelines become records held by Tier 2
//! alone, and each backup whose manifest is listed is committed with its chunks and packs
//! as the writing server committed it. A backup is adopted only when every object it
//! needs is listed; the writer uploads a backup's manifest last, and the backups are
//! listed before the WAL, so what a listed manifest needs is listed too. Nothing here
//! writes to the bucket (the server's Tier 2 is opened read-only as well).
//!
//! Everything read from the bucket is untrusted: keys are parsed back through
//! [`klio_tiering::objects::parse_key`], objects are decrypted and authenticated with the
//! cluster's data key (bound to their kind and name), and a manifest or index that names
//! another backup or cluster is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::StreamExt;
use klio_api::Tier2RescanReport;
use klio_catalog::{
    BackupCommit, BackupKind, BackupRecord, BackupState, CatalogError, ChunkRecord, ClusterRecord,
    PackRecord, RelayKind, Relocation, SegmentRecord, SegmentState, Tier2Object, Tiers,
    TimelineRecord,
};
use klio_core::clock::unix_now;
use klio_core::frame::{decode_object, ObjectId, ObjectKind};
use klio_core::keys::DataKey;
use klio_core::manifest::{BackupManifest, ChunkIndex, FileKind, IndexedChunk, PackIndex};
use klio_core::{BackupId, ClusterName, SystemId, TimelineId, WalFileName, WalSegSize};
use klio_receiver::cluster::ServerContext;
use klio_tiering::objects::{cluster_key, parse_key, ClusterObject, CLUSTER_OBJECT_FORMAT};
use klio_tiering::{Tier2, Tier2Error};
use object_store::path::Path;

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum RescanError {
    #[error(transparent)]
    Tier2(#[from] Tier2Error),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// The bucket's cluster object cannot be used with this server (wrong master key,
    /// another cluster, damaged).
    #[error("{0}")]
    Refused(String),
}

/// One object listed under the cluster's prefix.
struct Listed {
    kind: RelayKind,
    name: String,
    key: Path,
    size: u64,
    modified_unix: u64,
}

/// Scans `cluster`'s objects in `tier2` and records what the catalog does not know yet.
pub async fn rescan(
    tier2: &Tier2,
    ctx: &ServerContext,
    cluster: &ClusterName,
) -> Result<Tier2RescanReport, RescanError> {
    let catalog = &ctx.catalog;
    let mut report = Tier2RescanReport::default();
    let ckey = cluster_key(cluster);
    let shown = format!("{tier2}/{ckey}");
    let raw = match tier2.get(&ckey).await {
        Ok(b) => b,
        Err(Tier2Error::NotFound { .. }) => {
            report.at = unix_now();
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    report.cluster_found = true;
    let (mut rec, key) = adopt_cluster(ctx, cluster, &raw, &shown)?;

    // Backups first, then WAL: what a listed manifest needs was uploaded before it.
    let mut listed: Vec<Listed> = Vec::new();
    for dir in ["backups", "wal"] {
        let prefix = Path::from_iter([cluster.as_str(), dir]);
        let mut stream = tier2.list(Some(&prefix), None);
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            match parse_key(cluster, &meta.location) {
                Some((kind, name)) => listed.push(Listed {
                    kind,
                    name,
                    key: meta.location.clone(),
                    size: meta.size,
                    modified_unix: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
                }),
                None => {
                    tracing::debug!(key = %meta.location, "rescan: not a Klio object; ignored")
                }
            }
        }
    }
    listed.push(Listed {
        kind: RelayKind::Cluster,
        name: cluster.to_string(),
        key: ckey,
        size: raw.len() as u64,
        modified_unix: unix_now(),
    });
    report.objects = listed.len() as u64;
    forget_vanished(catalog, cluster, &rec, &listed, &mut report)?;

    let mut held = Vec::new();
    let mut segments = Vec::new();
    let mut timelines = Vec::new();
    let mut newest_tli = rec.timeline;
    for o in &listed {
        let known = catalog.tier2_object(cluster, o.kind, &o.name)?;
        if known.as_ref().is_none_or(|k| k.bytes != o.size) {
            if known.is_some() {
                tracing::warn!(cluster = %cluster, key = %o.key, "rescan: the object's size changed in Tier 2; recording it as it is now");
            }
            held.push(Tier2Object {
                kind: o.kind,
                name: o.name.clone(),
                key: o.key.to_string(),
                bytes: o.size,
                sha256: String::new(),
                uploaded_unix: o.modified_unix,
                pruned_unix: None,
            });
        }
        match o.kind {
            RelayKind::WalSegment => {
                let Some(seg) = segment_record(catalog, cluster, &rec, o)? else {
                    continue;
                };
                newest_tli = newest_tli.max(seg.tli);
                segments.push(seg);
            }
            RelayKind::History => {
                let name: WalFileName = o.name.parse().expect("parse_key checked the name");
                let tli = name.timeline();
                newest_tli = newest_tli.max(tli);
                if catalog.timeline(cluster, tli)?.is_some() {
                    continue;
                }
                match read_object(tier2, &key, cluster, o, ObjectKind::TimelineHistory).await {
                    Ok(content) => {
                        let (parent, switch_lsn) =
                            klio_receiver::wal_store::parse_history_tail(&content);
                        timelines.push(TimelineRecord {
                            tli,
                            parent,
                            switch_lsn,
                            history_stored: false,
                        });
                    }
                    Err(why) => report.skipped.push(why),
                }
            }
            _ => {}
        }
    }
    report.new_objects = held.len() as u64;
    report.new_wal_segments = segments.len() as u64;
    report.new_histories = timelines.len() as u64;
    catalog.record_tier2_scan(cluster, &held, &segments, &timelines)?;
    if newest_tli > rec.timeline {
        rec.timeline = newest_tli;
        catalog.put_cluster(&rec)?;
    }

    let by_kind = |kind: RelayKind| -> HashMap<&str, &Listed> {
        listed
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| (o.name.as_str(), o))
            .collect()
    };
    let (manifests, indexes, pg_manifests, packs) = (
        by_kind(RelayKind::BackupManifest),
        by_kind(RelayKind::ChunkIndex),
        by_kind(RelayKind::PgManifest),
        by_kind(RelayKind::Pack),
    );
    let mut placements = Placements::new(&indexes, &by_kind(RelayKind::PackIndex), &packs);
    follow_moved_chunks(tier2, catalog, &key, cluster, &packs, &mut placements).await?;
    let ids: BTreeSet<&str> = manifests.keys().copied().collect();
    for id in ids {
        let backup_id: BackupId = id.parse().expect("parse_key checked the id");
        if catalog.backup(cluster, &backup_id)?.is_some() {
            continue;
        }
        let found = Found {
            manifest: manifests[id],
            index: indexes.get(id).copied(),
            pg_manifest: pg_manifests.contains_key(id),
            packs: &packs,
        };
        let adopted = adopt_backup(
            tier2,
            catalog,
            &key,
            cluster,
            &backup_id,
            &found,
            &mut placements,
        )
        .await?;
        match adopted {
            Ok(()) => report.new_backups += 1,
            Err(why) => {
                tracing::warn!(cluster = %cluster, backup = id, "rescan: {why}");
                report.skipped.push(why);
            }
        }
    }
    report.at = unix_now();
    tracing::info!(
        cluster = %cluster,
        objects = report.objects,
        new_objects = report.new_objects,
        new_wal_segments = report.new_wal_segments,
        new_backups = report.new_backups,
        skipped = report.skipped.len(),
        "Tier 2 rescanned"
    );
    Ok(report)
}

/// Forgets what the catalog holds from earlier scans and the bucket no longer has (the
/// writing server's retention removed it): backups whose manifest is gone, WAL segments,
/// packs, other objects.
fn forget_vanished(
    catalog: &klio_catalog::Catalog,
    cluster: &ClusterName,
    rec: &ClusterRecord,
    listed: &[Listed],
    report: &mut Tier2RescanReport,
) -> Result<(), CatalogError> {
    let present: std::collections::HashSet<(RelayKind, &str)> =
        listed.iter().map(|o| (o.kind, o.name.as_str())).collect();
    let mut prune = catalog.prune(cluster);
    for h in catalog.tier2_objects(cluster)? {
        if h.kind == RelayKind::Cluster || present.contains(&(h.kind, h.name.as_str())) {
            continue;
        }
        report.removed_objects += 1;
        match h.kind {
            RelayKind::BackupManifest => {
                if let Ok(id) = h.name.parse::<BackupId>() {
                    // A reader releases no chunk space: references need not be exact.
                    prune.forget_backup(&id, &[], &[])?;
                    report.removed_backups += 1;
                }
            }
            RelayKind::Pack => prune.forget_pack(&h.name),
            RelayKind::WalSegment => {
                prune.drop_tier2(h.kind, &h.name);
                let name: Option<WalFileName> = h.name.parse().ok();
                if let Some((tli, Ok(Some(segno)))) =
                    name.map(|n| (n.timeline(), n.segno(rec.seg_size)))
                {
                    prune.delete_segment(tli, segno);
                }
            }
            _ => prune.drop_tier2(h.kind, &h.name),
        }
    }
    if !prune.is_empty() {
        prune.commit()?;
    }
    Ok(())
}

/// Checks the bucket's `cluster.json` against the master key and the catalog, and records
/// the cluster when it is new. Returns its record and data key.
fn adopt_cluster(
    ctx: &ServerContext,
    cluster: &ClusterName,
    raw: &[u8],
    shown: &str,
) -> Result<(ClusterRecord, DataKey), RescanError> {
    let refused = |why: String| RescanError::Refused(format!("{shown}: {why}"));
    let obj: ClusterObject = serde_json::from_slice(raw)
        .map_err(|e| refused(format!("not a Klio cluster object ({e})")))?;
    if obj.format != CLUSTER_OBJECT_FORMAT {
        return Err(refused(format!(
            "format {:?}, but this Klio reads {CLUSTER_OBJECT_FORMAT:?}",
            obj.format
        )));
    }
    if obj.cluster != *cluster {
        return Err(refused(format!(
            "describes cluster {:?}, not {cluster:?}",
            obj.cluster.as_str()
        )));
    }
    let system_id: SystemId = obj
        .system_id
        .parse()
        .map_err(|_| refused(format!("system_id {:?} is not a number", obj.system_id)))?;
    let seg_size = WalSegSize::new(obj.seg_size).map_err(|e| refused(e.to_string()))?;
    let wrapped_key =
        hex::decode(&obj.wrapped_key).map_err(|e| refused(format!("wrapped_key: {e}")))?;
    let mut rec = ClusterRecord {
        name: cluster.clone(),
        system_id,
        wrapped_key,
        slot: String::new(),
        seg_size,
        timeline: TimelineId::FIRST,
        created_unix: obj.created_unix,
    };
    let key = ctx.data_key(&rec).map_err(|e| {
        refused(format!(
            "the master key does not open the cluster's data key ({e}): master_key_file must be the writing server's master key"
        ))
    })?;
    match ctx.catalog.cluster(cluster)? {
        Some(known) if known.system_id != system_id || known.seg_size != seg_size => {
            return Err(refused(format!(
                "describes PostgreSQL system {system_id} with {}-byte segments, but this server's catalog holds system {} with {}-byte segments: the bucket now holds another cluster under this name; start the read-only server on an empty data_dir",
                seg_size.bytes(), known.system_id, known.seg_size.bytes()
            )));
        }
        Some(known) => {
            // The same cluster; after a key rotation its wrapped key differs.
            rec.timeline = known.timeline;
            if known != rec {
                ctx.catalog.put_cluster(&rec)?;
            }
        }
        None => ctx.catalog.put_cluster(&rec)?,
    }
    Ok((rec, key))
}

/// The record of a listed WAL segment the catalog does not know as held by Tier 2;
/// `None` when it does, or when the name does not fit the cluster's segment size.
fn segment_record(
    catalog: &klio_catalog::Catalog,
    cluster: &ClusterName,
    rec: &ClusterRecord,
    o: &Listed,
) -> Result<Option<SegmentRecord>, CatalogError> {
    let name: WalFileName = o.name.parse().expect("parse_key checked the name");
    let Ok(Some(segno)) = name.segno(rec.seg_size) else {
        tracing::warn!(cluster = %cluster, key = %o.key, "rescan: not a segment of this cluster's segment size; ignored");
        return Ok(None);
    };
    let existing = catalog.segment(cluster, name.timeline(), segno)?;
    Ok(match existing {
        Some(r) if r.tiers.tier2 => None,
        Some(mut r) => {
            r.tiers.tier2 = true;
            Some(r)
        }
        None => Some(SegmentRecord {
            tli: name.timeline(),
            segno,
            state: SegmentState::Sealed,
            plain_size: rec.seg_size.bytes(),
            crc32c: None,
            stored_size: o.size,
            tiers: Tiers {
                tier1: false,
                tier2: true,
            },
            recompress: false,
        }),
    })
}

/// Fetches a listed object and decrypts it as `kind` named by the object's identity.
/// `Err` says what is wrong with it (it is skipped, not fatal).
async fn read_object(
    tier2: &Tier2,
    key: &DataKey,
    cluster: &ClusterName,
    o: &Listed,
    kind: ObjectKind,
) -> Result<Vec<u8>, String> {
    let shown = format!("{tier2}/{}", o.key);
    let bytes = tier2
        .get(&o.key)
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    let name = match kind {
        ObjectKind::TimelineHistory | ObjectKind::WalSegment => o
            .name
            .parse::<WalFileName>()
            .map(|n| n.identity())
            .unwrap_or_else(|_| o.name.clone()),
        _ => o.name.clone(),
    };
    let id = ObjectId {
        cluster: cluster.clone(),
        kind,
        name,
    };
    let obj = decode_object(key, &id, &bytes, false)
        .map_err(|e| format!("{shown}: cannot be opened with the cluster's key: {e}"))?;
    if !obj.finished {
        return Err(format!("{shown}: truncated (no final frame)"));
    }
    Ok(obj.data)
}

/// Reads a backup's JSON objects from the bucket.
struct Reader<'a> {
    tier2: &'a Tier2,
    key: &'a DataKey,
    cluster: &'a ClusterName,
}

impl Reader<'_> {
    /// The listed object `o`, decrypted as `kind` and parsed; `Err` says what is wrong.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        o: &Listed,
        kind: ObjectKind,
        what: &str,
    ) -> Result<T, String> {
        let bytes = read_object(self.tier2, self.key, self.cluster, o, kind).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the {what} is not valid: {e}"))
    }
}

/// Counts one more live chunk in the new record of pack `name` (sized from the listing).
fn count_in_pack(
    packs: &mut BTreeMap<String, PackRecord>,
    name: &str,
    listed: &HashMap<&str, &Listed>,
) {
    let p = packs.entry(name.to_string()).or_insert_with(|| PackRecord {
        name: name.to_string(),
        size: listed.get(name).map_or(0, |o| o.size),
        chunks: 0,
        live_chunks: 0,
    });
    p.chunks += 1;
    p.live_chunks += 1;
}

/// A new chunk record (one reference) for a chunk where `c` places it.
fn chunk_record(c: &IndexedChunk) -> ChunkRecord {
    ChunkRecord {
        pack: c.pack.clone(),
        offset: c.offset,
        stored_len: c.stored_len,
        plain_len: c.plain_len,
        refs: 1,
        tier1_freed: false,
    }
}

/// Where the bucket's indexes place chunks, read on first use: every listed chunk index
/// (a backup's, or one the writer keeps after removing the backup because packs it
/// placed remain) and every repacked pack's index, each entry kept only when its pack is
/// listed. Any listed place holds the chunk (chunks are bound to their id, not their
/// place); an index is untrusted like every object, so a place is used only for a
/// listed pack and every chunk read is authenticated.
struct Placements<'a> {
    indexes: Vec<&'a Listed>,
    pack_indexes: Vec<&'a Listed>,
    packs: &'a HashMap<&'a str, &'a Listed>,
    map: Option<HashMap<[u8; 32], IndexedChunk>>,
}

impl<'a> Placements<'a> {
    fn new(
        indexes: &HashMap<&'a str, &'a Listed>,
        pack_indexes: &HashMap<&'a str, &'a Listed>,
        packs: &'a HashMap<&'a str, &'a Listed>,
    ) -> Placements<'a> {
        let sorted = |m: &HashMap<&'a str, &'a Listed>| {
            let mut v: Vec<&'a Listed> = m.values().copied().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        Placements {
            indexes: sorted(indexes),
            pack_indexes: sorted(pack_indexes),
            packs,
            map: None,
        }
    }

    async fn get(&mut self, reader: &Reader<'_>, id: &[u8; 32]) -> Option<IndexedChunk> {
        if self.map.is_none() {
            self.map = Some(self.read(reader).await);
        }
        self.map.as_ref().and_then(|m| m.get(id).cloned())
    }

    /// Reads every index; an unreadable one is logged and left out.
    async fn read(&self, reader: &Reader<'_>) -> HashMap<[u8; 32], IndexedChunk> {
        let mut map = HashMap::new();
        let mut keep = |name: &str, chunks: Vec<IndexedChunk>, own_pack: Option<&str>| {
            for c in chunks {
                if own_pack.is_some_and(|p| p != c.pack)
                    || !self.packs.contains_key(c.pack.as_str())
                {
                    continue;
                }
                if c.pack.parse::<klio_core::layout::PackName>().is_err() {
                    tracing::warn!(
                        index = name,
                        "rescan: an index names a pack that is not a pack name; entry ignored"
                    );
                    continue;
                }
                map.insert(c.id.0, c);
            }
        };
        for o in &self.indexes {
            match reader
                .json::<ChunkIndex>(o, ObjectKind::ChunkIndex, "chunk index")
                .await
            {
                Ok(i) if i.backup_id.as_str() == o.name => keep(&o.name, i.chunks, None),
                Ok(_) => {
                    tracing::warn!(key = %o.key, "rescan: the chunk index names another backup; ignored")
                }
                Err(why) => tracing::warn!(key = %o.key, "rescan: {why}"),
            }
        }
        // Repacked packs last: they are newer than the packs the backups wrote.
        for o in &self.pack_indexes {
            match reader
                .json::<PackIndex>(o, ObjectKind::PackIndex, "pack index")
                .await
            {
                Ok(i) if i.pack == o.name => keep(&o.name, i.chunks, Some(&o.name)),
                Ok(_) => {
                    tracing::warn!(key = %o.key, "rescan: the pack index names another pack; ignored")
                }
                Err(why) => tracing::warn!(key = %o.key, "rescan: {why}"),
            }
        }
        map
    }
}

/// Moves the records of chunks whose pack the bucket no longer has (the writer repacked
/// it, then removed it) to where the bucket's indexes now place them.
async fn follow_moved_chunks(
    tier2: &Tier2,
    catalog: &klio_catalog::Catalog,
    key: &DataKey,
    cluster: &ClusterName,
    packs: &HashMap<&str, &Listed>,
    placements: &mut Placements<'_>,
) -> Result<(), CatalogError> {
    let stranded: Vec<([u8; 32], ChunkRecord)> = catalog
        .chunks(cluster)?
        .into_iter()
        .filter(|(_, c)| !packs.contains_key(c.pack.as_str()))
        .collect();
    if stranded.is_empty() {
        return Ok(());
    }
    let reader = Reader {
        tier2,
        key,
        cluster,
    };
    let mut moves = Vec::new();
    let mut new_packs: BTreeMap<String, PackRecord> = BTreeMap::new();
    let mut lost = 0usize;
    for (id, old) in stranded {
        let Some(placed) = placements.get(&reader, &id).await else {
            lost += 1;
            continue;
        };
        let mut rec = chunk_record(&placed);
        rec.refs = old.refs;
        if catalog.pack(cluster, &placed.pack)?.is_none() {
            count_in_pack(&mut new_packs, &placed.pack, packs);
        }
        moves.push((id, rec));
    }
    if lost > 0 {
        tracing::warn!(cluster = %cluster, chunks = lost, "rescan: chunks whose pack left the bucket are placed by no index; backups that use them cannot be restored from this bucket");
    }
    if !moves.is_empty() {
        tracing::info!(cluster = %cluster, chunks = moves.len(), "rescan: chunks the writer moved to other packs followed");
        catalog.relocate_chunks(
            cluster,
            &Relocation {
                moves,
                packs: new_packs.into_values().collect(),
                emptied: Vec::new(),
                relay: Vec::new(),
            },
        )?;
    }
    Ok(())
}

/// What the listing holds of one backup.
struct Found<'a> {
    manifest: &'a Listed,
    index: Option<&'a Listed>,
    pg_manifest: bool,
    packs: &'a HashMap<&'a str, &'a Listed>,
}

/// Commits a backup found in the bucket: its chunk records (from its chunk index), the
/// references to older backups' chunks (from its manifest), its packs. The outer error
/// stops the scan (the catalog failed); the inner one says why this backup is skipped.
async fn adopt_backup(
    tier2: &Tier2,
    catalog: &klio_catalog::Catalog,
    key: &DataKey,
    cluster: &ClusterName,
    id: &BackupId,
    found: &Found<'_>,
    placements: &mut Placements<'_>,
) -> Result<Result<(), String>, CatalogError> {
    let Some(index_obj) = found.index else {
        return Ok(Err(format!(
            "backup {id}: the bucket has its manifest but no chunk index (chunks.klio; backups taken before Klio wrote one cannot be restored from the bucket alone)"
        )));
    };
    let reader = Reader {
        tier2,
        key,
        cluster,
    };
    let manifest: BackupManifest = match reader
        .json(found.manifest, ObjectKind::BackupManifest, "manifest")
        .await
    {
        Ok(m) => m,
        Err(why) => return Ok(Err(format!("backup {id}: {why}"))),
    };
    let index: ChunkIndex = match reader
        .json(index_obj, ObjectKind::ChunkIndex, "chunk index")
        .await
    {
        Ok(i) => i,
        Err(why) => return Ok(Err(format!("backup {id}: {why}"))),
    };
    if manifest.backup_id != *id || manifest.cluster != *cluster || index.backup_id != *id {
        return Ok(Err(format!(
            "backup {id}: its manifest or chunk index names another backup or cluster"
        )));
    }

    let mut new_chunks: BTreeMap<[u8; 32], ChunkRecord> = BTreeMap::new();
    let mut packs: BTreeMap<String, PackRecord> = BTreeMap::new();
    for c in &index.chunks {
        if c.pack.parse::<klio_core::layout::PackName>().is_err() {
            return Ok(Err(format!(
                "backup {id}: its chunk index names {:?}, which is not a pack name",
                c.pack
            )));
        }
        // The writer may have repacked the chunk since, and removed this pack.
        let placed = match found.packs.contains_key(c.pack.as_str()) {
            true => c.clone(),
            false => match placements.get(&reader, &c.id.0).await {
                Some(p) => p,
                None => {
                    return Ok(Err(format!(
                        "backup {id}: pack {} is not in the bucket, and no index places its chunk {} elsewhere",
                        c.pack, c.id
                    )))
                }
            },
        };
        // A chunk an older backup's index placed too was stored again (Tier 1 had freed
        // it): this newer place is the one the writer's catalog knows.
        new_chunks.insert(c.id.0, chunk_record(&placed));
        if catalog.pack(cluster, &placed.pack)?.is_some() {
            continue;
        }
        count_in_pack(&mut packs, &placed.pack, found.packs);
    }
    let mut referenced: BTreeMap<[u8; 32], u32> = BTreeMap::new();
    for f in &manifest.files {
        for c in &f.chunks {
            if new_chunks.contains_key(&c.0) || referenced.contains_key(&c.0) {
                continue;
            }
            if let Some(known) = catalog.chunk(cluster, &c.0)? {
                referenced.insert(c.0, known.stored_len);
                continue;
            }
            // Stored by a backup the writer has removed since (its chunk index stays
            // while its packs do), or moved by repacking.
            let Some(placed) = placements.get(&reader, &c.0).await else {
                return Ok(Err(format!(
                    "backup {id}: chunk {c} is in no chunk index of the bucket"
                )));
            };
            new_chunks.insert(c.0, chunk_record(&placed));
            if catalog.pack(cluster, &placed.pack)?.is_none() {
                count_in_pack(&mut packs, &placed.pack, found.packs);
            }
        }
    }
    let new_bytes: u64 = new_chunks.values().map(|c| u64::from(c.stored_len)).sum();
    let old_bytes: u64 = referenced.values().map(|&l| u64::from(l)).sum();
    let files = &manifest.files;
    let rec = BackupRecord {
        id: id.clone(),
        label: manifest.label.clone(),
        kind: if found.pg_manifest {
            BackupKind::Stream
        } else {
            BackupKind::Offload
        },
        state: BackupState::Complete,
        error: None,
        start_lsn: manifest.start_lsn,
        start_tli: manifest.start_tli,
        end_lsn: Some(manifest.end_lsn),
        end_tli: Some(manifest.end_tli),
        started_unix: manifest
            .started_unix
            .unwrap_or(found.manifest.modified_unix),
        finished_unix: Some(
            manifest
                .finished_unix
                .unwrap_or(found.manifest.modified_unix),
        ),
        pg_version: manifest.pg_version,
        logical_bytes: files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .map(|f| f.size)
            .sum(),
        stored_bytes: new_bytes + old_bytes,
        new_bytes,
        files: files.len() as u64,
        chunks: (new_chunks.len() + referenced.len()) as u64,
        new_chunks: new_chunks.len() as u64,
        packs: packs.keys().cloned().collect(),
    };
    let commit = BackupCommit {
        new_chunks: new_chunks.into_iter().collect(),
        referenced: referenced.into_keys().collect(),
        packs: packs.into_values().collect(),
        relay: Vec::new(),
    };
    catalog.commit_backup(cluster, &rec, &commit)?;
    Ok(Ok(()))
}

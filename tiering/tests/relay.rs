//! The relay against a real catalog and real Tier 1 files, to the local filesystem store
//! and to a real S3 server (moto) behind a proxy that fails on demand: byte-for-byte
//! copies recorded as held, the start-up backfill, the manifest ordering rule, dead
//! letters for permanent failures, and backoff for transient ones.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use klio_catalog::{
    BackupCommit, BackupKind, BackupRecord, BackupState, Catalog, ClusterRecord, PackRecord,
    RelayItem, RelayKind, SegmentRecord, SegmentState, Tiers, TimelineRecord,
};
use klio_core::layout::DataDir;
use klio_core::{ClusterName, Lsn, SegNo, SystemId, TimelineId, WalSegSize};
use klio_harness::fault_proxy::FaultProxy;
use klio_harness::s3::{S3Server, DEFAULT_BUCKET};
use klio_tiering::relay::PassReport;
use klio_tiering::{Relay, RelaySettings, Tier2};

use common::{local_tier2, open_at};

const ID: &str = "20261124T193000Z";

struct Tier1 {
    dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    cluster: ClusterName,
}

impl Tier1 {
    fn new() -> Tier1 {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let catalog = Arc::new(Catalog::open(&data.catalog_dir()).unwrap());
        let cluster: ClusterName = "pg".parse().unwrap();
        catalog
            .put_cluster(&ClusterRecord {
                name: cluster.clone(),
                system_id: SystemId::from(7),
                wrapped_key: vec![0; 61],
                slot: "klio".into(),
                seg_size: WalSegSize::DEFAULT,
                timeline: TimelineId::FIRST,
                created_unix: 1,
            })
            .unwrap();
        Tier1 {
            dir,
            catalog,
            cluster,
        }
    }

    fn data(&self) -> DataDir {
        DataDir::new(self.dir.path())
    }

    fn write(&self, path: &Path, len: usize, seed: u8) -> Vec<u8> {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        std::fs::write(path, &body).unwrap();
        body
    }

    /// A sealed segment `n`, queued when `queue`.
    fn segment(&self, n: u64, queue: bool) -> Vec<u8> {
        let name =
            klio_core::WalFileName::segment(TimelineId::FIRST, SegNo(n), WalSegSize::DEFAULT);
        let path = self.data().wal(&self.cluster).file(&name);
        let body = self.write(&path, 50_000 + n as usize, n as u8);
        let rec = SegmentRecord {
            tli: TimelineId::FIRST,
            segno: SegNo(n),
            state: SegmentState::Sealed,
            plain_size: 16 << 20,
            crc32c: Some(1),
            stored_size: body.len() as u64,
            tiers: Tiers {
                tier1: true,
                tier2: false,
            },
            recompress: false,
        };
        let item = RelayItem::new(
            RelayKind::WalSegment,
            name.to_string(),
            body.len() as u64,
            1,
        );
        self.catalog
            .put_segment_queued(&self.cluster, &rec, queue.then_some(&item))
            .unwrap();
        body
    }

    /// A complete backup ending in segment `end_seg` with one pack of `pack_len` bytes;
    /// its objects queued when `queue`.
    fn backup(&self, pack_len: usize, end_seg: u64, queue: bool) -> (Vec<u8>, Vec<u8>) {
        let id: klio_core::BackupId = ID.parse().unwrap();
        let pack_name = format!("{ID}-0001");
        let backups = self.data().backups(&self.cluster);
        let pack = self.write(&backups.pack(&pack_name.parse().unwrap()), pack_len, 9);
        let dir = backups.backup(&id).unwrap();
        let manifest = self.write(&dir.manifest(), 3000, 1);
        self.write(&dir.pg_manifest(), 2000, 2);
        let seg = WalSegSize::DEFAULT.bytes();
        let rec = BackupRecord {
            id: id.clone(),
            label: "t".into(),
            kind: BackupKind::Stream,
            state: BackupState::Complete,
            error: None,
            start_lsn: Lsn(seg * end_seg),
            start_tli: TimelineId::FIRST,
            end_lsn: Some(Lsn(seg * end_seg + 100)),
            end_tli: Some(TimelineId::FIRST),
            started_unix: 1,
            finished_unix: Some(2),
            pg_version: Some(170_000),
            logical_bytes: 1,
            stored_bytes: 1,
            new_bytes: 1,
            files: 1,
            chunks: 1,
            new_chunks: 1,
            packs: vec![pack_name.clone()],
        };
        let relay = if queue {
            vec![
                RelayItem::new(RelayKind::Pack, pack_name.clone(), pack.len() as u64, 1),
                RelayItem::new(RelayKind::PgManifest, ID, 2000, 1),
                RelayItem::new(RelayKind::BackupManifest, ID, 3000, 1),
            ]
        } else {
            Vec::new()
        };
        self.catalog
            .commit_backup(
                &self.cluster,
                &rec,
                &BackupCommit {
                    packs: vec![PackRecord {
                        name: pack_name,
                        size: pack.len() as u64,
                        chunks: 1,
                        live_chunks: 1,
                    }],
                    relay,
                    ..BackupCommit::default()
                },
            )
            .unwrap();
        (pack, manifest)
    }

    fn relay(&self, tier2: Tier2) -> Relay {
        Relay::new(
            Arc::new(tier2),
            Arc::clone(&self.catalog),
            self.data(),
            self.cluster.clone(),
            RelaySettings {
                concurrency: 3,
                ..RelaySettings::default()
            },
        )
    }
}

/// The first pass uploads the cluster's key object alone; `waiting` other entries wait
/// for it.
async fn cluster_object_first(relay: &Relay, waiting: usize) {
    let r = relay.pass().await.unwrap();
    assert_eq!(
        (r.attempted, r.uploaded, r.waiting),
        (1, 1, waiting),
        "{r:?}"
    );
}

/// Runs passes until one attempts nothing.
async fn drain(relay: &Relay) -> Vec<PassReport> {
    let mut out = Vec::new();
    loop {
        let r = relay.pass().await.unwrap();
        out.push(r);
        if r.attempted == 0 {
            return out;
        }
    }
}

#[tokio::test]
async fn queued_objects_are_copied_byte_for_byte_and_recorded_as_held() {
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    let seg3 = t1.segment(3, true);
    let seg4 = t1.segment(4, true);
    // A pack above the multipart threshold goes multipart.
    let (pack, manifest) = t1.backup((17 << 20) + 5, 4, true);
    let relay = t1.relay(local_tier2(bucket.path()));
    cluster_object_first(&relay, 5).await;
    drain(&relay).await;

    let b = bucket.path().join("pg");
    assert_eq!(
        std::fs::read(b.join("wal/000000010000000000000003")).unwrap(),
        seg3
    );
    assert_eq!(
        std::fs::read(b.join("wal/000000010000000000000004")).unwrap(),
        seg4
    );
    assert_eq!(
        std::fs::read(b.join(format!("backups/packs/{ID}-0001.pack"))).unwrap(),
        pack
    );
    assert_eq!(
        std::fs::read(b.join(format!("backups/{ID}/manifest.klio"))).unwrap(),
        manifest
    );
    assert!(b
        .join(format!("backups/{ID}/backup_manifest.klio"))
        .is_file());

    let cat = &t1.catalog;
    assert!(cat.relay_items(&t1.cluster).unwrap().is_empty());
    let held = cat.tier2_objects(&t1.cluster).unwrap();
    assert_eq!(held.len(), 6);
    let object: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(object["format"], "klio-cluster-v1");
    assert_eq!(object["system_id"], "7");
    assert_eq!(object["wrapped_key"], "00".repeat(61));
    let pack_held = cat
        .tier2_object(&t1.cluster, RelayKind::Pack, &format!("{ID}-0001"))
        .unwrap()
        .unwrap();
    assert_eq!(pack_held.bytes, pack.len() as u64);
    use sha2::Digest;
    assert_eq!(pack_held.sha256, hex::encode(sha2::Sha256::digest(&pack)));
    assert_eq!(pack_held.key, format!("pg/backups/packs/{ID}-0001.pack"));
    let seg = cat
        .segment(&t1.cluster, TimelineId::FIRST, SegNo(3))
        .unwrap()
        .unwrap();
    assert!(seg.tiers.tier1 && seg.tiers.tier2);
    let c = relay.counters();
    assert_eq!(
        c.uploaded_objects
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

#[tokio::test]
async fn backfill_queues_what_tier1_holds_and_tier2_lacks_once() {
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    // Stored before Tier 2 was configured: nothing queued.
    t1.segment(1, false);
    t1.segment(2, false);
    t1.backup(1000, 2, false);
    let hist = t1
        .data()
        .wal(&t1.cluster)
        .history(TimelineId::new(2).unwrap());
    t1.write(&hist, 100, 3);
    t1.catalog
        .put_timeline(
            &t1.cluster,
            &TimelineRecord {
                tli: TimelineId::new(2).unwrap(),
                parent: Some(TimelineId::FIRST),
                switch_lsn: Some(Lsn(0x300_0000)),
                history_stored: true,
            },
        )
        .unwrap();
    // A partial segment is not final: never queued.
    t1.catalog
        .put_segment(
            &t1.cluster,
            &SegmentRecord {
                tli: TimelineId::FIRST,
                segno: SegNo(3),
                state: SegmentState::Partial,
                plain_size: 10,
                crc32c: None,
                stored_size: 100,
                tiers: Tiers {
                    tier1: true,
                    tier2: false,
                },
                recompress: false,
            },
        )
        .unwrap();
    let relay = t1.relay(local_tier2(bucket.path()));
    // The cluster object, two segments, the history file, a pack and two manifests.
    assert_eq!(relay.backfill().await.unwrap(), 7);
    // Queued already: a second backfill adds nothing.
    assert_eq!(relay.backfill().await.unwrap(), 0);
    drain(&relay).await;
    // Held now: nothing to queue either.
    assert_eq!(relay.backfill().await.unwrap(), 0);
    assert_eq!(t1.catalog.tier2_objects(&t1.cluster).unwrap().len(), 7);
    assert!(bucket.path().join("pg/wal/00000002.history").is_file());
}

#[tokio::test]
async fn a_backup_manifest_waits_for_its_packs_and_its_wal() {
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    t1.backup(1000, 5, true);
    // The WAL up to the backup's end is queued but its file is not there yet (as if
    // written by hand later): it fails for good, and the manifest must wait for it.
    let name = "000000010000000000000005";
    t1.catalog
        .relay_enqueue(
            &t1.cluster,
            &[RelayItem::new(RelayKind::WalSegment, name, 50_005, 1)],
        )
        .unwrap();
    let relay = t1.relay(local_tier2(bucket.path()));
    cluster_object_first(&relay, 4).await;
    let first = relay.pass().await.unwrap();
    assert_eq!(first.waiting, 1, "{first:?}");
    drain(&relay).await;
    let manifest = bucket.path().join(format!("pg/backups/{ID}/manifest.klio"));
    assert!(!manifest.exists(), "the manifest went before its WAL");
    assert!(bucket
        .path()
        .join(format!("pg/backups/packs/{ID}-0001.pack"))
        .is_file());
    let dead = t1
        .catalog
        .relay_item(&t1.cluster, RelayKind::WalSegment, name)
        .unwrap()
        .unwrap();
    assert!(dead.dead, "{dead:?}");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot be read"),
        "{dead:?}"
    );

    // The segment appears, is retried, and the manifest follows.
    t1.segment(5, false);
    assert_eq!(t1.catalog.relay_revive(&t1.cluster, None).unwrap(), 1);
    drain(&relay).await;
    assert!(manifest.is_file());
    assert!(t1.catalog.relay_items(&t1.cluster).unwrap().is_empty());
}

#[tokio::test]
async fn permanent_failures_are_dead_letters_and_block_nothing_else() {
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    t1.segment(1, true);
    t1.segment(2, true);
    t1.segment(3, true);
    // Segment 2 changed after it was queued; segment 3 conflicts with what Tier 2 has.
    let seg2 = t1
        .data()
        .wal(&t1.cluster)
        .sealed(TimelineId::FIRST, SegNo(2), WalSegSize::DEFAULT);
    std::fs::write(&seg2, b"short").unwrap();
    let theirs = bucket.path().join("pg/wal/000000010000000000000003");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, b"another writer's object").unwrap();
    // A queue entry whose name is a path.
    t1.catalog
        .relay_enqueue(
            &t1.cluster,
            &[RelayItem::new(
                RelayKind::Pack,
                "../../../etc/passwd-0001",
                5,
                1,
            )],
        )
        .unwrap();

    let relay = t1.relay(local_tier2(bucket.path()));
    cluster_object_first(&relay, 4).await;
    let reports = drain(&relay).await;
    assert_eq!(reports[0].uploaded, 1, "{reports:?}");
    assert_eq!(reports[0].failed, 3, "{reports:?}");
    let items = t1.catalog.relay_items(&t1.cluster).unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items.iter().all(|i| i.dead && i.attempts == 1),
        "{items:#?}"
    );
    let error = |name: &str| {
        items
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| i.last_error.clone())
            .unwrap()
    };
    assert!(error("000000010000000000000002").contains("changed"));
    assert!(error("000000010000000000000003").contains("already exists with different content"));
    assert!(error("../../../etc/passwd-0001").contains("names no Tier 1 object"));
    assert_eq!(
        std::fs::read(&theirs).unwrap(),
        b"another writer's object",
        "a conflicting object was replaced"
    );
    assert_eq!(t1.catalog.relay_backlog(&t1.cluster).unwrap().dead, 3);
}

#[tokio::test]
async fn transient_failures_back_off_and_succeed_once_the_store_is_back() {
    let t1 = Tier1::new();
    let s3 = S3Server::start().unwrap();
    let proxy = FaultProxy::start(s3.port()).unwrap();
    let seg = t1.segment(1, true);
    let relay = t1.relay(open_at(&proxy.endpoint(), DEFAULT_BUCKET, "p"));
    cluster_object_first(&relay, 1).await;

    proxy.set_unavailable(true);
    let r = relay.pass().await.unwrap();
    assert_eq!((r.attempted, r.failed), (1, 1), "{r:?}");
    let item = t1
        .catalog
        .relay_item(
            &t1.cluster,
            RelayKind::WalSegment,
            "000000010000000000000001",
        )
        .unwrap()
        .unwrap();
    assert!(!item.dead, "a 503 made a dead letter: {item:?}");
    assert_eq!(item.attempts, 1);
    assert!(item.not_before_unix > item.enqueued_unix);
    assert!(
        item.last_error.as_deref().unwrap_or("").contains("503")
            || item
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("SlowDown"),
        "{item:?}"
    );
    assert!(proxy.refused() > 0);

    // Not due yet: the next pass leaves it alone and says when it is due.
    proxy.set_unavailable(false);
    let r = relay.pass().await.unwrap();
    assert_eq!(r.attempted, 0, "{r:?}");
    assert!(r.next_due_in.is_some(), "{r:?}");

    // Due again after its backoff: uploaded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = relay.pass().await.unwrap();
        if r.uploaded == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never retried");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s3.get_object(DEFAULT_BUCKET, "p/pg/wal/000000010000000000000001")
            .unwrap(),
        seg
    );
}

#[tokio::test]
async fn another_clusters_key_object_under_the_prefix_stops_everything_else() {
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    t1.segment(1, true);
    // A different cluster with the same name already relays to this prefix.
    let theirs = bucket.path().join("pg/cluster.json");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, br#"{"format":"klio-cluster-v1","system_id":"99"}"#).unwrap();
    let relay = t1.relay(local_tier2(bucket.path()));
    let reports = drain(&relay).await;
    assert_eq!(reports[0].failed, 1, "{reports:?}");
    let dead = t1
        .catalog
        .relay_item(&t1.cluster, RelayKind::Cluster, "pg")
        .unwrap()
        .unwrap();
    assert!(dead.dead, "{dead:?}");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or("")
            .contains("already exists with different content"),
        "{dead:?}"
    );
    // The segment never went: this prefix is not this cluster's.
    assert!(!bucket
        .path()
        .join("pg/wal/000000010000000000000001")
        .exists());
    let r = relay.pass().await.unwrap();
    assert_eq!((r.attempted, r.waiting), (0, 1), "{r:?}");
    assert_eq!(
        std::fs::read(&theirs).unwrap(),
        br#"{"format":"klio-cluster-v1","system_id":"99"}"#,
        "the other cluster's object was replaced"
    );
}

/// While WAL intake needs the machine (`yield_to` says so), a pass starts no further
/// upload: what has not started stays queued, and goes once intake has caught up.
#[tokio::test]
async fn a_pass_starts_no_upload_while_intake_catches_up() {
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    for n in 3..9 {
        t1.segment(n, true);
    }
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = {
        let busy = Arc::clone(&busy);
        t1.relay(local_tier2(bucket.path()))
            .yield_to(Arc::new(move || {
                busy.load(std::sync::atomic::Ordering::SeqCst)
            }))
    };
    cluster_object_first(&relay, 6).await;
    // Intake starts catching up before the pass: nothing is uploaded.
    busy.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = relay.pass().await.unwrap();
    assert_eq!((r.uploaded, r.failed), (0, 0), "{r:?}");
    assert_eq!(t1.catalog.relay_items(&t1.cluster).unwrap().len(), 6);
    assert!(!bucket.path().join("pg/wal").exists());
    // Caught up: everything goes.
    busy.store(false, std::sync::atomic::Ordering::SeqCst);
    let uploaded: usize = drain(&relay).await.iter().map(|r| r.uploaded).sum();
    assert_eq!(uploaded, 6);
    assert!(t1.catalog.relay_items(&t1.cluster).unwrap().is_empty());
}

/// A sealed segment still to be recompressed in Tier 1 (its mark set) is queued by the
/// recompressor once it is in its final form: the start-up backfill leaves it alone,
/// and a backup manifest whose WAL it holds waits for it.
#[tokio::test]
async fn a_segment_waiting_for_recompression_is_not_backfilled_and_holds_back_its_backups_manifest()
{
    let t1 = Tier1::new();
    let bucket = tempfile::tempdir().unwrap();
    t1.backup(1000, 5, true);
    let body = t1.segment(5, false);
    let mut rec = t1
        .catalog
        .segment(&t1.cluster, TimelineId::FIRST, SegNo(5))
        .unwrap()
        .unwrap();
    rec.recompress = true;
    t1.catalog.put_segment(&t1.cluster, &rec).unwrap();
    let name = "000000010000000000000005";
    let relay = t1.relay(local_tier2(bucket.path()));
    relay.backfill().await.unwrap();
    assert!(t1
        .catalog
        .relay_item(&t1.cluster, RelayKind::WalSegment, name)
        .unwrap()
        .is_none());
    drain(&relay).await;
    let manifest = bucket.path().join(format!("pg/backups/{ID}/manifest.klio"));
    assert!(!manifest.exists(), "the manifest went before its WAL");
    assert!(!bucket.path().join(format!("pg/wal/{name}")).exists());
    assert!(bucket
        .path()
        .join(format!("pg/backups/packs/{ID}-0001.pack"))
        .is_file());

    // Recompressed: the recompressor clears the mark and queues it in one write.
    rec.recompress = false;
    let item = RelayItem::new(RelayKind::WalSegment, name, body.len() as u64, 1);
    t1.catalog
        .put_segment_queued(&t1.cluster, &rec, Some(&item))
        .unwrap();
    drain(&relay).await;
    assert_eq!(
        std::fs::read(bucket.path().join(format!("pg/wal/{name}"))).unwrap(),
        body
    );
    assert!(manifest.is_file());
}

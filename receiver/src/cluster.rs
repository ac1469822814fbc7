//! One protected cluster: its catalog identity, its Tier 1 store, and the task
//! that streams its WAL (connect → identify → slot → START_REPLICATION → follow
//! timelines → reconnect with backoff).
//!
//! Writes: the cluster's catalog record (on first contact and timeline changes),
//! timeline history files, and (through `Ingest`, inline) its WAL segments.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use klio_catalog::{Catalog, CatalogError, ClusterRecord};
use klio_core::clock::unix_now;
use klio_core::keys::KeyError;
use klio_core::{ClusterName, DataKey, Lsn, MasterKey, SystemId, TimelineId, WalSegSize};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::ingest::Ingest;
use crate::status::{ClusterStatus, ConnectionState};
use crate::wal_store::{StoreError, WalStore};
use klio_pgwire::conninfo::ConnInfo;
use klio_pgwire::replication::{self, StreamStart};
use klio_pgwire::{PgError, ReplicationConn};

mod copy_loop;
use copy_loop::{copy_loop, CopyEnd, CopyPosition};

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the catalog in {path}: {}", startup_cause(source.is_disk_full(), source))]
    Catalog { path: PathBuf, source: CatalogError },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path} is damaged (bad magic or checksum); it holds the master key check value and cannot be regenerated safely")]
    KeyCheckFile { path: PathBuf },
    #[error("catalog: {}", startup_cause(.0.is_disk_full(), .0))]
    CatalogOp(#[from] CatalogError),
    #[error("cluster {cluster}: Tier 1 store: {}", startup_cause(error.is_disk_full(), error))]
    Store {
        cluster: ClusterName,
        error: StoreError,
    },
}

/// A startup failure's cause; on a full disk, with the fix.
fn startup_cause(disk_full: bool, e: &dyn std::fmt::Display) -> String {
    if disk_full {
        format!("Klio's volume is out of space ({e}); free space on it or enlarge it, then start Klio again")
    } else {
        e.to_string()
    }
}

/// Server-wide state shared by all clusters.
pub struct ServerContext {
    pub data_dir: PathBuf,
    pub catalog: Arc<Catalog>,
    master: MasterKey,
    /// Tier 2 is configured: stores opened from now on queue what they make final for
    /// it (set before any store is opened).
    pub relay_to_tier2: bool,
    /// Says whether retention could free space in Tier 1 for a cluster; added to the
    /// error when Tier 1 is out of space (set once the server has retention).
    pub disk_full_advice: OnceLock<DiskFullAdvice>,
}

/// See [`ServerContext::disk_full_advice`]. May block (it plans retention).
pub type DiskFullAdvice = Arc<dyn Fn(&ClusterName) -> String + Send + Sync>;

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl ServerContext {
    /// Checks the master key, then opens the catalog. A wrong key fails before
    /// anything in the data directory is created or modified.
    pub fn open(data_dir: &Path, master: MasterKey) -> Result<ServerContext, StartupError> {
        let layout = klio_core::layout::DataDir::new(data_dir);
        let (check_path, cat_dir) = (layout.key_check(), layout.catalog_dir());
        let open_catalog = || {
            // Created here (0700) rather than by RocksDB (which follows the umask).
            klio_core::crashsafe::create_dir_all_durably(&cat_dir).map_err(|source| {
                StartupError::DataDir {
                    path: cat_dir.clone(),
                    source,
                }
            })?;
            Catalog::open(&cat_dir).map_err(|source| StartupError::Catalog {
                path: cat_dir.clone(),
                source,
            })
        };
        let catalog = match std::fs::read(&check_path) {
            Ok(bytes) => {
                let value = decode_key_check(&bytes).ok_or_else(|| StartupError::KeyCheckFile {
                    path: check_path.clone(),
                })?;
                master.verify_check_value(value)?;
                open_catalog()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                klio_core::crashsafe::create_dir_all_durably(data_dir).map_err(|source| {
                    StartupError::DataDir {
                        path: data_dir.to_path_buf(),
                        source,
                    }
                })?;
                let catalog = open_catalog()?;
                // A catalog from before the check file existed must agree too.
                for c in catalog.clusters()? {
                    master.unwrap(&c.wrapped_key, &c.name)?;
                }
                klio_core::crashsafe::write_file_durably(
                    &check_path,
                    &encode_key_check(&master.check_value()),
                )
                .map_err(|source| StartupError::DataDir {
                    path: check_path.clone(),
                    source,
                })?;
                catalog
            }
            Err(source) => {
                return Err(StartupError::DataDir {
                    path: check_path,
                    source,
                })
            }
        };
        for c in catalog.clusters()? {
            master.unwrap(&c.wrapped_key, &c.name)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(data_dir) {
                let mode = m.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        data_dir = %data_dir.display(),
                        mode = format!("{mode:04o}"),
                        "the data directory is open to other accounts; what Klio creates inside it is 0700, but consider `chmod 700` on it"
                    );
                }
            }
        }
        Ok(ServerContext {
            data_dir: data_dir.to_path_buf(),
            catalog: Arc::new(catalog),
            master,
            relay_to_tier2: false,
            disk_full_advice: OnceLock::new(),
        })
    }
}

impl ServerContext {
    /// A cluster's data key, unwrapped with the master key.
    pub fn data_key(&self, rec: &ClusterRecord) -> Result<DataKey, KeyError> {
        self.master.unwrap(&rec.wrapped_key, &rec.name)
    }
}

const KEY_CHECK_MAGIC: &[u8; 8] = b"KLIOKEY1";

/// `magic | value | crc32c(magic | value)`: the key check file's content.
pub fn encode_key_check(value: &[u8]) -> Vec<u8> {
    let mut out = KEY_CHECK_MAGIC.to_vec();
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The check value in a key check file's content, if it is one.
pub fn decode_key_check(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < 12 || &bytes[..8] != KEY_CHECK_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    (crc32c::crc32c(body).to_le_bytes() == crc).then_some(&body[8..])
}

/// What the configuration says about one cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub conninfo: ConnInfo,
    pub slot: String,
    /// Longest time between two standby status updates.
    pub status_interval: Duration,
}

/// A configured cluster: live status and (once known) its store.
#[derive(Clone)]
pub struct ClusterHandle {
    pub spec: ClusterSpec,
    pub status: Arc<ClusterStatus>,
    store: Arc<OnceLock<WalStore>>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("cluster", &self.spec.name)
            .finish()
    }
}

impl ClusterHandle {
    /// The cluster's Tier 1 store; `None` until its primary was first contacted.
    pub fn store(&self) -> Option<WalStore> {
        self.store.get().cloned()
    }

    /// Opens the cluster's store if the catalog knows the cluster by now and it is not
    /// open yet (a read-only server learns its clusters from Tier 2, not a primary).
    pub fn open_known_store(&self, ctx: &ServerContext) -> Result<Option<WalStore>, StartupError> {
        if let Some(s) = self.store() {
            return Ok(Some(s));
        }
        let Some(rec) = ctx.catalog.cluster(&self.spec.name)? else {
            return Ok(None);
        };
        self.status.set_system_id(rec.system_id);
        self.status.set_timeline(rec.timeline);
        let s = open_store(ctx, &rec)?;
        Ok(Some(self.store.get_or_init(|| s).clone()))
    }
}

fn open_store(ctx: &ServerContext, rec: &ClusterRecord) -> Result<WalStore, StartupError> {
    let key = ctx.master.unwrap(&rec.wrapped_key, &rec.name)?;
    let store = WalStore::open(
        &ctx.data_dir,
        rec.name.clone(),
        key,
        rec.seg_size,
        ctx.catalog.clone(),
    )
    .map_err(|error| StartupError::Store {
        cluster: rec.name.clone(),
        error,
    })?;
    store.set_relay(ctx.relay_to_tier2);
    store.reconcile().map_err(|error| StartupError::Store {
        cluster: rec.name.clone(),
        error,
    })?;
    Ok(store)
}

/// Prepares a configured cluster: if it is already in the catalog, unwraps its
/// key and reconciles its Tier 1 store (a crash's leftovers are repaired here).
pub fn prepare_cluster(
    ctx: &ServerContext,
    spec: ClusterSpec,
) -> Result<ClusterHandle, StartupError> {
    let status = Arc::new(ClusterStatus::default());
    let store = Arc::new(OnceLock::new());
    if let Some(rec) = ctx.catalog.cluster(&spec.name)? {
        status.set_system_id(rec.system_id);
        status.set_timeline(rec.timeline);
        let s = open_store(ctx, &rec)?;
        let _ = store.set(s);
    }
    Ok(ClusterHandle {
        spec,
        status,
        store,
    })
}

/// A failed writer checkpoint ends the session (a full disk is flagged in run_cluster).
impl From<crate::ingest::WriterError> for SessionError {
    fn from(e: crate::ingest::WriterError) -> Self {
        SessionError::store(e.message, e.disk_full)
    }
}

/// Why a streaming session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// Retrying cannot help; an operator must act.
    #[error("{0}")]
    Fatal(String),
    #[error(transparent)]
    Pg(#[from] PgError),
    /// A Tier 1 failure, described (with the fix for a full disk).
    #[error("{message}")]
    Store { message: String, disk_full: bool },
    #[error("{0}")]
    Other(String),
}

impl SessionError {
    /// A full disk's message already names Tier 1 and the fix; others get the prefix.
    fn store(message: String, disk_full: bool) -> SessionError {
        let message = match disk_full {
            true => message,
            false => format!("Tier 1: {message}"),
        };
        SessionError::Store { message, disk_full }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::store(crate::ingest::describe(&e), e.is_disk_full())
    }
}

impl From<CatalogError> for SessionError {
    fn from(e: CatalogError) -> Self {
        StoreError::Catalog(e).into()
    }
}

enum SessionEnd {
    Shutdown,
}

/// Exponential backoff between reconnection attempts.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Backoff {
        Backoff { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Streams one cluster until `shutdown` turns true.
///
/// Run it on a thread of its own (a current-thread runtime that has nothing else to
/// do): while WAL streams, the COPY loop blocks the thread, waiting for the primary in
/// poll(2), and sees `shutdown` within 100 ms.
pub async fn run_cluster(
    ctx: Arc<ServerContext>,
    handle: ClusterHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("cluster", cluster = %handle.spec.name);
    async move {
        let mut backoff = Backoff::new();
        let mut disk_full_advice: Option<String> = None;
        let mut ingest: Option<Ingest> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let started = Instant::now();
            let res = session(&ctx, &handle, &mut ingest, &mut shutdown, &mut backoff).await;
            match res {
                Ok(SessionEnd::Shutdown) => break,
                Err(SessionError::Fatal(msg)) => {
                    handle.status.set_state_announced(ConnectionState::Failed, Some(msg.clone()), || {
                        error!("{msg}")
                    });
                    let _ = stopped(&mut shutdown).await;
                    break;
                }
                Err(e) => {
                    let mut msg = e.to_string();
                    if let SessionError::Store {
                        disk_full: true, ..
                    } = e
                    {
                        // Cleared once a flush succeeds again. What retention could free
                        // is worked out once per episode.
                        if !handle.status.snapshot().disk_full || disk_full_advice.is_none() {
                            disk_full_advice = ctx.disk_full_advice.get().map(|f| f(&handle.spec.name));
                        }
                        handle.status.set_disk_full(true);
                        if let Some(a) = &disk_full_advice {
                            msg = format!("{msg}; {a}");
                        }
                    }
                    if !handle.status.set_state_announced(ConnectionState::Disconnected, Some(msg.clone()), || {
                        warn!(error = %msg, "replication connection lost; reconnecting with backoff")
                    }) {
                        debug!(error = %msg, "reconnect attempt failed");
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut shutdown) => break,
                    }
                }
            }
        }
        if let Some(ingest) = ingest.take() {
            // Dropping flushes and closes the open segment.
            let _ = tokio::task::spawn_blocking(move || drop(ingest)).await;
        }
        handle.status.set_state(ConnectionState::Disconnected, Some("server shutting down".into()));
        info!("receiver stopped");
    }
    .instrument(span)
    .await
}

/// Finds or creates the catalog record for the cluster; refuses a primary whose
/// system identifier differs from the stored one.
fn ensure_cluster(
    ctx: &ServerContext,
    spec: &ClusterSpec,
    system_id: SystemId,
    seg_size: WalSegSize,
    tli: TimelineId,
) -> Result<ClusterRecord, SessionError> {
    if let Some(rec) = ctx.catalog.cluster(&spec.name)? {
        if rec.system_id != system_id {
            return Err(SessionError::Fatal(format!(
                "refusing to stream: the server at {} has system identifier {system_id}, but cluster {} \
                 was created from system identifier {}. If the cluster was re-created on purpose, \
                 configure it under a new name; otherwise fix the conninfo.",
                spec.conninfo.describe(),
                spec.name,
                rec.system_id
            )));
        }
        if rec.seg_size != seg_size {
            return Err(SessionError::Fatal(format!(
                "cluster {} was stored with wal_segment_size {} but the server now reports {}",
                spec.name,
                rec.seg_size.bytes(),
                seg_size.bytes()
            )));
        }
        return Ok(rec);
    }
    let key = DataKey::generate();
    let rec = ClusterRecord {
        name: spec.name.clone(),
        system_id,
        wrapped_key: ctx.master.wrap(&key, &spec.name),
        slot: spec.slot.clone(),
        seg_size,
        timeline: tli,
        created_unix: unix_now(),
    };
    ctx.catalog.put_cluster(&rec)?;
    info!(%system_id, "new cluster registered; data key generated");
    Ok(rec)
}

async fn session(
    ctx: &Arc<ServerContext>,
    handle: &ClusterHandle,
    ingest_slot: &mut Option<Ingest>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<SessionEnd, SessionError> {
    let spec = &handle.spec;
    let status = &handle.status;
    status.set_state(ConnectionState::Connecting, status.snapshot().last_error);
    let mut conn = tokio::select! {
        c = ReplicationConn::connect(&spec.conninfo) => c?,
        _ = stopped(shutdown) => return Ok(SessionEnd::Shutdown),
    };
    let sys = conn.identify_system().await?;
    let server_tli = sys.timeline;
    let seg_size = conn.wal_segment_size().await?;
    let rec = {
        let ctx = ctx.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            ensure_cluster(&ctx, &spec, sys.system_id, seg_size, server_tli)
        })
        .await
        .map_err(|e| SessionError::Other(e.to_string()))??
    };
    status.set_system_id(sys.system_id);

    if handle.store.get().is_none() {
        let ctx2 = ctx.clone();
        let rec2 = rec.clone();
        let store = tokio::task::spawn_blocking(move || open_store(&ctx2, &rec2))
            .await
            .map_err(|e| SessionError::Other(e.to_string()))?
            .map_err(|e| SessionError::Fatal(e.to_string()))?;
        let _ = handle.store.set(store);
    }
    let store = handle.store().expect("set above");
    if ingest_slot.is_none() {
        let ingest = Ingest::new(store.clone());
        status.set_recompress_counts(ingest.recompress_counts());
        *ingest_slot = Some(ingest);
    }
    let ingest = ingest_slot.as_ref().expect("set above");

    // The slot keeps the primary from recycling WAL we have not stored yet.
    let slot_info = if conn.server_version_num() >= 150000 {
        conn.read_replication_slot(&spec.slot).await?
    } else {
        None
    };
    if slot_info.is_none() {
        match conn.create_physical_slot(&spec.slot).await {
            Ok(_) => info!(slot = %spec.slot, "created physical replication slot"),
            Err(PgError::SlotExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let resume = ingest.checkpoint()?;
    // Flush position to report before the first fsync of this session: the resume
    // point is durable in Tier 1 (reporting it releases commits that waited on us
    // while we were down); nothing is when starting from the slot.
    let mut durable_start = resume.map(|(_, lsn)| lsn).unwrap_or(Lsn::INVALID);
    let (mut tli, mut start) = match resume {
        Some(p) => p,
        None => {
            let restart = slot_info
                .as_ref()
                .and_then(|s| s.restart_lsn)
                .unwrap_or(sys.xlogpos);
            let tli = slot_info
                .as_ref()
                .and_then(|s| s.restart_tli)
                .unwrap_or(server_tli);
            (tli, restart.segment_start(seg_size))
        }
    };

    loop {
        if tli.get() > 1 {
            let known = ctx.catalog.timeline(&spec.name, tli)?;
            if !known.is_some_and(|t| t.history_stored) {
                let (_, content) = conn.timeline_history(tli).await?;
                let s = store.clone();
                tokio::task::spawn_blocking(move || s.store_history(tli, &content))
                    .await
                    .map_err(|e| SessionError::Other(e.to_string()))??;
                info!(timeline = %tli, "stored timeline history file");
            }
        }
        if rec.timeline != tli {
            let mut r = ctx
                .catalog
                .cluster(&spec.name)?
                .unwrap_or_else(|| rec.clone());
            if r.timeline != tli {
                r.timeline = tli;
                ctx.catalog.put_cluster(&r)?;
            }
        }
        status.set_timeline(tli);
        match conn
            .start_physical_replication(Some(&spec.slot), start, tli)
            .await?
        {
            StreamStart::Streaming => {}
            StreamStart::TimelineEnded {
                next_tli: next,
                next_tli_startpos: pos,
            } => {
                info!(timeline = %tli, next_timeline = %next, switch = %pos, "timeline already ended; following");
                tli = next;
                start = pos.segment_start(seg_size);
                continue;
            }
        }
        // Logged before the state is published: a status reader that sees "streaming"
        // finds this line (the tests read where streaming resumed from it).
        status.set_state_announced(
            ConnectionState::Streaming,
            None,
            || info!(timeline = %tli, start = %start, system_id = %sys.system_id, "streaming WAL"),
        );
        backoff.reset();
        let end = copy_loop(
            &mut conn,
            ingest,
            status,
            CopyPosition {
                tli,
                start,
                durable: durable_start,
            },
            spec.status_interval,
            shutdown,
        )?;
        // A new timeline starts with nothing of it stored yet.
        durable_start = Lsn::INVALID;
        match end {
            CopyEnd::Shutdown => {
                let _ = conn.send_copy_done().await;
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.finish_copy()).await;
                ingest.checkpoint()?;
                conn.close().await;
                return Ok(SessionEnd::Shutdown);
            }
            CopyEnd::EndOfTimeline => {
                conn.send_copy_done().await?;
                let rs = conn.finish_copy().await?;
                let (next, pos) = replication::parse_timeline_end(&rs)?;
                let end = ingest.checkpoint()?;
                info!(timeline = %tli, next_timeline = %next, switch = %pos, stored_until = ?end,
                    "end of timeline; following the switch");
                tli = next;
                start = pos.segment_start(seg_size);
            }
        }
    }
}

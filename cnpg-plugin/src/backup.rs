//! The instance sidecar's Backup service: asks the Klio Server for a base backup of the
//! cluster, follows it to the end and answers with what CloudNativePG records in the
//! Backup's status. The server's answers are checked: the backup must be the one asked
//! for, complete, and its `backup_label` (read back from the backup itself) must state
//! the start position the server reports. Writes nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use klio_api::client::Client;
use klio_api::{BackupRequest, BackupStateView, BackupView};
use klio_core::manifest::FileKind;
use klio_core::{ClusterName, Lsn, TimelineId, WalFileKind, WalFileName, WalSegSize};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::klio_client::{connect, status};
use crate::proto::backup::backup_capability::rpc::Type as RpcType;
use crate::proto::backup::backup_capability::{Rpc, Type as CapType};
use crate::proto::backup::backup_server::Backup;
use crate::proto::backup::{
    BackupCapabilitiesRequest, BackupCapabilitiesResult, BackupCapability,
    BackupRequest as CnpgBackupRequest, BackupResult,
};

/// How often a running backup is polled.
const POLL: Duration = Duration::from_secs(1);
/// A backup_label larger than this is not a backup_label.
const MAX_LABEL: u64 = 64 * 1024;

/// The Backup service of the instance sidecar.
#[derive(Debug, Clone)]
pub struct BackupService {
    pub credentials_dir: PathBuf,
    /// This Pod's name (`POD_NAME`), reported as the backed-up instance.
    pub instance: Option<String>,
}

/// The part of a CloudNativePG Backup object read here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupObject {
    #[serde(default)]
    metadata: crate::cluster::Metadata,
    #[serde(default)]
    spec: BackupObjectSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupObjectSpec {
    online: Option<bool>,
    online_configuration: Option<OnlineConfiguration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnlineConfiguration {
    immediate_checkpoint: Option<bool>,
}

/// What `backup_label` states about the backup's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelStart {
    pub lsn: Lsn,
    pub wal: WalFileName,
    pub timeline: Option<u32>,
}

/// Parses the `START WAL LOCATION` and `START TIMELINE` lines of a backup_label.
pub fn parse_backup_label(text: &str) -> Result<LabelStart, String> {
    let mut start = None;
    let mut timeline = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            // "0/2000028 (file 000000010000000000000002)"
            let (lsn, file) = rest
                .split_once(" (file ")
                .ok_or_else(|| format!("unreadable START WAL LOCATION line {line:?}"))?;
            let lsn: Lsn = lsn
                .parse()
                .map_err(|e| format!("START WAL LOCATION {lsn:?}: {e}"))?;
            let wal: WalFileName = file
                .trim_end_matches(')')
                .parse()
                .map_err(|e| format!("START WAL LOCATION file {file:?}: {e}"))?;
            if wal.kind() != WalFileKind::Segment {
                return Err(format!("START WAL LOCATION names {wal}, not a segment"));
            }
            start = Some((lsn, wal));
        } else if let Some(t) = line.strip_prefix("START TIMELINE: ") {
            timeline = Some(
                t.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("unreadable START TIMELINE line {line:?}"))?,
            );
        }
    }
    let (lsn, wal) = start.ok_or("no START WAL LOCATION line")?;
    Ok(LabelStart { lsn, wal, timeline })
}

/// Reads the backup's `backup_label` back from the server, checked against the
/// backup's manifest (size, CRC-32C).
async fn backup_label(c: &Client, view: &BackupView) -> Result<Vec<u8>, Status> {
    let manifest = c
        .backup_manifest(&view.cluster, &view.id)
        .await
        .map_err(status)?;
    let bad = |why: String| {
        Status::internal(format!(
            "the Klio Server's backup {} of cluster {}: {why}",
            view.id, view.cluster
        ))
    };
    if manifest.backup_id != view.id || manifest.cluster != view.cluster {
        return Err(bad(format!(
            "its manifest is of backup {} of cluster {}",
            manifest.backup_id, manifest.cluster
        )));
    }
    let file = manifest
        .files
        .iter()
        .find(|f| f.tablespace.is_none() && f.path == "backup_label" && f.kind == FileKind::File)
        .ok_or_else(|| bad("it holds no backup_label".into()))?;
    if file.size > MAX_LABEL {
        return Err(bad(format!("its backup_label has {} bytes", file.size)));
    }
    let mut bytes = Vec::with_capacity(file.size as usize);
    for chunk in &file.chunks {
        let data = c.chunk(&view.cluster, chunk).await.map_err(status)?;
        if bytes.len() as u64 + data.len() as u64 > file.size {
            return Err(bad(
                "its backup_label is longer than its manifest says".into()
            ));
        }
        bytes.extend_from_slice(&data);
    }
    if bytes.len() as u64 != file.size || file.crc32c.is_some_and(|c| c != crc32c::crc32c(&bytes)) {
        return Err(bad("its backup_label does not match its manifest".into()));
    }
    Ok(bytes)
}

/// The WAL segment size of `cluster`, from the size of the sealed segment `wal`.
async fn segment_size(
    c: &Client,
    cluster: &ClusterName,
    wal: &WalFileName,
) -> Result<WalSegSize, Status> {
    let list = c.list_wal(cluster).await.map_err(status)?;
    let entry = list.files.iter().find(|e| &e.name == wal).ok_or_else(|| {
        Status::internal(format!(
            "the Klio Server lists no WAL segment {wal} for cluster {cluster}, which its backup needs"
        ))
    })?;
    WalSegSize::new(entry.plain_size).map_err(|e| {
        Status::internal(format!(
            "the Klio Server's segment {wal} of cluster {cluster} has {} bytes: {e}",
            entry.plain_size
        ))
    })
}

/// Starts a backup of `cluster`, waits for it (at most `timeout`) and checks it.
pub async fn take_backup(
    c: &Client,
    cluster: &ClusterName,
    req: &BackupRequest,
    timeout: Duration,
) -> Result<BackupResult, Status> {
    let started = Instant::now();
    let mut view = c.start_backup(cluster, req).await.map_err(status)?;
    let id = view.id.clone();
    tracing::info!(%cluster, backup = %id, "base backup started on the Klio Server");
    loop {
        if view.cluster != *cluster || view.id != id {
            return Err(Status::internal(format!(
                "asked about backup {id} of cluster {cluster}, the Klio Server answered with backup {} of cluster {}",
                view.id, view.cluster
            )));
        }
        match view.state {
            BackupStateView::Complete => break,
            BackupStateView::Failed => {
                return Err(Status::aborted(format!(
                    "backup {id} of cluster {cluster} failed on the Klio Server: {}",
                    view.error.as_deref().unwrap_or("no reason given")
                )))
            }
            BackupStateView::Running => {}
        }
        if started.elapsed() > timeout {
            return Err(Status::deadline_exceeded(format!(
                "backup {id} of cluster {cluster} is still running after {}s (backupTimeout); it goes on on the Klio Server: raise backupTimeout if backups take this long",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
        view = c.backup(cluster, &id).await.map_err(status)?;
    }
    let missing = |what: &str| {
        Status::internal(format!(
            "the Klio Server reports backup {id} of cluster {cluster} complete without its {what}"
        ))
    };
    let start_lsn = view.start_lsn.ok_or_else(|| missing("start LSN"))?;
    let end_lsn = view.end_lsn.ok_or_else(|| missing("end LSN"))?;
    let stopped_at = view.finished_at.ok_or_else(|| missing("finish time"))?;
    let end_tli = view
        .end_timeline
        .or(view.start_timeline)
        .ok_or_else(|| missing("timeline"))?;
    if end_lsn < start_lsn || stopped_at < view.started_at {
        return Err(Status::internal(format!(
            "the Klio Server reports backup {id} of cluster {cluster} ending ({end_lsn}) before it starts ({start_lsn})"
        )));
    }
    let label = backup_label(c, &view).await?;
    let text = String::from_utf8_lossy(&label);
    let start = parse_backup_label(&text).map_err(|e| {
        Status::internal(format!(
            "backup {id} of cluster {cluster}: its backup_label: {e}"
        ))
    })?;
    if start.lsn != start_lsn
        || view
            .start_timeline
            .is_some_and(|t| start.timeline.is_some_and(|l| l != t))
    {
        return Err(Status::internal(format!(
            "backup {id} of cluster {cluster}: its backup_label starts at {} but the Klio Server reports {start_lsn}",
            start.lsn
        )));
    }
    let seg_size = segment_size(c, cluster, &start.wal).await?;
    let end_tli = TimelineId::new(end_tli).map_err(|e| {
        Status::internal(format!(
            "backup {id} of cluster {cluster}: end timeline: {e}"
        ))
    })?;
    let end_wal = WalFileName::segment(end_tli, end_lsn.segno(seg_size), seg_size);
    Ok(BackupResult {
        backup_id: id.to_string(),
        backup_name: view.label.clone(),
        started_at: view.started_at as i64,
        stopped_at: stopped_at as i64,
        begin_wal: start.wal.to_string(),
        end_wal: end_wal.to_string(),
        begin_lsn: start_lsn.to_string(),
        end_lsn: end_lsn.to_string(),
        backup_label_file: label,
        tablespace_map_file: Vec::new(),
        instance_id: String::new(),
        online: true,
        metadata: [("klioCluster".to_string(), cluster.to_string())]
            .into_iter()
            .collect(),
    })
}

#[tonic::async_trait]
impl Backup for BackupService {
    async fn get_capabilities(
        &self,
        _: Request<BackupCapabilitiesRequest>,
    ) -> Result<Response<BackupCapabilitiesResult>, Status> {
        Ok(Response::new(BackupCapabilitiesResult {
            capabilities: vec![BackupCapability {
                r#type: Some(CapType::Rpc(Rpc {
                    r#type: RpcType::Backup as i32,
                })),
            }],
        }))
    }

    async fn backup(
        &self,
        request: Request<CnpgBackupRequest>,
    ) -> Result<Response<BackupResult>, Status> {
        let req = request.into_inner();
        let cluster = Cluster::from_json(&req.cluster_definition)?;
        let params = cluster.own_params()?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "cluster {} does not enable plugin {} in spec.plugins: no Klio Server to back up to",
                cluster.metadata.name,
                crate::PLUGIN_NAME
            ))
        })?;
        if let Some(name) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "Backup parameter {name:?}: plugin {} takes no per-backup parameters; configure it in the Cluster's spec.plugins",
                crate::PLUGIN_NAME
            )));
        }
        let backup: BackupObject = if req.backup_definition.is_empty() {
            BackupObject::default()
        } else {
            serde_json::from_slice(&req.backup_definition).map_err(|e| {
                Status::invalid_argument(format!(
                    "the backup definition is not a Backup in JSON: {e}"
                ))
            })?
        };
        if backup.spec.online == Some(false) {
            return Err(Status::invalid_argument(
                "an offline backup was asked for: Klio takes online base backups only (set spec.online: true or leave it out)",
            ));
        }
        let c = connect(&params, &self.credentials_dir)?;
        let label = (!backup.metadata.name.is_empty()).then(|| backup.metadata.name.clone());
        let req = BackupRequest {
            label,
            fast_checkpoint: backup
                .spec
                .online_configuration
                .and_then(|o| o.immediate_checkpoint),
            max_rate_kbps: None,
        };
        let mut result = take_backup(&c, &params.cluster, &req, params.backup_timeout).await?;
        result.instance_id = self.instance.clone().unwrap_or_default();
        tracing::info!(
            cluster = %params.cluster,
            backup = %result.backup_id,
            begin_lsn = %result.begin_lsn,
            end_lsn = %result.end_lsn,
            "base backup complete"
        );
        Ok(Response::new(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_label_start() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-26 15:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n";
        let s = parse_backup_label(label).unwrap();
        assert_eq!(s.lsn, Lsn(0x200_0028));
        assert_eq!(s.wal.to_string(), "000000010000000000000002");
        assert_eq!(s.timeline, Some(1));
        assert!(parse_backup_label("LABEL: x\n").is_err());
        assert!(
            parse_backup_label("START WAL LOCATION: zz (file 000000010000000000000002)\n").is_err()
        );
        assert!(
            parse_backup_label("START WAL LOCATION: 0/2000028 (file 00000001.history)\n").is_err()
        );
    }
}

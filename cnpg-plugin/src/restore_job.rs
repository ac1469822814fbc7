//! The restore sidecar's RestoreJobHooks service: CloudNativePG's `full-recovery` Job
//! asks it to fill PGDATA. It picks the backup for the Cluster's `recoveryTarget` (its
//! `backupID`, or the newest complete backup that can reach the target), restores it
//! with `klio restore`'s validated plan (nothing written outside PGDATA, every file
//! checked against the manifest) and answers with the recovery configuration: WAL
//! through the instance manager (`restore_command`, which calls back into the WAL
//! service) and `recovery_target_action`. The recovery target itself is written by
//! CloudNativePG from the same `recoveryTarget`.
//!
//! Writes: PGDATA (which must be missing or empty), and removes the prefetch spool
//! an earlier restore left beside it.

use std::path::PathBuf;

use klio::restore::{choose_backup, parse_timestamp, RestoreOptions, Target};
use klio_api::client::Credentials;
use klio_core::Lsn;
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, RecoveryTarget};
use crate::klio_client::{connect, status};
use crate::proto::wal::restore_job_hooks_capability::Kind;
use crate::proto::wal::restore_job_hooks_server::RestoreJobHooks;
use crate::proto::wal::{
    RestoreJobHooksCapabilitiesRequest, RestoreJobHooksCapabilitiesResult,
    RestoreJobHooksCapability, RestoreRequest, RestoreResponse,
};

/// CloudNativePG's instance manager as restore_command: it calls the plugins' WAL
/// service (`%f`, `%p` filled in by PostgreSQL).
pub const DEFAULT_WAL_RESTORE_COMMAND: &str =
    "/controller/manager wal-restore --log-destination /controller/log/postgres.json %f %p";

/// The RestoreJobHooks service.
#[derive(Debug, Clone)]
pub struct RestoreJobService {
    pub credentials_dir: PathBuf,
    /// The data directory to fill (absolute).
    pub pgdata: PathBuf,
    /// What PostgreSQL runs to fetch WAL.
    pub wal_restore_command: String,
    /// Chunks fetched in parallel.
    pub jobs: usize,
}

/// The backup id asked for (if any) and the target to reach, from `recoveryTarget`.
pub fn target_of(t: Option<&RecoveryTarget>) -> Result<(Option<String>, Target), Status> {
    let Some(t) = t else {
        return Ok((None, Target::Latest));
    };
    let bad = |field: &str, v: &str, fix: &str| {
        Status::invalid_argument(format!(
            "spec.bootstrap.recovery.recoveryTarget.{field} {v:?}: {fix}"
        ))
    };
    let target = if let Some(v) = &t.target_time {
        if parse_timestamp(v).is_none() {
            return Err(bad(
                "targetTime",
                v,
                "use a timestamp with a zone, e.g. 2026-11-24 19:13:00+00 or 2026-11-24T19:13:00Z",
            ));
        }
        Target::Time(v.clone())
    } else if let Some(v) = &t.target_lsn {
        Target::Lsn(
            v.parse::<Lsn>()
                .map_err(|_| bad("targetLSN", v, "use an LSN such as 0/3000000"))?,
        )
    } else if let Some(v) = &t.target_xid {
        Target::Xid(v.clone())
    } else if let Some(v) = &t.target_name {
        Target::Name(v.clone())
    } else {
        // targetImmediate, or no target: the newest backup, WAL to its end or further.
        Target::Latest
    };
    Ok((t.backup_id.clone().filter(|s| !s.is_empty()), target))
}

/// A value quoted for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The `restore_config` answered to CloudNativePG.
pub fn restore_config(wal_restore_command: &str) -> String {
    format!(
        "recovery_target_action = 'promote'\nrestore_command = {}\n",
        conf_quote(wal_restore_command)
    )
}

#[tonic::async_trait]
impl RestoreJobHooks for RestoreJobService {
    async fn get_capabilities(
        &self,
        _: Request<RestoreJobHooksCapabilitiesRequest>,
    ) -> Result<Response<RestoreJobHooksCapabilitiesResult>, Status> {
        Ok(Response::new(RestoreJobHooksCapabilitiesResult {
            capabilities: vec![RestoreJobHooksCapability {
                kind: Kind::Restore as i32,
            }],
        }))
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        let req = request.into_inner();
        let cluster = Cluster::from_json(&req.cluster_definition)?;
        let params = cluster.recovery_params()?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "cluster {}: spec.bootstrap.recovery.source does not name an external cluster served by plugin {}",
                cluster.metadata.name,
                crate::PLUGIN_NAME
            ))
        })?;
        let recovery = cluster.recovery();
        if recovery.is_some_and(|r| r.backup.is_some()) {
            return Err(Status::invalid_argument(
                "spec.bootstrap.recovery.backup names a CloudNativePG Backup object: choose a Klio backup with recoveryTarget.backupID instead",
            ));
        }
        let (wanted, target) = target_of(recovery.and_then(|r| r.recovery_target.as_ref()))?;
        let c = connect(&params, &self.credentials_dir)?;
        let list = c.list_backups(&params.cluster).await.map_err(status)?;
        if list.cluster != params.cluster {
            return Err(Status::internal(format!(
                "asked for the backups of cluster {}, the Klio Server answered with cluster {}",
                params.cluster, list.cluster
            )));
        }
        let chosen = choose_backup(&list.backups, wanted.as_deref(), &target).map_err(status)?;
        let manifest = c
            .backup_manifest(&params.cluster, &chosen.id)
            .await
            .map_err(status)?;
        if !manifest.tablespaces.is_empty() {
            return Err(Status::failed_precondition(format!(
                "backup {} of cluster {} has tablespaces, which this plugin does not restore yet (it writes only below PGDATA); restore it with `klio restore --tablespace-map`",
                chosen.id, params.cluster
            )));
        }
        tracing::info!(cluster = %params.cluster, backup = %chosen.id, pgdata = %self.pgdata.display(), ?target, "restoring");
        let opts = RestoreOptions {
            cluster: params.cluster.clone(),
            pgdata: self.pgdata.clone(),
            backup: Some(chosen.id.to_string()),
            target,
            target_action: None,
            tablespace_map: Vec::new(),
            jobs: self.jobs,
            // Used only for klio's own restore_command, which is not written here.
            credentials: Credentials::default(),
            klio_exe: PathBuf::new(),
        };
        let summary = klio::restore::restore_files(&c, &opts)
            .await
            .map_err(status)?;
        tracing::info!(
            backup = %summary.backup,
            files = summary.files,
            bytes = summary.bytes,
            seconds = summary.seconds,
            "restore done"
        );
        Ok(Response::new(RestoreResponse {
            restore_config: restore_config(&self.wal_restore_command),
            envs: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_the_cluster() {
        assert_eq!(target_of(None).unwrap(), (None, Target::Latest));
        let t = RecoveryTarget {
            backup_id: Some("20261124T191300Z".into()),
            target_time: Some("2026-11-24T19:20:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            target_of(Some(&t)).unwrap(),
            (
                Some("20261124T191300Z".into()),
                Target::Time("2026-11-24T19:20:00Z".into())
            )
        );
        let t = RecoveryTarget {
            target_lsn: Some("0/3000000".into()),
            ..Default::default()
        };
        assert_eq!(target_of(Some(&t)).unwrap().1, Target::Lsn(Lsn(0x300_0000)));
        let t = RecoveryTarget {
            target_time: Some("yesterday".into()),
            ..Default::default()
        };
        let e = target_of(Some(&t)).unwrap_err();
        assert!(e.message().contains("targetTime"), "{e}");
    }

    #[test]
    fn restore_config_quotes_the_command() {
        assert_eq!(
            restore_config("/bin/x 'a' %f %p"),
            "recovery_target_action = 'promote'\nrestore_command = '/bin/x ''a'' %f %p'\n"
        );
    }
}

//! The WAL service of both sidecars, Restore only: one WAL file from the Klio Server
//! into the path the instance manager names (PostgreSQL's `%p`), with the prefetch
//! spool of `klio wal-restore` (`<PGDATA>.klio-spool` beside the data directory: the
//! next segments are fetched in the background, checked against the data directory's
//! system identifier before use). A file the server does not have is gRPC NotFound, as
//! the instance manager expects of an archive. Archive is not implemented: Klio streams
//! WAL from the primary like a standby, so GetCapabilities does not offer it.
//!
//! Writes: the destination file (only below PGDATA, after the path is checked) and the
//! spool.

use std::path::{Component, Path, PathBuf};

use klio::wal_restore::prefetch;
use klio_core::WalFileKind;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::klio_client::{connect, status};
use crate::proto::wal::wal_capability::rpc::Type as RpcType;
use crate::proto::wal::wal_capability::{Rpc, Type as CapType};
use crate::proto::wal::wal_restore_request::Mode;
use crate::proto::wal::wal_server::Wal;
use crate::proto::wal::{
    SetFirstRequiredRequest, SetFirstRequiredResult, WalArchiveRequest, WalArchiveResult,
    WalCapabilitiesRequest, WalCapabilitiesResult, WalCapability, WalRestoreRequest,
    WalRestoreResult, WalStatusRequest, WalStatusResult,
};

/// The WAL service.
#[derive(Debug, Clone)]
pub struct WalService {
    pub credentials_dir: PathBuf,
    /// The data directory (absolute): destinations must lie below it.
    pub pgdata: PathBuf,
    /// Segments fetched ahead (0: off).
    pub prefetch: u32,
    /// The spool (default `<PGDATA>.klio-spool`).
    pub spool: Option<PathBuf>,
}

/// Checks the destination a peer named: an absolute, normalised path strictly below
/// `pgdata` whose directory exists. Returns it as a path.
pub fn checked_destination(pgdata: &Path, dest: &str) -> Result<PathBuf, Status> {
    let p = Path::new(dest);
    let bad = |why: &str| {
        Status::invalid_argument(format!(
            "destination {dest:?}: {why}; it must be a file below PGDATA ({})",
            pgdata.display()
        ))
    };
    if !p.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    // On the string: `Path::components` would quietly drop a '.' or a doubled '/'.
    if dest
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
        || p.components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(bad(
            "it is not a normalised path (no '.', '..' or trailing '/')",
        ));
    }
    let rel = p
        .strip_prefix(pgdata)
        .map_err(|_| bad("it is outside PGDATA"))?;
    if rel.as_os_str().is_empty() {
        return Err(bad("it is PGDATA itself"));
    }
    match p.parent().map(std::fs::metadata) {
        Some(Ok(m)) if m.is_dir() => Ok(p.to_path_buf()),
        _ => Err(bad("its directory does not exist")),
    }
}

#[tonic::async_trait]
impl Wal for WalService {
    async fn get_capabilities(
        &self,
        _: Request<WalCapabilitiesRequest>,
    ) -> Result<Response<WalCapabilitiesResult>, Status> {
        Ok(Response::new(WalCapabilitiesResult {
            capabilities: vec![WalCapability {
                r#type: Some(CapType::Rpc(Rpc {
                    r#type: RpcType::RestoreWal as i32,
                })),
            }],
        }))
    }

    async fn archive(
        &self,
        _: Request<WalArchiveRequest>,
    ) -> Result<Response<WalArchiveResult>, Status> {
        Err(Status::unimplemented(
            "Klio does not archive WAL through archive_command: the Klio Server streams it from the primary like a standby",
        ))
    }

    async fn status(
        &self,
        _: Request<WalStatusRequest>,
    ) -> Result<Response<WalStatusResult>, Status> {
        Err(Status::unimplemented("WAL.Status is not implemented"))
    }

    async fn set_first_required(
        &self,
        _: Request<SetFirstRequiredRequest>,
    ) -> Result<Response<SetFirstRequiredResult>, Status> {
        Err(Status::unimplemented(
            "WAL.SetFirstRequired is not implemented: retention is the Klio Server's",
        ))
    }

    async fn restore(
        &self,
        request: Request<WalRestoreRequest>,
    ) -> Result<Response<WalRestoreResult>, Status> {
        let req = request.into_inner();
        let name = klio::wal_restore::parse_wal_name(&req.source_wal_name).map_err(|e| {
            Status::invalid_argument(format!("source WAL name {:?}: {e}", req.source_wal_name))
        })?;
        let dest = checked_destination(&self.pgdata, &req.destination_file_name)?;
        let rewind = req.mode == Mode::Rewind as i32;
        let cluster = Cluster::from_json(&req.cluster_definition)?;
        let params = cluster.wal_source_params()?;
        let walfile = name.to_string();
        // Every segment served must be this data directory's database system's.
        let system_id = prefetch::data_dir_system_id(&self.pgdata);
        // pg_rewind fetches each file once, walking backwards: no spool, no prefetch.
        let spool = match system_id {
            Some(id) if !rewind && self.prefetch > 0 && name.kind() == WalFileKind::Segment => {
                Some((
                    id,
                    self.spool
                        .clone()
                        .unwrap_or_else(|| prefetch::default_spool(&self.pgdata)),
                ))
            }
            _ => None,
        };
        let spooled = spool
            .as_ref()
            .and_then(|(id, s)| prefetch::take_from_spool(s, &walfile, &dest, *id));
        let c = connect(&params, &self.credentials_dir)?;
        let bytes = match spooled {
            Some(b) => b,
            None => klio::wal_restore::fetch(&c, &params.cluster, &walfile, &dest, system_id)
                .await
                .map_err(status)?,
        };
        tracing::debug!(walfile, bytes, dest = %dest.display(), spooled = spooled.is_some(), "restored");
        if let Some((id, spool)) = spool {
            let (cluster, count) = (params.cluster.clone(), self.prefetch);
            match klio_core::WalSegSize::new(bytes) {
                Ok(seg_size) => {
                    tokio::spawn(async move {
                        if let Err(e) =
                            prefetch::run_prefetch(&c, &cluster, &spool, &name, seg_size, count, id)
                                .await
                        {
                            tracing::warn!(%cluster, "WAL prefetch stopped: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!(
                    walfile,
                    "not prefetching after a segment of {bytes} bytes: {e}"
                ),
            }
        }
        Ok(Response::new(WalRestoreResult {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_must_lie_below_pgdata() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        let ok = format!("{}/pg_wal/RECOVERYXLOG", pgdata.display());
        assert_eq!(
            checked_destination(&pgdata, &ok).unwrap(),
            pgdata.join("pg_wal/RECOVERYXLOG")
        );
        for bad in [
            "pg_wal/RECOVERYXLOG".to_string(),
            format!("{}/pg_wal/../../etc/passwd", pgdata.display()),
            format!("{}/./pg_wal/x", pgdata.display()),
            format!("{}.klio-spool/x", pgdata.display()),
            format!("{}", pgdata.display()),
            format!("{}/missing/x", pgdata.display()),
            "/etc/passwd".to_string(),
        ] {
            let e = checked_destination(&pgdata, &bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}

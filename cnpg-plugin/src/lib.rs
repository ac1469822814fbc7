//! Klio's CloudNativePG plugin (CNPG-I, gRPC): the three processes of
//! `klio-cnpg-plugin` and what they serve.
//!
//! - `operator` ([`identity`], [`lifecycle`]): a Service beside the CloudNativePG
//!   operator, TCP with mTLS ([`tls`]); patches instance Pods and the `full-recovery`
//!   Job to carry Klio's sidecar.
//! - `instance` ([`identity`], [`backup`], [`wal`]): the sidecar of each instance, on
//!   the unix socket `/plugins/cnpg.klio.io`; base backups and WAL restore through the
//!   Klio Server.
//! - `restore` ([`identity`], [`restore_job`], [`wal`]): the sidecar of the restore
//!   Job; fills PGDATA from a Klio backup, then serves the WAL its recovery replays.
//!
//! The Cluster's plugin parameters are parsed by [`params`] from the [`cluster`]
//! definition sent with each call; the Klio Server is reached with [`klio_client`].
//! Every peer is untrusted: requests and server answers are checked before anything is
//! written, and the sidecars write only below PGDATA (and the WAL prefetch spool beside
//! it). The protocol itself is [`proto`], compiled from the vendored `proto/` files.

pub mod backup;
pub mod cluster;
pub mod identity;
pub mod klio_client;
pub mod lifecycle;
pub mod params;
pub mod proto;
pub mod restore_job;
pub mod server;
pub mod tls;
pub mod wal;

use std::path::Path;

use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

use identity::{IdentityService, Role};
use proto::backup::backup_server::BackupServer;
use proto::identity::identity_server::IdentityServer;
use proto::lifecycle::operator_lifecycle_server::OperatorLifecycleServer;
use proto::wal::restore_job_hooks_server::RestoreJobHooksServer;
use proto::wal::wal_server::WalServer;

/// The plugin's name: what Clusters put in `spec.plugins[].name`, and the socket's
/// file name under `/plugins`.
pub const PLUGIN_NAME: &str = "cnpg.klio.io";

/// The operator side's services.
pub fn operator_routes(lifecycle: lifecycle::LifecycleService) -> Routes {
    Routes::new(IdentityServer::new(IdentityService::new(Role::Operator)))
        .add_service(OperatorLifecycleServer::new(lifecycle))
}

/// The instance sidecar's services.
pub fn instance_routes(backup: backup::BackupService, wal: wal::WalService) -> Routes {
    Routes::new(IdentityServer::new(IdentityService::new(Role::Instance)))
        .add_service(BackupServer::new(backup))
        .add_service(WalServer::new(wal))
}

/// The restore sidecar's services.
pub fn restore_routes(restore: restore_job::RestoreJobService, wal: wal::WalService) -> Routes {
    Routes::new(IdentityServer::new(IdentityService::new(Role::Restore)))
        .add_service(RestoreJobHooksServer::new(restore))
        .add_service(WalServer::new(wal))
}

/// A gRPC channel to a plugin's unix socket (the instance manager's side of it).
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://plugin.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

//! The Identity service every role serves: the plugin's metadata, the services this
//! process implements (and only those), and readiness. Writes nothing.

use tonic::{Request, Response, Status};

use crate::proto::identity::identity_server::Identity;
use crate::proto::identity::plugin_capability::service::Type as ServiceType;
use crate::proto::identity::plugin_capability::{Service, Type as CapabilityType};
use crate::proto::identity::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginMetadataRequest,
    GetPluginMetadataResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use crate::PLUGIN_NAME;

/// Which of the plugin's three processes this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Beside the CloudNativePG operator (TCP + mTLS): lifecycle hooks.
    Operator,
    /// Sidecar of each instance Pod (unix socket): backups and WAL restore.
    Instance,
    /// Sidecar of the `full-recovery` Job (unix socket): the restore, and the WAL its
    /// recovery replays.
    Restore,
}

impl Role {
    /// The CNPG-I services this role implements. WAL archiving is not among them: Klio
    /// streams WAL from the primary like a standby, so PostgreSQL's archive_command is
    /// not used; the WAL service answers Restore only (its GetCapabilities says so).
    pub fn services(self) -> &'static [ServiceType] {
        match self {
            Role::Operator => &[ServiceType::LifecycleService],
            Role::Instance => &[ServiceType::BackupService, ServiceType::WalService],
            Role::Restore => &[ServiceType::RestoreJob, ServiceType::WalService],
        }
    }
}

/// The Identity service of one role.
#[derive(Debug, Clone)]
pub struct IdentityService {
    role: Role,
}

impl IdentityService {
    pub fn new(role: Role) -> IdentityService {
        IdentityService { role }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_metadata(
        &self,
        _: Request<GetPluginMetadataRequest>,
    ) -> Result<Response<GetPluginMetadataResponse>, Status> {
        Ok(Response::new(GetPluginMetadataResponse {
            name: PLUGIN_NAME.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            display_name: "Klio".to_string(),
            description: "Base backups and WAL from a Klio Server, which streams WAL from the primary like a standby".to_string(),
            project_url: String::new(),
            repository_url: String::new(),
            license: "Apache-2.0".to_string(),
            license_url: "https://www.apache.org/licenses/LICENSE-2.0".to_string(),
            maturity: "alpha".to_string(),
            vendor: "Klio".to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let capabilities = self
            .role
            .services()
            .iter()
            .map(|t| PluginCapability {
                r#type: Some(CapabilityType::Service(Service { r#type: *t as i32 })),
            })
            .collect();
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: true }))
    }
}

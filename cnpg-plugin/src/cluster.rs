//! The part of a CloudNativePG `Cluster` (sent as JSON with every CNPG-I call) that the
//! plugin reads: its own plugin entry, the recovery source, the recovery target and
//! whether a primary exists yet. Unknown fields are ignored (the operator's API grows).

use std::collections::BTreeMap;

use serde::Deserialize;
use tonic::Status;

use crate::params::KlioParams;
use crate::PLUGIN_NAME;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ClusterSpec,
    #[serde(default)]
    pub status: ClusterStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    #[serde(default)]
    pub plugins: Vec<PluginConfiguration>,
    #[serde(default)]
    pub external_clusters: Vec<ExternalCluster>,
    pub bootstrap: Option<Bootstrap>,
    pub image_pull_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfiguration {
    pub name: String,
    pub enabled: Option<bool>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExternalCluster {
    pub name: String,
    pub plugin: Option<PluginConfiguration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Bootstrap {
    pub recovery: Option<Recovery>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    pub source: Option<String>,
    pub recovery_target: Option<RecoveryTarget>,
    /// A CloudNativePG Backup object to restore (not how this plugin is addressed).
    pub backup: Option<serde_json::Value>,
}

/// `spec.bootstrap.recovery.recoveryTarget`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryTarget {
    #[serde(rename = "backupID")]
    pub backup_id: Option<String>,
    pub target_time: Option<String>,
    #[serde(rename = "targetLSN")]
    pub target_lsn: Option<String>,
    #[serde(rename = "targetXID")]
    pub target_xid: Option<String>,
    pub target_name: Option<String>,
    pub target_immediate: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub current_primary: Option<String>,
}

impl Cluster {
    /// Parses the `cluster_definition` of a CNPG-I request.
    pub fn from_json(bytes: &[u8]) -> Result<Cluster, Status> {
        serde_json::from_slice(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "the cluster definition is not a CloudNativePG Cluster in JSON: {e}"
            ))
        })
    }

    fn ours(p: &PluginConfiguration) -> bool {
        p.name == PLUGIN_NAME && p.enabled != Some(false)
    }

    /// The parameters of this plugin's entry in `spec.plugins`, if enabled there.
    pub fn own_parameters(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .plugins
            .iter()
            .find(|p| Cluster::ours(p))
            .map(|p| &p.parameters)
    }

    /// The parameters of the recovery source (`bootstrap.recovery.source`), when that
    /// external cluster is served by this plugin.
    pub fn recovery_parameters(&self) -> Option<&BTreeMap<String, String>> {
        let source = self.recovery()?.source.as_deref()?;
        self.spec
            .external_clusters
            .iter()
            .find(|c| c.name == source)?
            .plugin
            .as_ref()
            .filter(|p| Cluster::ours(p))
            .map(|p| &p.parameters)
    }

    pub fn recovery(&self) -> Option<&Recovery> {
        self.spec.bootstrap.as_ref()?.recovery.as_ref()
    }

    /// The cluster's own Klio configuration (backups, and WAL once it has a primary).
    pub fn own_params(&self) -> Result<Option<KlioParams>, Status> {
        self.own_parameters()
            .map(|m| KlioParams::parse(m, "spec.plugins").map_err(Status::from))
            .transpose()
    }

    /// The recovery source's Klio configuration.
    pub fn recovery_params(&self) -> Result<Option<KlioParams>, Status> {
        self.recovery_parameters()
            .map(|m| {
                KlioParams::parse(m, "spec.externalClusters[].plugin (the recovery source)")
                    .map_err(Status::from)
            })
            .transpose()
    }

    /// Where WAL comes from: the recovery source while the cluster has no primary yet
    /// (it is being restored), its own configuration afterwards.
    pub fn wal_source_params(&self) -> Result<KlioParams, Status> {
        let bootstrapping = self
            .status
            .current_primary
            .as_deref()
            .is_none_or(str::is_empty);
        let found = if bootstrapping {
            match self.recovery_params()? {
                Some(p) => Some(p),
                None => self.own_params()?,
            }
        } else {
            self.own_params()?
        };
        found.ok_or_else(|| {
            Status::failed_precondition(format!(
                "cluster {} does not configure plugin {PLUGIN_NAME} (spec.plugins or the recovery source's plugin): it serves no WAL for it",
                self.metadata.name
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(current_primary: Option<&str>) -> Cluster {
        let p = |c: &str| json!({"server": "https://k", "cluster": c, "secret": "s"});
        serde_json::from_value(json!({
            "metadata": {"name": "pg"},
            "spec": {
                "plugins": [{"name": "other.io"}, {"name": PLUGIN_NAME, "parameters": p("own")}],
                "bootstrap": {"recovery": {"source": "origin"}},
                "externalClusters": [
                    {"name": "decoy", "plugin": {"name": PLUGIN_NAME, "parameters": p("decoy")}},
                    {"name": "origin", "plugin": {"name": PLUGIN_NAME, "parameters": p("origin")}},
                ],
            },
            "status": {"currentPrimary": current_primary},
        }))
        .unwrap()
    }

    #[test]
    fn wal_comes_from_the_recovery_source_until_there_is_a_primary() {
        assert_eq!(
            cluster(None).wal_source_params().unwrap().cluster.as_str(),
            "origin"
        );
        assert_eq!(
            cluster(Some(""))
                .wal_source_params()
                .unwrap()
                .cluster
                .as_str(),
            "origin"
        );
        assert_eq!(
            cluster(Some("pg-1"))
                .wal_source_params()
                .unwrap()
                .cluster
                .as_str(),
            "own"
        );
        let mut c = cluster(Some("pg-1"));
        c.spec.plugins[1].enabled = Some(false);
        let e = c.wal_source_params().unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(c.own_params().unwrap().is_none());
        // Without its own configuration, a cluster being restored still has the source's.
        assert_eq!(
            cluster(None)
                .recovery_params()
                .unwrap()
                .unwrap()
                .cluster
                .as_str(),
            "origin"
        );
    }

    #[test]
    fn a_definition_that_is_not_json_is_invalid_argument() {
        let e = Cluster::from_json(b"not json").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}

//! The HTTP API's wire types, shared by the server ([`crate::http`]) and the client
//! ([`crate::client`]). JSON bodies; LSNs as `X/Y` strings, WAL names as PostgreSQL
//! spells them.

use klio_core::ClusterName;
use serde::{Deserialize, Serialize};

use crate::registry::{ClusterStatusView, WalEntryView};

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/status`: the clusters the presented token may see, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusList {
    pub clusters: Vec<ClusterStatusView>,
}

/// `GET /v1/clusters/{cluster}/wal`: stored WAL files in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalList {
    pub cluster: ClusterName,
    pub files: Vec<WalEntryView>,
}

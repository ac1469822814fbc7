//! The Server's status, from what the server itself reports on `GET /v1/status`.
//!
//! **Token.** `/v1/status` shows a caller only the clusters its credentials belong to,
//! and each cluster has its own bearer token (`spec.clusters[].token`, a Secret the
//! operator already reads for the rollout hash). So the operator asks once per cluster,
//! with that cluster's token, and keeps that cluster's entry. It holds tokens only in
//! memory, for the request. With `spec.tls` the request goes over HTTPS to
//! `<server>.<namespace>.svc` and trusts the `ca.crt` of the TLS Secret (cert-manager
//! writes one) or, without it, the system roots: the server's certificate must name that
//! host. Without `spec.tls` the token goes over plain HTTP inside the cluster (the
//! server was configured without TLS). With `requireClientCert` tokens are refused, so
//! the status says it is unavailable.
//!
//! The fetch sits behind [`StatusSource`] so tests can fake it.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use klio_api::client::Client;
use klio_api::token::ClusterToken;
use klio_api::{ClusterStatusView, ConnectionState};

use crate::{ServerMode, ServerStatus};

/// Where and how to ask one cluster's status.
#[derive(Clone)]
pub struct StatusTarget {
    /// `https://<server>.<namespace>.svc:7070`.
    pub url: String,
    pub cluster: String,
    /// The cluster's token (from its Secret).
    pub token: String,
    /// The CA bundle to trust for HTTPS (none: the system roots).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for StatusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTarget")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Asks a server for one cluster's status.
pub trait StatusSource: Send + Sync {
    /// The cluster's entry of `GET /v1/status` (`Ok(None)`: the server does not list it);
    /// `Err`: a one-line reason.
    fn cluster_status<'a>(
        &'a self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<ClusterStatusView>, String>>;
}

/// The real source: `klio-api`'s client.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApiStatusSource;

impl StatusSource for ApiStatusSource {
    fn cluster_status<'a>(
        &'a self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<ClusterStatusView>, String>> {
        Box::pin(async move {
            let origin = format!("the Secret of cluster {}", target.cluster);
            let token = ClusterToken::parse(&target.token, &origin).map_err(|e| e.to_string())?;
            let client =
                Client::with_token(&target.url, token, &origin, target.ca_pem.as_deref(), true)
                    .map_err(|e| e.to_string())?;
            let list = client.status().await.map_err(|e| e.to_string())?;
            Ok(list
                .clusters
                .into_iter()
                .find(|c| c.cluster.as_str() == target.cluster))
        })
    }
}

/// What the reconciler knows besides the server's own report.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub generation: Option<i64>,
    pub mode: ServerMode,
    pub tier2: bool,
    /// The StatefulSet has its replica ready.
    pub pod_ready: bool,
    /// Each cluster's report, in spec order (`Err`: why there is none).
    pub clusters: Vec<(String, Result<ClusterStatusView, String>)>,
    /// A problem that stops the server from being configured (`(reason, message)`).
    pub blocked: Option<(String, String)>,
    /// The storage condition (`StorageResized`), when a resize was asked for.
    pub storage: Option<(bool, String, String)>,
    /// Some cluster has `snapshotOffload`.
    pub offload_enabled: bool,
    /// This pass's Tier 0 offloads ([`crate::offload`]); `None` with `offload_enabled`:
    /// not run this time (the pod is not ready, or the spec is blocked), so the
    /// previous records and condition stay.
    pub offload: Option<crate::offload::Report>,
    /// This pass's wiring of CloudNativePG Clusters ([`crate::wire`]); `None`: no
    /// cluster has `wire`.
    pub wire: Option<crate::wire::Report>,
}

fn condition(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// A condition whose state the operator cannot tell (no report from the server).
fn unknown(type_: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        status: "Unknown".into(),
        ..condition(type_, false, reason, message)
    }
}

fn rfc3339(secs: u64) -> Option<String> {
    let secs = i64::try_from(secs).ok()?;
    Timestamp::from_second(secs).ok().map(|t| t.to_string())
}

/// The status to write: conditions `Ready`, `Streaming-<cluster>` (one per cluster of a
/// standard server) and `Streaming` (all of them), `Tier2Reachable` (with `[tier2]`),
/// `StorageResized` (after a resize request), `SnapshotOffload` (with `snapshotOffload`),
/// `CloudNativePGWired` (with `wire`);
/// the newest backup; each cluster's WAL lag; each cluster's last snapshot offload.
/// A condition keeps its `lastTransitionTime` from `previous` while its status holds;
/// `now` stamps the others.
pub fn build(obs: &Observed, previous: Option<&ServerStatus>, now: Timestamp) -> ServerStatus {
    let mut conditions = Vec::new();
    let reports: Vec<&ClusterStatusView> = obs
        .clusters
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let unreachable: Vec<String> = obs
        .clusters
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();

    let ready = match (&obs.blocked, obs.pod_ready) {
        (Some((reason, message)), _) => condition("Ready", false, reason, message.clone()),
        (None, false) => condition(
            "Ready",
            false,
            "PodNotReady",
            "the server's pod is not ready",
        ),
        (None, true) if !unreachable.is_empty() => condition(
            "Ready",
            false,
            "StatusUnavailable",
            format!(
                "the server's /v1/status could not be read: {}",
                unreachable.join("; ")
            ),
        ),
        (None, true) => condition("Ready", true, "Serving", "the server answers its API"),
    };
    conditions.push(ready);

    if obs.mode == ServerMode::Standard && obs.blocked.is_none() {
        let (mut behind, mut unknown_of) = (Vec::new(), Vec::new());
        for (name, r) in &obs.clusters {
            let c = match r {
                Ok(v) if v.state == ConnectionState::Streaming => {
                    condition(&format!("Streaming-{name}"), true, "Streaming", "")
                }
                Ok(v) => condition(
                    &format!("Streaming-{name}"),
                    false,
                    state_reason(v.state),
                    v.last_error.clone().unwrap_or_default(),
                ),
                Err(e) => unknown(&format!("Streaming-{name}"), "NoReport", e.clone()),
            };
            match c.status.as_str() {
                "False" => behind.push(name.clone()),
                "Unknown" => unknown_of.push(name.clone()),
                _ => {}
            }
            conditions.push(c);
        }
        // One summary: False if any cluster is known not to stream, else Unknown if any
        // has no report, else True.
        conditions.push(if !behind.is_empty() {
            condition(
                "Streaming",
                false,
                "NotStreaming",
                format!("not streaming: {}", behind.join(", ")),
            )
        } else if !unknown_of.is_empty() {
            unknown(
                "Streaming",
                "NoReport",
                format!("no report for: {}", unknown_of.join(", ")),
            )
        } else {
            condition("Streaming", true, "AllStreaming", "every cluster streams")
        });
    }

    if obs.tier2 && obs.blocked.is_none() {
        let relays: Vec<_> = reports.iter().filter_map(|v| v.tier2.as_ref()).collect();
        let dead: u64 = relays.iter().map(|t| t.dead_letters).sum();
        let rescan_failed = relays
            .iter()
            .filter_map(|t| t.rescan.as_ref())
            .find_map(|r| r.error.clone());
        conditions.push(if relays.is_empty() {
            unknown(
                "Tier2Reachable",
                "NoReport",
                "no Tier 2 report from the server yet",
            )
        } else if dead > 0 {
            condition(
                "Tier2Reachable",
                false,
                "DeadLetters",
                format!("{dead} object(s) failed for good; see `klio tier2 retry`"),
            )
        } else if let Some(e) = rescan_failed {
            condition("Tier2Reachable", false, "RescanFailed", e)
        } else if relays
            .iter()
            .any(|t| t.upload_failures > 0 && t.backlog_objects > 0)
        {
            condition(
                "Tier2Reachable",
                false,
                "UploadsFailing",
                format!(
                    "{} object(s) wait for Tier 2 after failed uploads",
                    relays.iter().map(|t| t.backlog_objects).sum::<u64>()
                ),
            )
        } else {
            condition("Tier2Reachable", true, "Reachable", "")
        });
    }

    if let Some((ok, reason, message)) = &obs.storage {
        conditions.push(condition("StorageResized", *ok, reason, message.clone()));
    }

    let mut snapshot_offloads = Vec::new();
    match (&obs.offload, previous) {
        (Some(report), _) => {
            let (status, reason, message) = report.condition();
            conditions.push(Condition {
                status: status.into(),
                ..condition("SnapshotOffload", false, &reason, message)
            });
            snapshot_offloads = report.records.clone();
        }
        (None, Some(p)) if obs.offload_enabled => {
            conditions.extend(
                p.conditions
                    .iter()
                    .find(|c| c.type_ == "SnapshotOffload")
                    .cloned(),
            );
            snapshot_offloads = p.snapshot_offloads.clone();
        }
        _ => {}
    }

    if let Some(report) = &obs.wire {
        let (status, reason, message) = report.condition();
        conditions.push(Condition {
            status: status.into(),
            ..condition("CloudNativePGWired", false, &reason, message)
        });
    }

    for c in &mut conditions {
        c.observed_generation = obs.generation;
        let kept = previous
            .and_then(|p| p.conditions.iter().find(|p| p.type_ == c.type_))
            .filter(|p| p.status == c.status)
            .map(|p| p.last_transition_time.clone());
        c.last_transition_time = kept.unwrap_or(Time(now));
    }

    ServerStatus {
        observed_generation: obs.generation,
        conditions,
        last_backup_time: reports
            .iter()
            .filter_map(|v| v.backups.last_complete_at)
            .max()
            .and_then(rfc3339),
        wal_lag_bytes: reports
            .iter()
            .filter_map(|v| v.lag_bytes.map(|l| (v.cluster.as_str().to_string(), l)))
            .collect::<BTreeMap<_, _>>(),
        snapshot_offloads,
    }
}

fn state_reason(s: ConnectionState) -> &'static str {
    match s {
        ConnectionState::Connecting => "Connecting",
        ConnectionState::Streaming => "Streaming",
        ConnectionState::Disconnected => "Disconnected",
        ConnectionState::Failed => "Failed",
        ConnectionState::ReadOnly => "ReadOnly",
    }
}

#[cfg(test)]
pub(crate) mod tests;

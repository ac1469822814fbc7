//! Klio's per-cluster WAL streaming and Tier 1 WAL store (the protocol itself is
//! `klio-pgwire`). Writes under `data_dir/clusters/<name>/wal/` and the catalog.
//!
//! - [`wal_store`]: the encrypted Tier 1 WAL files and their reconciliation;
//! - [`ingest`]: the per-cluster Tier 1 writer (group commit, durable position);
//! - [`cluster`]: the per-cluster streaming task;
//! - [`status`]: live state for the API and metrics.

pub mod cluster;
pub mod ingest;
pub mod status;
pub mod wal_store;

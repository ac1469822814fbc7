//! Klio's physical replication client and Tier 1 WAL store.
//!
//! - [`conninfo`]: libpq connection strings and passfiles;
//! - [`pgwire`]: the replication connection (TCP/Unix, TLS, authentication, COPY);
//! - [`replication`]: typed replication commands and streaming messages;
//! - [`wal_store`]: the encrypted Tier 1 WAL files and their reconciliation;
//! - [`ingest`]: the per-cluster Tier 1 writer (group commit, durable position);
//! - [`cluster`]: the per-cluster streaming task;
//! - [`status`]: live state for the API and metrics.

pub mod cluster;
pub mod conninfo;
pub mod crashsafe;
pub mod failpoint;
pub mod ingest;
pub mod pgwire;
pub mod replication;
pub mod status;
pub mod wal_store;

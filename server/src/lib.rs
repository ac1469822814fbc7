//! The Klio Server daemon: configuration, the engine (start-up, key check,
//! supervision), the backup manager and its schedules, the HTTP API (TLS, auth) and its
//! metrics, and the seam ([`registry::Registry`]) between the API and the engine.
//!
//! Writes nothing itself beyond what it drives: the WAL store and chunk store (through
//! `klio-receiver` and `klio-basebackup`) and the catalog, all under `data_dir`.

pub mod auth;
pub mod backups;
pub mod client_cert;
pub mod config;
pub mod engine;
pub mod http;
pub mod keyrotate;
pub mod metrics;
pub mod registry;
pub mod rescan;
pub mod retention;
pub use klio_core::schedule;
pub mod serve;
pub mod tier2;
pub mod tls;

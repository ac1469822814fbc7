//! The `klio` binary's library: configuration, the HTTP API and its metrics, the
//! client commands, and the seam ([`registry::Registry`]) to the streaming engine.

pub mod auth;
pub mod backups;
pub mod cli;
pub mod client_cert;
pub mod config;
pub mod demo;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod output;
pub mod prefetch;
pub mod progress;
pub mod registry;
pub mod restore;
mod restore_fs;
pub mod restore_plan;
pub mod schedule;
pub mod serve;
pub mod tls;
pub mod wal_restore;

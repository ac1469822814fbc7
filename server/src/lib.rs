//! The `klio` binary's library: configuration, the HTTP API and its metrics, the
//! client commands, and the seam ([`registry::Registry`]) to the streaming engine.

pub mod auth;
pub mod backups;
pub mod client_cert;
pub mod config;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod schedule;
pub mod serve;
pub mod tls;

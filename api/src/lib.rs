//! `klio-api`: Klio's HTTP API as its clients see it — the wire types (JSON bodies), the
//! typed async [`client::Client`] with its error, credentials (bearer token or client
//! certificate) and TLS options, and the OpenAPI document ([`OPENAPI`]). Depends on
//! `klio-core` only among Klio's crates: no RocksDB, no PostgreSQL client, so the
//! operator and the lean `klio` build for database hosts can use it. Writes nothing to
//! disk.

pub mod client;
pub mod token;
mod wire;

pub use wire::*;

/// The OpenAPI 3.0 document of the API (`api/openapi.json`); the server serves it at
/// `/v1/openapi.json` and its tests check that it describes exactly the served routes.
pub const OPENAPI: &str = include_str!("../openapi.json");

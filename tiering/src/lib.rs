//! Klio's Tier 2: object storage (S3 and S3-compatible servers, Google Cloud Storage,
//! Azure Blob Storage, or a local directory) reached through the `object_store` crate.
//!
//! This crate is the foundation the Tier 2 relay, restores from Tier 2, read-only servers
//! and retention build on:
//! - [`config`]: the `[tier2]` table (`Tier2Config`), its `KLIO_TIER2_*` overrides, and its
//!   validation into [`config::Tier2Settings`] (credential files 0600, CA file PEM, no
//!   plain http unless allowed);
//! - [`store`]: [`Tier2`], one bucket and prefix: create-only PUTs that check what they
//!   find instead of overwriting it, get, ranged get, head, list (from an offset), delete;
//!   [`Tier2::put_multipart`] (module `multipart`) for large objects, aborted on failure;
//! - [`retry`]: bounded retry with exponential backoff and full jitter, the one place
//!   that retries; [`error::Tier2Error::is_permanent`] says whether a retry can help;
//! - [`objects`]: how Tier 1 objects are named in the bucket (a mirror of Tier 1's
//!   `clusters/` directory, so the bucket describes itself);
//! - [`relay`]: [`Relay`], one cluster's copier from Tier 1 to Tier 2, driven by the
//!   catalog's durable relay queue (bounded concurrency, backoff, dead letters).
//!
//! ## Testing against a real S3 server
//! The tests run against moto's server mode (`moto_server`, PyPI `moto[server]` 5.2.5 or
//! later), started per test by `klio_harness::s3::S3Server` on 127.0.0.1. Moto was picked
//! over `s3s-fs` because it implements the three S3 behaviours this crate depends on the
//! way S3 does: a create-only PUT (`If-None-Match: *`) on an existing key answers 412
//! atomically (5.2.0–5.2.4 answer 500; `s3s-fs`'s check is not atomic), multipart uploads
//! produce real ETags and can be listed and aborted, and ListObjectsV2 honours
//! `start-after`. It is in-memory, so a test's bucket vanishes with its server.

pub mod config;
pub mod error;
mod multipart;
pub mod objects;
pub mod relay;
pub mod retention;
pub mod retry;
pub mod store;

pub use config::{Tier2Config, Tier2Settings};
pub use error::Tier2Error;
pub use relay::{Relay, RelayCounters, RelaySettings};
pub use retry::RetryPolicy;
pub use store::{PutOutcome, Tier2};

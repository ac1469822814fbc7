//! Base backups into Tier 1.
//!
//! - [`protocol`]: `BASE_BACKUP` on a replication connection (15+ option syntax and the
//!   13/14 multi-CopyOut form), decoded into [`protocol::BackupEvent`]s;
//! - [`tar`]: an incremental (push) parser for the tar archives PostgreSQL sends;
//! - [`archive_rule`]: which members such an archive may hold (links only for tablespaces);
//! - [`store`]: the per-cluster deduplicated chunk store (pack files of encrypted,
//!   compressed, content-addressed chunks) and the backup commit/abort protocol;
//! - [`manifest`]: Klio's backup manifest and the check against PostgreSQL's
//!   `backup_manifest`;
//! - [`offload`]: a PGDATA copy with its `backup_label` (Tier 0 snapshots) as a backup source,
//!   confined to the cluster's offload roots (reads through `confine`: no symbolic link followed);
//! - [`job`]: one backup end to end (stream or offload → store → checks → commit);
//! - [`walchain`]: is the WAL from a backup's start to a later point all in Tier 1?
//!
//! Writes under `data_dir/clusters/<name>/backups/` (packs, manifests; paths from
//! `klio_core::layout`) and the catalog's backup records; reads offload sources only
//! inside the configured offload roots.

pub mod archive_rule;
pub mod job;
pub mod manifest;
pub use klio_core::offload;
pub mod protocol;
pub mod store;
pub mod tar;
pub mod walchain;

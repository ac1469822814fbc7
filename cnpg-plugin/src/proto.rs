//! The CNPG-I protocol, generated at build time from the vendored `proto/` files
//! (`build.rs`): messages, server traits and clients.

#![allow(clippy::all, missing_docs)]

/// `cnpgi.identity.v1`: what the plugin is and which services it serves.
pub mod identity {
    tonic::include_proto!("cnpgi.identity.v1");
}

/// `cnpgi.operator_lifecycle.v1`: patches to the objects the operator creates.
pub mod lifecycle {
    tonic::include_proto!("cnpgi.operator_lifecycle.v1");
}

/// `cnpgi.backup.v1`: base backups.
pub mod backup {
    tonic::include_proto!("cnpgi.backup.v1");
}

/// `cnpgi.wal.v1`: the WAL service and (same package upstream) the restore-job hooks.
pub mod wal {
    tonic::include_proto!("cnpgi.wal.v1");
}

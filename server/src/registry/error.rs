//! The engine's typed error at its seam with the HTTP API. [`RegistryError`] keeps the
//! failure's source (the WAL store's, the chunk store's, the catalog's, an offload
//! source's) instead of a message built from it; [`ErrorKind`] classifies every failure
//! once: the HTTP status it becomes (chosen in `ApiError::status`) and whether retrying
//! the same request can succeed. Nothing here writes to disk.

use std::error::Error;
use std::fmt;

use klio_basebackup::offload::OffloadError;
use klio_basebackup::store::BackupStoreError;
use klio_catalog::CatalogError;
use klio_receiver::wal_store::StoreError;

/// Any error, as a source kept for the log.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// What kind of failure a request met: it decides the HTTP status and whether a retry
/// of the same request can help ([`ErrorKind::is_permanent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No usable credentials (401).
    Unauthorized,
    /// Credentials of another cluster, or the server's configuration does not permit
    /// the request (403).
    Forbidden,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The request cannot be carried out as given (400).
    BadRequest,
    /// The request clashes with work in progress (409).
    Conflict,
    /// The cluster has not reached its primary yet (503).
    NotReady,
    /// Stored data that no longer changes failed authentication or its checksum (500).
    Corrupt,
    /// Stored data failed verification while it may still be being written: a read of
    /// the open `.partial` segment can meet a frame its writer has not finished (500).
    Unsettled,
    /// Anything else: I/O, the catalog, a task that died (500).
    Internal,
}

impl ErrorKind {
    /// True when retrying the same request cannot succeed: the caller must change
    /// something first (credentials, the request, wait for another job) or the data is
    /// damaged. False for failures that may clear by themselves.
    pub fn is_permanent(self) -> bool {
        match self {
            ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::NotFound
            | ErrorKind::BadRequest
            | ErrorKind::Conflict
            | ErrorKind::Corrupt => true,
            ErrorKind::NotReady | ErrorKind::Unsettled | ErrorKind::Internal => false,
        }
    }
}

/// Why the engine could not answer. The messages of `Conflict`, `BadRequest`,
/// `NotFound`, `Forbidden` and `Offload` are sent to the client; the others' details
/// are logged (with their sources), never sent.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The cluster is configured but has never reached its primary yet.
    #[error("cluster has not connected to its primary yet")]
    NotReady,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The server's configuration does not permit the request.
    #[error("{0}")]
    Forbidden(String),
    /// An offload source refused: outside `offload_roots` (403) or not a usable copy
    /// of PGDATA (400).
    #[error(transparent)]
    Offload(#[from] OffloadError),
    /// The chunk store: corrupt data, or an I/O or catalog failure.
    #[error("backup store")]
    Backups(#[from] BackupStoreError),
    /// The Tier 1 WAL store: a file that failed verification, or an I/O failure.
    #[error("WAL store")]
    Wal(#[from] StoreError),
    #[error("catalog")]
    Catalog(#[from] CatalogError),
    /// Stored data failed verification, found by a check of this crate (or a test
    /// registry); `settled`: the data no longer changes (see [`ErrorKind::Unsettled`]).
    #[error("stored data failed verification")]
    Corrupt {
        #[source]
        source: BoxError,
        settled: bool,
    },
    /// Any other failure, with what was being done.
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: BoxError,
    },
}

impl RegistryError {
    /// An internal failure while doing `context`.
    pub fn internal(context: &'static str, source: impl Into<BoxError>) -> RegistryError {
        RegistryError::Internal {
            context,
            source: source.into(),
        }
    }

    /// The one place that decides what a failure is.
    pub fn kind(&self) -> ErrorKind {
        use BackupStoreError as B;
        match self {
            RegistryError::NotReady => ErrorKind::NotReady,
            RegistryError::Conflict(_) => ErrorKind::Conflict,
            RegistryError::BadRequest(_) => ErrorKind::BadRequest,
            RegistryError::NotFound(_) => ErrorKind::NotFound,
            RegistryError::Forbidden(_) | RegistryError::Offload(OffloadError::OutsideRoots) => {
                ErrorKind::Forbidden
            }
            RegistryError::Offload(_) => ErrorKind::BadRequest,
            RegistryError::Backups(
                B::CorruptChunk { .. } | B::ChunkMismatch { .. } | B::BadObject { .. },
            ) => ErrorKind::Corrupt,
            RegistryError::Wal(
                StoreError::Frame { path, .. } | StoreError::Corrupt { path, .. },
            ) => match path.extension().is_some_and(|e| e == "partial") {
                true => ErrorKind::Unsettled,
                false => ErrorKind::Corrupt,
            },
            RegistryError::Corrupt { settled: true, .. } => ErrorKind::Corrupt,
            RegistryError::Corrupt { settled: false, .. } => ErrorKind::Unsettled,
            RegistryError::Backups(_)
            | RegistryError::Wal(_)
            | RegistryError::Catalog(_)
            | RegistryError::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// See [`ErrorKind::is_permanent`].
    pub fn is_permanent(&self) -> bool {
        self.kind().is_permanent()
    }
}

/// An error and its sources on one line, for the log (a source whose text its
/// parent already quotes is left out).
pub struct SourceChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for SourceChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            let text = e.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn frame_error(path: &str) -> RegistryError {
        RegistryError::Wal(StoreError::Frame {
            path: PathBuf::from(path),
            source: klio_core::frame::FrameError::Authentication { at: 0 },
        })
    }

    #[test]
    fn wal_verification_failures_are_permanent_only_once_the_file_is_sealed() {
        let sealed = frame_error("/d/wal/pg/00000001/000000010000000000000001");
        assert_eq!(sealed.kind(), ErrorKind::Corrupt);
        assert!(sealed.is_permanent());
        let open = frame_error("/d/wal/pg/00000001/000000010000000000000002.partial");
        assert_eq!(open.kind(), ErrorKind::Unsettled);
        assert!(!open.is_permanent());
        let io = RegistryError::Wal(StoreError::Io {
            path: PathBuf::from("/d/x"),
            source: std::io::Error::other("EIO"),
        });
        assert_eq!(io.kind(), ErrorKind::Internal);
        assert!(!io.is_permanent());
    }

    #[test]
    fn offload_refusals_are_forbidden_or_bad_requests() {
        let outside = RegistryError::from(OffloadError::OutsideRoots);
        assert_eq!(outside.kind(), ErrorKind::Forbidden);
        let no_label = RegistryError::from(OffloadError::NoLabel(PathBuf::from("/snap")));
        assert_eq!(no_label.kind(), ErrorKind::BadRequest);
        assert!(outside.is_permanent() && no_label.is_permanent());
    }

    #[test]
    fn chunk_store_corruption_is_permanent_and_its_io_errors_are_not() {
        let bad = RegistryError::from(BackupStoreError::BadObject {
            path: PathBuf::from("/d/packs/p1"),
            why: "bad magic".into(),
        });
        assert_eq!(bad.kind(), ErrorKind::Corrupt);
        assert!(bad.is_permanent());
        let io = RegistryError::from(BackupStoreError::Io {
            path: PathBuf::from("/d/packs/p1"),
            source: std::io::Error::other("EIO"),
        });
        assert_eq!(io.kind(), ErrorKind::Internal);
        assert!(!io.is_permanent());
    }

    #[test]
    fn the_source_chain_names_every_cause_once() {
        let e = RegistryError::internal(
            "reading the cluster's record",
            std::io::Error::other("disk on fire"),
        );
        assert_eq!(
            SourceChain(&e).to_string(),
            "reading the cluster's record: disk on fire"
        );
        // BackupStoreError quotes its source already: not repeated.
        let e = RegistryError::from(BackupStoreError::Io {
            path: PathBuf::from("/d/p"),
            source: std::io::Error::other("EIO"),
        });
        assert_eq!(SourceChain(&e).to_string(), "backup store: /d/p: EIO");
    }
}

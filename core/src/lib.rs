//! Klio's shared vocabulary: WAL positions and file names, cluster names, keys,
//! the encrypted frame format every stored byte goes through, the data directory's layout
//! (`layout`: every path under `data_dir`), and the small helpers every crate shares (clock,
//! disk-full check, crash-safe files, failpoints, secret files).
//!
//! Writes nothing on its own: `crashsafe` and `secret_file` write the files their callers
//! name.

pub mod backup_id;
pub mod clock;
pub mod cluster;
pub mod confine;
pub mod crashsafe;
pub mod disk;
pub mod failpoint;
pub mod frame;
pub mod frame_reader;
pub mod keys;
pub mod layout;
pub mod log_format;
pub mod lsn;
pub mod manifest;
pub mod offload;
pub mod schedule;
pub mod secret_file;
pub mod system_id;
pub mod upload;
pub mod wal;

pub use backup_id::BackupId;
pub use cluster::ClusterName;
pub use keys::{DataKey, MasterKey};
pub use lsn::Lsn;
pub use system_id::SystemId;
pub use wal::{SegNo, SegmentHeader, TimelineId, WalFileKind, WalFileName, WalSegSize};

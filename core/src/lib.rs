//! Klio's shared vocabulary: WAL positions and file names, cluster names, keys,
//! and the encrypted frame format every stored byte goes through.

pub mod clock;
pub mod cluster;
pub mod disk;
pub mod frame;
pub mod frame_reader;
pub mod keys;
pub mod lsn;
pub mod secret_file;
pub mod wal;

pub use cluster::ClusterName;
pub use keys::{DataKey, MasterKey};
pub use lsn::Lsn;
pub use wal::{SegNo, SegmentHeader, TimelineId, WalFileKind, WalFileName, WalSegSize};

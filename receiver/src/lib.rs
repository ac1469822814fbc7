//! Klio's physical replication client: the connection string ([`conninfo`]).

pub mod conninfo;

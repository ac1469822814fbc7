//! Klio's physical replication client: the connection string ([`conninfo`]), the wire
//! connection ([`pgwire`]) and the typed replication commands and streaming messages
//! ([`replication`]).

pub mod conninfo;
pub mod pgwire;
pub mod replication;

//! A ready-made API state for tests (here and in the `klio` CLI crate): an in-memory
//! registry with two clusters, `pg-a` (streaming, two WAL files) and `pg-b` (connecting,
//! none), and their tokens. Built only for tests and with the `testing` feature.

use std::sync::Arc;

use klio_api::{ClusterStatusView, ConnectionState};
use klio_core::{ClusterName, Lsn};

use super::AppState;
use crate::auth::{ClusterToken, TokenSet};
use crate::registry::MemoryRegistry;

pub const TOKEN_A: &str = "token-of-pg-a-0123456789";
pub const TOKEN_B: &str = "token-of-pg-b-0123456789";
/// The one WAL segment `pg-a` has.
pub const SEG1: &str = "000000010000000000000001";

pub fn name(s: &str) -> ClusterName {
    s.parse().unwrap()
}

/// pg-a streaming with two WAL files, pg-b connecting with none; both configured.
pub fn fixture() -> (Arc<MemoryRegistry>, AppState) {
    let reg = Arc::new(MemoryRegistry::new());
    let mut a = ClusterStatusView::connecting(name("pg-a"));
    a.state = ConnectionState::Streaming;
    a.system_id = Some("7390123456789012345".into());
    a.timeline = Some(klio_core::TimelineId::FIRST);
    a.received_lsn = Some(Lsn(0x3000_0100));
    a.flushed_lsn = Some(Lsn(0x3000_0000));
    a.primary_lsn = Some(Lsn(0x3000_0200));
    a.lag_bytes = Some(0x200);
    a.sealed_segments = 2;
    reg.add_cluster(a);
    reg.add_cluster(ClusterStatusView::connecting(name("pg-b")));
    let seg: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    reg.put_wal(&name("pg-a"), SEG1.parse().unwrap(), seg);
    reg.put_wal(
        &name("pg-a"),
        "00000002.history".parse().unwrap(),
        b"1\t0/3000000\tno recovery target specified\n".to_vec(),
    );
    let tokens = TokenSet::new([
        (name("pg-a"), ClusterToken::parse(TOKEN_A, "test").unwrap()),
        (name("pg-b"), ClusterToken::parse(TOKEN_B, "test").unwrap()),
    ]);
    let state = AppState::new(reg.clone(), tokens);
    (reg, state)
}

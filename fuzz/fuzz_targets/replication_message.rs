//! Streaming CopyData payloads (XLogData, keepalive, status update) and the LSN and size
//! texts the server sends.
#![no_main]

use bytes::Bytes;
use klio_core::Lsn;
use klio_pgwire::replication::{parse_size, ReplicationMessage, StandbyStatusUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ReplicationMessage::decode(Bytes::copy_from_slice(data));
    let _ = StandbyStatusUpdate::decode(Bytes::copy_from_slice(data));
    let text = String::from_utf8_lossy(data);
    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>().ok(), Some(lsn));
    }
    let _ = parse_size(&text);
});

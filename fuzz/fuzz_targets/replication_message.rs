//! Streaming CopyData payloads (XLogData, keepalive, status update) and the LSN and size
//! texts the server sends.
#![no_main]

use bytes::Bytes;
use klio_pgwire::replication::{
    format_lsn, parse_lsn, parse_size, ReplicationMessage, StandbyStatusUpdate,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ReplicationMessage::decode(Bytes::copy_from_slice(data));
    let _ = StandbyStatusUpdate::decode(Bytes::copy_from_slice(data));
    let text = String::from_utf8_lossy(data);
    if let Ok(lsn) = parse_lsn(&text) {
        assert_eq!(parse_lsn(&format_lsn(lsn)).ok(), Some(lsn));
    }
    let _ = parse_size(&text);
});

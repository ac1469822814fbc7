//! Backend message framing and bodies: the messages read must not depend on how the
//! network split the bytes (the first byte seeds the cut points).
#![no_main]

use klio_pgwire::fuzz::{backend_messages, backend_messages_chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((seed, rest)) = data.split_first() else {
        return;
    };
    let cuts: Vec<usize> = (1..=usize::from(seed % 8))
        .map(|i| i * usize::from(*seed) * 7)
        .collect();
    assert_eq!(backend_messages_chunked(rest, &cuts), backend_messages(rest));
});

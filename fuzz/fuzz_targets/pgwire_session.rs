//! A whole client session (startup, authentication, replication commands, streaming or
//! CopyOut) against a server sending the input; see `klio_pgwire::fuzz::session`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    klio_pgwire::fuzz::session(data);
});

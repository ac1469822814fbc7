//! Connection strings: key=value and URI forms never panic; an error about a URI never
//! quotes the password (the password is framed by markers that only an echo could repeat).
#![no_main]

use klio_pgwire::conninfo::ConnInfo;
use libfuzzer_sys::fuzz_target;

const MARK: &str = "Q7zXk";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = ConnInfo::parse(&text);
    let _ = ConnInfo::parse(&format!("postgresql://{text}"));
    // A password pasted unencoded into a fixed URI (without the characters that end the
    // user-info part, which would move it into the host, path or query).
    if !text.contains(['@', '/', '?', '#', '\n', '\r']) {
        let uri = format!("postgresql://rep:{MARK}{text}{MARK}@db.example:5432/postgres");
        if let Err(e) = ConnInfo::parse(&uri) {
            assert!(!e.to_string().contains(MARK), "{e}");
        }
    }
});

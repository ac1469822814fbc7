//! Stored objects (Tier 1 / Tier 2 files) as a reader meets them: the first byte picks
//! whether the input is a whole object or frames after a valid header of a fixed key.
#![no_main]

use std::sync::OnceLock;

use klio_core::frame::{decode_object, FrameSealer, ObjectId, ObjectKind, HEADER_LEN};
use klio_core::DataKey;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    key: DataKey,
    id: ObjectId,
    header: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = DataKey::generate();
        let id = ObjectId {
            cluster: "fuzz".parse().expect("valid cluster name"),
            kind: ObjectKind::WalSegment,
            name: "000000010000000000000001".into(),
        };
        let (_, header) = FrameSealer::create(&key, &id);
        Fixture {
            key,
            id,
            header: header[..HEADER_LEN].to_vec(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let object = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        [f.header.as_slice(), rest].concat()
    };
    for tolerate in [false, true] {
        if let Ok(d) = decode_object(&f.key, &f.id, &object, tolerate) {
            // Nothing was sealed with this key: no frame may authenticate.
            assert!(d.data.is_empty() && !d.finished, "a forged frame was accepted");
        }
    }
});

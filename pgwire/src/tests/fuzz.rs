//! Bounded fuzzing (proptest) of what the server sends: backend message framing and bodies,
//! and whole client sessions against a peer sending generated streams. The same entry
//! points back the `cargo fuzz` targets (`fuzz/`); `PROPTEST_CASES` raises the case count
//! for a long run (docs/FUZZING.md).

use proptest::collection::vec;
use proptest::prelude::*;

use super::super::fuzz::{
    authentication, backend_messages, backend_messages_chunked, cstrings, data_row_message,
    message, row_description_message, session, startup_ok, SCRIPT_COMMANDS, SCRIPT_COPY_OUT,
    SCRIPT_STREAMING,
};

fn text() -> impl Strategy<Value = String> {
    "[a-z_0-9/ ]{0,12}"
}

/// A well framed message of any tag, with any body.
fn any_message() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), vec(any::<u8>(), 0..40)).prop_map(|(tag, body)| message(tag, &body))
}

/// What a server sends in answer to a command: result sets, errors, notices, ready.
fn result_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(message(b'Z', b"I")),
        2 => vec(text(), 0..4).prop_map(|names| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            row_description_message(&names)
        }),
        2 => vec(proptest::option::of(vec(any::<u8>(), 0..16)), 0..4).prop_map(|values| {
            let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            data_row_message(&values)
        }),
        2 => text().prop_map(|tag| message(b'C', &cstrings(&[&tag]))),
        1 => (text(), text()).prop_map(|(k, v)| message(b'S', &cstrings(&[&k, &v]))),
        1 => (any::<u8>(), text()).prop_map(|(field, v)| {
            let mut body = vec![field];
            body.extend(cstrings(&[&v]));
            body.push(0);
            message(if field % 2 == 0 { b'E' } else { b'N' }, &body)
        }),
        1 => Just(message(b'I', b"")),
        1 => Just(message(b'W', &[0, 0, 0])),
        1 => Just(message(b'H', &[0, 0, 0])),
        1 => any_message(),
        1 => vec(any::<u8>(), 0..12),
    ]
}

/// What a server sends during COPY: XLogData, keepalives, CopyDone, and the rest.
fn copy_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (any::<[u8; 24]>(), vec(any::<u8>(), 0..32)).prop_map(|(head, data)| {
            message(b'd', &[&b"w"[..], &head, &data].concat())
        }),
        3 => (any::<[u8; 17]>()).prop_map(|k| message(b'd', &[&b"k"[..], &k].concat())),
        2 => vec(any::<u8>(), 0..40).prop_map(|b| message(b'd', &b)),
        1 => Just(message(b'c', b"")),
        2 => result_message(),
    ]
}

/// A server message during startup and authentication.
fn startup_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(authentication(0, &[])),
        Just(authentication(3, &[])),
        any::<[u8; 4]>().prop_map(|salt| authentication(5, &salt)),
        Just(authentication(
            10,
            &cstrings(&["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", ""])
        )),
        vec(any::<u8>(), 0..48).prop_map(|b| authentication(11, &b)),
        vec(any::<u8>(), 0..48).prop_map(|b| authentication(12, &b)),
        (any::<i32>(), vec(any::<u8>(), 0..8)).prop_map(|(code, b)| authentication(code, &b)),
        Just(startup_ok()),
        Just(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2])),
        result_message(),
    ]
}

/// Client options (TLS-verified pretence, require_auth, channel_binding) with a script.
fn flags(script: u8) -> impl Strategy<Value = u8> {
    (0u8..8).prop_map(move |options| options | script)
}

fn run(flags: u8, parts: &[Vec<Vec<u8>>]) {
    let mut input = vec![flags];
    for part in parts {
        input.extend(part.concat());
    }
    session(&input);
}

proptest! {
    // Cheap cases (about 0.1 ms each): many of them, so that deep states are reached.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Fuzz: any bytes, split into messages and decoded, never panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_message_parser(bytes in vec(any::<u8>(), 0..256)) {
        backend_messages(&bytes);
    }

    /// The messages read do not depend on how the bytes were split by the network.
    #[test]
    fn framing_is_independent_of_read_boundaries(
        stream in vec(prop_oneof![startup_message(), copy_message()], 0..8),
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let bytes = stream.concat();
        prop_assert_eq!(backend_messages_chunked(&bytes, &cuts), backend_messages(&bytes));
    }

    /// Fuzz: startup and authentication (incl. SCRAM and the auth policy) against any
    /// server messages always end, without panicking.
    #[test]
    fn client_sessions_end_without_panic(
        flags in any::<u8>(),
        stream in vec(startup_message(), 0..10),
    ) {
        run(flags, &[stream]);
    }

    /// Fuzz: the replication commands against generated results.
    #[test]
    fn command_sessions_end_without_panic(
        flags in flags(SCRIPT_COMMANDS),
        stream in vec(result_message(), 0..24),
    ) {
        run(flags, &[vec![startup_ok()], stream]);
    }

    /// Fuzz: START_REPLICATION and the CopyBoth stream.
    #[test]
    fn streaming_sessions_end_without_panic(
        flags in flags(SCRIPT_STREAMING),
        stream in vec(copy_message(), 0..16),
        after in vec(result_message(), 0..6),
    ) {
        run(flags, &[vec![startup_ok(), message(b'W', &[0, 0, 0])], stream, after]);
    }

    /// Fuzz: BASE_BACKUP's result sets and CopyOut streams.
    #[test]
    fn copy_out_sessions_end_without_panic(
        flags in flags(SCRIPT_COPY_OUT),
        before in vec(result_message(), 0..4),
        copies in vec((vec(copy_message(), 0..6), vec(result_message(), 0..3)), 0..4),
    ) {
        let mut stream = vec![startup_ok()];
        stream.extend(before);
        for (data, between) in copies {
            stream.push(message(b'H', &[0, 0, 0]));
            stream.extend(data);
            stream.push(message(b'c', b""));
            stream.extend(between);
        }
        run(flags, &[stream]);
    }

    /// Fuzz: the same with unframed bytes.
    #[test]
    fn client_sessions_on_raw_bytes_end_without_panic(input in vec(any::<u8>(), 0..128)) {
        session(&input);
    }
}

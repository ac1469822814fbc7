//! The client's authentication policy against scripted fake servers: no cleartext password
//! to an unverified server without the opt-in, `require_auth`, `channel_binding=require`.
//! Each refusal is checked on the wire too: the fake server sees no password.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::fuzz::{authentication as auth, cstrings as cstr};
use super::{fake, read_startup};
use crate::{AuthMechanism, ReplicationConn};

/// After the startup packet: everything the client sends until it closes the connection.
async fn rest_of_stream(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    rest
}

/// Answers an SSLRequest with 'N' (no SSL), then reads the startup packet.
async fn refuse_ssl_then_startup(s: &mut TcpStream) {
    assert_eq!(
        read_startup(s).await,
        [0x04, 0xd2, 0x16, 0x2f],
        "SSLRequest"
    );
    s.write_all(b"N").await.unwrap();
    read_startup(s).await;
}

#[tokio::test]
async fn cleartext_password_is_not_sent_to_an_unverified_server() {
    let (info, server) = fake("password=hunter2", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        let rest = rest_of_stream(&mut s).await;
        assert!(
            !rest.windows(7).any(|w| w == b"hunter2"),
            "the password went out: {rest:?}"
        );
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure(), "{err:?}");
    let text = err.to_string();
    for needle in [
        "clear text",
        "unencrypted",
        "require_auth=password",
        "scram-sha-256",
    ] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
    server.await.unwrap();

    // A negated require_auth list allows the method but is no opt-in.
    let (info, server) = fake("password=hunter2 require_auth=!md5", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        assert!(!rest_of_stream(&mut s)
            .await
            .windows(7)
            .any(|w| w == b"hunter2"));
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.to_string().contains("require_auth=password"), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn cleartext_password_is_sent_after_the_opt_in() {
    let (info, server) = fake("password=pw require_auth=password", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        assert_eq!(super::read_msg(&mut s).await, (b'p', cstr(&["pw"])));
        s.write_all(&super::startup_ok()).await.unwrap();
        rest_of_stream(&mut s).await;
    })
    .await;
    let conn = ReplicationConn::connect(&info).await.unwrap();
    assert_eq!(conn.auth_mechanism(), AuthMechanism::Password);
    assert!(!conn.server_verified());
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn require_auth_refuses_other_methods_before_answering() {
    let (info, server) = fake(
        "password=pw require_auth=scram-sha-256",
        |mut s| async move {
            read_startup(&mut s).await;
            s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
            assert_eq!(rest_of_stream(&mut s).await, b"", "no md5 answer");
        },
    )
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure());
    assert!(
        err.to_string().contains("requested md5 authentication")
            && err.to_string().contains("require_auth=scram-sha-256"),
        "{err}"
    );
    server.await.unwrap();

    // Trust (no request at all) is "none".
    let (info, server) = fake(
        "password=pw require_auth=scram-sha-256",
        |mut s| async move {
            read_startup(&mut s).await;
            s.write_all(&super::startup_ok()).await.unwrap();
            rest_of_stream(&mut s).await;
        },
    )
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("did not ask the client to authenticate"),
        "{err}"
    );
    server.await.unwrap();

    let (info, server) = fake("require_auth=none", |mut s| async move {
        read_startup(&mut s).await;
        s.write_all(&super::startup_ok()).await.unwrap();
        rest_of_stream(&mut s).await;
    })
    .await;
    let conn = ReplicationConn::connect(&info).await.unwrap();
    assert_eq!(conn.auth_mechanism(), AuthMechanism::NoneRequested);
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn channel_binding_require_refuses_what_cannot_bind() {
    let extra = "password=pw sslmode=prefer channel_binding=require";
    // SCRAM over a plain connection (the server declined SSL).
    let (info, server) = fake(extra, |mut s| async move {
        refuse_ssl_then_startup(&mut s).await;
        s.write_all(&auth(10, &cstr(&["SCRAM-SHA-256", ""])))
            .await
            .unwrap();
        assert_eq!(rest_of_stream(&mut s).await, b"", "no SASL response");
    })
    .await;
    let err = ReplicationConn::connect(&info).await.unwrap_err();
    assert!(err.is_auth_failure());
    let text = err.to_string();
    assert!(
        text.contains("channel_binding=require") && text.contains("not encrypted"),
        "{text}"
    );
    server.await.unwrap();

    // md5 cannot bind; neither can trust or a certificate alone.
    for (request, needle) in [
        (auth(5, &[9, 9, 9, 9]), "requested md5"),
        (super::startup_ok(), "without a password exchange"),
    ] {
        let (info, server) = fake(extra, move |mut s| async move {
            refuse_ssl_then_startup(&mut s).await;
            s.write_all(&request).await.unwrap();
            assert_eq!(rest_of_stream(&mut s).await, b"");
        })
        .await;
        let err = ReplicationConn::connect(&info).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        server.await.unwrap();
    }
}

//! The client's error classification and retries against a canned HTTP server on
//! 127.0.0.1 (one fixed answer per test, requests counted).

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "token-of-pg-a-0123456789";

/// Answers every request with `status` and `body`; returns its URL and the count.
async fn canned(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, count)
}

async fn list_wal_error(status: u16, body: &'static str) -> (ClientError, usize) {
    let (url, count) = canned(status, body).await;
    let client = Client::new(&url, ClusterToken::parse(TOKEN, "t").unwrap(), "test").unwrap();
    let e = client.list_wal(&"pg-a".parse().unwrap()).await.unwrap_err();
    (e, count.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_server_error_the_server_calls_permanent_is_not_retried() {
    let (e, requests) = list_wal_error(
        500,
        r#"{"error":"stored data failed verification","permanent":true}"#,
    )
    .await;
    assert!(e.is_permanent(), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the server answered 500: stored data failed verification"
    );
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn a_server_error_the_server_calls_transient_is_retried() {
    let (e, requests) = list_wal_error(
        503,
        r#"{"error":"cluster pg-a has not connected to its primary yet; retry later","permanent":false}"#,
    )
    .await;
    assert!(!e.is_permanent(), "{e:?}");
    assert_eq!(requests, ATTEMPTS as usize);
}

#[tokio::test]
async fn without_the_flag_a_5xx_is_transient_and_retried() {
    let (e, requests) = list_wal_error(500, r#"{"error":"internal server error"}"#).await;
    assert!(!e.is_permanent(), "{e:?}");
    assert_eq!(requests, ATTEMPTS as usize);
    let (e, requests) = list_wal_error(502, "<html>bad gateway</html>").await;
    assert!(
        matches!(e, ClientError::Server { status: 502, .. }),
        "{e:?}"
    );
    assert!(!e.is_permanent());
    assert_eq!(requests, ATTEMPTS as usize);
}

#[tokio::test]
async fn without_the_flag_a_4xx_is_permanent_and_not_retried() {
    for (status, body) in [
        (400, r#"{"error":"invalid WAL file name"}"#),
        (404, r#"{"error":"not stored"}"#),
        (409, r#"{"error":"a backup is running"}"#),
        (401, ""),
        (403, ""),
    ] {
        let (e, requests) = list_wal_error(status, body).await;
        assert!(e.is_permanent(), "{status}: {e:?}");
        assert_eq!(requests, 1, "{status}");
    }
}

#[tokio::test]
async fn a_connection_error_is_not_permanent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = Client::new(&url, ClusterToken::parse(TOKEN, "t").unwrap(), "test").unwrap();
    let e = client.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(!e.is_permanent());
}

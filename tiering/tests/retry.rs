//! Retries against a real S3 server behind a fault-injecting proxy: a tiny HTTP proxy in
//! this test answers 503 to the first N requests (or to all of them), either without
//! passing them on or after moto has carried them out (a lost answer), and passes the rest
//! to moto.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use klio_harness::s3::{S3Server, DEFAULT_BUCKET};
use klio_tiering::PutOutcome;
use object_store::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{fast_retry, open_at, s3_tier2};

/// What the proxy does to a request it fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Answers 503 without passing the request on.
    Refuse,
    /// Passes the request on, waits for moto's answer, and answers 503 instead.
    LoseAnswer,
}

/// A proxy on 127.0.0.1 in front of `upstream` that fails the first `fail_first`
/// requests (`u32::MAX`: all) with 503 Service Unavailable.
struct FaultProxy {
    port: u16,
    failed: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(upstream: u16, fail_first: u32, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let failed = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&failed);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let _ = serve(conn, upstream, fail_first, fault, &counter).await;
                });
            }
        });
        FaultProxy { port, failed, task }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn failed(&self) -> u32 {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request; fails it (and closes the connection) or pipes the connection to
/// moto from then on.
async fn serve(
    mut conn: TcpStream,
    upstream: u16,
    fail_first: u32,
    fault: Fault,
    failed: &AtomicU32,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + body_len {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let fail = failed
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| {
            (f < fail_first).then_some(f + 1)
        })
        .is_ok();
    if fail && fault == Fault::LoseAnswer {
        // moto has carried the request out once its answer's head arrives.
        let mut moto = TcpStream::connect(("127.0.0.1", upstream)).await?;
        moto.write_all(&request).await?;
        let mut answer = Vec::new();
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = moto.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    }
    if fail {
        conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        return conn.shutdown().await;
    }
    let mut moto = TcpStream::connect(("127.0.0.1", upstream)).await?;
    moto.write_all(&request).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut moto).await?;
    Ok(())
}

#[tokio::test]
async fn transient_503s_are_retried_until_the_put_succeeds() {
    let server = S3Server::start().unwrap();
    let proxy = FaultProxy::start(server.port(), 3, Fault::Refuse).await;
    let t = open_at(&proxy.endpoint(), DEFAULT_BUCKET, "r").with_retry(fast_retry(5));
    let key = Path::from("wal/000000010000000000000001");
    let body = Bytes::from(vec![1u8; 4096]);
    assert_eq!(
        t.put_create(&key, body.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        proxy.failed(),
        3,
        "the proxy failed fewer requests than planned"
    );
    // Read back directly from moto, past the proxy.
    let direct = s3_tier2(&server, DEFAULT_BUCKET, "r");
    assert_eq!(direct.get(&key).await.unwrap(), body);
}

#[tokio::test]
async fn an_unavailable_server_gives_a_transient_error_after_bounded_retries() {
    let server = S3Server::start().unwrap();
    let proxy = FaultProxy::start(server.port(), u32::MAX, Fault::Refuse).await;
    let t = open_at(&proxy.endpoint(), DEFAULT_BUCKET, "").with_retry(fast_retry(4));
    let key = Path::from("wal/000000010000000000000001");
    let err = t
        .put_create(&key, Bytes::from_static(b"segment"))
        .await
        .unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(proxy.failed(), 4, "not exactly max_attempts requests");
    let err = t.get(&key).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(proxy.failed(), 8);
    // Nothing reached the bucket.
    assert!(server.object_keys(DEFAULT_BUCKET).unwrap().is_empty());
}

#[tokio::test]
async fn a_retried_put_whose_first_attempt_landed_finds_its_own_object() {
    let server = S3Server::start().unwrap();
    let proxy = FaultProxy::start(server.port(), 1, Fault::LoseAnswer).await;
    let t = open_at(&proxy.endpoint(), DEFAULT_BUCKET, "").with_retry(fast_retry(3));
    let key = Path::from("wal/000000010000000000000007");
    let body = Bytes::from(vec![9u8; 65536]);
    // The first PUT lands but its answer is lost; the retry meets 412 and compares.
    assert_eq!(
        t.put_create(&key, body.clone()).await.unwrap(),
        PutOutcome::AlreadyThere
    );
    assert_eq!(proxy.failed(), 1);
    assert_eq!(t.get(&key).await.unwrap(), body);
}

#[tokio::test]
async fn a_listing_that_fails_transiently_is_asked_for_again() {
    let server = S3Server::start().unwrap();
    let direct = s3_tier2(&server, DEFAULT_BUCKET, "l");
    for i in 0..5u32 {
        let key = Path::from(format!("wal/{i:024X}"));
        direct
            .put_create(&key, Bytes::from_static(b"s"))
            .await
            .unwrap();
    }
    let proxy = FaultProxy::start(server.port(), 2, Fault::Refuse).await;
    let t = open_at(&proxy.endpoint(), DEFAULT_BUCKET, "l").with_retry(fast_retry(3));
    let listed: Vec<_> = t.list(None, None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(proxy.failed(), 2);
    // Failing for good ends the stream with a transient error.
    let down = FaultProxy::start(server.port(), u32::MAX, Fault::Refuse).await;
    let t = open_at(&down.endpoint(), DEFAULT_BUCKET, "l").with_retry(fast_retry(3));
    let err = t
        .list(None, None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(down.failed(), 3);
}

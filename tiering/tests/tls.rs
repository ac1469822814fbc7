//! An S3 endpoint behind TLS with a certificate from a private CA: trusted through
//! `tier2.ca_file`, refused without it. The TLS endpoint is a small terminating proxy in
//! the test (tokio-rustls) in front of moto.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use klio_harness::s3::{S3Server, DEFAULT_BUCKET};
use klio_harness::TestCa;
use klio_tiering::{PutOutcome, Tier2};
use object_store::path::Path;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use common::{fast_retry, s3_config};

/// Listens on 127.0.0.1 with TLS (a server certificate from `ca`) and passes every
/// connection on to moto in plain HTTP. Returns the port.
async fn tls_front(ca: &TestCa, upstream: u16) -> (u16, tokio::task::JoinHandle<()>) {
    let (cert_pem, key_pem) = ca.server_cert().unwrap();
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                if let Ok(mut moto) = TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut moto).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted_and_needed() {
    let server = S3Server::start().unwrap();
    let ca = TestCa::new("klio tier2 test ca").unwrap();
    let (port, proxy) = tls_front(&ca, server.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let endpoint = format!("https://127.0.0.1:{port}");
    let key = Path::from("wal/000000010000000000000001");

    // Without the CA the server's certificate is refused and nothing is written.
    let mut cfg = s3_config(&endpoint, DEFAULT_BUCKET, "tls", dir.path());
    cfg.allow_http = false;
    let untrusting = Tier2::open(&cfg.validate().unwrap())
        .unwrap()
        .with_retry(fast_retry(1));
    let err = untrusting
        .put_create(&key, Bytes::from_static(b"wal"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // A certificate problem is the configuration's: retrying cannot help.
    assert!(err.is_permanent(), "{err}");
    assert!(
        server.object_keys(DEFAULT_BUCKET).unwrap().is_empty(),
        "{err}"
    );

    cfg.ca_file = Some(ca_file);
    let trusting = Tier2::open(&cfg.validate().unwrap())
        .unwrap()
        .with_retry(fast_retry(1));
    assert_eq!(
        trusting
            .put_create(&key, Bytes::from_static(b"wal"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(trusting.get(&key).await.unwrap().as_ref(), b"wal");
    assert_eq!(
        server.object_keys(DEFAULT_BUCKET).unwrap(),
        vec!["tls/wal/000000010000000000000001".to_string()]
    );
    proxy.abort();
}

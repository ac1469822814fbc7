//! The API listener over real sockets: shutdown, limits, HTTPS and client certificates.

use super::*;

mod plain {
    use super::*;
    use crate::http::{fixture::fixture, router};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server with `limits` on a free port; dropping the sender stops it.
    async fn start(
        limits: ServeLimits,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (_, state) = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, None, router(state), limits, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Reads until the server closes the connection; returns what it sent.
    async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut out))
            .await
            .expect("the server did not close the connection in time")
            .ok();
        out
    }

    fn limits(max_connections: usize, header_secs: u64) -> ServeLimits {
        ServeLimits {
            max_connections,
            header_timeout: Duration::from_secs(header_secs),
            ..ServeLimits::default()
        }
    }

    #[tokio::test]
    async fn a_partial_request_is_closed_after_the_header_timeout() {
        let (addr, _stop) = start(limits(16, 1)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x")
            .await
            .unwrap();
        let answer = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "closed early: {:?}",
            t0.elapsed()
        );
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, _stop) = start(limits(16, 1)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let (addr, _stop) = start(limits(2, 1)).await;
        let idle1 = TcpStream::connect(addr).await.unwrap();
        let idle2 = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        // Not served while both slots are held...
        assert!(
            tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
                .await
                .is_err(),
            "a third connection was served beyond a limit of 2"
        );
        // ...and served once the header timeout has freed them.
        let answer = read_to_close(&mut third, Duration::from_secs(5)).await;
        let answer = [&buf[..], &answer[..]].concat();
        assert!(
            String::from_utf8_lossy(&answer).contains("200 OK"),
            "{answer:?}"
        );
        drop((idle1, idle2));
    }

    #[tokio::test]
    async fn serves_until_shutdown_then_returns() {
        let (_, state) = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            None,
            router(state),
            ServeLimits::default(),
            async {
                let _ = rx.await;
            },
        ));
        let body = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        tx.send(()).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not stop after shutdown")
            .unwrap();
        assert!(res.is_ok());
        assert!(reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err());
    }
}

/// HTTPS and client certificates over a real socket, with [`klio_api::client::Client`].
mod tls_tests {
    use super::*;
    use crate::http::fixture::{fixture, TOKEN_B};
    use crate::http::router;
    use crate::tls::{ApiTls, ClientCas, ClusterCa};
    use klio_api::client::{Client, ClientError, Credentials};
    use klio_core::ClusterName;
    use klio_harness::{write_file, TestCa};
    use std::path::{Path, PathBuf};

    struct Pki {
        dir: tempfile::TempDir,
        ca: PathBuf,
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn creds(&self, client: Option<&str>) -> Credentials {
            Credentials {
                cacert: Some(self.ca.clone()),
                cert: client.map(|c| self.path(&format!("{c}.crt"))),
                key: client.map(|c| self.path(&format!("{c}.key"))),
                ..Credentials::default()
            }
        }
    }

    fn pki() -> (Pki, ApiTls) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = TestCa::new("klio API CA").unwrap();
        ca.write_cert(&d.join("ca.crt")).unwrap();
        let (cert, key) = ca.server_cert().unwrap();
        write_file(&d.join("server.crt"), &cert, 0o644).unwrap();
        write_file(&d.join("server.key"), &key, 0o600).unwrap();
        ca.write_client_cert(d, "a", "streaming_replica@pg-a", &[])
            .unwrap();
        ca.write_client_cert(d, "b-san", "klio", &["pg-b.klio.svc"])
            .unwrap();
        ca.write_client_cert(d, "nobody", "streaming_replica", &[])
            .unwrap();
        TestCa::new("another CA")
            .unwrap()
            .write_client_cert(d, "foreign", "streaming_replica@pg-a", &[])
            .unwrap();
        let tls = ApiTls::load(d.join("server.crt"), d.join("server.key"), cas(d), false).unwrap();
        let ca = d.join("ca.crt");
        (Pki { dir, ca }, tls)
    }

    fn cluster(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    /// pg-a and pg-b both trust the test CA; pg-b is also named `pg-b.klio.svc`.
    fn cas(d: &Path) -> ClientCas {
        ClientCas {
            shared: None,
            clusters: vec![
                ClusterCa {
                    cluster: cluster("pg-a"),
                    ca_file: Some(d.join("ca.crt")),
                    dns_names: vec![],
                },
                ClusterCa {
                    cluster: cluster("pg-b"),
                    ca_file: Some(d.join("ca.crt")),
                    dns_names: vec!["pg-b.klio.svc".into()],
                },
            ],
        }
    }

    async fn list(base: &str, creds: &Credentials, c: &str) -> Result<(), ClientError> {
        Client::connect(base, creds)?
            .list_wal(&cluster(c))
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn client_certificates_authenticate_their_cluster_only() {
        let (pki, tls) = pki();
        let (_, state) = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Some(tls),
            router(state),
            ServeLimits::default(),
            async {
                let _ = rx.await;
            },
        ));
        let base = format!("https://127.0.0.1:{}", addr.port());

        // CN user@cluster: its cluster, 403 on the other.
        list(&base, &pki.creds(Some("a")), "pg-a").await.unwrap();
        let e = list(&base, &pki.creds(Some("a")), "pg-b")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
        assert!(e.to_string().contains("client certificate"), "{e}");
        // A DNS SAN names pg-b.
        let e = list(&base, &pki.creds(Some("b-san")), "pg-a")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
        // A trusted certificate naming no cluster is no credential: 401.
        let e = list(&base, &pki.creds(Some("nobody")), "pg-a")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
        // Bearer tokens still work over TLS without a client certificate.
        let token = pki.path("b.token");
        std::fs::write(&token, TOKEN_B).unwrap();
        let with_token = Credentials {
            token_file: Some(token.clone()),
            ..pki.creds(None)
        };
        list(&base, &with_token, "pg-b").await.unwrap();
        let e = list(&base, &with_token, "pg-a").await.unwrap_err();
        assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
        // A certificate of an untrusted CA fails the handshake.
        let e = list(&base, &pki.creds(Some("foreign")), "pg-a")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        // Without --cacert the server's certificate is not trusted.
        let e = list(
            &base,
            &Credentials {
                cacert: None,
                ..with_token
            },
            "pg-b",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        // Plain HTTP to the TLS port gets no answer.
        let plain = format!("http://127.0.0.1:{}", addr.port());
        let e = list(
            &plain,
            &Credentials {
                token_file: Some(token),
                ..Credentials::default()
            },
            "pg-b",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");

        tx.send(()).unwrap();
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("server did not stop after shutdown")
            .unwrap();
        assert!(res.is_ok());
    }

    #[test]
    fn required_client_certificates_need_a_ca() {
        let (pki, _) = pki();
        let e = ApiTls::load(
            pki.path("server.crt"),
            pki.path("server.key"),
            ClientCas::default(),
            true,
        )
        .unwrap_err();
        assert_eq!(e.setting, "require_client_cert");
        let e = ApiTls::load(
            pki.path("server.crt"),
            pki.path("a.key"),
            cas(pki.dir.path()),
            false,
        )
        .unwrap_err();
        assert_eq!(e.setting, "key_file");
        assert!(e.to_string().contains("a.key"), "{e}");
        let e = ApiTls::load(
            Path::new("/nonexistent/server.crt").into(),
            pki.path("server.key"),
            ClientCas::default(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.setting, "cert_file");
        assert!(e.to_string().contains("/nonexistent/server.crt"), "{e}");
    }
}

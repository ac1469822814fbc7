//! Running the HTTP API on a socket, plain or TLS, with graceful shutdown on
//! SIGTERM/SIGINT. Nothing here touches disk.

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

use crate::tls::{ClientCert, TlsListener};

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting
/// connections and waits for requests in flight to finish.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("HTTP API stopped");
    Ok(())
}

/// [`serve_http`] over TLS: each request carries its connection's verified client
/// certificate as `ConnectInfo<ClientCert>`.
pub async fn serve_https(
    listener: TlsListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = axum::serve::Listener::local_addr(&listener) {
        tracing::info!(%addr, "HTTPS API listening");
    }
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<ClientCert>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    tracing::info!("HTTPS API stopped");
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C). If a handler cannot be
/// installed, that signal is logged and ignored (the other still works).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{router, tests::fixture};
    use std::time::Duration;

    #[tokio::test]
    async fn serves_until_shutdown_then_returns() {
        let (_, state) = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, router(state), async {
            let _ = rx.await;
        }));
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

/// HTTPS and client certificates over a real socket, with [`crate::client::Client`].
#[cfg(test)]
mod tls_tests {
    use super::*;
    use crate::client::{Client, ClientError, Credentials};
    use crate::http::{router, tests::fixture, tests::TOKEN_B};
    use crate::tls::ApiTls;
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
        let tls = ApiTls::load(
            d.join("server.crt"),
            d.join("server.key"),
            Some(d.join("ca.crt")),
            false,
        )
        .unwrap();
        let ca = d.join("ca.crt");
        (Pki { dir, ca }, tls)
    }

    fn cluster(s: &str) -> ClusterName {
        s.parse().unwrap()
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
        let server = tokio::spawn(serve_https(
            tls.listener(listener).unwrap(),
            router(state),
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
        let e =
            ApiTls::load(pki.path("server.crt"), pki.path("server.key"), None, true).unwrap_err();
        assert_eq!(e.setting, "require_client_cert");
        let e = ApiTls::load(
            pki.path("server.crt"),
            pki.path("a.key"),
            Some(pki.ca.clone()),
            false,
        )
        .unwrap_err();
        assert_eq!(e.setting, "key_file");
        assert!(e.to_string().contains("a.key"), "{e}");
        let e = ApiTls::load(
            Path::new("/nonexistent/server.crt").into(),
            pki.path("server.key"),
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(e.setting, "cert_file");
        assert!(e.to_string().contains("/nonexistent/server.crt"), "{e}");
    }
}

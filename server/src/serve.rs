//! Running the HTTP API on a socket, plain or TLS, with bounded resources and
//! graceful shutdown on SIGTERM/SIGINT. Nothing here touches disk.
//!
//! A client cannot hold the server's resources for long: at most
//! [`ServeLimits::max_connections`] connections are open at once (further clients wait
//! in the kernel's backlog, and a log line says the limit was reached); a TLS handshake
//! must finish within [`ServeLimits::handshake_timeout`], and at most
//! [`ServeLimits::max_handshakes`] run at once; a request's headers must arrive within
//! [`ServeLimits::header_timeout`], which also closes idle keep-alive connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::client_cert::ClientCert;
use crate::tls::{ApiTls, Reloading};

/// How long requests in flight may take to finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The bounds a listener enforces (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: crate::config::DEFAULT_API_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(crate::config::DEFAULT_API_HEADER_TIMEOUT_SECS),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
        }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes, then
/// stops accepting connections and lets requests in flight finish (up to 30 s). Over
/// TLS each request carries its connection's client certificate as
/// `ConnectInfo<ClientCert>`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ApiTls>,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), max_connections = limits.max_connections, "HTTP API listening");
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut tls = tls.map(Reloading::new);
    tokio::pin!(shutdown);
    let mut at_limit = false;
    loop {
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_limit {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "API connection limit reached: new connections wait until one closes (raise api_max_connections if this is expected load)"
                    );
                }
                tokio::select! {
                    p = connections.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        at_limit = connections.available_permits() == 0;
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an API connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (http, router, watcher) = (http.clone(), router.clone(), graceful.watcher());
        match tls.as_mut() {
            None => {
                tokio::spawn(async move {
                    serve_connection(http, stream, router, None, watcher).await;
                    drop(permit);
                });
            }
            Some(reloading) => {
                let (acceptor, policy) = reloading.current();
                let handshakes = handshakes.clone();
                let timeout = limits.handshake_timeout;
                tokio::spawn(async move {
                    let handshake = async {
                        let _slot = handshakes.acquire_owned().await;
                        acceptor.accept(stream).await
                    };
                    let stream = match tokio::time::timeout(timeout, handshake).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // With client authentication on, rustls completes only handshakes
                    // whose certificate chains to one of the client CAs.
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|chain| policy.identify(chain))
                        .unwrap_or_default();
                    serve_connection(http, stream, router, Some(cert), watcher).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API requests still running after 30 s; closing them");
    }
    tracing::info!(%addr, "HTTP API stopped");
    Ok(())
}

/// Serves HTTP/1.1 on one connection until the client closes it, a timeout closes it,
/// or shutdown has let its request in flight finish.
async fn serve_connection<I>(
    http: hyper::server::conn::http1::Builder,
    io: I,
    router: Router,
    cert: Option<ClientCert>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(c) = &cert {
            req.extensions_mut().insert(ConnectInfo(c.clone()));
        }
        router.clone().oneshot(req)
    });
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "API connection ended with an error");
    }
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
mod tests;

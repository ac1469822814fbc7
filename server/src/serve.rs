//! Running the HTTP API on a socket, with graceful shutdown on SIGTERM/SIGINT.
//! Nothing here touches disk.

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

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

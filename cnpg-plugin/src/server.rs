//! Serving a role's gRPC services: on a unix socket (the sidecars, in the Pod's
//! `/plugins` directory that CloudNativePG's instance manager scans) or on TCP with
//! mTLS (the operator side). Stops on SIGTERM or SIGINT. Writes only the socket file
//! (a stale socket of an earlier run is replaced; any other file there is refused).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::service::Routes;

use crate::tls::TlsFiles;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds the unix socket at `path`, replacing a stale socket left by an earlier run.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket: refusing to replace it; remove it or pass another --socket",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    }
    UnixListener::bind(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; is the /plugins volume mounted and writable?",
            path.display()
        )
    })
}

/// Serves `routes` on `listener` until `shutdown` resolves.
pub async fn serve_unix(
    routes: Routes,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Serves `routes` with mTLS on `listener` until `shutdown` resolves. Each connection's
/// handshake runs in its own task with the certificates read afresh; a failed handshake
/// (e.g. a client certificate that is not the trusted one) is logged and dropped.
pub async fn serve_tls(
    routes: Routes,
    listener: TcpListener,
    tls: TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Fail at start-up, not at the first connection, when the files are wrong.
    tls.server_config()?;
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >(16);
    let acceptor = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let config = match tls.server_config() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("refusing a connection from {peer}: {e}");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::warn!("TLS handshake with {peer} failed: {e}"),
                    Err(_) => tracing::warn!("TLS handshake with {peer} timed out"),
                }
            });
        }
    });
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    acceptor.abort();
    served?;
    Ok(())
}

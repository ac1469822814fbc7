//! `klio-operator`: leader election on a Lease, then the Server controller; `/metrics`,
//! `/healthz` and `/readyz` on a small HTTP server; JSON logs.
//!
//! Environment:
//! - `KLIO_OPERATOR_WATCH_NAMESPACE`: only the Servers of this namespace (default: all);
//! - `POD_NAMESPACE`: where the Lease lives (default: the client's namespace);
//! - `POD_NAME`: this replica's identity in the Lease and in Events (default `HOSTNAME`);
//! - `KLIO_OPERATOR_LEASE`: the Lease's name (default `klio-operator`);
//! - `KLIO_OPERATOR_LISTEN`: the HTTP address (default `0.0.0.0:8080`);
//! - `KLIO_SERVER_IMAGE`: the image of Servers without `spec.image`;
//! - `RUST_LOG`: the log filter (default `info`).
//!
//! `/healthz` answers 200 while the process runs; `/readyz` once the Lease has been
//! read or written (as leader or follower). A leader that cannot renew its Lease in time exits
//! with status 1, so it never reconciles beside a new leader.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use klio_operator::lease::{Leadership, LeaseLock, Step};
use klio_operator::metrics::Metrics;
use klio_operator::reconcile::{self, Context};
use klio_operator::status::ApiStatusSource;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{error, info, warn};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "klio-operator stops");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));

    let listen: SocketAddr = env("KLIO_OPERATOR_LISTEN")
        .unwrap_or_else(|| "0.0.0.0:8080".into())
        .parse()?;
    let app = klio_operator::metrics::router(metrics.clone(), ready.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(%listen, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "the HTTP server stopped");
        }
    });

    let lease_ns = env("POD_NAMESPACE").unwrap_or_else(|| client.default_namespace().to_string());
    let identity = env("POD_NAME")
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| "klio-operator".into());
    let lock = LeaseLock::new(
        &env("KLIO_OPERATOR_LEASE").unwrap_or_else(|| "klio-operator".into()),
        &identity,
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
    let release_api = leases.clone();

    // The lease loop: `leader` turns true once this replica holds the Lease; `lost`
    // fires when it no longer may lead, and the process stops.
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let (metrics, ready, lock) = (metrics.clone(), ready.clone(), lock.clone());
        tokio::spawn(async move {
            let mut leadership = Leadership::default();
            loop {
                let now = Timestamp::now();
                let attempt = lock.try_acquire_or_renew(&leases, now).await.map_err(|e| {
                    warn!(error = %e, "cannot read or write the Lease");
                });
                if attempt.is_ok() {
                    ready.store(true, Ordering::Relaxed);
                }
                let step = leadership.after(&lock, attempt, Timestamp::now());
                metrics.set_leader(step == Step::Lead);
                match step {
                    Step::Lead => {
                        if !*leader_tx.borrow() {
                            info!(identity = %lock.identity, "acquired the Lease: leading");
                            let _ = leader_tx.send(true);
                        }
                    }
                    Step::Follow => {}
                    Step::Lost => {
                        let _ = lost_tx.send(());
                        return;
                    }
                }
                tokio::time::sleep(lock.renew_every).await;
            }
        });
    }

    info!(identity = %identity, namespace = %lease_ns, "waiting to lead");
    tokio::select! {
        r = leader_rx.wait_for(|l| *l) => { r?; }
        _ = shutdown_signal() => return Ok(()),
    }

    let mut ctx = Context::new(client, Box::new(ApiStatusSource), metrics);
    if let Some(image) = env("KLIO_SERVER_IMAGE") {
        ctx.default_image = image;
    }
    let watch_ns = env("KLIO_OPERATOR_WATCH_NAMESPACE");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(async move {
        reconcile::run(Arc::new(ctx), watch_ns.as_deref(), async move {
            let _ = stop_rx.await;
        })
        .await
    });
    let lost = tokio::select! {
        _ = lost_rx => true,
        _ = shutdown_signal() => false,
    };
    let _ = stop_tx.send(());
    let _ = controller.await;
    if lost {
        return Err("lost the Lease: stopping so that only one replica reconciles".into());
    }
    match lock.release(&release_api).await {
        Ok(true) => info!("released the Lease"),
        Ok(false) => {}
        Err(e) => {
            warn!(error = %e, "could not release the Lease; another replica takes it over when it expires")
        }
    }
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

//! The operator's own Prometheus metrics (text format 0.0.4), kept in atomics:
//!
//! - `klio_operator_reconciliations_total`: reconciliations run;
//! - `klio_operator_reconcile_failures_total`: those that failed;
//! - `klio_operator_reconcile_duration_seconds`: a histogram of their durations;
//! - `klio_operator_leader`: 1 while this replica holds the Lease.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Upper bounds (seconds) of the duration histogram's buckets.
pub const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default)]
pub struct Metrics {
    reconciliations: AtomicU64,
    failures: AtomicU64,
    /// Observations at most each bound (not cumulative here; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    leader: AtomicBool,
}

impl Metrics {
    /// Counts one reconciliation of `seconds`, failed unless `ok`.
    pub fn reconciled(&self, seconds: f64, ok: bool) {
        self.reconciliations.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int cast: a negative or NaN duration counts as 0.
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let count = self.reconciliations.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP klio_operator_reconciliations_total Reconciliations of Servers."
        );
        let _ = writeln!(out, "# TYPE klio_operator_reconciliations_total counter");
        let _ = writeln!(out, "klio_operator_reconciliations_total {count}");
        let _ = writeln!(
            out,
            "# HELP klio_operator_reconcile_failures_total Reconciliations that failed."
        );
        let _ = writeln!(out, "# TYPE klio_operator_reconcile_failures_total counter");
        let _ = writeln!(
            out,
            "klio_operator_reconcile_failures_total {}",
            self.failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP klio_operator_reconcile_duration_seconds How long reconciliations took."
        );
        let _ = writeln!(
            out,
            "# TYPE klio_operator_reconcile_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "klio_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "klio_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "klio_operator_reconcile_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "klio_operator_reconcile_duration_seconds_count {count}"
        );
        let _ = writeln!(
            out,
            "# HELP klio_operator_leader 1 while this replica holds the leader Lease."
        );
        let _ = writeln!(out, "# TYPE klio_operator_leader gauge");
        let _ = writeln!(out, "klio_operator_leader {}", u8::from(self.is_leader()));
        out
    }
}

/// The operator's HTTP endpoints: `/metrics`; `/healthz` (200 while the process
/// runs); `/readyz` (200 once `ready`: the Lease has been read, as leader or follower).
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for the Lease")
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_path(app: &Router, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_waits_for_the_lease_while_healthz_and_metrics_answer_at_once() {
        let metrics = Arc::new(Metrics::default());
        let ready = Arc::new(AtomicBool::new(false));
        let app = router(metrics.clone(), ready.clone());
        assert_eq!(get_path(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_path(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get_path(&app, "/readyz").await.0, StatusCode::OK);
        metrics.reconciled(0.1, false);
        let (status, text) = get_path(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("klio_operator_reconcile_failures_total 1"),
            "{text}"
        );
    }

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .to_string()
    }

    #[test]
    fn reconciliations_failures_and_durations_are_counted_into_cumulative_buckets() {
        let m = Metrics::default();
        m.reconciled(0.02, true);
        m.reconciled(0.3, false);
        m.reconciled(100.0, true);
        m.set_leader(true);
        let t = m.render();
        assert_eq!(value(&t, "klio_operator_reconciliations_total"), "3");
        assert_eq!(value(&t, "klio_operator_reconcile_failures_total"), "1");
        let bucket = |le: &str| {
            value(
                &t,
                &format!("klio_operator_reconcile_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.01"), "0");
        assert_eq!(bucket("0.05"), "1");
        assert_eq!(bucket("0.5"), "2");
        assert_eq!(bucket("30"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert_eq!(
            value(&t, "klio_operator_reconcile_duration_seconds_count"),
            "3"
        );
        assert_eq!(
            value(&t, "klio_operator_reconcile_duration_seconds_sum"),
            "100.32"
        );
        assert_eq!(value(&t, "klio_operator_leader"), "1");
    }
}

//! Bounded retry with exponential backoff and full jitter for Tier 2 requests. Every
//! request [`crate::store::Tier2`] makes goes through [`RetryPolicy::run`]; `object_store`'s
//! own retry loop is switched off so that this is the one place that retries. Touches no
//! storage.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::{classify, Retry, Tier2Error};

/// How often and how patiently a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles with each retry.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts over roughly 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s at most: a relay retries the
    /// whole object later, so one call need not wait out a long outage.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling before retry number `retry` (1-based): `initial * 2^(retry-1)`,
    /// capped at `max_backoff`.
    fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// A random delay in `[0, ceiling]` ("full jitter": many clients retrying after one
    /// outage spread out instead of arriving together).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// Runs `attempt` until it succeeds, fails permanently or the attempts are used up;
    /// the last error is returned as a [`Tier2Error`] for `op` on `key`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: F,
    ) -> Result<T, Tier2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut tries = 0u32;
        loop {
            tries += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if tries < self.max_attempts.max(1) && classify(&e) == Retry::Transient => {
                    let delay = self.delay(tries);
                    tracing::debug!(op, key, attempt = tries, ?delay, error = %e, "tier2: retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(Tier2Error::store(op, key, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Service Unavailable"
                .to_string()
                .into(),
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(60), Duration::from_secs(1));
        let delays: Vec<_> = (0..50).map(|_| p.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "no jitter: {delays:?}"
        );
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let out = fast(5)
            .run("put", "k", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(unavailable())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_the_error_stays_transient() {
        let calls = AtomicU32::new(0);
        let err = fast(4)
            .run("put", "k", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(unavailable())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(!err.is_permanent(), "{err}");
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let err = fast(5)
            .run("get", "k", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(object_store::Error::PermissionDenied {
                    path: "k".into(),
                    source: "denied".to_string().into(),
                })
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(err.is_permanent());
    }
}

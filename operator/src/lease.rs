//! Leader election with a `coordination.k8s.io/v1` Lease (kube-runtime has none).
//!
//! Every replica calls [`LeaseLock::try_acquire_or_renew`] every [`LeaseLock::renew_every`]:
//! it creates the Lease when there is none, renews it when it holds it, and takes it over
//! when its holder has not renewed it within `leaseDurationSeconds`. Each write carries
//! the `resourceVersion` that was read, so of two replicas racing, one gets a conflict
//! and stays a follower. A leader that cannot renew before its lease expires must stop
//! (see [`LeaseLock::lost`]); the binary then exits and is restarted as a follower. On
//! a graceful stop (SIGTERM) the leader clears the holder ([`LeaseLock::release`]), so
//! another replica leads at once rather than after the lease expires.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::Api;

/// One replica's view of the Lease.
#[derive(Debug, Clone)]
pub struct LeaseLock {
    pub name: String,
    /// This replica (its pod's name).
    pub identity: String,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    pub renew_every: Duration,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(name: &str, identity: &str) -> LeaseLock {
        LeaseLock {
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().try_into().unwrap_or(15)),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Replaces the Lease with `lease` (carrying the `resourceVersion` read): `false` when
    /// another replica wrote it meanwhile (a conflict).
    async fn write(&self, api: &Api<Lease>, lease: &Lease) -> Result<bool, kube::Error> {
        match api.replace(&self.name, &PostParams::default(), lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether this replica holds the Lease after this call (`now`: the current time).
    pub async fn try_acquire_or_renew(
        &self,
        api: &Api<Lease>,
        now: Timestamp,
    ) -> Result<bool, kube::Error> {
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == Some(self.identity.as_str()) {
            let acquired = spec.acquire_time.map(|t| t.0).unwrap_or(now);
            self.spec(now, acquired, transitions)
        } else {
            let duration =
                SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
            let expired = match spec.renew_time {
                Some(MicroTime(renewed)) => renewed + duration < now,
                None => true,
            };
            if holder.is_some() && !expired {
                return Ok(false);
            }
            self.spec(now, now, transitions + 1)
        };
        lease.spec = Some(new_spec);
        self.write(api, &lease).await
    }

    /// Gives the Lease up on a graceful stop, so that another replica takes over at once
    /// instead of after `leaseDurationSeconds`: its holder is cleared if it is still
    /// this replica (with the `resourceVersion` read, so a Lease another replica took
    /// meanwhile is left alone). Whether it was released.
    pub async fn release(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        lease.spec = Some(spec);
        self.write(api, &lease).await
    }

    /// A leader whose last successful renewal was at `renewed` has lost the Lease at
    /// `now` (another replica may take it over).
    pub fn lost(&self, renewed: Timestamp, now: Timestamp) -> bool {
        let d = SignedDuration::try_from(self.duration).unwrap_or(SignedDuration::from_secs(15));
        renewed + d <= now
    }
}

/// What a replica does after an attempt to acquire or renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Hold (or keep holding) the Lease: run the controller.
    Lead,
    /// Another replica leads: wait.
    Follow,
    /// This replica led and no longer may: stop reconciling at once.
    Lost,
}

/// A replica's leadership across attempts.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    /// The last successful acquisition or renewal, while leading.
    renewed: Option<Timestamp>,
}

impl Leadership {
    /// The step after an attempt at `now` (`Err(())`: the API could not be asked). A
    /// leader that cannot reach the API keeps leading until its lease would expire; a
    /// leader told another replica holds the Lease has lost it.
    pub fn after(&mut self, lock: &LeaseLock, attempt: Result<bool, ()>, now: Timestamp) -> Step {
        match (attempt, self.renewed) {
            (Ok(true), _) => {
                self.renewed = Some(now);
                Step::Lead
            }
            (Ok(false), Some(_)) => {
                self.renewed = None;
                Step::Lost
            }
            (Err(()), Some(r)) if lock.lost(r, now) => {
                self.renewed = None;
                Step::Lost
            }
            (Err(()), Some(_)) => Step::Lead,
            (_, None) => Step::Follow,
        }
    }
}

#[cfg(test)]
mod tests;

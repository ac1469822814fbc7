//! The Lease loop's decisions against a mocked API server (`tower-test`).

use futures_util::FutureExt;
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/klio-operator";
const NOW: i64 = 1_750_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn micro(secs: i64) -> String {
    // The API server's MicroTime format.
    format!("{}", at(secs).strftime("%Y-%m-%dT%H:%M:%S.000000Z"))
}

fn lease(holder: &str, renewed: i64, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "klio-operator", "namespace": "ops", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": micro(NOW - 3600), "renewTime": micro(renewed),
                 "leaseTransitions": transitions}
    })
}

async fn next(
    h: &mut Handle<Request<Body>, Response<Body>>,
    method: &str,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!((req.method().as_str(), req.uri().path()), (method, path));
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, send)
}

fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason,
           "reason": reason, "code": code})
}

/// The scenario side of a test: answers the requests, returns the handle and the body
/// written, if any.
type Scenario = Box<
    dyn FnOnce(
        Handle<Request<Body>, Response<Body>>,
    ) -> futures_util::future::BoxFuture<
        'static,
        (Handle<Request<Body>, Response<Body>>, Option<Value>),
    >,
>;

/// Runs `call` (a method of the lock of replica `pod-a`) against `scenario`; its answer
/// and the body the scenario saw written. Fails on a request left unanswered or extra.
async fn against<F, Fut>(scenario: Scenario, call: F) -> (bool, Option<Value>)
where
    F: FnOnce(LeaseLock, Api<Lease>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, kube::Error>>,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "ops");
    let task = tokio::spawn(scenario(handle));
    let lock = LeaseLock::new("klio-operator", "pod-a");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), call(lock, api))
        .await
        .expect("no unanswered request")
        .unwrap();
    let (mut handle, written) = task.await.unwrap();
    if let Some(Some((req, _))) = handle.next_request().now_or_never() {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
    (answer, written)
}

/// Runs one `try_acquire_or_renew` at `NOW` against `scenario`.
async fn attempt<F>(scenario: F) -> (bool, Option<Value>)
where
    F: FnOnce(
            Handle<Request<Body>, Response<Body>>,
        ) -> futures_util::future::BoxFuture<
            'static,
            (Handle<Request<Body>, Response<Body>>, Option<Value>),
        > + 'static,
{
    against(Box::new(scenario), |lock, api| async move {
        lock.try_acquire_or_renew(&api, at(NOW)).await
    })
    .await
}

#[tokio::test]
async fn a_missing_lease_is_created_with_this_replica_as_holder() {
    let (held, written) = attempt(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 404, &status(404, "NotFound"));
            let (body, send) = next(
                &mut h,
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
            )
            .await;
            reply(send, 201, &body);
            (h, Some(body))
        })
    })
    .await;
    assert!(held);
    let spec = &written.unwrap()["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
}

#[tokio::test]
async fn its_own_lease_is_renewed_with_the_version_read() {
    let (held, written) = attempt(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 200, &lease("pod-a", NOW - 5, 2));
            let (body, send) = next(&mut h, "PUT", PATH).await;
            reply(send, 200, &body);
            (h, Some(body))
        })
    })
    .await;
    assert!(held);
    let w = written.unwrap();
    assert_eq!(
        w["metadata"]["resourceVersion"], "41",
        "optimistic concurrency"
    );
    assert_eq!(w["spec"]["holderIdentity"], "pod-a");
    assert_eq!(w["spec"]["leaseTransitions"], 2);
    let renewed: Timestamp = w["spec"]["renewTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(renewed, at(NOW));
    let acquired: Timestamp = w["spec"]["acquireTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(acquired, at(NOW - 3600), "acquireTime is kept");
}

#[tokio::test]
async fn a_lease_another_replica_renewed_recently_is_left_alone() {
    let (held, written) = attempt(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 200, &lease("pod-b", NOW - 14, 0));
            (h, None)
        })
    })
    .await;
    assert!(!held);
    assert_eq!(written, None);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_counted_as_a_transition() {
    let (held, written) = attempt(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 200, &lease("pod-b", NOW - 16, 4));
            let (body, send) = next(&mut h, "PUT", PATH).await;
            reply(send, 200, &body);
            (h, Some(body))
        })
    })
    .await;
    assert!(held);
    let w = written.unwrap();
    assert_eq!(w["spec"]["holderIdentity"], "pod-a");
    assert_eq!(w["spec"]["leaseTransitions"], 5);
    assert_eq!(w["metadata"]["resourceVersion"], "41");
}

#[tokio::test]
async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
    let (held, _) = attempt(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 200, &lease("pod-b", NOW - 60, 4));
            let (_, send) = next(&mut h, "PUT", PATH).await;
            reply(send, 409, &status(409, "Conflict"));
            (h, None)
        })
    })
    .await;
    assert!(!held);
}

#[test]
fn a_leader_has_lost_once_its_lease_duration_has_passed_without_renewal() {
    let lock = LeaseLock::new("l", "pod-a");
    assert!(!lock.lost(at(NOW - 14), at(NOW)));
    assert!(lock.lost(at(NOW - 15), at(NOW)));
}

#[test]
fn a_leader_keeps_leading_through_api_errors_until_its_lease_would_expire() {
    let lock = LeaseLock::new("l", "pod-a");
    let mut l = Leadership::default();
    assert_eq!(l.after(&lock, Err(()), at(NOW)), Step::Follow);
    assert_eq!(l.after(&lock, Ok(false), at(NOW)), Step::Follow);
    assert_eq!(l.after(&lock, Ok(true), at(NOW)), Step::Lead);
    assert_eq!(l.after(&lock, Err(()), at(NOW + 10)), Step::Lead);
    assert_eq!(l.after(&lock, Err(()), at(NOW + 15)), Step::Lost);
    assert_eq!(
        l.after(&lock, Ok(false), at(NOW + 20)),
        Step::Follow,
        "a follower again"
    );
}

#[test]
fn a_leader_told_that_another_replica_holds_the_lease_has_lost_it() {
    let lock = LeaseLock::new("l", "pod-a");
    let mut l = Leadership::default();
    assert_eq!(l.after(&lock, Ok(true), at(NOW)), Step::Lead);
    assert_eq!(l.after(&lock, Ok(true), at(NOW + 5)), Step::Lead);
    assert_eq!(l.after(&lock, Ok(false), at(NOW + 6)), Step::Lost);
}

/// Runs one `release` against `scenario`.
async fn release<F>(scenario: F) -> (bool, Option<Value>)
where
    F: FnOnce(
            Handle<Request<Body>, Response<Body>>,
        ) -> futures_util::future::BoxFuture<
            'static,
            (Handle<Request<Body>, Response<Body>>, Option<Value>),
        > + 'static,
{
    against(Box::new(scenario), |lock, api| async move {
        lock.release(&api).await
    })
    .await
}

#[tokio::test]
async fn a_graceful_stop_clears_its_own_holder_with_the_version_read() {
    let (released, written) = release(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 200, &lease("pod-a", NOW - 2, 3));
            let (body, send) = next(&mut h, "PUT", PATH).await;
            reply(send, 200, &body);
            (h, Some(body))
        })
    })
    .await;
    assert!(released);
    let w = written.unwrap();
    assert_eq!(w["metadata"]["resourceVersion"], "41");
    assert!(
        w["spec"].get("holderIdentity").is_none_or(Value::is_null),
        "{w}"
    );
    assert_eq!(w["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn a_graceful_stop_leaves_another_holders_lease_alone() {
    let (released, written) = release(|mut h| {
        Box::pin(async move {
            let (_, send) = next(&mut h, "GET", PATH).await;
            reply(send, 200, &lease("pod-b", NOW - 2, 3));
            (h, None)
        })
    })
    .await;
    assert!(!released);
    assert!(written.is_none());
}

//! The reconciler against a mocked API server (`tower-test`): each scenario task
//! expects the reconciler's requests in order, asserts each, and replies as the API
//! server would. A scenario ends by checking that nothing more was sent.

use std::sync::Mutex as StdMutex;

use futures_util::FutureExt;

use http::{Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::config::tests::{full_standard, read_only};
use crate::resources::tests::server as server_of;
use crate::resources::HASH_ANNOTATION;
use crate::status::tests::view;
use crate::{ServerSpec, ServerStatus};
use klio_api::ClusterStatusView;

pub(crate) const NS: &str = "db";

pub(crate) struct ApiServer(pub(crate) Handle<Request<Body>, Response<Body>>);

/// One request as received: its query string and JSON body (`Null` when empty).
pub(crate) struct Received {
    pub(crate) query: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
    send: SendResponse<Response<Body>>,
}

impl Received {
    pub(crate) fn reply(self, code: u16, body: &Value) {
        self.send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    pub(crate) fn not_found(self) {
        self.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404}),
        );
    }
}

impl ApiServer {
    pub(crate) async fn expect(&mut self, method: &str, path: &str) -> Received {
        let (req, send) = self.0.next_request().await.unwrap_or_else(|| {
            panic!("expected {method} {path}; the reconciler sent nothing more")
        });
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (method, path),
            "unexpected request"
        );
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Received {
            query,
            content_type,
            body,
            send,
        }
    }

    /// A server-side apply by the operator's field manager; answered with what was sent
    /// plus `status`.
    pub(crate) async fn expect_apply(&mut self, path: &str, status: Value) -> Value {
        let r = self.expect("PATCH", path).await;
        assert_eq!(r.content_type, "application/apply-patch+yaml", "{path}");
        assert!(
            r.query.contains("fieldManager=klio-operator"),
            "{}",
            r.query
        );
        assert!(r.query.contains("force=true"), "{}", r.query);
        let body = r.body.clone();
        let mut reply = body.clone();
        if !status.is_null() {
            reply["status"] = status;
        }
        r.reply(200, &reply);
        body
    }

    /// An Event (`events.k8s.io/v1`); its `(type, reason)`.
    pub(crate) async fn expect_event(&mut self) -> (String, String) {
        let r = self
            .expect(
                "POST",
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        let seen = (
            r.body["type"].as_str().unwrap().to_string(),
            r.body["reason"].as_str().unwrap().to_string(),
        );
        assert_eq!(r.body["regarding"]["kind"], "Server");
        assert_eq!(r.body["regarding"]["name"], "klio");
        let body = r.body.clone();
        r.reply(201, &body);
        seen
    }

    pub(crate) async fn expect_status(&mut self) -> ServerStatus {
        let r = self
            .expect(
                "PATCH",
                &format!("/apis/klio.io/v1alpha1/namespaces/{NS}/servers/klio/status"),
            )
            .await;
        assert_eq!(r.content_type, "application/apply-patch+yaml");
        assert!(
            r.query.contains("fieldManager=klio-operator"),
            "{}",
            r.query
        );
        assert_eq!(r.body["kind"], "Server");
        let status: ServerStatus = serde_json::from_value(r.body["status"].clone()).unwrap();
        let reply = json!({"apiVersion": "klio.io/v1alpha1", "kind": "Server",
                           "metadata": {"name": "klio", "namespace": NS},
                           "spec": serde_json::to_value(full_standard()).unwrap(), "status": r.body["status"]});
        r.reply(200, &reply);
        status
    }

    async fn done(mut self) {
        if let Some((req, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// What a fake server answers on `/v1/status`, and the targets it was asked with.
#[derive(Default)]
pub(crate) struct FakeStatus {
    views: BTreeMap<String, ClusterStatusView>,
    asked: Arc<StdMutex<Vec<StatusTarget>>>,
}

impl StatusSource for FakeStatus {
    fn cluster_status<'a>(
        &'a self,
        target: &'a StatusTarget,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<ClusterStatusView>, String>> {
        self.asked.lock().unwrap().push(target.clone());
        let v = self.views.get(&target.cluster).cloned();
        Box::pin(async move { Ok(v) })
    }
}

pub(crate) fn setup(status: FakeStatus) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(client, Box::new(status), Arc::new(Metrics::default()));
    (Arc::new(ctx), ApiServer(handle))
}

/// Runs one reconciliation against `scenario` and returns both outcomes; the
/// scenario's last step checks that nothing more was sent (the context, which holds
/// the client, is dropped first so the mock sees the end).
pub(crate) async fn run<T: Send + 'static>(
    server: Server,
    status: FakeStatus,
    scenario: impl FnOnce(ApiServer) -> futures_util::future::BoxFuture<'static, (ApiServer, T)>,
) -> (Result<Action, Error>, T) {
    let (ctx, api) = setup(status);
    let task = tokio::spawn(scenario(api));
    // Timeouts here only turn a hang (a request the scenario did not expect, which
    // nobody answers) into a failure; nothing waits on them otherwise.
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(server), ctx.clone()),
    )
    .await;
    let out = scenario_end(ctx, task).await;
    (result.expect("the reconciler finished"), out)
}

/// Waits for the spawned `scenario` and returns its outcome; then drops the context
/// (which holds the client, so the mock sees the end) and fails on any request the
/// scenario did not take.
pub(crate) async fn scenario_end<T>(
    ctx: Arc<Context>,
    scenario: tokio::task::JoinHandle<(ApiServer, T)>,
) -> T {
    let (mut api, out) = tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("the scenario finished")
        .expect("the scenario's assertions held");
    drop(ctx);
    // The scenario is over: anything sent since is queued already.
    if let Some(Some((req, _))) = api.0.next_request().now_or_never() {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
    out
}

pub(crate) fn with_finalizer(mut s: Server) -> Server {
    s.metadata.finalizers = Some(vec![FINALIZER.into()]);
    s
}

/// Every Secret the spec references, with each key it needs; `salt` changes the
/// master key's bytes.
pub(crate) fn secrets_for(spec: &ServerSpec, salt: &str) -> BTreeMap<String, Value> {
    let mut data: BTreeMap<String, BTreeMap<String, ByteString>> = BTreeMap::new();
    for f in config::secret_files(spec) {
        let value = if f.path == "master.key" {
            format!("{}{salt}", "ab".repeat(32))
        } else if f.path.ends_with("/token") {
            format!("{}-token-0123456789abcdef0123456789", f.secret)
        } else {
            format!("{}:{}", f.secret, f.key)
        };
        data.entry(f.secret)
            .or_default()
            .insert(f.key, ByteString(value.into_bytes()));
    }
    for c in &spec.clusters {
        if let Some(p) = &c.password {
            data.entry(p.name.clone())
                .or_default()
                .insert(p.key.clone(), ByteString(b"pw".to_vec()));
        }
    }
    if let Some(tls) = &spec.tls {
        data.entry(tls.secret_name.clone()).or_default().insert(
            "ca.crt".into(),
            ByteString(b"-----BEGIN CERTIFICATE-----".to_vec()),
        );
    }
    data.into_iter()
        .map(|(name, data)| {
            let s = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(NS.into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            (name, serde_json::to_value(s).unwrap())
        })
        .collect()
}

/// The reconciler's reads of the Secrets, answered from `secrets`.
pub(crate) async fn serve_secrets(
    api: &mut ApiServer,
    spec: &ServerSpec,
    secrets: &BTreeMap<String, Value>,
) {
    for name in config::referenced_secrets(spec) {
        let r = api
            .expect("GET", &format!("/api/v1/namespaces/{NS}/secrets/{name}"))
            .await;
        match secrets.get(&name) {
            Some(s) => r.reply(200, s),
            None => r.not_found(),
        }
    }
}

pub(crate) fn sts_path() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/klio")
}

fn pvc_path() -> String {
    format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/data-klio-0")
}

/// What a reconciliation of an existing or new Server applied and wrote.
#[derive(Debug, Default)]
struct Seen {
    config_map: Value,
    service: Value,
    stateful_set: Value,
    pvc_patch: Option<Value>,
    events: Vec<(String, String)>,
    status: Option<ServerStatus>,
}

#[derive(Clone, Copy, PartialEq)]
enum Pvc {
    /// No claim read (a new StatefulSet, or a read-only server).
    NotRead,
    /// The claim is read and left alone (same size, or a refused shrink: see events).
    Kept(&'static str),
    /// The claim of this size is read and patched.
    Grown(&'static str),
}

/// The whole flow of [`apply`] for a spec whose Secrets all exist.
async fn serve_apply(
    mut api: ApiServer,
    spec: ServerSpec,
    secrets: BTreeMap<String, Value>,
    existing: Option<Value>,
    pvc: Pvc,
    ready: bool,
    events: usize,
) -> (ApiServer, Seen) {
    let mut seen = Seen::default();
    serve_secrets(&mut api, &spec, &secrets).await;
    let r = api.expect("GET", &sts_path()).await;
    let is_new = existing.is_none();
    match &existing {
        Some(sts) => r.reply(200, sts),
        None => r.not_found(),
    }
    seen.config_map = api
        .expect_apply(
            &format!("/api/v1/namespaces/{NS}/configmaps/klio-config"),
            Value::Null,
        )
        .await;
    seen.service = api
        .expect_apply(
            &format!("/api/v1/namespaces/{NS}/services/klio"),
            Value::Null,
        )
        .await;
    let status = if ready {
        json!({"replicas": 1, "readyReplicas": 1})
    } else {
        json!({"replicas": 1})
    };
    seen.stateful_set = api.expect_apply(&sts_path(), status).await;
    if is_new {
        seen.events.push(api.expect_event().await);
    }
    match pvc {
        Pvc::NotRead => {}
        Pvc::Kept(size) | Pvc::Grown(size) => {
            let r = api.expect("GET", &pvc_path()).await;
            r.reply(
                200,
                &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data-klio-0", "namespace": NS},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}),
            );
            if matches!(pvc, Pvc::Grown(_)) {
                let r = api.expect("PATCH", &pvc_path()).await;
                assert_eq!(r.content_type, "application/merge-patch+json");
                seen.pvc_patch = Some(r.body.clone());
                let body = r.body.clone();
                r.reply(200, &body);
            }
        }
    }
    while seen.events.len() < events {
        seen.events.push(api.expect_event().await);
    }
    seen.status = Some(api.expect_status().await);
    (api, seen)
}

fn annotation(sts: &Value) -> String {
    sts["spec"]["template"]["metadata"]["annotations"][HASH_ANNOTATION]
        .as_str()
        .unwrap()
        .to_string()
}

fn condition<'a>(
    s: &'a ServerStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t}: {:?}", s.conditions))
}

#[tokio::test]
async fn a_new_server_gets_its_config_map_service_and_stateful_set_with_the_template_merged() {
    let mut spec = full_standard();
    spec.template = Some(json!({"spec": {
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "backup", "operator": "Exists"}],
        "containers": [{"name": "klio", "resources": {"limits": {"memory": "2Gi"}}}]
    }}));
    let server = with_finalizer(server_of(spec.clone()));
    let secrets = secrets_for(&spec, "");
    let (result, seen) = run(server, FakeStatus::default(), move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            None,
            Pvc::NotRead,
            false,
            1,
        ))
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(60)));

    let toml = seen.config_map["data"]["klio.toml"].as_str().unwrap();
    assert_eq!(toml, config::klio_toml(&full_standard()).unwrap());
    assert_eq!(
        seen.config_map["metadata"]["ownerReferences"][0]["kind"],
        "Server"
    );

    assert_eq!(seen.service["spec"]["ports"][0]["port"], 7070);
    assert_eq!(
        seen.service["spec"]["selector"]["app.kubernetes.io/instance"],
        "klio"
    );

    let sts = &seen.stateful_set;
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["name"], "klio");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["disk"], "ssd");
    assert_eq!(pod["tolerations"][0]["key"], "backup");
    assert_eq!(pod["containers"][0]["name"], "klio");
    assert_eq!(pod["containers"][0]["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(pod["containers"][0]["image"], "klio:test");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );
    assert_eq!(annotation(sts).len(), 32);

    assert_eq!(seen.events, [("Normal".to_string(), "Created".to_string())]);
    let status = seen.status.unwrap();
    assert_eq!(condition(&status, "Ready").reason, "PodNotReady");
    assert_eq!(status.observed_generation, Some(3));
}

/// Reconciles an existing Server whose Secrets are `secrets_for(spec, salt)`; the
/// applied StatefulSet.
async fn applied_with_salt(spec: &ServerSpec, salt: &str, existing: &Value) -> Value {
    let server = with_finalizer(server_of(spec.clone()));
    let (spec, secrets, existing) = (spec.clone(), secrets_for(spec, salt), existing.clone());
    let (result, seen) = run(server, FakeStatus::default(), move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            Some(existing),
            Pvc::Kept("50Gi"),
            false,
            0,
        ))
    })
    .await;
    result.unwrap();
    seen.stateful_set
}

#[tokio::test]
async fn a_changed_secret_changes_the_pod_annotation_and_an_unchanged_one_does_not() {
    let spec = full_standard();
    let s = server_of(spec.clone());
    let existing = serde_json::to_value(
        resources::stateful_set(
            &s,
            "klio:test",
            "old",
            ClaimTemplate::from_spec(&s).as_ref(),
        )
        .unwrap(),
    )
    .unwrap();
    let first = annotation(&applied_with_salt(&spec, "", &existing).await);
    let again = annotation(&applied_with_salt(&spec, "", &existing).await);
    let rotated = annotation(&applied_with_salt(&spec, "00", &existing).await);
    assert_eq!(first, again, "same Secrets, same pod");
    assert_ne!(first, rotated, "a rotated master key rolls the pod");
}

fn existing_sts(spec: &ServerSpec, size: &str) -> Value {
    let s = server_of(spec.clone());
    let claim = ClaimTemplate {
        size: size.into(),
        storage_class: Some("fast".into()),
    };
    serde_json::to_value(resources::stateful_set(&s, "klio:test", "h", Some(&claim)).unwrap())
        .unwrap()
}

#[tokio::test]
async fn a_larger_size_patches_the_claim_and_keeps_the_immutable_claim_template() {
    let mut spec = full_standard();
    spec.storage.as_mut().unwrap().size = "100Gi".into();
    let server = with_finalizer(server_of(spec.clone()));
    let (secrets, existing) = (secrets_for(&spec, ""), existing_sts(&spec, "50Gi"));
    let (result, seen) = run(server, FakeStatus::default(), move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            Some(existing),
            Pvc::Grown("50Gi"),
            false,
            1,
        ))
    })
    .await;
    result.unwrap();
    assert_eq!(
        seen.pvc_patch.unwrap(),
        json!({"spec": {"resources": {"requests": {"storage": "100Gi"}}}})
    );
    assert_eq!(
        seen.stateful_set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
            ["storage"],
        "50Gi",
        "the StatefulSet's claim template is immutable: it keeps the size it was created with"
    );
    assert_eq!(
        seen.events,
        [("Normal".to_string(), "Resizing".to_string())]
    );
    let status = seen.status.unwrap();
    let c = condition(&status, "StorageResized");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Resizing"));
}

#[tokio::test]
async fn a_smaller_size_is_refused_with_a_condition_and_a_warning() {
    let mut spec = full_standard();
    spec.storage.as_mut().unwrap().size = "20Gi".into();
    let server = with_finalizer(server_of(spec.clone()));
    let (secrets, existing) = (secrets_for(&spec, ""), existing_sts(&spec, "50Gi"));
    let (result, seen) = run(server, FakeStatus::default(), move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            Some(existing),
            Pvc::Kept("50Gi"),
            false,
            1,
        ))
    })
    .await;
    result.unwrap();
    assert_eq!(seen.pvc_patch, None);
    assert_eq!(
        seen.events,
        [("Warning".to_string(), "ShrinkRefused".to_string())]
    );
    let status = seen.status.unwrap();
    let c = condition(&status, "StorageResized");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ShrinkRefused")
    );
    assert!(c.message.contains("50Gi"), "{}", c.message);
}

#[tokio::test]
async fn a_read_only_server_has_no_tier1_volume_and_no_claim_is_read() {
    let spec = read_only();
    let server = with_finalizer(server_of(spec.clone()));
    let s = server_of(spec.clone());
    let existing =
        serde_json::to_value(resources::stateful_set(&s, "klio:test", "h", None).unwrap()).unwrap();
    let secrets = secrets_for(&spec, "");
    let (result, seen) = run(server, FakeStatus::default(), move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            Some(existing),
            Pvc::NotRead,
            false,
            0,
        ))
    })
    .await;
    result.unwrap();
    let sts = &seen.stateful_set;
    assert!(sts["spec"].get("volumeClaimTemplates").is_none(), "{sts}");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
    assert!(data.get("emptyDir").is_some() && data.get("persistentVolumeClaim").is_none());
    assert!(seen.config_map["data"]["klio.toml"]
        .as_str()
        .unwrap()
        .contains("mode = \"read-only\""));
}

#[tokio::test]
async fn the_status_is_filled_from_the_servers_v1_status() {
    let spec = full_standard();
    let server = with_finalizer(server_of(spec.clone()));
    let asked = Arc::new(StdMutex::new(Vec::new()));
    let fake = FakeStatus {
        views: BTreeMap::from([
            (
                "pg-main".into(),
                view("pg-main", "streaming", 512, Some(1_700_000_000), 0),
            ),
            (
                "pg_other".into(),
                view("pg_other", "connecting", 9000, None, 0),
            ),
        ]),
        asked: asked.clone(),
    };
    let (secrets, existing) = (secrets_for(&spec, ""), existing_sts(&spec, "50Gi"));
    let (result, seen) = run(server, fake, move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            Some(existing),
            Pvc::Kept("50Gi"),
            true,
            0,
        ))
    })
    .await;
    result.unwrap();
    let status = seen.status.unwrap();
    assert_eq!(status.observed_generation, Some(3));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Serving")
    );
    assert_eq!(condition(&status, "Streaming-pg-main").status, "True");
    assert_eq!(
        condition(&status, "Streaming-pg_other").reason,
        "Connecting"
    );
    assert_eq!(condition(&status, "Streaming").status, "False");
    assert_eq!(condition(&status, "Tier2Reachable").status, "True");
    assert_eq!(
        status.last_backup_time.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    assert_eq!(status.wal_lag_bytes["pg-main"], 512);
    assert_eq!(status.wal_lag_bytes["pg_other"], 9000);

    // One request per cluster, each with that cluster's own token, over HTTPS to the
    // Service, trusting the TLS Secret's CA.
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].url, "https://klio.db.svc:7070");
    assert_eq!(asked[0].cluster, "pg-main");
    assert_eq!(
        asked[0].token,
        "pg-main-token-token-0123456789abcdef0123456789"
    );
    assert_eq!(
        asked[1].token,
        "pg-other-token-token-0123456789abcdef0123456789"
    );
    assert_eq!(
        asked[0].ca_pem.as_deref(),
        Some(&b"-----BEGIN CERTIFICATE-----"[..])
    );
}

#[tokio::test]
async fn a_server_without_the_finalizer_gets_it_first_and_nothing_else() {
    let server = server_of(full_standard());
    let (result, patch) = run(server, FakeStatus::default(), |mut api| {
        Box::pin(async move {
            let r = api
                .expect("PATCH", &format!("/apis/klio.io/v1alpha1/namespaces/{NS}/servers/klio"))
                .await;
            assert_eq!(r.content_type, "application/json-patch+json");
            let body = r.body.clone();
            r.reply(200, &json!({"apiVersion": "klio.io/v1alpha1", "kind": "Server",
                                 "metadata": {"name": "klio", "namespace": NS, "finalizers": [FINALIZER]},
                                 "spec": serde_json::to_value(full_standard()).unwrap()}));
            (api, body)
        })
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let ops = patch.as_array().unwrap();
    assert!(
        ops.iter()
            .any(|op| op["op"] == "add" && op["value"] == json!([FINALIZER])),
        "{patch}"
    );
}

#[tokio::test]
async fn deleting_a_server_runs_the_finalizer_and_removes_it() {
    let mut server = with_finalizer(server_of(full_standard()));
    server.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(1_750_000_000).unwrap(),
        ));
    let (result, (event, patch)) = run(server, FakeStatus::default(), |mut api| {
        Box::pin(async move {
            let event = api.expect_event().await;
            let r = api
                .expect(
                    "PATCH",
                    &format!("/apis/klio.io/v1alpha1/namespaces/{NS}/servers/klio"),
                )
                .await;
            assert_eq!(r.content_type, "application/json-patch+json");
            let body = r.body.clone();
            r.reply(
                200,
                &json!({"apiVersion": "klio.io/v1alpha1", "kind": "Server",
                                 "metadata": {"name": "klio", "namespace": NS},
                                 "spec": serde_json::to_value(full_standard()).unwrap()}),
            );
            (api, (event, body))
        })
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(event, ("Normal".to_string(), "Deleting".to_string()));
    assert_eq!(
        patch,
        json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
               {"op": "remove", "path": "/metadata/finalizers/0"}])
    );
}

#[tokio::test]
async fn api_errors_requeue_with_exponential_backoff_reset_by_a_success() {
    let spec = full_standard();
    let first_secret = config::referenced_secrets(&spec)[0].clone();
    let (ctx, mut api) = setup(FakeStatus::default());
    let server = Arc::new(with_finalizer(server_of(spec)));
    let path = format!("/api/v1/namespaces/{NS}/secrets/{first_secret}");
    let scenario = tokio::spawn(async move {
        for _ in 0..2 {
            api.expect("GET", &path).await.reply(
                500,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcd is down", "reason": "InternalError", "code": 500}),
            );
        }
        api
    });
    let mut delays = Vec::new();
    for _ in 0..2 {
        let err = reconcile(server.clone(), ctx.clone()).await.unwrap_err();
        assert!(err.to_string().contains("etcd is down"), "{err}");
        delays.push(error_policy(server.clone(), &err, ctx.clone()));
    }
    let api = tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        delays,
        [
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10))
        ]
    );
    assert!(ctx
        .metrics
        .render()
        .contains("klio_operator_reconcile_failures_total 2"));

    // A success (here: adding the finalizer to another object of the same name) resets it.
    let fresh = Arc::new(server_of(full_standard()));
    let scenario = tokio::spawn(async move {
        let mut api = api;
        let r = api
            .expect(
                "PATCH",
                &format!("/apis/klio.io/v1alpha1/namespaces/{NS}/servers/klio"),
            )
            .await;
        r.reply(
            200,
            &json!({"apiVersion": "klio.io/v1alpha1", "kind": "Server",
                             "metadata": {"name": "klio", "namespace": NS},
                             "spec": serde_json::to_value(full_standard()).unwrap()}),
        );
        api
    });
    reconcile(fresh, ctx.clone()).await.unwrap();
    let api = tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .unwrap()
        .unwrap();
    let err = Error::NoNamespace;
    assert_eq!(
        error_policy(server.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    drop(ctx);
    api.done().await;
}

#[test]
fn the_backoff_doubles_up_to_its_ceiling_per_server() {
    let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
    let got: Vec<u64> = (0..6).map(|_| b.failed("db/a").as_secs()).collect();
    assert_eq!(got, [5, 10, 20, 40, 60, 60]);
    assert_eq!(b.failed("db/b").as_secs(), 5, "per Server");
    b.succeeded("db/a");
    assert_eq!(b.failed("db/a").as_secs(), 5);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let mut spec = read_only();
    spec.retention = Some(crate::RetentionSpec::default());
    let server = with_finalizer(server_of(spec));
    let (result, (event, status)) = run(server, FakeStatus::default(), |mut api| {
        Box::pin(async move {
            let event = api.expect_event().await;
            let status = api.expect_status().await;
            (api, (event, status))
        })
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(60)));
    assert_eq!(event, ("Warning".to_string(), "InvalidSpec".to_string()));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.starts_with("spec.retention:"),
        "{}",
        ready.message
    );
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_nothing_is_applied() {
    let spec = full_standard();
    let server = with_finalizer(server_of(spec.clone()));
    let mut secrets = secrets_for(&spec, "");
    secrets.remove("klio-keys");
    let (result, (event, status)) = run(server, FakeStatus::default(), move |mut api| {
        Box::pin(async move {
            serve_secrets(&mut api, &spec, &secrets).await;
            let event = api.expect_event().await;
            let status = api.expect_status().await;
            (api, (event, status))
        })
    })
    .await;
    result.unwrap();
    assert_eq!(event, ("Warning".to_string(), "SecretMissing".to_string()));
    let ready = condition(&status, "Ready");
    assert_eq!(ready.reason, "SecretMissing");
    assert!(ready.message.contains("klio-keys"), "{}", ready.message);
}

#[tokio::test]
async fn a_changed_mode_is_reported_instead_of_applying_an_immutable_change() {
    let spec = read_only();
    let server = with_finalizer(server_of(spec.clone()));
    let (secrets, existing) = (
        secrets_for(&spec, ""),
        existing_sts(&full_standard(), "50Gi"),
    );
    let (result, (event, status)) = run(server, FakeStatus::default(), move |mut api| {
        Box::pin(async move {
            serve_secrets(&mut api, &spec, &secrets).await;
            api.expect("GET", &sts_path()).await.reply(200, &existing);
            let event = api.expect_event().await;
            let status = api.expect_status().await;
            (api, (event, status))
        })
    })
    .await;
    result.unwrap();
    assert_eq!(event, ("Warning".to_string(), "ModeChange".to_string()));
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ModeChange")
    );
    assert!(
        ready.message.contains("made for a standard server"),
        "{}",
        ready.message
    );
}

#[tokio::test]
async fn another_storage_class_is_reported_and_the_claim_left_alone() {
    let mut spec = full_standard();
    spec.storage.as_mut().unwrap().storage_class = Some("slow".into());
    spec.storage.as_mut().unwrap().size = "100Gi".into();
    let server = with_finalizer(server_of(spec.clone()));
    let (secrets, existing) = (secrets_for(&spec, ""), existing_sts(&spec, "50Gi"));
    let (result, seen) = run(server, FakeStatus::default(), move |api| {
        Box::pin(serve_apply(
            api,
            spec,
            secrets,
            Some(existing),
            Pvc::NotRead,
            false,
            1,
        ))
    })
    .await;
    result.unwrap();
    assert_eq!(seen.pvc_patch, None);
    assert_eq!(
        seen.events,
        [("Warning".to_string(), "StorageClassImmutable".to_string())]
    );
    let class = &seen.stateful_set["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"];
    assert_eq!(
        class, "fast",
        "the claim template keeps the class it was made with"
    );
    let status = seen.status.unwrap();
    assert_eq!(
        condition(&status, "StorageResized").reason,
        "StorageClassImmutable"
    );
}

/// The controller itself (`run`): it lists and watches Servers and the objects it owns
/// (by label), reconciles the Server it finds, and stops on the shutdown signal.
#[tokio::test]
async fn the_controller_watches_servers_and_owned_objects_reconciles_and_shuts_down() {
    let (ctx, mut api) = setup(FakeStatus::default());
    let server = serde_json::to_value(server_of(full_standard())).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fake = tokio::spawn(async move {
        let mut listed = Vec::new();
        let mut watches = Vec::new();
        let mut stop_tx = Some(stop_tx);
        while let Some((req, send)) = api.0.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let reply = |send: SendResponse<Response<Body>>, code: u16, body: Value| {
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                )
            };
            if req.method() == "GET" && query.contains("watch=true") {
                watches.push((path, send)); // Held open: nothing changes.
            } else if req.method() == "GET" {
                if path != "/apis/klio.io/v1alpha1/servers" {
                    assert!(
                        query.contains(
                            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dklio-operator"
                        ),
                        "owned objects are watched by label: {path}?{query}"
                    );
                }
                let items = if path.ends_with("/servers") {
                    vec![server.clone()]
                } else {
                    vec![]
                };
                listed.push(path);
                reply(
                    send,
                    200,
                    json!({"kind": "List", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": "1"}, "items": items}),
                );
            } else {
                assert_eq!(
                    (req.method().as_str(), path.as_str()),
                    ("PATCH", "/apis/klio.io/v1alpha1/namespaces/db/servers/klio")
                );
                let mut s = server.clone();
                s["metadata"]["finalizers"] = json!([FINALIZER]);
                reply(send, 200, s);
                if let Some(tx) = stop_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        drop(watches);
        listed.sort();
        listed
    });
    let ctx2 = ctx.clone();
    tokio::time::timeout(
        Duration::from_secs(20),
        super::run(ctx2, None, async move {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("the controller stops on its shutdown signal");
    assert_eq!(
        ctx.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("klio_operator_reconciliations_total")),
        Some("klio_operator_reconciliations_total 1")
    );
    drop(ctx);
    let listed = tokio::time::timeout(Duration::from_secs(10), fake)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        listed,
        [
            "/api/v1/configmaps",
            "/api/v1/services",
            "/apis/apps/v1/statefulsets",
            "/apis/klio.io/v1alpha1/servers",
        ]
    );
}

#[tokio::test]
async fn a_stateful_set_of_the_same_name_that_is_not_the_servers_is_left_alone() {
    let spec = full_standard();
    let server = with_finalizer(server_of(spec.clone()));
    let mut foreign = existing_sts(&spec, "50Gi");
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("another-uid");
    let secrets = secrets_for(&spec, "");
    let (result, (event, status)) = run(server, FakeStatus::default(), move |mut api| {
        Box::pin(async move {
            serve_secrets(&mut api, &spec, &secrets).await;
            api.expect("GET", &sts_path()).await.reply(200, &foreign);
            let event = api.expect_event().await;
            let status = api.expect_status().await;
            (api, (event, status))
        })
    })
    .await;
    result.unwrap();
    assert_eq!(event, ("Warning".to_string(), "NotOwned".to_string()));
    assert_eq!(condition(&status, "Ready").reason, "NotOwned");
}

//! The wiring plan against CloudNativePG Cluster objects, and one pass against a mocked
//! API server (`tower-test`).

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::tests::full_standard;
use crate::reconcile::tests::{scenario_end, setup, FakeStatus, NS};
use crate::resources::tests::server as server_of;

/// CloudNativePG's `pg-main` as a user declared it (one extra pg_hba line, no roles).
fn cnpg() -> Value {
    json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
           "metadata": {"name": "pg-main", "namespace": NS, "resourceVersion": "4711"},
           "spec": {"instances": 3,
                    "postgresql": {"pg_hba": ["host app app 10.0.0.0/8 scram-sha-256"],
                                   "parameters": {"max_connections": "200"}},
                    "storage": {"size": "10Gi"}}})
}

/// The certificate cluster of the standard spec (`pg-main`, streaming_replica).
fn with_certificate() -> ClusterSpec {
    full_standard().clusters[0].clone()
}

/// `pg-main` with the password user `klio` (Secret `pg-main-klio`, key `password`).
fn with_password() -> ClusterSpec {
    let mut c = full_standard().clusters[1].clone();
    c.name = "pg-main".into();
    c.password = Some(crate::SecretKeyRef {
        name: "pg-main-klio".into(),
        key: "password".into(),
    });
    c
}

fn synchronous() -> WireSpec {
    WireSpec {
        synchronous: Some(true),
    }
}

/// RFC 7386 JSON merge patch, as the API server applies `Patch::Merge` to a custom
/// resource (arrays replaced whole).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The object after `patch`, which must be planned.
fn patched(cnpg: &Value, planned: Planned) -> Value {
    let Planned::Patch(patch, _) = planned else {
        panic!("expected a patch, got {planned:?}");
    };
    let mut out = cnpg.clone();
    merge(&mut out, &patch);
    out
}

/// Every Cluster the wiring produces is one CloudNativePG accepts: checked against its
/// own CRD (vendored with the plugin's tests), unknown fields refused.
#[test]
fn wired_clusters_validate_against_cloudnativepgs_crd() {
    let mut own = cnpg();
    own["spec"]["postgresql"]["synchronous"] = json!({"method": "first", "number": 2,
        "standbyNamesPre": ["dr-site"], "dataDurability": "preferred"});
    let mut single = cnpg();
    single["spec"]["instances"] = json!(1);
    let wired = [
        patched(
            &cnpg(),
            plan(&cnpg(), &with_password(), &synchronous(), true),
        ),
        patched(
            &cnpg(),
            plan(&cnpg(), &with_certificate(), &synchronous(), true),
        ),
        patched(&own, plan(&own, &with_password(), &synchronous(), true)),
        patched(
            &single,
            plan(&single, &with_password(), &synchronous(), true),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wired.yaml");
    let yaml: Vec<String> = wired.iter().map(|c| c.to_string()).collect();
    std::fs::write(&file, yaml.join("\n---\n")).unwrap();
    let repo = klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("..");
    let crd = repo.join("cnpg-plugin/tests/fixtures/crds/postgresql.cnpg.io_clusters.yaml");
    let report = klio_harness::k8s::crd_schema_check(&repo, &[crd], &[file]);
    assert_eq!(
        report.lines().filter(|l| l.ends_with(": passed")).count(),
        wired.len(),
        "{report}"
    );
}

#[test]
fn a_certificate_cluster_needs_nothing_without_synchronous() {
    let plan = plan(&cnpg(), &with_certificate(), &WireSpec::default(), true);
    assert_eq!(plan, Planned::Wired);
}

#[test]
fn a_password_user_becomes_a_managed_replication_role_with_its_pg_hba_line() {
    let planned = plan(&cnpg(), &with_password(), &WireSpec::default(), false);
    let Planned::Patch(patch, changes) = &planned else {
        panic!("{planned:?}");
    };
    assert_eq!(
        patch,
        &json!({"metadata": {"resourceVersion": "4711"},
                "spec": {"managed": {"roles": [{"name": "klio", "ensure": "present", "login": true,
                                                "replication": true,
                                                "passwordSecret": {"name": "pg-main-klio"},
                                                "comment": "Klio Server (klio-operator)"}]},
                         "postgresql": {"pg_hba": ["host app app 10.0.0.0/8 scram-sha-256",
                                                   "hostssl replication klio all scram-sha-256"]}}})
    );
    assert_eq!(changes.len(), 2);
    // Applied, the next pass has nothing left to do; the user's settings are kept.
    let after = patched(&cnpg(), planned);
    assert_eq!(
        after["spec"]["postgresql"]["parameters"]["max_connections"],
        "200"
    );
    assert_eq!(
        plan(&after, &with_password(), &WireSpec::default(), false),
        Planned::Wired
    );
}

#[test]
fn an_existing_role_or_pg_hba_line_is_kept_as_it_is() {
    let mut c = cnpg();
    c["spec"]["managed"]["roles"] = json!([
        {"name": "app", "login": true},
        {"name": "klio", "login": true, "replication": true, "passwordSecret": {"name": "mine"}}
    ]);
    c["spec"]["postgresql"]["pg_hba"] = json!(["host  replication all 0.0.0.0/0  md5"]);
    assert_eq!(
        plan(&c, &with_password(), &WireSpec::default(), true),
        Planned::Wired
    );
}

#[test]
fn what_contradicts_the_request_is_refused_with_its_fix() {
    let refused = |p: Planned| match p {
        Planned::Refused(reason, message) => (reason, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // A role of that name that may not replicate.
    let mut c = cnpg();
    c["spec"]["managed"]["roles"] = json!([{"name": "klio", "login": true}]);
    let (reason, message) = refused(plan(&c, &with_password(), &WireSpec::default(), true));
    assert_eq!(reason, "RoleConflict");
    assert!(message.contains("replication: true"), "{message}");
    // A password under another key than CloudNativePG's.
    let mut pw = with_password();
    pw.password.as_mut().unwrap().key = "pw".into();
    let (reason, message) = refused(plan(&cnpg(), &pw, &WireSpec::default(), true));
    assert_eq!(reason, "PasswordKey");
    assert!(message.contains("key: password"), "{message}");
    // A certificate for another user than streaming_replica; no credentials at all.
    let mut cert = with_certificate();
    cert.user = Some("klio".into());
    assert_eq!(
        refused(plan(&cnpg(), &cert, &WireSpec::default(), true)).0,
        "CertificateUser"
    );
    cert.user = None;
    cert.replication_secret = None;
    assert_eq!(
        refused(plan(&cnpg(), &cert, &WireSpec::default(), true)).0,
        "NoCredentials"
    );
    // method: any, and the older synchronous settings.
    let mut any = cnpg();
    any["spec"]["postgresql"]["synchronous"] = json!({"method": "any", "number": 1});
    let (reason, message) = refused(plan(&any, &with_certificate(), &synchronous(), true));
    assert_eq!(reason, "SynchronousMethod");
    assert!(message.contains("method: first"), "{message}");
    let mut legacy = cnpg();
    legacy["spec"]["minSyncReplicas"] = json!(1);
    legacy["spec"]["maxSyncReplicas"] = json!(1);
    assert_eq!(
        refused(plan(&legacy, &with_certificate(), &synchronous(), true)).0,
        "LegacySynchronous"
    );
}

#[test]
fn klio_becomes_the_first_synchronous_standby_only_once_it_streams() {
    let waiting = plan(&cnpg(), &with_certificate(), &synchronous(), false);
    assert!(
        matches!(waiting, Planned::Waiting("WaitingForStreaming", _)),
        "{waiting:?}"
    );

    let planned = plan(&cnpg(), &with_certificate(), &synchronous(), true);
    let after = patched(&cnpg(), planned);
    assert_eq!(
        after["spec"]["postgresql"]["synchronous"],
        json!({"method": "first", "number": 1, "standbyNamesPre": ["klio"]})
    );
    assert_eq!(
        plan(&after, &with_certificate(), &synchronous(), true),
        Planned::Wired
    );
    // Wired stays wired when Klio is away for a while.
    assert_eq!(
        plan(&after, &with_certificate(), &synchronous(), false),
        Planned::Wired
    );

    // Three instances: another standby takes over when Klio is away; one instance: none.
    let Planned::Patch(_, notes) = plan(&cnpg(), &with_certificate(), &synchronous(), true) else {
        panic!("a patch")
    };
    assert!(!notes.join(" ").contains("single instance"), "{notes:?}");
    let mut single = cnpg();
    single["spec"]["instances"] = json!(1);
    let Planned::Patch(_, notes) = plan(&single, &with_certificate(), &synchronous(), true) else {
        panic!("a patch")
    };
    assert!(
        notes
            .join(" ")
            .contains("single instance, so every commit waits for Klio and writes stop"),
        "{notes:?}"
    );

    // The user's own synchronous settings: Klio moves to the front, the rest stays.
    let mut own = cnpg();
    own["spec"]["postgresql"]["synchronous"] = json!({"method": "first", "number": 2,
        "standbyNamesPre": ["dr-site", "klio"], "dataDurability": "preferred"});
    let after = patched(&own, plan(&own, &with_certificate(), &synchronous(), true));
    assert_eq!(
        after["spec"]["postgresql"]["synchronous"],
        json!({"method": "first", "number": 2, "standbyNamesPre": ["klio", "dr-site"],
               "dataDurability": "preferred"})
    );
}

#[test]
fn the_condition_is_false_on_a_refusal_unknown_while_waiting_and_true_when_wired() {
    let c = |cluster: &str, ok, reason: &str| ClusterWiring {
        cluster: cluster.into(),
        ok,
        reason: reason.into(),
        message: format!("{cluster}: {reason}"),
    };
    let r = Report {
        clusters: vec![c("a", Some(true), "Wired"), c("b", Some(true), "Wired")],
    };
    assert_eq!(
        r.condition(),
        ("True", "Wired".into(), "wired: a, b".into())
    );
    let r = Report {
        clusters: vec![
            c("a", None, "WaitingForStreaming"),
            c("b", Some(true), "Wired"),
        ],
    };
    assert_eq!(r.condition().0, "Unknown");
    let r = Report {
        clusters: vec![c("a", None, "Wiring"), c("b", Some(false), "RoleConflict")],
    };
    assert_eq!(
        r.condition(),
        ("False", "RoleConflict".into(), "b: RoleConflict".into())
    );
}

/// One wiring pass of a Server whose only cluster is `cluster` with `wire`.
async fn run<T: Send + 'static>(
    cluster: ClusterSpec,
    streaming: bool,
    scenario: impl FnOnce(
        crate::reconcile::tests::ApiServer,
    ) -> futures_util::future::BoxFuture<
        'static,
        (crate::reconcile::tests::ApiServer, T),
    >,
) -> (Result<Option<Report>, kube::Error>, T) {
    let mut spec = full_standard();
    spec.clusters = vec![ClusterSpec {
        wire: Some(synchronous()),
        ..cluster
    }];
    let server = server_of(spec);
    let (ctx, api) = setup(FakeStatus::default());
    let task = tokio::spawn(scenario(api));
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(&server, &ctx, |_| streaming),
    )
    .await
    .expect("the pass finished");
    let out = scenario_end(ctx, task).await;
    (result, out)
}

const CLUSTER_PATH: &str = "/apis/postgresql.cnpg.io/v1/namespaces/db/clusters/pg-main";

#[tokio::test]
async fn a_pass_merge_patches_the_cluster_with_its_resource_version_and_reports_it() {
    let (result, (received, event)) = run(with_password(), true, |mut api| {
        Box::pin(async move {
            api.expect("GET", CLUSTER_PATH).await.reply(200, &cnpg());
            let r = api.expect("PATCH", CLUSTER_PATH).await;
            let received = (r.content_type.clone(), r.query.clone(), r.body.clone());
            let mut after = cnpg();
            merge(&mut after, &r.body);
            r.reply(200, &after);
            let event = api.expect_event().await;
            (api, (received, event))
        })
    })
    .await;
    let (content_type, query, body) = received;
    assert_eq!(content_type, "application/merge-patch+json");
    assert!(query.contains("fieldManager=klio-operator"), "{query}");
    assert_eq!(body["metadata"]["resourceVersion"], "4711");
    assert_eq!(body["spec"]["managed"]["roles"][0]["name"], "klio");
    assert_eq!(
        body["spec"]["postgresql"]["synchronous"]["standbyNamesPre"],
        json!(["klio"])
    );
    assert_eq!(event, ("Normal".into(), "WiredCloudNativePG".into()));
    let report = result.unwrap().unwrap();
    assert_eq!(
        report.clusters[0].ok, None,
        "checked again on the next pass"
    );
    assert_eq!(report.clusters[0].reason, "Wiring");
}

#[tokio::test]
async fn a_conflicting_write_is_planned_again_and_a_missing_cluster_is_reported() {
    let (result, ()) = run(with_certificate(), true, |mut api| {
        Box::pin(async move {
            api.expect("GET", CLUSTER_PATH).await.reply(200, &cnpg());
            api.expect("PATCH", CLUSTER_PATH).await.reply(
                409,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Conflict", "code": 409,
                        "message": "the object has been modified"}),
            );
            (api, ())
        })
    })
    .await;
    let report = result.unwrap().unwrap();
    assert_eq!(
        (report.clusters[0].ok, report.clusters[0].reason.as_str()),
        (None, "Conflict")
    );

    let (result, ()) = run(with_certificate(), true, |mut api| {
        Box::pin(async move {
            api.expect("GET", CLUSTER_PATH).await.reply(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"}),
            );
            (api, ())
        })
    })
    .await;
    let report = result.unwrap().unwrap();
    assert_eq!(report.clusters[0].ok, Some(false));
    assert!(report.clusters[0]
        .message
        .contains("no CloudNativePG Cluster pg-main"));
}

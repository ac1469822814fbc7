//! The offload step against a mocked API server (`tower-test`), in the style of
//! `reconcile/tests.rs`: each scenario expects the step's requests in order, asserts
//! them, and answers as the API server (and CloudNativePG's objects) would.

use serde_json::{json, Value};

use super::*;
use crate::config::tests::full_standard;
use crate::reconcile::tests::{scenario_end, setup, ApiServer, FakeStatus, NS};
use crate::resources::tests::server as server_of;
use crate::ServerStatus;

// 2026-11-24T19:13:00Z.
const NOW: i64 = 1_795_547_580;
const SELECTOR: &str = "labelSelector=klio.io%2Fserver%3Dklio%2Cklio.io%2Fcluster%3Dpg-main";
const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-24 19:03:00 UTC\n\
                     LABEL: klio\nSTART TIMELINE: 1\n";

/// Base64 as CloudNativePG writes it (via `ByteString`'s serde, the decoder's mirror).
fn b64(text: &str) -> String {
    serde_json::to_value(ByteString(text.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn server(offload: SnapshotOffloadSpec, status: Option<ServerStatus>) -> Server {
    let mut spec = full_standard();
    spec.clusters.truncate(1);
    spec.clusters[0].snapshot_offload = Some(offload);
    let mut s = server_of(spec);
    s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(NOW - 7200).unwrap(),
    ));
    s.status = status;
    s
}

fn recorded(last_backup: &str) -> Option<ServerStatus> {
    Some(ServerStatus {
        snapshot_offloads: vec![SnapshotOffloadStatus {
            cluster: "pg-main".into(),
            last_backup: Some(last_backup.into()),
            last_success_time: Some("2026-11-24T18:00:00Z".into()),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix).unwrap().to_string()
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn cnpg_cluster(snapshots: bool) -> Value {
    let backup = if snapshots {
        json!({"volumeSnapshot": {"className": "csi-snapclass"}})
    } else {
        json!({"barmanObjectStore": {"destinationPath": "s3://x"}})
    };
    json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
           "metadata": {"name": "pg-main", "namespace": NS},
           "spec": {"instances": 3, "backup": backup}})
}

fn backup(name: &str, created: i64, phase: &str) -> Value {
    json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
           "metadata": {"name": name, "namespace": NS, "creationTimestamp": rfc3339(created),
                        "labels": {"klio.io/server": "klio", "klio.io/cluster": "pg-main"}},
           "spec": {"cluster": {"name": "pg-main"}, "method": "volumeSnapshot", "online": true},
           "status": {"phase": phase}})
}

fn job(backup: &str, condition: Option<&str>, claims: &str) -> Value {
    let conditions = match condition {
        Some(t) => {
            json!([{"type": t, "status": "True", "message": "BackoffLimitExceeded: pod failed"}])
        }
        None => json!([]),
    };
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": job_name(backup), "namespace": NS,
                        "labels": {"klio.io/server": "klio", "klio.io/cluster": "pg-main", "klio.io/backup": backup},
                        "annotations": {CLAIMS_ANNOTATION: claims}},
           "spec": {"template": {"spec": {"containers": []}}},
           "status": {"conditions": conditions}})
}

fn snapshot(
    name: &str,
    backup: &str,
    role: &str,
    tablespace: Option<&str>,
    label: Option<&str>,
    source: &str,
) -> Value {
    let mut annotations = json!({"cnpg.io/pvcRole": role});
    let mut labels = json!({"cnpg.io/backupName": backup});
    if let Some(t) = tablespace {
        labels["cnpg.io/tablespaceName"] = json!(t);
    }
    if let Some(l) = label {
        annotations["cnpg.io/backupLabelFile"] = json!(l);
    }
    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
           "metadata": {"name": name, "namespace": NS, "labels": labels, "annotations": annotations},
           "spec": {"source": {"persistentVolumeClaimName": source}, "volumeSnapshotClassName": "csi-snapclass"},
           "status": {"readyToUse": true, "restoreSize": "10Gi"}})
}

fn cnpg(path: &str) -> String {
    format!("/apis/postgresql.cnpg.io/v1/namespaces/{NS}/{path}")
}

fn pvcs(path: &str) -> String {
    format!("/api/v1/namespaces/{NS}/persistentvolumeclaims{path}")
}

fn snapshots_path(path: &str) -> String {
    format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots{path}")
}

fn jobs_path() -> String {
    format!("/apis/batch/v1/namespaces/{NS}/jobs")
}

impl ApiServer {
    /// The reads every pass of a cluster with snapshot support starts with.
    async fn serve_listing(&mut self, backups: Vec<Value>, jobs: Vec<Value>) {
        self.expect("GET", &cnpg("clusters/pg-main"))
            .await
            .reply(200, &cnpg_cluster(true));
        let r = self.expect("GET", &cnpg("backups")).await;
        assert_eq!(r.query.trim_start_matches('&'), SELECTOR);
        r.reply(200, &list(backups));
        let r = self.expect("GET", &jobs_path()).await;
        assert_eq!(r.query.trim_start_matches('&'), SELECTOR);
        r.reply(200, &list(jobs));
    }

    /// A create: answers with the body, returns it.
    async fn expect_create(&mut self, path: &str) -> Value {
        let r = self.expect("POST", path).await;
        let body = r.body.clone();
        r.reply(201, &body);
        body
    }

    async fn expect_delete(&mut self, path: &str) {
        let r = self.expect("DELETE", path).await;
        r.reply(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
    }
}

/// Runs one offload pass at `NOW` against `scenario`; fails on any request the
/// scenario did not expect.
async fn run<T: Send + 'static>(
    server: Server,
    scenario: impl FnOnce(ApiServer) -> futures_util::future::BoxFuture<'static, (ApiServer, T)>,
) -> (Option<Report>, T) {
    let (ctx, api) = setup(FakeStatus::default());
    let task = tokio::spawn(scenario(api));
    let pass = Pass {
        ctx: &ctx,
        image: "registry.example/klio:1.2",
        tls_ca: true,
        now: Timestamp::from_second(NOW).unwrap(),
    };
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(&server, &pass))
        .await
        .expect("the pass finished");
    let out = scenario_end(ctx, task).await;
    (result.expect("no API error"), out)
}

const B: &str = "klio-klio-pg-main-20261124190300";

#[tokio::test]
async fn a_due_schedule_creates_the_cnpg_volume_snapshot_backup() {
    let spec = SnapshotOffloadSpec {
        schedule: Some("0 * * * *".into()),
        ..Default::default()
    };
    // Created two hours ago, never backed up: the last hourly run is due.
    let (report, (body, event)) = run(server(spec.clone(), None), |mut api| {
        Box::pin(async move {
            api.serve_listing(vec![], vec![]).await;
            let body = api.expect_create(&cnpg("backups")).await;
            let event = api.expect_event().await;
            (api, (body, event))
        })
    })
    .await;
    assert_eq!(
        body,
        json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
               "metadata": {"name": "klio-klio-pg-main-20261124191300", "namespace": NS,
                            "labels": {"klio.io/server": "klio", "klio.io/cluster": "pg-main",
                                       "app.kubernetes.io/managed-by": "klio-operator"}},
               "spec": {"cluster": {"name": "pg-main"}, "method": "volumeSnapshot", "online": true}})
    );
    assert_eq!(event, ("Normal".into(), "SnapshotBackupStarted".into()));
    let report = report.unwrap();
    assert!(report.in_flight);
    assert_eq!(
        report.requeue(NOW, Duration::from_secs(60)),
        IN_FLIGHT_REQUEUE
    );

    // A Backup made after the last run (18:00 < 19:03): not due until 20:00.
    let (report, ()) = run(server(spec, recorded(B)), |mut api| {
        Box::pin(async move {
            api.serve_listing(vec![backup(B, NOW - 600, "completed")], vec![])
                .await;
            (api, ())
        })
    })
    .await;
    let report = report.unwrap();
    assert!(!report.in_flight);
    let eight_pm = NOW - 13 * 60 + 3600;
    assert_eq!(report.next_run, Some(eight_pm));
    assert_eq!(
        report.requeue(NOW, Duration::from_secs(3600)),
        Duration::from_secs(47 * 60)
    );
}

#[tokio::test]
async fn a_completed_backup_is_restored_into_claims_and_offloaded_by_a_job() {
    let spec = SnapshotOffloadSpec {
        run_as_user: Some(26),
        ..Default::default()
    };
    let (report, (claims, job, event)) = run(server(spec, recorded("older")), |mut api| {
        Box::pin(async move {
            api.serve_listing(vec![backup(B, NOW - 600, "completed")], vec![])
                .await;
            let r = api.expect("GET", &snapshots_path("")).await;
            assert_eq!(
                r.query.trim_start_matches('&'),
                format!("labelSelector=cnpg.io%2FbackupName%3D{B}")
            );
            r.reply(
                200,
                &list(vec![
                    snapshot(
                        &format!("{B}-wal"),
                        B,
                        "PG_WAL",
                        None,
                        None,
                        "pg-main-1-wal",
                    ),
                    snapshot(
                        &format!("{B}-tbs"),
                        B,
                        "PG_TABLESPACE",
                        Some("tbs1"),
                        None,
                        "pg-main-1-tbs-tbs1",
                    ),
                    snapshot(B, B, "PG_DATA", None, Some(&b64(LABEL)), "pg-main-1"),
                ]),
            );
            let mut claims = Vec::new();
            for source in ["pg-main-1", "pg-main-1-tbs-tbs1"] {
                api.expect("GET", &pvcs(&format!("/{source}"))).await.reply(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": source, "namespace": NS},
                            "spec": {"storageClassName": format!("class-of-{source}"),
                                     "accessModes": ["ReadWriteOnce"],
                                     "resources": {"requests": {"storage": "10Gi"}}}}),
                );
                claims.push(api.expect_create(&pvcs("")).await);
            }
            let job = api.expect_create(&jobs_path()).await;
            let event = api.expect_event().await;
            (api, (claims, job, event))
        })
    })
    .await;
    assert!(report.unwrap().in_flight);
    assert_eq!(event, ("Normal".into(), "OffloadStarted".into()));

    // Two claims, none for PG_WAL, each from its snapshot, sized and classed like it.
    assert_eq!(claims.len(), 2);
    for (claim, (name, snap, class)) in claims.iter().zip([
        (format!("{B}-pgdata"), B.to_string(), "class-of-pg-main-1"),
        (
            format!("{B}-tbs-tbs1"),
            format!("{B}-tbs"),
            "class-of-pg-main-1-tbs-tbs1",
        ),
    ]) {
        assert_eq!(claim["metadata"]["name"], name.as_str());
        assert_eq!(claim["metadata"]["labels"]["klio.io/backup"], B);
        assert_eq!(claim["metadata"]["ownerReferences"][0]["kind"], "Server");
        assert_eq!(
            claim["spec"]["dataSource"],
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snap})
        );
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(claim["spec"]["storageClassName"], class);
        assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    }

    assert_eq!(job["metadata"]["name"], format!("{B}-offload"));
    assert_eq!(job["metadata"]["labels"]["klio.io/backup"], B);
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "klio");
    assert_eq!(
        job["metadata"]["annotations"][CLAIMS_ANNOTATION],
        format!("{B}-pgdata,{B}-tbs-tbs1")
    );
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 86400);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["securityContext"]["runAsUser"], 26);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        pod["securityContext"]["fsGroup"].is_null(),
        "no ownership change"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/klio:1.2");
    assert_eq!(
        c["command"],
        json!([
            "klio",
            "offload",
            "--upload",
            "--from",
            "/var/lib/postgresql/data/pgdata",
            "--root",
            "/var/lib/postgresql",
            "--wait"
        ])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("KLIO_CLUSTER", "pg-main"),
            ("KLIO_SERVER", "https://klio.db.svc:7070"),
            ("KLIO_TOKEN_FILE", "/etc/klio/token/token"),
            ("KLIO_CACERT", "/etc/klio/ca/ca.crt"),
            ("KLIO_BACKUP_LABEL", LABEL),
        ])
    );
    // Volumes by name, and where each is mounted.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts: BTreeMap<&str, (&str, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                (m["name"].as_str().unwrap(), m["readOnly"] == true),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            ("/var/lib/postgresql/data", ("pgdata", true)),
            (
                "/var/lib/postgresql/tablespaces/tbs1",
                ("tablespace-1", true)
            ),
            ("/etc/klio/token", ("token", true)),
            ("/etc/klio/ca", ("ca", true)),
            ("/tmp", ("tmp", false)),
        ])
    );
    assert_eq!(
        volumes["pgdata"]["persistentVolumeClaim"],
        json!({"claimName": format!("{B}-pgdata"), "readOnly": true})
    );
    assert_eq!(
        volumes["tablespace-1"]["persistentVolumeClaim"]["claimName"],
        format!("{B}-tbs-tbs1")
    );
    assert_eq!(volumes["token"]["secret"]["secretName"], "pg-main-token");
    assert_eq!(
        volumes["token"]["secret"]["items"],
        json!([{"key": "token", "path": "token"}])
    );
    assert_eq!(
        volumes["ca"]["secret"],
        json!({"secretName": "klio-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}],
               "defaultMode": 0o444, "optional": false}),
        "only the CA of the TLS Secret, never its key"
    );

    // What the API server's schemas say of the claims and the Job (offline).
    validate_offline(&[&claims[0], &claims[1], &job]);
}

/// `kubernetes-validate --strict` over objects, as `lib.rs` validates the CRDs.
fn validate_offline(objects: &[&Value]) {
    let tool = std::env::var_os("KLIO_KUBERNETES_VALIDATE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let p = std::path::Path::new(&std::env::var_os("HOME")?)
                .join(".cache/klio-venv/bin/kubernetes-validate");
            p.is_file().then_some(p)
        })
        .unwrap_or_else(|| "kubernetes-validate".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offload-objects.yaml");
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect();
    std::fs::write(&path, yaml.join("---\n")).unwrap();
    let out = std::process::Command::new(&tool)
        .arg("--strict")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): bash scripts/setup.sh installs it",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(" passed ")).count(),
        objects.len(),
        "{text}"
    );
}

#[tokio::test]
async fn a_succeeded_job_has_its_claims_deleted_and_the_offload_recorded() {
    let claims = format!("{B}-pgdata,{B}-tbs-tbs1");
    let (report, event) = run(
        server(SnapshotOffloadSpec::default(), recorded("older")),
        move |mut api| {
            Box::pin(async move {
                api.serve_listing(
                    vec![backup(B, NOW - 600, "completed")],
                    vec![{
                        let mut j = job(B, Some("Complete"), &claims);
                        j["status"]["completionTime"] = json!("2026-11-24T19:12:30Z");
                        j
                    }],
                )
                .await;
                api.expect_delete(&pvcs(&format!("/{B}-pgdata"))).await;
                api.expect_delete(&pvcs(&format!("/{B}-tbs-tbs1"))).await;
                let event = api.expect_event().await;
                (api, event)
            })
        },
    )
    .await;
    assert_eq!(event, ("Normal".into(), "Offloaded".into()));
    let report = report.unwrap();
    assert!(!report.in_flight);
    assert_eq!(
        report.records,
        [SnapshotOffloadStatus {
            cluster: "pg-main".into(),
            last_backup: Some(B.into()),
            last_success_time: Some("2026-11-24T19:12:30Z".into()),
            ..Default::default()
        }]
    );
    let (status, reason, _) = report.condition();
    assert_eq!((status, reason.as_str()), ("True", "Offloaded"));

    // Written into the Server's status by the status step, and kept by a pass that
    // does not run the offload (pod not ready).
    let obs = crate::status::Observed {
        offload_enabled: true,
        offload: Some(report.clone()),
        ..Default::default()
    };
    let now = Timestamp::from_second(NOW).unwrap();
    let written = crate::status::build(&obs, None, now);
    assert_eq!(written.snapshot_offloads, report.records);
    let kept = crate::status::build(
        &crate::status::Observed {
            offload_enabled: true,
            ..Default::default()
        },
        Some(&written),
        now,
    );
    assert_eq!(kept.snapshot_offloads, report.records);
    assert!(kept
        .conditions
        .iter()
        .any(|c| c.type_ == "SnapshotOffload" && c.status == "True"));
}

#[tokio::test]
async fn a_failed_job_has_its_claims_deleted_and_its_error_reported() {
    let claims = format!("{B}-pgdata");
    let (report, event) = run(
        server(SnapshotOffloadSpec::default(), recorded("older")),
        move |mut api| {
            Box::pin(async move {
                api.serve_listing(
                    vec![backup(B, NOW - 600, "completed")],
                    vec![job(B, Some("Failed"), &claims)],
                )
                .await;
                api.expect_delete(&pvcs(&format!("/{B}-pgdata"))).await;
                let event = api.expect_event().await;
                (api, event)
            })
        },
    )
    .await;
    assert_eq!(event, ("Warning".into(), "OffloadFailed".into()));
    let report = report.unwrap();
    let r = &report.records[0];
    assert_eq!(r.last_backup.as_deref(), Some(B));
    assert!(r
        .last_error
        .as_deref()
        .unwrap()
        .contains("BackoffLimitExceeded"));
    let (status, reason, message) = report.condition();
    assert_eq!((status, reason.as_str()), ("False", "OffloadFailed"));
    assert!(
        message.contains(&format!("kubectl logs job/{B}-offload")),
        "{message}"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_two_and_deletes_the_older_with_their_snapshots() {
    let spec = SnapshotOffloadSpec {
        keep: Some(2),
        ..Default::default()
    };
    let names: Vec<String> = (1..=4)
        .map(|i| format!("klio-klio-pg-main-2026112{i}000000"))
        .collect();
    let newest = names[3].clone();
    let (report, deleted) = run(server(spec, recorded(&newest)), {
        let names = names.clone();
        move |mut api| {
            Box::pin(async move {
                let backups = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| backup(n, NOW - 86_400 * (5 - i as i64), "completed"))
                    .collect();
                api.serve_listing(backups, vec![]).await;
                let mut deleted = Vec::new();
                for b in &names[..2] {
                    let r = api.expect("GET", &snapshots_path("")).await;
                    assert_eq!(
                        r.query.trim_start_matches('&'),
                        format!("labelSelector=cnpg.io%2FbackupName%3D{b}")
                    );
                    r.reply(
                        200,
                        &list(vec![
                            snapshot(b, b, "PG_DATA", None, None, "pg-main-1"),
                            snapshot(
                                &format!("{b}-wal"),
                                b,
                                "PG_WAL",
                                None,
                                None,
                                "pg-main-1-wal",
                            ),
                        ]),
                    );
                    for s in [b.clone(), format!("{b}-wal")] {
                        api.expect_delete(&snapshots_path(&format!("/{s}"))).await;
                        deleted.push(s);
                    }
                    api.expect_delete(&cnpg(&format!("backups/{b}"))).await;
                    deleted.push(b.clone());
                }
                let event = api.expect_event().await;
                assert_eq!(event, ("Normal".into(), "SnapshotsPruned".into()));
                (api, deleted)
            })
        }
    })
    .await;
    assert!(!report.unwrap().in_flight);
    assert_eq!(
        deleted,
        [
            names[0].clone(),
            format!("{}-wal", names[0]),
            names[0].clone(),
            names[1].clone(),
            format!("{}-wal", names[1]),
            names[1].clone(),
        ]
    );
}

fn view(name: &str, created: i64, phase: Phase) -> BackupView {
    BackupView {
        name: name.into(),
        created,
        phase,
        error: None,
    }
}

#[test]
fn retention_never_takes_a_running_offload_the_newest_completed_or_one_in_progress() {
    use Phase::*;
    let day = 86_400;
    let backups = [
        view("b1", NOW - 9 * day, Completed),
        view("b2", NOW - 8 * day, Failed),
        view("b3", NOW - 7 * day, Completed),
        view("b4", NOW - 6 * day, Completed),
        view("b5", NOW - 5 * day, Completed),
        view("b6", NOW - day, InProgress),
    ];
    // keep 2: b1 and b3 go, and b2 (failed, older than the newest completed).
    assert_eq!(
        retention(&backups, 2, None, NOW, |_| false),
        ["b1", "b2", "b3"]
    );
    // b1's offload still runs: it stays.
    assert_eq!(
        retention(&backups, 2, None, NOW, |b| b == "b1"),
        ["b2", "b3"]
    );
    // maxAge 5.5 days: all but the newest completed (b5), which is older still.
    assert_eq!(
        retention(
            &backups,
            10,
            Some(5 * day as u64 + day as u64 / 2),
            NOW,
            |_| false
        ),
        ["b1", "b2", "b3", "b4"]
    );
    assert_eq!(
        retention(&backups, 10, Some(day as u64), NOW, |_| false),
        ["b1", "b2", "b3", "b4"],
        "the newest completed is kept however old"
    );
    // Nothing completed: nothing goes (not even failures).
    let failing = [view("f1", NOW - day, Failed), view("f2", NOW, InProgress)];
    assert!(retention(&failing, 1, Some(1), NOW, |_| false).is_empty());
}

#[tokio::test]
async fn a_cnpg_cluster_without_volume_snapshots_is_reported_and_not_backed_up() {
    let spec = SnapshotOffloadSpec {
        schedule: Some("* * * * *".into()),
        ..Default::default()
    };
    let mut s = server(spec, None);
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(OFFLOAD_NOW_ANNOTATION.into(), "now-please".into());
    let (report, ()) = run(s, |mut api| {
        Box::pin(async move {
            api.expect("GET", &cnpg("clusters/pg-main"))
                .await
                .reply(200, &cnpg_cluster(false));
            (api, ())
        })
    })
    .await;
    let report = report.unwrap();
    let (status, reason, message) = report.condition();
    assert_eq!((status, reason.as_str()), ("False", "NoSnapshotSupport"));
    assert!(
        message.contains(
            "the CloudNativePG Cluster pg-main has no spec.backup.volumeSnapshot (className): CloudNativePG cannot take volume snapshots for it"
        ),
        "{message}"
    );
    assert!(
        message.contains("set spec.backup.volumeSnapshot.className"),
        "{message}"
    );
    assert_eq!(
        report.records[0].offload_now_handled.as_deref(),
        Some("now-please"),
        "the request is answered, not kept for later"
    );
}

#[tokio::test]
async fn a_snapshot_without_its_backup_label_gets_no_job_and_is_reported() {
    let (report, event) = run(
        server(SnapshotOffloadSpec::default(), recorded("older")),
        |mut api| {
            Box::pin(async move {
                api.serve_listing(vec![backup(B, NOW - 600, "completed")], vec![])
                    .await;
                api.expect("GET", &snapshots_path("")).await.reply(
                    200,
                    &list(vec![
                        snapshot(B, B, "PG_DATA", None, None, "pg-main-1"),
                        snapshot(
                            &format!("{B}-wal"),
                            B,
                            "PG_WAL",
                            None,
                            None,
                            "pg-main-1-wal",
                        ),
                    ]),
                );
                let event = api.expect_event().await;
                (api, event)
            })
        },
    )
    .await;
    assert_eq!(event, ("Warning".into(), "NoBackupLabel".into()));
    let report = report.unwrap();
    assert!(!report.in_flight);
    let (status, reason, message) = report.condition();
    assert_eq!((status, reason.as_str()), ("False", "NoBackupLabel"));
    assert!(message.contains("cnpg.io/backupLabelFile"), "{message}");
    assert_eq!(report.records[0].last_backup.as_deref(), Some(B));
}

#[tokio::test]
async fn the_offload_now_annotation_starts_one_backup_once() {
    let mut s = server(SnapshotOffloadSpec::default(), recorded(B));
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(OFFLOAD_NOW_ANNOTATION.into(), "1".into());
    let listed = vec![backup(B, NOW - 600, "completed")];
    let (report, body) = run(s.clone(), {
        let listed = listed.clone();
        |mut api| {
            Box::pin(async move {
                api.serve_listing(listed, vec![]).await;
                let body = api.expect_create(&cnpg("backups")).await;
                api.expect_event().await;
                (api, body)
            })
        }
    })
    .await;
    assert_eq!(body["metadata"]["name"], "klio-klio-pg-main-20261124191300");
    let report = report.unwrap();
    assert_eq!(report.records[0].offload_now_handled.as_deref(), Some("1"));
    // The same value again (remembered in the status): nothing new.
    s.status.as_mut().unwrap().snapshot_offloads = report.records;
    let (report, ()) = run(s, |mut api| {
        Box::pin(async move {
            api.serve_listing(listed, vec![]).await;
            (api, ())
        })
    })
    .await;
    assert!(!report.unwrap().in_flight);
}

#[test]
fn names_fit_kubernetes_limits_and_peer_values_are_checked() {
    let long = "a".repeat(60);
    let b = backup_name(&long, "pg-main", NOW);
    assert!(b.len() <= MAX_BACKUP_NAME, "{b}");
    assert!(job_name(&b).len() <= 63);
    assert!(b.ends_with("-20261124191300"), "{b}");
    assert_ne!(
        b,
        backup_name(&format!("{long}b"), "pg-main", NOW),
        "hashed apart"
    );
    assert_eq!(
        backup_name("klio", "pg-main", NOW),
        "klio-klio-pg-main-20261124191300"
    );
    assert_eq!(label_value("klio"), "klio");
    let v = label_value(&"x.y".repeat(40));
    assert!(v.len() <= 63 && !v.contains('.'), "{v}");
    assert_eq!(decode_backup_label(&b64(LABEL)).as_deref(), Some(LABEL));
    assert_eq!(decode_backup_label("not base64!"), None);
    assert_eq!(
        decode_backup_label(&b64("rm -rf /")),
        None,
        "not a backup_label"
    );
    assert!(valid_tablespace("tbs_1"));
    for bad in ["", "..", "a/b", "x y", "t".repeat(64).as_str()] {
        assert!(!valid_tablespace(bad), "{bad}");
    }
}

/// The whole reconciler: the offload runs after the server's status was read, its
/// records go out with the status apply, and an offload in flight requeues sooner.
#[tokio::test]
async fn the_reconciler_runs_the_offload_before_writing_the_status() {
    use crate::reconcile::tests::{
        run as reconcile_run, secrets_for, serve_secrets, sts_path, with_finalizer,
    };
    use kube::runtime::controller::Action;

    let mut s = with_finalizer(server(SnapshotOffloadSpec::default(), None));
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(OFFLOAD_NOW_ANNOTATION.into(), "first".into());
    let spec = s.spec.clone();
    let secrets = secrets_for(&spec, "");
    let (result, (backup, status)) = reconcile_run(s, FakeStatus::default(), move |mut api| {
        Box::pin(async move {
            serve_secrets(&mut api, &spec, &secrets).await;
            api.expect("GET", &sts_path()).await.not_found();
            for path in [
                format!("/api/v1/namespaces/{NS}/configmaps/klio-config"),
                format!("/api/v1/namespaces/{NS}/services/klio"),
            ] {
                api.expect_apply(&path, Value::Null).await;
            }
            api.expect_apply(&sts_path(), json!({"replicas": 1, "readyReplicas": 1}))
                .await;
            assert_eq!(api.expect_event().await.1, "Created");
            api.serve_listing(vec![], vec![]).await;
            let backup = api.expect_create(&cnpg("backups")).await;
            assert_eq!(api.expect_event().await.1, "SnapshotBackupStarted");
            let status = api.expect_status().await;
            (api, (backup, status))
        })
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(IN_FLIGHT_REQUEUE));
    let name = backup["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("klio-klio-pg-main-"), "{name}");
    assert_eq!(status.snapshot_offloads.len(), 1);
    assert_eq!(
        status.snapshot_offloads[0].offload_now_handled.as_deref(),
        Some("first")
    );
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "SnapshotOffload")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("Unknown", "NoOffloadYet")
    );
}

#[tokio::test]
async fn a_failed_cnpg_backup_is_reported_once_with_its_cause() {
    for (error, reason) in [
        (
            "cannot find VolumeSnapshotClass csi-snapclass",
            "NoSnapshotSupport",
        ),
        ("pg_backup_start: connection refused", "BackupFailed"),
    ] {
        let mut failed = backup(B, NOW - 600, "failed");
        failed["status"]["error"] = json!(error);
        let listed = vec![failed];
        let (report, event) = run(server(SnapshotOffloadSpec::default(), recorded("older")), {
            let listed = listed.clone();
            |mut api| {
                Box::pin(async move {
                    api.serve_listing(listed, vec![]).await;
                    let event = api.expect_event().await;
                    (api, event)
                })
            }
        })
        .await;
        assert_eq!(event, ("Warning".into(), reason.into()));
        let report = report.unwrap();
        assert!(!report.in_flight);
        let (status, got, message) = report.condition();
        assert_eq!((status, got.as_str()), ("False", reason));
        assert!(message.contains(error) && message.contains(B), "{message}");
        // Recorded: the next pass neither reports it again nor retries it.
        let again = server(
            SnapshotOffloadSpec::default(),
            Some(ServerStatus {
                snapshot_offloads: report.records,
                ..Default::default()
            }),
        );
        let (report, ()) = run(again, |mut api| {
            Box::pin(async move {
                api.serve_listing(listed, vec![]).await;
                (api, ())
            })
        })
        .await;
        assert_eq!(report.unwrap().condition().1, reason);
    }
}

//! The lifecycle hooks' JSON patches against Pods and Jobs shaped as CloudNativePG
//! creates them (`tests/fixtures/`): compared with the golden files in `tests/golden/`
//! (rewrite them with `KLIO_UPDATE_GOLDEN=1` after an intended change and review the
//! diff), applied with an independent JSON-patch implementation, and the patched
//! objects validated offline against the Kubernetes schemas. EVALUATE gives the patch
//! CREATE gives, and a patched object needs no further patch (no needless rollout).

mod common;

use common::{crate_dir, fixture, validate_strictly};
use klio_cnpg_plugin::cluster::Cluster;
use klio_cnpg_plugin::lifecycle::{lifecycle_patch, SidecarSettings};
use klio_cnpg_plugin::proto::lifecycle::operator_operation_type::Type as OpType;
use serde_json::{json, Value};

fn settings() -> SidecarSettings {
    SidecarSettings {
        image: "ghcr.io/example/klio:0.1.0".into(),
    }
}

fn cluster(v: &Value) -> Cluster {
    serde_json::from_value(v.clone()).unwrap()
}

fn patch(op: OpType, c: &Value, object: &Value) -> Option<Value> {
    lifecycle_patch(&settings(), op, &cluster(c), object)
        .unwrap()
        .map(|p| serde_json::from_slice(&p).unwrap())
}

fn apply(object: &Value, p: &Value) -> Value {
    let p: json_patch::Patch = serde_json::from_value(p.clone()).unwrap();
    let mut out = object.clone();
    json_patch::patch(&mut out, &p).unwrap();
    out
}

/// Compares `actual` with `tests/golden/<name>` (or writes it with KLIO_UPDATE_GOLDEN=1).
fn golden(name: &str, actual: &Value) {
    let path = crate_dir().join("tests/golden").join(name);
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("KLIO_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with KLIO_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        text, expected,
        "{name} differs from the golden file; if intended, rerun with KLIO_UPDATE_GOLDEN=1 and review the diff"
    );
}

fn validate(name: &str, objects: &[&Value]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    let yaml: String = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(&file, yaml).unwrap();
    validate_strictly(&file, objects.len());
}

fn sidecar(spec: &Value) -> &Value {
    spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "klio-plugin")
        .expect("the sidecar is injected")
}

#[test]
fn instance_pod_gets_the_sidecar_and_no_needless_rollout() {
    let (c, pod) = (fixture("cluster.json"), fixture("pod.json"));
    let p = patch(OpType::Create, &c, &pod).expect("a patch");
    golden("pod-create.patch.json", &p);
    let patched = apply(&pod, &p);
    validate("pod", &[&pod, &patched]);

    let s = sidecar(&patched["spec"]);
    assert_eq!(s["args"], json!(["instance"]));
    assert_eq!(s["restartPolicy"], "Always");
    assert_eq!(s["image"], "ghcr.io/example/klio:0.1.0");
    let mounts = s["volumeMounts"].to_string();
    for m in [
        "/var/lib/postgresql/data",
        "/plugins",
        "/controller",
        "/etc/klio/credentials",
    ] {
        assert!(mounts.contains(m), "{m} mounted in the sidecar: {mounts}");
    }
    assert!(s["env"].to_string().contains("PGDATA"));
    let creds = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "klio-credentials")
        .unwrap();
    assert_eq!(creds["projected"]["defaultMode"], 0o400);
    assert_eq!(
        creds["projected"]["sources"][0]["secret"]["name"], "pg-main-klio",
        "the cluster's own Secret"
    );
    // PostgreSQL itself is untouched.
    assert_eq!(patched["spec"]["containers"], pod["spec"]["containers"]);

    // EVALUATE on a freshly built Pod gives what CREATE gave ...
    assert_eq!(patch(OpType::Evaluate, &c, &pod), Some(p));
    // ... and a Pod that has the sidecar needs nothing more.
    assert_eq!(patch(OpType::Evaluate, &c, &patched), None);
    assert_eq!(patch(OpType::Create, &c, &patched), None);
    // DELETE is not a mutation.
    assert_eq!(patch(OpType::Delete, &c, &pod), None);
}

#[test]
fn pod_without_the_plugins_volume_gets_it_and_a_changed_image_is_one_replace() {
    let c = fixture("cluster.json");
    let mut pod = fixture("pod.json");
    // A Pod of an operator that did not add /plugins yet.
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["name"] != "plugins");
    pod["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["name"] != "plugins");
    let p = patch(OpType::Create, &c, &pod).unwrap();
    golden("pod-without-plugins-volume.patch.json", &p);
    let patched = apply(&pod, &p);
    validate("pod-without-plugins", &[&patched]);
    assert!(patched["spec"]["containers"][0]["volumeMounts"]
        .to_string()
        .contains("/plugins"));
    assert_eq!(patch(OpType::Evaluate, &c, &patched), None);

    // A new sidecar image changes the sidecar's image only.
    let newer = SidecarSettings {
        image: "ghcr.io/example/klio:0.2.0".into(),
    };
    let p = lifecycle_patch(&newer, OpType::Evaluate, &cluster(&c), &patched)
        .unwrap()
        .unwrap();
    let p: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(
        p,
        json!([{"op": "replace", "path": "/spec/initContainers/1/image", "value": "ghcr.io/example/klio:0.2.0"}])
    );
}

#[test]
fn full_recovery_job_gets_the_restore_sidecar() {
    let (c, job) = (fixture("cluster.json"), fixture("job.json"));
    let p = patch(OpType::Create, &c, &job).expect("a patch");
    golden("job-create.patch.json", &p);
    let patched = apply(&job, &p);
    validate("job", &[&job, &patched]);
    let spec = &patched["spec"]["template"]["spec"];
    let s = sidecar(spec);
    assert_eq!(s["args"], json!(["restore"]));
    assert!(s["volumeMounts"]
        .to_string()
        .contains("/var/lib/postgresql/data"));
    let creds = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "klio-credentials")
        .unwrap();
    assert_eq!(
        creds["projected"]["sources"][0]["secret"]["name"], "pg-origin-klio",
        "the recovery source's Secret"
    );
    assert_eq!(patch(OpType::Create, &c, &patched), None);
}

#[test]
fn objects_the_plugin_does_not_concern_get_no_patch() {
    let (c, pod, job) = (
        fixture("cluster.json"),
        fixture("pod.json"),
        fixture("job.json"),
    );
    // Another job role (e.g. initdb).
    let mut initdb = job.clone();
    initdb["spec"]["template"]["metadata"]["labels"]["cnpg.io/jobRole"] = json!("initdb");
    assert_eq!(patch(OpType::Create, &c, &initdb), None);
    // A Cluster without the plugin.
    let mut plain = c.clone();
    plain["spec"]["plugins"] = json!([]);
    plain["spec"]["externalClusters"] = json!([]);
    assert_eq!(patch(OpType::Create, &plain, &pod), None);
    assert_eq!(patch(OpType::Create, &plain, &job), None);
    // The plugin disabled.
    let mut disabled = c.clone();
    disabled["spec"]["plugins"][0]["enabled"] = json!(false);
    assert_eq!(patch(OpType::Create, &disabled, &pod), None);
    // Another kind.
    assert_eq!(patch(OpType::Create, &c, &json!({"kind": "Service"})), None);
}

#[test]
fn bad_parameters_are_refused_with_the_parameter_named() {
    let mut c = fixture("cluster.json");
    c["spec"]["plugins"][0]["parameters"]["barmanObjectName"] = json!("x");
    let e = lifecycle_patch(
        &settings(),
        OpType::Create,
        &cluster(&c),
        &fixture("pod.json"),
    )
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("\"barmanObjectName\""),
        "{}",
        e.message()
    );
}

//! Checks of everything under `deploy/` that can be checked offline:
//! - the kustomize build of `deploy/overlays/example` (`kubectl kustomize`) passes
//!   `kubernetes-validate --strict`, and its Deployment is non-root, read-only, without
//!   capabilities, with probes on the operator's own `/healthz` and `/readyz`;
//! - its ClusterRole and leader-election Role grant exactly `RBAC_WATCHED_NAMESPACES`
//!   and `RBAC_OWN_NAMESPACE` (operator/src/lib.rs), bound to the operator's account;
//! - every example Server validates against the CRD's OpenAPI schema (Python's
//!   `jsonschema`, which `kubernetes-validate` depends on, with unknown fields refused
//!   as the API server's strict field validation does) and reads into the operator's
//!   `Server` type without losing a field (serde round trip);
//! - the Grafana dashboard parses and queries only metrics server/src/metrics.rs exports;
//! - the lean client and the operator (their Dockerfiles' builds) have no RocksDB in
//!   their dependency graph.
//!
//! `kubectl` and `kubernetes-validate` missing is a failure, not a skip.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

mod common;

use common::{
    documents, example_files, find, grants_of_manifest, grants_of_rules, kubernetes_validate,
    numbers_as_f64, root, Scratch,
};
use klio_operator::{Server, RBAC_OWN_NAMESPACE, RBAC_WATCHED_NAMESPACES};
use serde_json::Value;

/// The Python that runs `kubernetes-validate` (its script's `#!` line), which therefore
/// has `jsonschema` and `yaml`.
fn validator_python() -> PathBuf {
    let tool = kubernetes_validate();
    let path = if tool.components().count() > 1 {
        tool
    } else {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {}", tool.display())])
            .output()
            .expect("sh runs");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): install kubernetes-validate with `bash scripts/setup.sh`",
            path.display()
        )
    });
    let shebang = script.lines().next().unwrap_or_default();
    let python = shebang
        .strip_prefix("#!")
        .unwrap_or_else(|| panic!("{} has no #! line", path.display()));
    python
        .split_whitespace()
        .next()
        .expect("an interpreter")
        .into()
}

/// Runs a command; panics (the test fails) when it cannot start or does not succeed.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): it is required, not optional"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kustomize(dir: &str) -> String {
    let kubectl = std::env::var_os("KLIO_KUBECTL").unwrap_or_else(|| "kubectl".into());
    run(
        Command::new(kubectl).arg("kustomize").arg(root().join(dir)),
        "kubectl kustomize",
    )
}

#[test]
fn the_example_overlay_builds_and_validates_strictly() {
    let scratch = Scratch::new();
    let yaml = kustomize("deploy/overlays/example");
    let docs = documents(&yaml);
    let file = scratch.file("overlay.yaml", &yaml);
    let tool = kubernetes_validate();
    let text = run(
        Command::new(&tool).arg("--strict").arg(&file),
        "kubernetes-validate (install it with `bash scripts/setup.sh`)",
    );
    let passed = text.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(passed, docs.len(), "every object passes:\n{text}");
    let kinds: BTreeSet<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }

    // The CRD is the generated one.
    let crd = find(&docs, "CustomResourceDefinition", "servers.klio.io");
    let generated: Value = serde_yaml::from_str(&klio_operator::crd_yaml()).unwrap();
    assert!(
        numbers_as_f64(&crd["spec"]) == numbers_as_f64(&generated["spec"]),
        "the build's CRD is not the one operator/src/lib.rs generates"
    );

    // The Deployment: hardened, probes and ports as operator/src/main.rs serves them.
    let deploy = find(&docs, "Deployment", "klio-operator");
    assert_eq!(deploy["metadata"]["namespace"], "klio-system");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["serviceAccountName"], "klio-operator");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example.com/klio/klio-operator:0.1.0");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    let listen = env("KLIO_OPERATOR_LISTEN")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(listen.ends_with(&format!(":{port}")), "{listen} vs {port}");
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env("KLIO_SERVER_IMAGE")["value"],
        "registry.example.com/klio/klio:0.1.0"
    );
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
}

#[test]
fn the_rbac_is_exactly_what_the_operator_documents() {
    let docs = documents(&kustomize("deploy/overlays/example"));
    let roles: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 2, "one ClusterRole and one Role, no more");

    let cluster_role = find(&docs, "ClusterRole", "klio-operator");
    assert_eq!(
        grants_of_manifest(cluster_role),
        grants_of_rules(RBAC_WATCHED_NAMESPACES)
    );
    let leases = find(&docs, "Role", "klio-operator-leader-election");
    assert_eq!(leases["metadata"]["namespace"], "klio-system");
    assert_eq!(
        grants_of_manifest(leases),
        grants_of_rules(RBAC_OWN_NAMESPACE)
    );

    let subject = serde_json::json!([{
        "kind": "ServiceAccount", "name": "klio-operator", "namespace": "klio-system"
    }]);
    let crb = find(&docs, "ClusterRoleBinding", "klio-operator");
    assert_eq!(crb["subjects"], subject);
    assert_eq!(crb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(crb["roleRef"]["name"], "klio-operator");
    let rb = find(&docs, "RoleBinding", "klio-operator-leader-election");
    assert_eq!(rb["metadata"]["namespace"], "klio-system");
    assert_eq!(rb["subjects"], subject);
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(rb["roleRef"]["name"], "klio-operator-leader-election");
    let sa = find(&docs, "ServiceAccount", "klio-operator");
    assert_eq!(sa["metadata"]["namespace"], "klio-system");
}

/// True when every field of `sub` is in `sup` with the same value (lists element by
/// element): `sub` lost nothing on its way through `sup`.
fn contained(sub: &Value, sup: &Value, path: &str) -> Result<(), String> {
    match (sub, sup) {
        (Value::Object(a), Value::Object(b)) => a.iter().try_for_each(|(k, v)| match b.get(k) {
            Some(w) => contained(v, w, &format!("{path}.{k}")),
            None => Err(format!(
                "{path}.{k} is unknown (dropped by the Server type)"
            )),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, &format!("{path}[{i}]"))),
        _ if sub == sup => Ok(()),
        _ => Err(format!("{path}: {sub} became {sup}")),
    }
}

/// Validates YAML files of Servers against the CRD's `openAPIV3Schema` with Python's
/// `jsonschema`; `additionalProperties: false` is added to every object schema that
/// lists properties and does not preserve unknown fields, so unknown fields fail as
/// under the API server's strict field validation. Prints `ok <file>` per document.
const SCHEMA_CHECK: &str = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
# Every object has these; the API server adds them to a CRD's schema implicitly.
schema["properties"].update({
    "apiVersion": {"type": "string", "enum": [crd["spec"]["group"] + "/" + crd["spec"]["versions"][0]["name"]]},
    "kind": {"type": "string", "enum": [crd["spec"]["names"]["kind"]]},
    "metadata": {"type": "object"},
})
def strict(s):
    if isinstance(s, dict):
        if "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s.setdefault("additionalProperties", False)
        for v in s.values():
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
strict(schema)
validator = jsonschema.Draft4Validator(schema)
bad = 0
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc is None:
            continue
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            bad += 1
            print("FAIL %s: %s: %s" % (path, "/".join(map(str, e.path)), e.message))
        if not errors:
            print("ok %s" % path)
sys.exit(1 if bad else 0)
"#;

#[test]
fn the_example_servers_validate_against_the_crd_schema() {
    let files = example_files();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "same-namespace-1-to-1.yaml",
        "same-namespace-n-to-1.yaml",
        "other-namespace.yaml",
        "read-only-dr.yaml",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }

    let mut documents_seen = 0;
    for file in &files {
        for doc in documents(&std::fs::read_to_string(file).unwrap()) {
            documents_seen += 1;
            assert_eq!(doc["apiVersion"], "klio.io/v1alpha1", "{}", file.display());
            assert_eq!(doc["kind"], "Server", "{}", file.display());
            let server: Server = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let back = serde_json::to_value(&server).unwrap();
            if let Err(e) = contained(&doc, &back, "") {
                panic!("{}: {e}", file.display());
            }
        }
    }

    let crd = root().join("deploy/crds/klio.io_servers.yaml");
    let out = run(
        Command::new(validator_python())
            .args(["-c", SCHEMA_CHECK])
            .arg(&crd)
            .args(&files),
        "the CRD schema check (Python jsonschema)",
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        documents_seen,
        "{out}"
    );
}

#[test]
fn the_schema_check_refuses_an_unknown_field() {
    let scratch = Scratch::new();
    // The check above would be worthless if it let unknown fields through.
    let bad = scratch.file(
        "bad-server.yaml",
        "apiVersion: klio.io/v1alpha1\nkind: Server\nmetadata: {name: x}\n\
         spec:\n  masterKey: {name: k, key: master.key}\n  storage: {size: 1Gi}\n\
         \x20 clusters:\n  - name: pg\n    host: pg-rw\n    replicationSecrets: pg-replication\n\
         \x20   token: {name: t, key: token}\n",
    );
    let out = Command::new(validator_python())
        .args(["-c", SCHEMA_CHECK])
        .arg(root().join("deploy/crds/klio.io_servers.yaml"))
        .arg(&bad)
        .output()
        .expect("python runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("replicationSecrets"),
        "{text}"
    );
    let doc = documents(&std::fs::read_to_string(&bad).unwrap()).remove(0);
    let server: Server = serde_json::from_value(doc.clone()).unwrap();
    assert!(contained(&doc, &serde_json::to_value(&server).unwrap(), "").is_err());
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_server_exports() {
    let path = root().join("deploy/grafana/klio-server.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));

    let metrics_rs = std::fs::read_to_string(root().join("server/src/metrics.rs")).unwrap();
    let mut queried = BTreeSet::new();
    let mut exprs = 0;
    fn walk(v: &Value, f: &mut dyn FnMut(&str)) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => f(s),
                        _ => walk(v, f),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, f)),
            _ => {}
        }
    }
    walk(&dashboard, &mut |expr| {
        exprs += 1;
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(at) = expr[i..].find("klio_") {
            let start = i + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            queried.insert(expr[start..end].to_owned());
            i = end;
        }
    });
    assert!(exprs > 0, "no queries in the dashboard");
    for m in &queried {
        assert!(
            metrics_rs.contains(&format!("\"{m}\"")) || metrics_rs.contains(&format!("{m}{{")),
            "{m} is queried but server/src/metrics.rs does not export it"
        );
    }
    for needed in [
        "klio_wal_lag_bytes",
        "klio_wal_flushed_lsn_bytes",
        "klio_backups_complete",
        "klio_tier2_backlog_bytes",
        "klio_tier2_dead_letters",
        "klio_stored_bytes",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn the_helm_chart_carries_the_generated_crd_and_the_documented_rules() {
    let chart = root().join("deploy/helm/klio-operator");
    let crd = std::fs::read_to_string(chart.join("crds/klio.io_servers.yaml")).unwrap();
    assert!(
        crd == klio_operator::crd_yaml(),
        "deploy/helm/klio-operator/crds/klio.io_servers.yaml is stale: copy deploy/crds/klio.io_servers.yaml"
    );
    // The rules the chart grants in a ClusterRole or a Role: plain YAML in a define.
    let helpers = std::fs::read_to_string(chart.join("templates/_helpers.tpl")).unwrap();
    let start = helpers
        .find("define \"klio-operator.watchedRules\" -}}")
        .expect("the watchedRules define");
    let body = &helpers[start..];
    let body = &body[body.find('\n').unwrap()..body.find("{{- end -}}").unwrap()];
    let rules: Value = serde_yaml::from_str(body).expect("the rules are YAML");
    assert_eq!(
        grants_of_manifest(&serde_json::json!({ "rules": rules })),
        grants_of_rules(RBAC_WATCHED_NAMESPACES)
    );
}

/// The lean client image (`deploy/docker/client.Dockerfile`: `klio` without its default
/// `server` feature) and the operator's image are built without RocksDB, as their
/// Dockerfiles promise: the resolved dependency graph (`cargo tree`, offline, from
/// Cargo.lock) holds no `rocksdb` crate for either.
#[test]
fn the_lean_client_and_the_operator_do_not_depend_on_rocksdb() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for args in [
        &["-p", "klio", "--no-default-features"][..],
        &["-p", "klio-operator"][..],
    ] {
        let out = Command::new(&cargo)
            .current_dir(root())
            .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
            .args(args)
            .output()
            .expect("running cargo tree");
        assert!(
            out.status.success(),
            "cargo tree {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(tree.contains("klio-core"), "{args:?}: {tree}");
        let heavy: Vec<&str> = tree.lines().filter(|l| l.contains("rocksdb")).collect();
        assert!(heavy.is_empty(), "{args:?} pulls in RocksDB: {heavy:?}");
    }
    // The check itself sees RocksDB where it is.
    let out = Command::new(&cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            "klio",
        ])
        .output()
        .expect("running cargo tree");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rocksdb"));
}

/// `deploy/restore/restore-job.yaml` (the README's restore walk-through) validates
/// strictly, runs non-root with a read-only root filesystem, and calls `klio restore`
/// with the client's environment variables.
#[test]
fn the_restore_job_example_validates_strictly_and_runs_klio_restore_non_root() {
    let path = root().join("deploy/restore/restore-job.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let docs = documents(&yaml);
    let text = run(
        Command::new(kubernetes_validate())
            .arg("--strict")
            .arg(&path),
        "kubernetes-validate (install it with `bash scripts/setup.sh`)",
    );
    let passed = text.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(passed, docs.len(), "every object passes:\n{text}");
    let job = find(&docs, "Job", "pg-main-restore");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "restore");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let env: BTreeSet<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for var in [
        "KLIO_SERVER",
        "KLIO_CLUSTER",
        "KLIO_TOKEN_FILE",
        "KLIO_CACERT",
    ] {
        assert!(env.contains(var), "{var} missing: {env:?}");
    }
}

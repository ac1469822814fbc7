//! The checks of `deploy/` that need a renderer or a CEL evaluator, both from PyPI in the
//! virtualenv `scripts/setup.sh` fills (`~/.cache/klio-venv`):
//! - the Helm chart `deploy/helm/klio-operator`, rendered offline by
//!   `scripts/helm-render.py` (helm-python-sdk, no helm binary) with default values and
//!   with `rbac.scope=namespace` (and its ServiceMonitor), passes
//!   `kubernetes-validate --strict` and Helm's lint;
//! - what it renders carries the generated CRD, exactly the operator's documented RBAC
//!   rules in both scopes, and the kustomize base's Deployment (security contexts,
//!   probes, ports, environment) and Service;
//! - every example Server passes the CRD's CEL rules (`scripts/crd-cel-check.py`,
//!   cel-python), and variants of them that break each rule fail with its message.
//!
//! A missing tool is a failure, not a skip: `bash .ci/run` installs them all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{
    documents, example_files, find, grants_of_manifest, grants_of_rules, kubernetes_validate,
    numbers_as_f64, root, Scratch,
};
use klio_operator::{RBAC_OWN_NAMESPACE, RBAC_WATCHED_NAMESPACES};
use serde_json::{json, Value};

const CHART: &str = "deploy/helm/klio-operator";
const RELEASE: &str = "klio-operator";
const NAMESPACE: &str = "klio-system";

/// The virtualenv's Python, which must import `module`; the failure names the fix.
fn venv_python(module: &str, install: &str) -> PathBuf {
    let python = match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".cache/klio-venv/bin/python"),
        None => panic!("HOME is unset: cannot find ~/.cache/klio-venv"),
    };
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import {module}: it is required, not optional; run `bash .ci/run`, or \
         `source scripts/setup.sh && {install}`",
        python.display()
    );
    python
}

fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): it is required, not optional"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must succeed; returns its standard output.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = output(cmd, what);
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn yaml_file(path: &str) -> Value {
    let mut docs = documents(&std::fs::read_to_string(root().join(path)).unwrap());
    assert_eq!(docs.len(), 1, "{path} holds one document");
    docs.remove(0)
}

fn kinds(docs: &[Value]) -> BTreeSet<(String, String)> {
    docs.iter()
        .map(|d| {
            let s = |v: &Value| v.as_str().unwrap().to_owned();
            (s(&d["kind"]), s(&d["metadata"]["name"]))
        })
        .collect()
}

/// The chart rendered by scripts/helm-render.py with `sets` (`helm --set` syntax) and
/// its CRDs: the YAML stream and its documents.
fn render(sets: &[&str]) -> (String, Vec<Value>) {
    let python = venv_python("helm_python", "klio_install_helm_renderer");
    let mut cmd = Command::new(python);
    cmd.arg("scripts/helm-render.py").arg(CHART).args([
        "--name",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ]);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let yaml = run(&mut cmd, &format!("scripts/helm-render.py with {sets:?}"));
    let docs = documents(&yaml);
    (yaml, docs)
}

/// The value sets the tests render: default values, the namespaced scope with the
/// ServiceMonitor, and the namespaced scope watching another namespace.
const SCOPES: &[&[&str]] = &[
    &[],
    &["rbac.scope=namespace,metrics.serviceMonitor.enabled=true"],
    &["rbac.scope=namespace,rbac.watchNamespace=databases"],
];

#[test]
fn the_chart_renders_and_validates_strictly_in_both_scopes() {
    let scratch = Scratch::new();
    for sets in SCOPES {
        let (yaml, docs) = render(sets);
        let file = scratch.file("chart.yaml", &yaml);
        let out = run(
            Command::new(kubernetes_validate())
                .arg("--strict")
                .arg(&file),
            "kubernetes-validate (run `bash .ci/run`, or \
             `source scripts/setup.sh && klio_install_kubernetes_validate`)",
        );
        // Kubernetes' schemas do not have prometheus-operator's ServiceMonitor: it is the
        // one object allowed to go unvalidated, and its shape is checked below.
        let monitors = docs
            .iter()
            .filter(|d| d["kind"] == "ServiceMonitor")
            .count();
        let passed = out.lines().filter(|l| l.contains(" passed ")).count();
        let unknown: Vec<_> = out
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        assert_eq!(
            passed + monitors,
            docs.len(),
            "{sets:?}: every object:\n{out}"
        );
        assert_eq!(unknown.len(), monitors, "{sets:?}:\n{out}");
        assert!(
            unknown.iter().all(|l| l.contains("kind ServiceMonitor")),
            "{sets:?}:\n{out}"
        );

        let want_monitor = sets
            .iter()
            .any(|s| s.contains("serviceMonitor.enabled=true"));
        assert_eq!(monitors, usize::from(want_monitor), "{sets:?}");
        if want_monitor {
            let sm = find(&docs, "ServiceMonitor", RELEASE);
            assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(sm["metadata"]["namespace"], NAMESPACE);
            let svc = find(&docs, "Service", &format!("{RELEASE}-metrics"));
            // It selects the metrics Service by its labels, in its namespace...
            let labels = svc["metadata"]["labels"].as_object().unwrap();
            let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
            assert!(!selector.is_empty());
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "the Service lacks label {k}");
            }
            assert_eq!(svc["metadata"]["namespace"], NAMESPACE);
            // ...and scrapes its named port at /metrics.
            let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
            assert_eq!(endpoints.len(), 1);
            assert_eq!(endpoints[0]["port"], svc["spec"]["ports"][0]["name"]);
            assert_eq!(endpoints[0]["path"], "/metrics");
            assert!(endpoints[0]["interval"]
                .as_str()
                .is_some_and(|i| i.ends_with('s')));
            let keys: BTreeSet<_> = sm["spec"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, BTreeSet::from(["endpoints", "selector"]));
        }
    }
}

#[test]
fn the_chart_lints_without_error_and_lint_catches_a_broken_template() {
    let python = venv_python("helm_python", "klio_install_helm_renderer");
    for sets in SCOPES {
        let mut cmd = Command::new(&python);
        cmd.args(["scripts/helm-render.py", "--lint", CHART]);
        for s in *sets {
            cmd.arg("--set").arg(s);
        }
        let out = run(&mut cmd, &format!("helm lint with {sets:?}"));
        assert!(out.contains("1 chart(s) linted, 0 failing"), "{out}");
        assert!(!out.contains("[ERROR]"), "{out}");
    }

    // The lint is worth something only if it reports errors: a copy of the chart with a
    // template that cannot execute must fail it.
    let scratch = Scratch::new();
    let copy = scratch.path().join("klio-operator");
    std::fs::create_dir_all(copy.join("templates")).unwrap();
    std::fs::create_dir_all(copy.join("crds")).unwrap();
    for f in [
        "Chart.yaml",
        "values.yaml",
        "crds/klio.io_servers.yaml",
        "templates/_helpers.tpl",
        "templates/serviceaccount.yaml",
    ] {
        std::fs::copy(root().join(CHART).join(f), copy.join(f)).unwrap();
    }
    std::fs::write(
        copy.join("templates/broken.yaml"),
        "kind: ConfigMap\ndata:\n  x: {{ .Values.no.such.value }}\n",
    )
    .unwrap();
    let out = output(
        Command::new(&python)
            .args(["scripts/helm-render.py", "--lint"])
            .arg(&copy),
        "helm lint of a broken chart",
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("[ERROR]") && t.contains("broken.yaml"), "{t}");

    // A scope that is neither cluster nor namespace fails the render with the chart's
    // message.
    let out = output(
        Command::new(&python).args([
            "scripts/helm-render.py",
            CHART,
            "--set",
            "rbac.scope=everywhere",
        ]),
        "scripts/helm-render.py",
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("rbac.scope must be cluster or namespace"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_rendered_chart_is_the_operators_crd_and_rbac_and_the_bases_deployment() {
    let generated: Value = serde_yaml::from_str(&klio_operator::crd_yaml()).unwrap();
    let in_deploy = yaml_file("deploy/crds/klio.io_servers.yaml");
    assert!(
        numbers_as_f64(&in_deploy) == numbers_as_f64(&generated),
        "deploy/crds/klio.io_servers.yaml is stale: run crdgen"
    );

    // The base's objects (kustomize only adds labels and a namespace to them, so its
    // files are read as they are; operator/tests/deploy.rs checks the build itself).
    let kustomization = yaml_file("deploy/base/kustomization.yaml");
    let base: Vec<Value> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .filter(|r| r.ends_with(".yaml"))
        .map(|r| yaml_file(&format!("deploy/base/{r}")))
        .collect();
    let base_deploy = find(&base, "Deployment", "klio-operator");
    let base_pod = &base_deploy["spec"]["template"]["spec"];
    let base_c = &base_pod["containers"][0];

    for sets in SCOPES {
        let (_, docs) = render(sets);
        let crd = find(&docs, "CustomResourceDefinition", "servers.klio.io");
        assert!(
            numbers_as_f64(crd) == numbers_as_f64(&generated),
            "{sets:?}: the chart's CRD is not the generated one: copy deploy/crds/klio.io_servers.yaml"
        );

        // RBAC: the watched rules in a ClusterRole or a Role, never both; the Lease rules
        // in the release's namespace; every binding to the chart's ServiceAccount.
        let namespaced = sets.iter().any(|s| s.contains("rbac.scope=namespace"));
        let watched = sets
            .iter()
            .find_map(|s| {
                s.split(',')
                    .find_map(|kv| kv.strip_prefix("rbac.watchNamespace="))
            })
            .unwrap_or(NAMESPACE);
        let roles: Vec<_> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .collect();
        assert_eq!(roles.len(), 2, "{sets:?}: two roles, no more");
        let (watch_kind, binding_kind) = if namespaced {
            ("Role", "RoleBinding")
        } else {
            ("ClusterRole", "ClusterRoleBinding")
        };
        let role = find(&docs, watch_kind, RELEASE);
        assert_eq!(
            grants_of_manifest(role),
            grants_of_rules(RBAC_WATCHED_NAMESPACES),
            "{sets:?}"
        );
        let binding = find(&docs, binding_kind, RELEASE);
        if namespaced {
            assert_eq!(role["metadata"]["namespace"], watched);
            assert_eq!(binding["metadata"]["namespace"], watched);
            assert!(!docs
                .iter()
                .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"));
        } else {
            assert!(role["metadata"].get("namespace").is_none());
        }
        let leases = find(&docs, "Role", &format!("{RELEASE}-leader-election"));
        assert_eq!(leases["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            grants_of_manifest(leases),
            grants_of_rules(RBAC_OWN_NAMESPACE)
        );
        let subject = json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]);
        for (kind, name, role_kind) in [
            (binding_kind, RELEASE.to_owned(), watch_kind),
            ("RoleBinding", format!("{RELEASE}-leader-election"), "Role"),
        ] {
            let b = find(&docs, kind, &name);
            assert_eq!(b["subjects"], subject, "{kind} {name}");
            assert_eq!(b["roleRef"]["kind"], role_kind);
            assert_eq!(b["roleRef"]["name"], name.as_str());
        }
        assert_eq!(
            find(&docs, "ServiceAccount", RELEASE)["metadata"]["namespace"],
            NAMESPACE
        );

        // The same objects as the base (with the default scope), named alike.
        if !namespaced {
            let rendered: BTreeSet<_> = kinds(&docs)
                .into_iter()
                .filter(|(k, _)| k != "CustomResourceDefinition")
                .collect();
            assert_eq!(rendered, kinds(&base), "{sets:?}: the chart's objects");
        }

        // The Deployment: the base's pod and container, field for field where it matters.
        let deploy = find(&docs, "Deployment", RELEASE);
        assert_eq!(deploy["metadata"]["namespace"], NAMESPACE);
        let pod = &deploy["spec"]["template"]["spec"];
        for field in [
            "securityContext",
            "serviceAccountName",
            "enableServiceLinks",
        ] {
            assert_eq!(pod[field], base_pod[field], "{sets:?}: pod {field}");
        }
        let c = &pod["containers"][0];
        for field in [
            "name",
            "imagePullPolicy",
            "securityContext",
            "livenessProbe",
            "readinessProbe",
            "ports",
            "resources",
        ] {
            assert_eq!(
                numbers_as_f64(&c[field]),
                numbers_as_f64(&base_c[field]),
                "{sets:?}: container {field}"
            );
        }
        assert_eq!(c["image"], "klio-operator:0.1.0");
        // Every variable it sets is one the operator documents (operator/src/main.rs).
        let main_rs = std::fs::read_to_string(root().join("operator/src/main.rs")).unwrap();
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                main_rs.contains(&format!("//! - `{name}`")),
                "{name} is not an environment variable operator/src/main.rs documents"
            );
        }
        let mut env = c["env"].as_array().unwrap().clone();
        let watch = env
            .iter()
            .position(|e| e["name"] == "KLIO_OPERATOR_WATCH_NAMESPACE");
        match watch {
            Some(i) => {
                assert!(namespaced, "{sets:?}: a watch namespace with a ClusterRole");
                assert_eq!(env.remove(i)["value"], watched);
            }
            None => assert!(!namespaced, "{sets:?}: a Role but every namespace watched"),
        }
        assert_eq!(&Value::Array(env), &base_c["env"], "{sets:?}: env");

        // The metrics Service: the base's ports, selecting the Deployment's pods.
        let svc = find(&docs, "Service", &format!("{RELEASE}-metrics"));
        let base_svc = find(&base, "Service", "klio-operator-metrics");
        assert_eq!(svc["spec"]["ports"], base_svc["spec"]["ports"]);
        let pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "the pods lack label {k}");
        }
    }
}

/// Runs scripts/crd-cel-check.py on the CRD in deploy/crds and `files`.
fn cel_check(files: &[PathBuf]) -> Output {
    let python = venv_python("celpy", "klio_install_cel");
    output(
        Command::new(python)
            .arg("scripts/crd-cel-check.py")
            .arg("deploy/crds/klio.io_servers.yaml")
            .args(files),
        "scripts/crd-cel-check.py",
    )
}

/// The CRD's root-level CEL rules.
fn crd_rules() -> Vec<String> {
    let crd = yaml_file("deploy/crds/klio.io_servers.yaml");
    let rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
        .as_array()
        .expect("the CRD has CEL rules")
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(!rules.is_empty());
    rules
}

#[test]
fn the_example_servers_pass_the_crds_cel_rules() {
    let files = example_files();
    assert!(files.len() >= 4, "{files:?}");
    let out = cel_check(&files);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let documents: usize = files
        .iter()
        .map(|f| documents(&std::fs::read_to_string(f).unwrap()).len())
        .sum();
    let ok = t.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(
        ok,
        documents * crd_rules().len(),
        "every rule on every Server:\n{t}"
    );
    assert!(t.contains(" 0 failed, 0 skipped"), "{t}");
}

fn example(name: &str) -> Value {
    yaml_file(&format!("deploy/examples/{name}"))
}

#[test]
fn servers_that_break_a_cel_rule_fail_with_its_message() {
    let scratch = Scratch::new();
    let rules = crd_rules();
    // The one rule a variant breaks, named by a part of it that no other rule has.
    let rule = |part: &str| -> String {
        let found: Vec<_> = rules.iter().filter(|r| r.contains(part)).collect();
        assert_eq!(found.len(), 1, "{part:?} names one rule of {rules:?}");
        found[0].clone()
    };
    let read_only = example("read-only-dr.yaml");
    let standard = example("same-namespace-1-to-1.yaml");
    let several = example("same-namespace-n-to-1.yaml");
    assert_eq!(read_only["spec"]["mode"], "read-only");
    assert!(several["spec"]["clusters"].as_array().unwrap().len() > 1);

    let mut variants: Vec<(&str, Value, String)> = Vec::new();
    let mut v = read_only.clone();
    v["spec"].as_object_mut().unwrap().remove("tier2").unwrap();
    variants.push(("read-only-without-tier2", v, rule("has(self.spec.tier2)")));
    let mut v = read_only.clone();
    v["spec"]["storage"] = json!({"size": "1Gi"});
    variants.push(("read-only-with-storage", v, rule("!has(self.spec.storage)")));
    let mut v = read_only.clone();
    v["spec"]["clusters"][0]["host"] = json!("pg-main-rw");
    variants.push(("read-only-with-host", v, rule("!has(c.host)")));
    let mut v = read_only.clone();
    v["spec"]["clusters"][0]["backupSchedule"] = json!("0 3 * * *");
    variants.push(("read-only-with-schedule", v, rule("!has(c.backupSchedule)")));
    let mut v = standard.clone();
    v["spec"]
        .as_object_mut()
        .unwrap()
        .remove("storage")
        .unwrap();
    variants.push((
        "standard-without-storage",
        v,
        rule("|| has(self.spec.storage)"),
    ));
    let mut v = several.clone();
    v["spec"].as_object_mut().unwrap().remove("mode");
    v["spec"]["clusters"][1]
        .as_object_mut()
        .unwrap()
        .remove("host")
        .unwrap();
    // No `mode`: the schema's default (standard) applies, as in the API server.
    variants.push(("standard-without-host", v, rule("all(c, has(c.host))")));
    let mut v = several.clone();
    let first = v["spec"]["clusters"][0]["name"].clone();
    v["spec"]["clusters"][2]["name"] = first;
    variants.push(("duplicate-cluster-names", v, rule("exists_one")));

    let offload = standard["spec"]["clusters"][0]["snapshotOffload"].clone();
    assert!(offload.is_object(), "the 1:1 example has snapshotOffload");
    let mut v = read_only.clone();
    v["spec"]["clusters"][0]["snapshotOffload"] = offload;
    variants.push((
        "read-only-with-snapshot-offload",
        v,
        rule("!has(c.snapshotOffload) || ((!has(self.spec.mode)"),
    ));
    let mut v = standard.clone();
    v["spec"]["clusters"][0]["name"] = json!("pg_main");
    variants.push((
        "snapshot-offload-of-a-name-no-cluster-can-have",
        v,
        rule("c.name.matches("),
    ));

    let covered: BTreeSet<_> = variants.iter().map(|(_, _, r)| r.clone()).collect();
    let all: BTreeSet<_> = rules.iter().cloned().collect();
    assert_eq!(
        covered, all,
        "a CEL rule of the CRD has no variant here that breaks it: add one"
    );

    for (name, server, broken) in &variants {
        let file = scratch.file(
            &format!("{name}.yaml"),
            &serde_yaml::to_string(server).unwrap(),
        );
        let out = cel_check(&[file]);
        let t = text(&out);
        assert!(!out.status.success(), "{name} passed:\n{t}");
        // Standard output only: the summary on standard error repeats the failures.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let failed: Vec<_> = stdout.lines().filter(|l| l.starts_with("FAIL ")).collect();
        let message = format!("failed rule: {broken}");
        assert_eq!(failed.len(), 1, "{name} breaks one rule:\n{t}");
        assert!(
            failed[0].ends_with(&format!(" self: {message}")),
            "{name}: {}",
            failed[0]
        );
        assert!(t.contains("1 failed"), "{t}");
    }
}

#[test]
fn the_cel_check_evaluates_rules_of_sub_schemas_and_refuses_what_it_cannot_parse() {
    let scratch = Scratch::new();
    // The Server CRD has rules on its root only; the checker also walks into fields,
    // list items and map values, as the API server does.
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: things.example.com}
spec:
  group: example.com
  names: {kind: Thing, plural: things}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: self.replicas <= 3
              message: at most three replicas
            - rule: self.replicas >= oldSelf.replicas
            properties:
              replicas: {type: integer, default: 1}
              items:
                type: array
                items:
                  type: object
                  x-kubernetes-validations:
                  - rule: self.size > 0
                    messageExpression: "'item ' + self.name + ' is empty'"
                  properties:
                    name: {type: string}
                    size: {type: integer}
              labels:
                type: object
                additionalProperties:
                  type: string
                  x-kubernetes-validations:
                  - rule: size(self) < 5
"#;
    let crd = scratch.file("thing-crd.yaml", crd);
    let thing = |spec: &str| {
        format!("apiVersion: example.com/v1\nkind: Thing\nmetadata: {{name: t}}\nspec: {spec}\n")
    };
    let python = venv_python("celpy", "klio_install_cel");
    let check = |name: &str, spec: &str| {
        let file = scratch.file(name, &thing(spec));
        let out = output(
            Command::new(&python)
                .arg("scripts/crd-cel-check.py")
                .arg(&crd)
                .arg(file),
            "scripts/crd-cel-check.py",
        );
        (out.status.code(), text(&out))
    };

    let (code, t) = check(
        "good.yaml",
        "{items: [{name: a, size: 1}], labels: {x: ab}}",
    );
    assert_eq!(code, Some(0), "{t}");
    // The defaulted replicas (1) is checked, one item, one label; oldSelf is skipped.
    assert!(t.contains("rules: 3 held, 0 failed, 1 skipped"), "{t}");
    assert!(t.contains("skip ") && t.contains("oldSelf"), "{t}");

    let (code, t) = check(
        "bad.yaml",
        "{replicas: 4, items: [{name: a, size: 1}, {name: b, size: 0}], labels: {x: abcdef}}",
    );
    assert_eq!(code, Some(1), "{t}");
    for want in [
        "FAIL ",
        "self.spec: at most three replicas",
        "self.spec.items[1]: item b is empty",
        "self.spec.labels['x']: failed rule: size(self) < 5",
        "rules: 1 held, 3 failed, 1 skipped",
    ] {
        assert!(t.contains(want), "no {want:?} in:\n{t}");
    }

    let unparsable = std::fs::read_to_string(&crd)
        .unwrap()
        .replace("size(self) < 5", "size(self) <");
    let crd2 = scratch.file("thing-crd-bad.yaml", &unparsable);
    let file = scratch.file("good2.yaml", &thing("{}"));
    let out = output(
        Command::new(&python)
            .arg("scripts/crd-cel-check.py")
            .arg(&crd2)
            .arg(file),
        "scripts/crd-cel-check.py",
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("cannot compile the rule at self.spec.labels[*]"),
        "{t}"
    );
}

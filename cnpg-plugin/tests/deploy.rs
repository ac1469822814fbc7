//! The operator-side manifest (`deploy/cnpg-plugin/manifest.yaml`): its built-in
//! objects validate strictly against the Kubernetes schemas (kubernetes-validate; the
//! cert-manager objects have no schema there and are checked field by field here), the
//! Service carries what CloudNativePG discovers plugins by, and the Deployment runs the
//! operator side with the Secrets the annotations name. Also: the plugin's dependency
//! graph has no RocksDB, OpenSSL or aws-lc (its image is the lean operator image).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{crate_dir, validate_strictly};
use klio_harness::k8s::{crd_schema_check, find, yaml_documents as documents};
use serde_json::Value;

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn the_operator_side_manifest_validates_and_wires_mtls() {
    let path = crate_dir().join("../deploy/cnpg-plugin/manifest.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let docs = documents(&yaml);
    let (builtin, cert_manager): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| {
        !d["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("cert-manager.io/")
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("builtin.yaml");
    std::fs::write(
        &file,
        builtin
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n"),
    )
    .unwrap();
    validate_strictly(&file, builtin.len());

    // cert-manager v1 objects, with only fields cert-manager knows.
    for d in &cert_manager {
        assert_eq!(d["apiVersion"], "cert-manager.io/v1");
        assert_eq!(d["metadata"]["namespace"], "cnpg-system");
        match d["kind"].as_str().unwrap() {
            "Issuer" => assert_eq!(keys(&d["spec"]), BTreeSet::from(["selfSigned"])),
            "Certificate" => {
                let allowed = BTreeSet::from([
                    "secretName",
                    "commonName",
                    "dnsNames",
                    "duration",
                    "renewBefore",
                    "isCA",
                    "usages",
                    "issuerRef",
                ]);
                assert!(keys(&d["spec"]).is_subset(&allowed), "{d}");
                assert_eq!(
                    d["spec"]["isCA"], false,
                    "a self-signed leaf, as CloudNativePG expects"
                );
                assert_eq!(
                    d["spec"]["issuerRef"]["name"],
                    "klio-cnpg-plugin-selfsigned"
                );
            }
            other => panic!("unexpected cert-manager kind {other}"),
        }
    }
    let server = find(&docs, "Certificate", "klio-cnpg-plugin-server");
    let client = find(&docs, "Certificate", "klio-cnpg-plugin-client");
    assert_eq!(server["spec"]["usages"], serde_json::json!(["server auth"]));
    assert_eq!(client["spec"]["usages"], serde_json::json!(["client auth"]));

    // The Service: what CloudNativePG discovers and dials.
    let svc = find(&docs, "Service", "klio-cnpg-plugin");
    assert_eq!(svc["metadata"]["namespace"], "cnpg-system");
    assert_eq!(
        svc["metadata"]["labels"]["cnpg.io/pluginName"],
        klio_cnpg_plugin::PLUGIN_NAME
    );
    let ann = &svc["metadata"]["annotations"];
    assert_eq!(
        ann["cnpg.io/pluginServerSecret"],
        server["spec"]["secretName"]
    );
    assert_eq!(
        ann["cnpg.io/pluginClientSecret"],
        client["spec"]["secretName"]
    );
    assert_eq!(ann["cnpg.io/pluginPort"], "9090");

    // The Deployment: the operator side, on that port, with both Secrets mounted where
    // its environment points, hardened.
    let deploy = find(&docs, "Deployment", "klio-cnpg-plugin");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
        "the Service selects the Deployment's Pods"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["command"][0], klio_cnpg_plugin::lifecycle::SIDECAR_BINARY);
    assert_eq!(c["args"][0], "operator");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    let env = |name: &str| -> String {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(env("KLIO_CNPG_LISTEN"), "0.0.0.0:9090");
    assert!(!env("KLIO_CNPG_SIDECAR_IMAGE").is_empty());
    let mount_of = |secret: &Value| -> String {
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == *secret)
            .unwrap_or_else(|| panic!("no volume of Secret {secret}"));
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == vol["name"])
            .unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let server_dir = mount_of(&server["spec"]["secretName"]);
    let client_dir = mount_of(&client["spec"]["secretName"]);
    assert_eq!(
        env("KLIO_CNPG_SERVER_CERT"),
        format!("{server_dir}/tls.crt")
    );
    assert_eq!(env("KLIO_CNPG_SERVER_KEY"), format!("{server_dir}/tls.key"));
    assert_eq!(
        env("KLIO_CNPG_CLIENT_CERT"),
        format!("{client_dir}/tls.crt")
    );
    // The operator's client key is not the plugin's to read.
    assert!(!yaml.contains("/tls/client/tls.key"));
}

#[test]
fn the_plugin_pulls_in_no_rocksdb_openssl_or_aws_lc() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(crate_dir().join(".."))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "-p",
            "klio-cnpg-plugin",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("klio-api"), "{tree}");
    let heavy: Vec<&str> = tree
        .lines()
        .filter(|l| {
            ["rocksdb", "openssl", "aws-lc", "klio-server"]
                .iter()
                .any(|h| l.contains(h))
        })
        .collect();
    assert!(heavy.is_empty(), "the plugin pulls in {heavy:?}");
}

/// `deploy/examples/cnpg-plugin/`: every object validates against CloudNativePG's own
/// CRDs (its schemas, with unknown fields refused), every plugin reference names this
/// plugin, and its parameters are ones the plugin accepts.
#[test]
fn the_cloudnativepg_examples_validate_against_its_crds_and_the_plugins_parameters() {
    let examples = crate_dir().join("../deploy/examples/cnpg-plugin");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let crds: Vec<_> = ["clusters", "backups", "scheduledbackups"]
        .iter()
        .map(|c| crate_dir().join(format!("tests/fixtures/crds/postgresql.cnpg.io_{c}.yaml")))
        .collect();
    let text = crd_schema_check(&crate_dir().join(".."), &crds, &files);

    let docs: Vec<Value> = files
        .iter()
        .flat_map(|f| documents(&std::fs::read_to_string(f).unwrap()))
        .collect();
    assert_eq!(
        text.lines().filter(|l| l.ends_with(": passed")).count(),
        docs.len(),
        "{text}"
    );
    let kinds: BTreeSet<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["Backup", "Cluster", "ScheduledBackup"])
    );

    let mut plugins = Vec::new();
    for d in &docs {
        for p in d["spec"]["plugins"].as_array().into_iter().flatten() {
            plugins.push(p.clone());
        }
        for e in d["spec"]["externalClusters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            plugins.push(e["plugin"].clone());
        }
        if d["spec"]["method"] == "plugin" {
            assert_eq!(
                d["spec"]["pluginConfiguration"]["name"],
                klio_cnpg_plugin::PLUGIN_NAME
            );
        }
    }
    assert_eq!(plugins.len(), 2, "a Cluster's plugin and a recovery source");
    for p in plugins {
        assert_eq!(p["name"], klio_cnpg_plugin::PLUGIN_NAME);
        let params: std::collections::BTreeMap<String, String> =
            serde_json::from_value(p["parameters"].clone()).unwrap();
        klio_cnpg_plugin::params::KlioParams::parse(&params, "example")
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    // The restore reads from an external cluster served by the plugin.
    let restored = docs
        .iter()
        .find(|d| d["spec"]["bootstrap"]["recovery"].is_object())
        .expect("a Cluster bootstrapped from Klio");
    let source = &restored["spec"]["bootstrap"]["recovery"]["source"];
    assert!(restored["spec"]["externalClusters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| &e["name"] == source && e["plugin"]["name"] == klio_cnpg_plugin::PLUGIN_NAME));
}

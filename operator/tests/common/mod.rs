//! Helpers shared by the operator's offline checks of `deploy/` (`deploy.rs`,
//! `render.rs`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use klio_operator::RbacRule;
use serde_json::Value;

/// A temporary directory for a test's scratch files, removed when dropped (the tools
/// these tests run read files, not standard input).
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(tempfile::tempdir().expect("a temporary directory"))
    }

    /// Writes `content` to `name` in the directory; its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

pub fn root() -> PathBuf {
    klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub use klio_harness::k8s::{find, kubernetes_validate, yaml_documents as documents};

/// `v` with every number as a float: YAML writers disagree on `1` and `1.0`.
pub fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// (apiGroup, resource, verb) triples a set of rules grants.
pub fn grants_of_rules(rules: &[RbacRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for res in r.resources {
            for verb in r.verbs {
                out.insert((r.api_group.into(), (*res).into(), (*verb).into()));
            }
        }
    }
    out
}

pub fn grants_of_manifest(role: &Value) -> BTreeSet<(String, String, String)> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a list: {v}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let keys: BTreeSet<_> = rule.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["apiGroups", "resources", "verbs"]
                .map(String::from)
                .into_iter()
                .collect(),
            "no resourceNames, nonResourceURLs or wildcards beyond these keys: {rule}"
        );
        for g in strs(&rule["apiGroups"]) {
            for res in strs(&rule["resources"]) {
                for verb in strs(&rule["verbs"]) {
                    assert!(g != "*" && res != "*" && verb != "*", "wildcard in {rule}");
                    out.insert((g.clone(), res.clone(), verb));
                }
            }
        }
    }
    out
}

pub fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

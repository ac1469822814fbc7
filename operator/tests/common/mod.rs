//! Helpers shared by the operator's offline checks of `deploy/` (`deploy.rs`,
//! `render.rs`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use klio_operator::RbacRule;
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubernetes-validate` as the operator's CRD test finds it: `$KLIO_KUBERNETES_VALIDATE`,
/// else the virtualenv `scripts/setup.sh` fills, else `PATH`.
pub fn kubernetes_validate() -> PathBuf {
    if let Some(p) = std::env::var_os("KLIO_KUBERNETES_VALIDATE") {
        return p.into();
    }
    let venv = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/klio-venv/bin/kubernetes-validate"));
    match venv {
        Some(p) if p.is_file() => p,
        _ => "kubernetes-validate".into(),
    }
}

pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::from_value::<Value>(serde::Deserialize::deserialize(d).unwrap()))
        .collect::<Result<Vec<_>, _>>()
        .expect("valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the output"))
}

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

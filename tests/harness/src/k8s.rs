//! Offline checks of Kubernetes manifests shared by the operator's and the CloudNativePG
//! plugin's tests: where `kubernetes-validate` is, and YAML streams as JSON values.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `kubernetes-validate`: `$KLIO_KUBERNETES_VALIDATE`, else the virtualenv
/// `scripts/setup.sh` fills (`~/.cache/klio-venv`), else `PATH`.
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

/// The Python of the virtualenv `kubernetes-validate` lives in (it has `jsonschema` and
/// `yaml`), else `python3`.
pub fn venv_python() -> PathBuf {
    match kubernetes_validate().parent().map(|d| d.join("python")) {
        Some(p) if p.is_file() => p,
        _ => "python3".into(),
    }
}

/// Runs `scripts/crd-schema-check.py` (below `repo`, the repository's root): every
/// document of `objects` against the CRDs in `crds`, unknown fields refused. Returns
/// the script's report; panics (with it) unless every document passed. A missing tool
/// is a failure, not a skip.
pub fn crd_schema_check(repo: &Path, crds: &[PathBuf], objects: &[PathBuf]) -> String {
    let python = venv_python();
    let out = std::process::Command::new(&python)
        .arg(repo.join("scripts/crd-schema-check.py"))
        .args(crds)
        .arg("--")
        .args(objects)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install the venv with `bash scripts/setup.sh`",
                python.display()
            )
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "objects fail their CRDs' schemas:\n{text}"
    );
    text
}

/// The documents of a YAML stream, empty ones (`---` alone) left out; panics on YAML that
/// does not parse.
pub fn yaml_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::from_value::<Value>(serde::Deserialize::deserialize(d).unwrap()))
        .collect::<Result<Vec<_>, _>>()
        .expect("valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The object of `kind` named `name` among `docs`; panics if there is none.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the documents"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_documents_are_left_out() {
        let docs = yaml_documents("---\nkind: A\nmetadata: {name: a}\n---\n---\nkind: B\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(find(&docs, "A", "a")["kind"], "A");
    }
}

//! Helpers shared by the plugin's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use klio_harness::k8s::kubernetes_validate;

/// Validates the YAML/JSON documents in `file` strictly against the Kubernetes schemas;
/// panics (naming the tool's output) unless all `expected` documents pass. A missing
/// tool is a failure, not a skip.
pub fn validate_strictly(file: &Path, expected: usize) {
    let tool = kubernetes_validate();
    let out = Command::new(&tool)
        .arg("--strict")
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install kubernetes-validate with `bash scripts/setup.sh`",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} failed validation:\n{text}",
        file.display()
    );
    let passed = text.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(passed, expected, "every object passes:\n{text}");
}

pub fn crate_dir() -> PathBuf {
    klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> serde_json::Value {
    let p = crate_dir().join("tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

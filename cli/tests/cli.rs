//! The `klio` binary as PostgreSQL and operators run it, against a real HTTP server
//! built from `klio::http::router` over the in-memory registry.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use klio_api::ClusterStatusView;
use klio_server::auth::{ClusterToken, TokenSet};
use klio_server::http::{router, AppState};
use klio_server::registry::MemoryRegistry;

const TOKEN: &str = "cli-test-token-0123456789";
const SEG: &str = "000000010000000000000003";

struct Env {
    dir: tempfile::TempDir,
    base: String,
    payload: Vec<u8>,
}

async fn start() -> Env {
    let reg = Arc::new(MemoryRegistry::new());
    let cluster = "pg-main".parse().unwrap();
    reg.add_cluster(ClusterStatusView::connecting("pg-main".parse().unwrap()));
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    reg.put_wal(&cluster, SEG.parse().unwrap(), payload.clone());
    let tokens = TokenSet::new([(cluster, ClusterToken::parse(TOKEN, "test").unwrap())]);
    let app = router(AppState::new(reg, tokens));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    Env { dir, base, payload }
}

/// Runs `klio` with a clean KLIO_* environment plus the server, cluster and token.
async fn klio(env: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_klio"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KLIO_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("KLIO_SERVER", &env.base)
        .env("KLIO_CLUSTER", "pg-main")
        .env("KLIO_TOKEN_FILE", env.dir.path().join("token"))
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_restore_writes_the_file_and_exits_0() {
    let env = start().await;
    let dest = env.dir.path().join("RECOVERYXLOG");
    let out = klio(&env, &["wal-restore", SEG, path(&dest)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), env.payload);
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_restore_of_a_missing_file_exits_1_with_one_line() {
    let env = start().await;
    let dest = env.dir.path().join("RECOVERYXLOG");
    let out = klio(&env, &["wal-restore", "00000002.history", path(&dest)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "klio: 00000002.history not found on the server for cluster pg-main\n"
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_restore_of_a_bad_name_exits_2() {
    let env = start().await;
    let dest = env.dir.path().join("x");
    let out = klio(&env, &["wal-restore", "../../etc/passwd", path(&dest)]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid WAL file name"), "{err}");
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_table_or_json() {
    let env = start().await;
    let out = klio(&env, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("CLUSTER"), "{text}");
    assert!(text.contains("pg-main  connecting"), "{text}");

    let out = klio(&env, &["status", "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clusters"][0]["cluster"], "pg-main");

    let out = klio(&env, &["list", "wal", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"][0]["name"], SEG);
    assert_eq!(v["files"][0]["plain_size"], 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_generate_prints_a_usable_master_key() {
    let env = start().await;
    let out = klio(&env, &["keys", "generate"]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim_end();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(klio_core::MasterKey::from_bytes(hex.as_bytes()).is_some());
    let again = klio(&env, &["keys", "generate"]).await;
    assert_ne!(
        again.stdout,
        text.as_bytes(),
        "two generated keys are equal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_a_bad_config_exits_2_naming_the_key() {
    let env = start().await;
    std::fs::write(env.dir.path().join("short.token"), "tooshort\n").unwrap();
    let config = env.dir.path().join("klio.toml");
    std::fs::write(
        &config,
        "data_dir = \"d\"\nmaster_key_file = \"k\"\n[[cluster]]\nname = \"pg-main\"\n\
         conninfo = \"host=x\"\ntoken_file = \"short.token\"\n",
    )
    .unwrap();
    let out = klio(&env, &["server", "--config", path(&config)]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("cluster[0].token_file") && err.contains("klio.toml"),
        "{err}"
    );
}

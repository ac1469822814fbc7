//! Client tests against a real axum server on 127.0.0.1:0 built from `router()` over
//! the in-memory registry.

use super::*;
use klio_api::client::{Credentials, ATTEMPTS};
use klio_api::token::ClusterToken;
use klio_server::http::fixture::{fixture, TOKEN_A, TOKEN_B};
use klio_server::http::router;
use klio_server::registry::{MemoryRegistry, Registry};
use std::sync::Arc;

const SEG1: &str = "000000010000000000000001";

struct Server {
    reg: Arc<MemoryRegistry>,
    base: String,
    _task: tokio::task::JoinHandle<()>,
}

async fn server() -> Server {
    let (reg, state) = fixture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    Server {
        reg,
        base,
        _task: task,
    }
}

fn client(base: &str, token: &str) -> Client {
    Client::new(
        base,
        ClusterToken::parse(token, "t").unwrap(),
        "/etc/klio/test.token",
    )
    .unwrap()
}

fn pg_a() -> ClusterName {
    "pg-a".parse().unwrap()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn wal_restore_writes_exact_bytes_and_no_temp_file() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let n = fetch(&client(&s.base, TOKEN_A), &pg_a(), SEG1, &dest, None)
        .await
        .unwrap();
    let want = s
        .reg
        .read_wal(&pg_a(), &SEG1.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(n, want.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), want);
    assert_eq!(dir_entries(dir.path()), ["RECOVERYXLOG"]);
}

#[tokio::test]
async fn wal_restore_replaces_an_existing_destination() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYHISTORY");
    std::fs::write(
        &dest,
        b"stale contents that are longer than the new file......",
    )
    .unwrap();
    fetch(
        &client(&s.base, TOKEN_A),
        &pg_a(),
        "00000002.history",
        &dest,
        None,
    )
    .await
    .unwrap();
    assert!(std::fs::read(&dest).unwrap().starts_with(b"1\t0/3000000\t"));
    assert_eq!(dir_entries(dir.path()), ["RECOVERYHISTORY"]);
}

#[tokio::test]
async fn missing_wal_exits_1_and_leaves_no_destination() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let e = fetch(
        &client(&s.base, TOKEN_A),
        &pg_a(),
        "000000010000000000000042",
        &dest,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert_eq!(
        e.to_string(),
        "000000010000000000000042 not found on the server for cluster pg-a"
    );
    assert!(!dest.exists());
    assert!(dir_entries(dir.path()).is_empty());
    // 404 is final: asked once, not retried.
    assert_eq!(s.reg.data_calls(), 1);
}

#[tokio::test]
async fn other_clusters_token_is_a_403_error_naming_the_token_file() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let e = fetch(&client(&s.base, TOKEN_B), &pg_a(), SEG1, &dest, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    assert!(
        msg.contains("/etc/klio/test.token") && msg.contains("pg-a"),
        "{msg}"
    );
    assert!(!dest.exists());
}

#[tokio::test]
async fn wrong_token_is_a_401_error() {
    let s = server().await;
    let e = client(&s.base, "some-other-token-0123456789")
        .status()
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("--token-file"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[tokio::test]
async fn bad_wal_name_is_rejected_before_any_request() {
    // Nothing listens on port 1: any request would fail with a connection error.
    let c = client("http://127.0.0.1:1", TOKEN_A);
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "../../etc/passwd",
        "garbage",
        "000000010000000000000001.backup",
        "",
    ] {
        let dest = dir.path().join("RECOVERYXLOG");
        let e = fetch(&c, &pg_a(), bad, &dest, None).await.unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)), "{bad}: {e}");
        assert!(e.to_string().contains("invalid WAL file name"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
    assert!(dir_entries(dir.path()).is_empty());
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let s = server().await;
    s.reg.corrupt_wal(&pg_a(), SEG1.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let e = fetch(&client(&s.base, TOKEN_A), &pg_a(), SEG1, &dest, None)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert_eq!(
        e.to_string(),
        "the server answered 500: stored data failed verification"
    );
    assert_eq!(s.reg.data_calls(), ATTEMPTS as usize);
    assert!(!dest.exists());
}

#[tokio::test]
async fn unreachable_server_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = client(&base, TOKEN_A).status().await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(
        e.to_string().contains(&base) && e.to_string().contains("KLIO_SERVER"),
        "{e}"
    );
}

#[tokio::test]
async fn unwritable_destination_is_an_error() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("no-such-dir").join("RECOVERYXLOG");
    let e = fetch(&client(&s.base, TOKEN_A), &pg_a(), SEG1, &dest, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Io(_)), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[tokio::test]
async fn status_and_list_decode() {
    let s = server().await;
    let c = client(&s.base, TOKEN_A);
    let st = c.status().await.unwrap();
    assert_eq!(st.clusters.len(), 1);
    assert_eq!(st.clusters[0].cluster, pg_a());
    let list = c.list_wal(&pg_a()).await.unwrap();
    assert_eq!(list.files.len(), 2);
    assert_eq!(list.files[0].name.to_string(), SEG1);
    let e = c.list_wal(&"pg-b".parse().unwrap()).await.unwrap_err();
    assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
}

#[test]
fn bad_server_urls_are_usage_errors() {
    for url in ["localhost:7070", "ftp://x", "http://x/?a=b", ""] {
        let e = Client::new(url, ClusterToken::parse(TOKEN_A, "t").unwrap(), "t").unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)), "{url}: {e}");
    }
}

#[test]
fn write_atomically_rejects_a_path_without_file_name() {
    let e = write_atomically(Path::new("/"), b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn a_token_is_not_sent_in_clear_to_another_machine() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN_A).unwrap();
    let creds = Credentials {
        token_file: Some(token),
        ..Credentials::default()
    };
    for url in [
        "http://10.0.0.1:7070",
        "http://klio.example.com:7070",
        "http://localhost.example.com",
        "http://[fd00::2]:7070",
        "http://0.0.0.0:7070",
    ] {
        let e = Client::connect(url, &creds).unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)), "{url}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("--insecure-http") && text.contains("https://"),
            "{url}: {text}"
        );
        let allowed = Credentials {
            insecure_http: true,
            ..creds.clone()
        };
        Client::connect(url, &allowed).unwrap();
        Client::connect(&url.replace("http://", "https://"), &creds).unwrap();
    }
    for url in [
        "http://127.0.0.1:7070",
        "http://127.1.2.3:7070",
        "http://localhost:7070",
        "http://LocalHost",
        "http://[::1]:7070",
        "http://[::ffff:127.0.0.1]:7070",
    ] {
        Client::connect(url, &creds).unwrap();
    }
}

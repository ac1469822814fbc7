//! Router tests without a socket (`tower::ServiceExt::oneshot`) over [`MemoryRegistry`].

use super::fixture::{fixture, name, SEG1, TOKEN_A, TOKEN_B};
use super::*;
use crate::auth::ClusterToken;
use axum::body::{to_bytes, Body, Bytes};
use axum::http::HeaderMap;
use klio_api::{ErrorBody, StatusList, WalList};
use tower::ServiceExt;

async fn get(app: &Router, uri: &str, auth: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(uri);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    (status, headers, body)
}

fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

fn error_of(body: &Bytes) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not a JSON error body ({e}): {body:?}"))
        .error
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let (_, state) = fixture();
    let (s, _, body) = get(&router(state), "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn wal_file_is_served_byte_for_byte() {
    let (reg, state) = fixture();
    let app = router(state);
    let uri = format!("/v1/clusters/pg-a/wal/{SEG1}");
    let (s, h, body) = get(&app, &uri, bearer(TOKEN_A).as_deref()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[CONTENT_TYPE], "application/octet-stream");
    let want = reg
        .read_wal(&name("pg-a"), &SEG1.parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(&body[..], &want[..]);

    let (s, _, body) = get(
        &app,
        "/v1/clusters/pg-a/wal/00000002.history",
        bearer(TOKEN_A).as_deref(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.starts_with(b"1\t0/3000000"));
}

#[tokio::test]
async fn bad_wal_names_are_400_without_touching_the_registry() {
    let (reg, state) = fixture();
    let app = router(state);
    for bad in [
        "..%2F..%2Fetc%2Fpasswd",
        "garbage",
        "000000010000000000000001.backup",
        "00000001000000000000000a",
        "%2e%2e",
        "000000000000000000000001",
    ] {
        let uri = format!("/v1/clusters/pg-a/wal/{bad}");
        let (s, h, body) = get(&app, &uri, bearer(TOKEN_A).as_deref()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(h[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        assert!(error_of(&body).contains("invalid WAL file name"), "{bad}");
    }
    assert_eq!(reg.data_calls(), 0);
}

#[tokio::test]
async fn unstored_wal_is_404() {
    let (_, state) = fixture();
    let uri = "/v1/clusters/pg-a/wal/000000010000000000000009";
    let (s, _, body) = get(&router(state), uri, bearer(TOKEN_A).as_deref()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("not stored"));
}

#[tokio::test]
async fn unknown_cluster_is_404() {
    let (reg, state) = fixture();
    let app = router(state);
    for uri in [
        format!("/v1/clusters/pg-z/wal/{SEG1}"),
        "/v1/clusters/pg-z/wal".to_string(),
        "/v1/clusters/pg-z/status".to_string(),
        format!("/v1/clusters/..%2Fpg-a/wal/{SEG1}"),
        "/v1/clusters/PG-A/status".to_string(),
    ] {
        let (s, _, body) = get(&app, &uri, bearer(TOKEN_A).as_deref()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(error_of(&body).contains("unknown cluster"), "{uri}");
    }
    assert_eq!(reg.data_calls(), 0);
}

#[tokio::test]
async fn missing_or_malformed_token_is_401_with_challenge() {
    let (reg, state) = fixture();
    let app = router(state);
    let uri = format!("/v1/clusters/pg-a/wal/{SEG1}");
    let basic = format!("Basic {TOKEN_A}");
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer   "),
        Some(basic.as_str()),
        Some(TOKEN_A),
    ] {
        let (s, h, body) = get(&app, &uri, auth).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(h[WWW_AUTHENTICATE], "Bearer", "{auth:?}");
        assert!(error_of(&body).contains("Authorization"));
    }
    let (s, _, _) = get(&app, "/v1/status", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(reg.data_calls(), 0);
}

#[tokio::test]
async fn wrong_token_is_401() {
    let (reg, state) = fixture();
    let app = router(state);
    for uri in [format!("/v1/clusters/pg-a/wal/{SEG1}"), "/v1/status".into()] {
        let (s, h, body) = get(&app, &uri, bearer("not-a-token-0123456789").as_deref()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(h[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
        assert_eq!(error_of(&body), "invalid token");
    }
    // A token is matched whole, not by prefix.
    let (s, _, _) = get(&app, "/v1/status", bearer(&TOKEN_A[..20]).as_deref()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(reg.data_calls(), 0);
}

#[tokio::test]
async fn other_clusters_token_is_403_everywhere() {
    let (reg, state) = fixture();
    let app = router(state);
    for uri in [
        format!("/v1/clusters/pg-a/wal/{SEG1}"),
        "/v1/clusters/pg-a/wal".into(),
        "/v1/clusters/pg-a/status".into(),
        "/v1/clusters/pg-a/wal/garbage".into(),
    ] {
        let (s, _, body) = get(&app, &uri, bearer(TOKEN_B).as_deref()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(
            error_of(&body),
            "these credentials are not valid for cluster pg-a"
        );
    }
    assert_eq!(reg.data_calls(), 0);
}

#[tokio::test]
async fn not_ready_is_503_with_retry_after() {
    let (reg, state) = fixture();
    reg.set_ready(&name("pg-a"), false);
    let uri = format!("/v1/clusters/pg-a/wal/{SEG1}");
    let (s, h, body) = get(&router(state), &uri, bearer(TOKEN_A).as_deref()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[RETRY_AFTER], "5");
    assert!(error_of(&body).contains("not connected"));
}

#[tokio::test]
async fn corrupt_data_is_500_without_details() {
    let (reg, state) = fixture();
    reg.corrupt_wal(&name("pg-a"), SEG1.parse().unwrap());
    let uri = format!("/v1/clusters/pg-a/wal/{SEG1}");
    let (s, _, body) = get(&router(state), &uri, bearer(TOKEN_A).as_deref()).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_of(&body), "stored data failed verification");
}

#[tokio::test]
async fn list_wal_returns_json_in_name_order() {
    let (_, state) = fixture();
    let (s, _, body) = get(
        &router(state),
        "/v1/clusters/pg-a/wal",
        bearer(TOKEN_A).as_deref(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let list: WalList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.cluster, name("pg-a"));
    let names: Vec<String> = list.files.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(names, [SEG1, "00000002.history"]);
    assert_eq!(list.files[0].plain_size, 70_000);
}

#[tokio::test]
async fn cluster_status_is_json_with_text_lsns() {
    let (_, state) = fixture();
    let (s, _, body) = get(
        &router(state),
        "/v1/clusters/pg-a/status",
        bearer(TOKEN_A).as_deref(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["cluster"], "pg-a");
    assert_eq!(v["state"], "streaming");
    assert_eq!(v["flushed_lsn"], "0/30000000");
    assert_eq!(v["lag_bytes"], 512);
}

#[tokio::test]
async fn status_lists_only_the_tokens_clusters() {
    let (_, state) = fixture();
    let app = router(state);
    for (token, want) in [(TOKEN_A, "pg-a"), (TOKEN_B, "pg-b")] {
        let (s, _, body) = get(&app, "/v1/status", bearer(token).as_deref()).await;
        assert_eq!(s, StatusCode::OK);
        let list: StatusList = serde_json::from_slice(&body).unwrap();
        let names: Vec<&str> = list.clusters.iter().map(|c| c.cluster.as_str()).collect();
        assert_eq!(names, [want]);
    }
}

const METRICS_TOKEN: &str = "metrics-token-0123456789";

#[tokio::test]
async fn metrics_need_their_own_token() {
    let (_, state) = fixture();
    // Not configured: 401 naming the settings, nothing leaked.
    let (s, _, body) = get(&router(state.clone()), "/metrics", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("metrics_token_file") && !text.contains("klio_"),
        "{text}"
    );
    let app = router(state.clone().with_metrics(MetricsAccess::Token(
        ClusterToken::parse(METRICS_TOKEN, "test").unwrap(),
    )));
    let (s, _, _) = get(&app, "/metrics", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, body) = get(&app, "/metrics", Some(&format!("Bearer {TOKEN_A}"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(!String::from_utf8_lossy(&body).contains("klio_"));
    // With metrics_listen, the API does not serve them; the metrics router does.
    let addr: std::net::SocketAddr = "127.0.0.1:9187".parse().unwrap();
    let listen = state.with_metrics(MetricsAccess::Listen(addr));
    let (s, _, _) = get(&router(listen.clone()), "/metrics", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, body) = get(&metrics_router(listen.clone()), "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("klio_"));
    let (s, _, _) = get(
        &metrics_router(listen),
        "/v1/status",
        Some(&format!("Bearer {TOKEN_A}")),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[test]
fn one_verify_per_cluster_at_a_time() {
    let (_, state) = fixture();
    let a: ClusterName = "pg-a".parse().unwrap();
    let b: ClusterName = "pg-b".parse().unwrap();
    let first = VerifyGuard::take(&state, &a).unwrap();
    assert!(matches!(
        VerifyGuard::take(&state, &a),
        Err(ApiError::Conflict(_))
    ));
    let other = VerifyGuard::take(&state, &b).unwrap();
    drop(first);
    let again = VerifyGuard::take(&state, &a).unwrap();
    drop((again, other));
}

#[tokio::test]
async fn metrics_expose_every_series() {
    let (_, state) = fixture();
    let state = state.with_metrics(MetricsAccess::Token(
        ClusterToken::parse(METRICS_TOKEN, "test").unwrap(),
    ));
    let (s, h, body) = get(
        &router(state),
        "/metrics",
        Some(&format!("Bearer {METRICS_TOKEN}")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[CONTENT_TYPE], metrics::CONTENT_TYPE);
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "klio_wal_received_lsn_bytes{cluster=\"pg-a\"} 805306624",
        "klio_wal_flushed_lsn_bytes{cluster=\"pg-a\"} 805306368",
        "klio_primary_lsn_bytes{cluster=\"pg-a\"} 805306880",
        "klio_wal_lag_bytes{cluster=\"pg-a\"} 512",
        "klio_wal_segments_sealed_total{cluster=\"pg-a\"} 2",
        "klio_connection_state{cluster=\"pg-a\",state=\"streaming\"} 1",
        "klio_connection_state{cluster=\"pg-b\",state=\"connecting\"} 1",
        "klio_tier1_disk_full{cluster=\"pg-b\"} 0",
        "# HELP klio_wal_lag_bytes Bytes of WAL the primary has that are not yet durable on Tier 1.",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn unknown_endpoint_is_json_404() {
    let (_, state) = fixture();
    let (s, _, body) = get(&router(state), "/v2/whatever", bearer(TOKEN_A).as_deref()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such endpoint");
}

async fn post(app: &Router, uri: &str, auth: Option<&str>, body: &str) -> (StatusCode, Bytes) {
    let mut req = Request::post(uri).header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, to_bytes(resp.into_body(), 64 << 20).await.unwrap())
}

#[tokio::test]
async fn backup_start_list_get_and_conflict() {
    let (reg, state) = fixture();
    let app = router(state);
    let auth = bearer(TOKEN_A);
    let (s, body) = post(&app, "/v1/clusters/pg-a/backups", auth.as_deref(), "").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body:?}");
    let first: BackupView = serde_json::from_slice(&body).unwrap();
    assert_eq!(first.state, klio_api::BackupStateView::Running);

    // A second request while it runs: 409 naming the running backup.
    let (s, body) = post(
        &app,
        "/v1/clusters/pg-a/backups",
        auth.as_deref(),
        r#"{"label": "nightly"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        error_of(&body).contains(first.id.as_str()),
        "{}",
        error_of(&body)
    );

    reg.finish_backups(&name("pg-a"));
    let (s, body) = post(
        &app,
        "/v1/clusters/pg-a/backups",
        auth.as_deref(),
        r#"{"label": "nightly", "fast_checkpoint": false}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let second: BackupView = serde_json::from_slice(&body).unwrap();
    assert_eq!(second.label, "nightly");

    let (s, _, body) = get(&app, "/v1/clusters/pg-a/backups", auth.as_deref()).await;
    assert_eq!(s, StatusCode::OK);
    let list: BackupList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.backups.len(), 2);
    assert_eq!(list.backups[0].state, klio_api::BackupStateView::Complete);

    let uri = format!("/v1/clusters/pg-a/backups/{}", first.id);
    let (s, _, body) = get(&app, &uri, auth.as_deref()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<BackupView>(&body).unwrap().id,
        first.id
    );
    let (s, _, _) = get(
        &app,
        "/v1/clusters/pg-a/backups/20990101T000000Z",
        auth.as_deref(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn backup_requests_are_checked_before_the_registry() {
    let (reg, state) = fixture();
    let app = router(state);
    let before = reg.data_calls();
    // Wrong token, other cluster's token, bad JSON, unknown field, hostile id.
    let (s, _) = post(&app, "/v1/clusters/pg-a/backups", None, "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = post(
        &app,
        "/v1/clusters/pg-a/backups",
        bearer(TOKEN_B).as_deref(),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let auth = bearer(TOKEN_A);
    let (s, body) = post(&app, "/v1/clusters/pg-a/backups", auth.as_deref(), "{nope").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).contains("invalid JSON"),
        "{}",
        error_of(&body)
    );
    let (s, _) = post(
        &app,
        "/v1/clusters/pg-a/backups",
        auth.as_deref(),
        r#"{"lable": "x"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = get(
        &app,
        "/v1/clusters/pg-a/backups/..%2F..%2Fetc",
        auth.as_deref(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post(
        &app,
        "/v1/clusters/pg-a/verify",
        auth.as_deref(),
        r#"{"backup": "a/b"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, body) = post(&app, "/v1/clusters/pg-a/offloads", auth.as_deref(), "{}").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("from"), "{}", error_of(&body));
    assert_eq!(reg.data_calls(), before, "the registry was consulted");
}

#[tokio::test]
async fn offload_and_verify_reach_the_registry() {
    let (_, state) = fixture();
    let app = router(state);
    let auth = bearer(TOKEN_A);
    let (s, body) = post(
        &app,
        "/v1/clusters/pg-a/offloads",
        auth.as_deref(),
        r#"{"from": "relative/dir"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("absolute"), "{}", error_of(&body));
    let (s, body) = post(
        &app,
        "/v1/clusters/pg-a/offloads",
        auth.as_deref(),
        r#"{"from": "/snap/pgdata", "end_lsn": "0/3000000"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body:?}");
    let (s, body) = post(&app, "/v1/clusters/pg-a/verify", auth.as_deref(), "").await;
    assert_eq!(s, StatusCode::OK);
    assert!(serde_json::from_slice::<VerifyReport>(&body).unwrap().ok);
    let (s, _) = post(
        &app,
        "/v1/clusters/pg-a/verify",
        auth.as_deref(),
        r#"{"backup": "20990101T000000Z"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tier2_retry_without_tier2_is_a_conflict_naming_the_setting() {
    let (_, state) = fixture();
    let app = router(state);
    let auth = bearer(TOKEN_A);
    let (s, body) = post(&app, "/v1/clusters/pg-a/tier2/retry", auth.as_deref(), "").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("[tier2]"), "{}", error_of(&body));
    // A body that is not a retry request is refused before the registry is asked.
    let (s, _) = post(
        &app,
        "/v1/clusters/pg-a/tier2/retry",
        auth.as_deref(),
        r#"{"object": "x"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Another cluster's token: refused.
    let (s, _) = post(&app, "/v1/clusters/pg-b/tier2/retry", auth.as_deref(), "").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn openapi_document_describes_exactly_the_served_routes() {
    let (_, state) = fixture();
    let app = router(state);
    let (s, _, body) = get(&app, "/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    documented.sort();
    let mut served: Vec<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    served.sort();
    assert_eq!(documented, served);
    // Every listed route is really served (not the fallback).
    for route in ROUTES {
        let uri = route
            .replace("{cluster}", "pg-a")
            .replace("{walfile}", SEG1)
            .replace("{id}", "20260101T000001Z")
            .replace("{chunk}", &"ab".repeat(32));
        let auth = bearer(TOKEN_A);
        let (_, _, body) = get(&app, &uri, auth.as_deref()).await;
        if let Ok(e) = serde_json::from_slice::<ErrorBody>(&body) {
            assert_ne!(e.error, "no such endpoint", "{route} is not served");
        }
    }
}

#[tokio::test]
async fn the_error_body_schema_matches_the_wire_type() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let schema = &doc["components"]["schemas"]["Error"];
    let mut documented: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    documented.sort();
    let sent = serde_json::to_value(ErrorBody {
        error: "x".into(),
        permanent: Some(true),
    })
    .unwrap();
    let mut fields: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort();
    assert_eq!(documented, fields);
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, fields, "the server always sends every field");
}

/// An error's response: status, headers and JSON body (as raw text too).
async fn answer(e: ApiError) -> (StatusCode, HeaderMap, ErrorBody, String) {
    let resp = e.into_response();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let parsed: ErrorBody = serde_json::from_str(&text).unwrap();
    (status, headers, parsed, text)
}

#[tokio::test]
async fn every_error_kind_has_its_status_permanence_and_public_message() {
    use klio_basebackup::offload::OffloadError;
    use klio_basebackup::store::BackupStoreError;
    use klio_receiver::wal_store::StoreError;
    use std::path::PathBuf;
    let registry = |error: RegistryError| ApiError::Registry {
        cluster: name("pg-a"),
        error,
    };
    let secret_io = || std::io::Error::other("secret detail");
    let outside = OffloadError::OutsideRoots.to_string();
    let cases: Vec<(ApiError, StatusCode, bool, &str)> = vec![
        (
            ApiError::InvalidToken,
            StatusCode::UNAUTHORIZED,
            true,
            "invalid token",
        ),
        (
            ApiError::Forbidden(name("pg-b")),
            StatusCode::FORBIDDEN,
            true,
            "these credentials are not valid for cluster pg-b",
        ),
        (
            ApiError::NotFound("no such endpoint".into()),
            StatusCode::NOT_FOUND,
            true,
            "no such endpoint",
        ),
        (
            ApiError::BadRequest("bad name".into()),
            StatusCode::BAD_REQUEST,
            true,
            "bad name",
        ),
        (
            ApiError::Conflict("a verify runs".into()),
            StatusCode::CONFLICT,
            true,
            "a verify runs",
        ),
        (
            registry(RegistryError::NotReady),
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            "cluster pg-a has not connected to its primary yet; retry later",
        ),
        (
            registry(RegistryError::Conflict("one at a time".into())),
            StatusCode::CONFLICT,
            true,
            "one at a time",
        ),
        (
            registry(RegistryError::NotFound("no backup".into())),
            StatusCode::NOT_FOUND,
            true,
            "no backup",
        ),
        (
            registry(RegistryError::BadRequest("label".into())),
            StatusCode::BAD_REQUEST,
            true,
            "label",
        ),
        (
            registry(RegistryError::Forbidden("offload is disabled".into())),
            StatusCode::FORBIDDEN,
            true,
            "offload is disabled",
        ),
        (
            registry(OffloadError::OutsideRoots.into()),
            StatusCode::FORBIDDEN,
            true,
            &outside,
        ),
        (
            registry(OffloadError::NotPgdata(PathBuf::from("/snap")).into()),
            StatusCode::BAD_REQUEST,
            true,
            "/snap is not a PostgreSQL data directory (no PG_VERSION or global/pg_control)",
        ),
        (
            registry(
                BackupStoreError::BadObject {
                    path: PathBuf::from("/secret/pack"),
                    why: "secret detail".into(),
                }
                .into(),
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            true,
            "stored data failed verification",
        ),
        (
            registry(
                BackupStoreError::Io {
                    path: PathBuf::from("/secret/pack"),
                    source: secret_io(),
                }
                .into(),
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            "internal server error",
        ),
        (
            registry(
                StoreError::Corrupt {
                    path: PathBuf::from("/secret/000000010000000000000001"),
                    why: "secret detail".into(),
                }
                .into(),
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            true,
            "stored data failed verification",
        ),
        (
            registry(
                StoreError::Corrupt {
                    path: PathBuf::from("/secret/000000010000000000000002.partial"),
                    why: "secret detail".into(),
                }
                .into(),
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            "stored data failed verification",
        ),
        (
            registry(
                StoreError::Io {
                    path: PathBuf::from("/secret/wal"),
                    source: secret_io(),
                }
                .into(),
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            "internal server error",
        ),
        (
            registry(RegistryError::internal("secret context", secret_io())),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            "internal server error",
        ),
        (
            ApiError::Internal("secret detail".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            "internal server error",
        ),
    ];
    for (e, status, permanent, message) in cases {
        let what = format!("{e:?}");
        assert_eq!(e.status(), status, "{what}");
        assert_eq!(e.is_permanent(), permanent, "{what}");
        let (s, headers, body, text) = answer(e).await;
        assert_eq!(s, status, "{what}");
        assert_eq!(body.error, message, "{what}");
        assert_eq!(body.permanent, Some(permanent), "{what}");
        if s == StatusCode::INTERNAL_SERVER_ERROR {
            assert!(!text.contains("secret"), "a 500 leaks its detail: {text}");
        }
        assert_eq!(
            headers.contains_key(RETRY_AFTER),
            s == StatusCode::SERVICE_UNAVAILABLE,
            "{what}"
        );
    }
}

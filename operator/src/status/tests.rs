use serde_json::json;

use super::*;

/// A cluster's entry as the server sends it on `/v1/status`.
pub(crate) fn view(
    name: &str,
    state: &str,
    lag: u64,
    last_backup: Option<u64>,
    dead: u64,
) -> ClusterStatusView {
    serde_json::from_value(json!({
        "cluster": name,
        "system_id": "7300000000000000001",
        "state": state,
        "last_error": if state == "streaming" { None } else { Some("connection refused") },
        "lag_bytes": lag,
        "sealed_segments": 2,
        "disk_full": false,
        "backups": {"running": false, "complete": 1, "last_complete_at": last_backup,
                    "last_verify_ok": null, "last_verify_at": null},
        "tier2": {"location": "s3://b/p", "backlog_objects": 0, "backlog_bytes": 0,
                  "oldest_age_seconds": null, "dead_letters": dead, "last_upload_at": 1700000000,
                  "uploaded_objects": 3, "uploaded_bytes": 300, "upload_failures": 0}
    }))
    .expect("the wire format")
}

fn find<'a>(s: &'a ServerStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition in {:?}", s.conditions))
}

fn standard(clusters: Vec<(String, Result<ClusterStatusView, String>)>) -> Observed {
    Observed {
        generation: Some(7),
        mode: ServerMode::Standard,
        tier2: true,
        pod_ready: true,
        clusters,
        ..Default::default()
    }
}

const NOW: i64 = 1_750_000_000;

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

#[test]
fn the_status_comes_from_the_servers_report() {
    let obs = standard(vec![
        (
            "pg-main".into(),
            Ok(view("pg-main", "streaming", 256, Some(1_700_000_000), 0)),
        ),
        (
            "pg-b".into(),
            Ok(view("pg-b", "disconnected", 4096, Some(1_700_003_600), 0)),
        ),
    ]);
    let s = build(&obs, None, now());
    assert_eq!(s.observed_generation, Some(7));
    assert_eq!(find(&s, "Ready").status, "True");
    assert_eq!(find(&s, "Streaming-pg-main").status, "True");
    let b = find(&s, "Streaming-pg-b");
    assert_eq!(
        (b.status.as_str(), b.reason.as_str()),
        ("False", "Disconnected")
    );
    assert_eq!(b.message, "connection refused");
    let all = find(&s, "Streaming");
    assert_eq!(
        (all.status.as_str(), all.message.as_str()),
        ("False", "not streaming: pg-b")
    );
    assert_eq!(find(&s, "Tier2Reachable").status, "True");
    assert_eq!(s.last_backup_time.as_deref(), Some("2023-11-14T23:13:20Z"));
    assert_eq!(
        s.wal_lag_bytes,
        BTreeMap::from([("pg-b".into(), 4096), ("pg-main".into(), 256)])
    );
    assert!(s
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
    assert!(s
        .conditions
        .iter()
        .all(|c| c.last_transition_time == Time(now())));
}

#[test]
fn dead_letters_make_tier2_unreachable_and_an_unreadable_status_makes_the_server_not_ready() {
    let obs = standard(vec![
        (
            "pg-main".into(),
            Ok(view("pg-main", "streaming", 0, None, 2)),
        ),
        ("pg-b".into(), Err("401 Unauthorized".into())),
    ]);
    let s = build(&obs, None, now());
    let t2 = find(&s, "Tier2Reachable");
    assert_eq!(
        (t2.status.as_str(), t2.reason.as_str()),
        ("False", "DeadLetters")
    );
    let ready = find(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "StatusUnavailable")
    );
    assert!(
        ready.message.contains("pg-b: 401 Unauthorized"),
        "{}",
        ready.message
    );
    let b = find(&s, "Streaming-pg-b");
    assert_eq!(
        (b.status.as_str(), b.reason.as_str()),
        ("Unknown", "NoReport")
    );
    let all = find(&s, "Streaming");
    assert_eq!(
        (all.status.as_str(), all.message.as_str()),
        ("Unknown", "no report for: pg-b")
    );
    assert_eq!(s.last_backup_time, None);
}

#[test]
fn a_transition_time_is_kept_while_the_status_holds_and_renewed_when_it_changes() {
    let obs = standard(vec![(
        "pg-main".into(),
        Ok(view("pg-main", "streaming", 0, None, 0)),
    )]);
    let first = build(&obs, None, now());
    let later = Timestamp::from_second(NOW + 60).unwrap();
    let same = build(&obs, Some(&first), later);
    assert_eq!(find(&same, "Ready").last_transition_time, Time(now()));
    let down = standard(vec![(
        "pg-main".into(),
        Ok(view("pg-main", "connecting", 0, None, 0)),
    )]);
    let changed = build(&down, Some(&first), later);
    assert_eq!(
        find(&changed, "Streaming-pg-main").last_transition_time,
        Time(later)
    );
    assert_eq!(find(&changed, "Ready").last_transition_time, Time(now()));
}

#[test]
fn a_blocked_server_says_why_and_claims_nothing_else() {
    let obs = Observed {
        blocked: Some((
            "SecretMissing".into(),
            "Secret(s) not found: klio-keys".into(),
        )),
        ..standard(vec![])
    };
    let s = build(&obs, None, now());
    assert_eq!(s.conditions.len(), 1);
    let r = find(&s, "Ready");
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "SecretMissing")
    );
}

#[test]
fn a_read_only_server_has_no_streaming_conditions() {
    let obs = Observed {
        mode: ServerMode::ReadOnly,
        ..standard(vec![(
            "pg-main".into(),
            Ok(view("pg-main", "read_only", 0, None, 0)),
        )])
    };
    let s = build(&obs, None, now());
    assert!(s
        .conditions
        .iter()
        .all(|c| !c.type_.starts_with("Streaming")));
    assert_eq!(find(&s, "Ready").status, "True");
}

/// The real source, through `klio-api`'s client, against a stand-in for the server's
/// `/v1/status` on the loopback interface: it sends the cluster's token and keeps that
/// cluster's entry.
#[tokio::test]
async fn the_api_source_sends_the_clusters_token_and_picks_its_entry() {
    use axum::http::{HeaderMap, StatusCode};
    const TOKEN: &str = "pg-main-token-0123456789abcdef0123456789";
    let app = axum::Router::new().route(
        "/v1/status",
        axum::routing::get(|headers: HeaderMap| async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            if auth != Some(&format!("Bearer {TOKEN}")) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            Ok(axum::Json(json!({"clusters": [
                view("pg-other", "streaming", 1, None, 0),
                view("pg-main", "streaming", 42, Some(1_700_000_000), 0),
            ]})))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let target = |token: &str| StatusTarget {
        url: format!("http://{addr}"),
        cluster: "pg-main".into(),
        token: token.into(),
        ca_pem: None,
    };
    let v = ApiStatusSource
        .cluster_status(&target(TOKEN))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.cluster.as_str(), v.lag_bytes), ("pg-main", Some(42)));
    let refused = ApiStatusSource
        .cluster_status(&target("another-token-0123456789abcdef01234567"))
        .await
        .unwrap_err();
    assert!(
        refused.contains("401") || refused.to_lowercase().contains("unauthor"),
        "{refused}"
    );
}

#[test]
fn without_a_report_streaming_and_tier2_are_unknown_not_false() {
    let obs = Observed {
        pod_ready: false,
        ..standard(vec![(
            "pg-main".into(),
            Err("the server's pod is not ready".into()),
        )])
    };
    let s = build(&obs, None, now());
    assert_eq!(find(&s, "Ready").reason, "PodNotReady");
    for t in ["Streaming-pg-main", "Streaming", "Tier2Reachable"] {
        assert_eq!(find(&s, t).status, "Unknown", "{t}");
    }
}

use serde_json::json;

use super::*;
use crate::config::tests::{full_standard, read_only};
use crate::ServerSpec;

pub(crate) fn server(spec: ServerSpec) -> Server {
    let mut s = Server::new("klio", spec);
    s.metadata.namespace = Some("db".into());
    s.metadata.uid = Some("4a3c0d3e-0000-4000-8000-000000000001".into());
    s.metadata.generation = Some(3);
    s
}

fn pod_spec(sts: &StatefulSet) -> &PodSpec {
    sts.spec.template.spec.as_ref().unwrap()
}

fn klio_container(sts: &StatefulSet) -> &Container {
    pod_spec(sts)
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)
        .unwrap()
}

fn claim() -> ClaimTemplate {
    ClaimTemplate {
        size: "50Gi".into(),
        storage_class: Some("fast".into()),
    }
}

#[test]
fn the_template_is_merged_into_the_pod_without_detaching_it_from_its_stateful_set() {
    let mut spec = full_standard();
    spec.template = Some(json!({
        "metadata": {"labels": {"team": "db", "app.kubernetes.io/instance": "hijack"},
                     "annotations": {"klio.io/config-hash": "forged", "note": "x"}},
        "spec": {
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "backup", "effect": "NoSchedule"}],
            "nodeSelector": {"disk": "ssd"},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
            "containers": [{"name": "klio", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]
        }
    }));
    let s = server(spec);
    let sts = stateful_set(&s, "klio:test", "abc", Some(&claim())).unwrap();
    let tpl = &sts.spec.template;
    let pod = pod_spec(&sts);
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
    assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
    let c = klio_container(&sts);
    let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["memory"], Quantity("1Gi".into()));
    // What the operator generated is still there.
    assert_eq!(c.image.as_deref(), Some("klio:test"));
    assert!(c.readiness_probe.is_some());
    assert_eq!(pod.containers.len(), 1);
    let meta = tpl.metadata.as_ref().unwrap();
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "db");
    assert_eq!(labels["app.kubernetes.io/instance"], "klio");
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations[HASH_ANNOTATION], "abc");
    assert_eq!(annotations["note"], "x");
}

#[test]
fn an_invalid_template_is_a_spec_error() {
    let mut spec = full_standard();
    spec.template = Some(json!({"spec": {"containers": "not a list"}}));
    let e = stateful_set(&server(spec), "i", "h", Some(&claim())).unwrap_err();
    assert_eq!(e.field, "spec.template");
}

#[test]
fn a_standard_server_has_a_tier1_claim_template_that_is_retained() {
    let sts = stateful_set(&server(full_standard()), "i", "h", Some(&claim())).unwrap();
    let spec = &sts.spec;
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some(DATA_VOLUME));
    let pvc = claims[0].spec.as_ref().unwrap();
    assert_eq!(requested_storage(pvc), Some(&Quantity("50Gi".into())));
    assert_eq!(pvc.storage_class_name.as_deref(), Some("fast"));
    let policy = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(spec.replicas, Some(1));
    assert!(pod_spec(&sts)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .all(|v| v.name != DATA_VOLUME));
    assert_eq!(
        ClaimTemplate::from_stateful_set(&sts),
        Some(claim()),
        "the reconciler reads back what it wrote"
    );
}

#[test]
fn a_read_only_server_has_no_tier1_volume_only_an_empty_dir_for_its_catalog() {
    let sts = stateful_set(&server(read_only()), "i", "h", None).unwrap();
    assert!(sts.spec.volume_claim_templates.is_none());
    let data = pod_spec(&sts)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == DATA_VOLUME)
        .unwrap();
    assert!(data.empty_dir.is_some() && data.persistent_volume_claim.is_none());
}

#[test]
fn the_pod_is_non_root_with_a_read_only_root_and_read_only_secrets() {
    let sts = stateful_set(&server(full_standard()), "i", "h", Some(&claim())).unwrap();
    let pod = pod_spec(&sts);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.fs_group, Some(RUN_AS));
    let c = klio_container(&sts);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    let mounts = c.volume_mounts.as_ref().unwrap();
    for m in mounts {
        let writable = m.name == "tmp" || m.name == DATA_VOLUME;
        assert_eq!(m.read_only, Some(!writable), "{}", m.name);
    }
    let secrets = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "secrets")
        .unwrap();
    let projected = secrets.projected.as_ref().unwrap();
    assert_eq!(projected.default_mode, Some(0o440));
    let items: Vec<(String, String, String)> = projected
        .sources
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let s = s.secret.as_ref().unwrap();
            s.items
                .as_ref()
                .unwrap()
                .iter()
                .map(|i| (s.name.clone(), i.key.clone(), i.path.clone()))
        })
        .collect();
    assert!(items.contains(&("klio-keys".into(), "master.key".into(), "master.key".into())));
    assert!(items.contains(&(
        "s3-keys".into(),
        "secret".into(),
        "tier2/secret-access-key".into()
    )));
    assert!(items.contains(&(
        "s3-keys".into(),
        "ACCESS_KEY_ID".into(),
        "tier2/access-key-id".into()
    )));
    assert!(items.contains(&(
        "pg-main-replication".into(),
        "tls.key".into(),
        "clusters/pg-main/tls.key".into()
    )));
    assert_eq!(
        items.len(),
        config::secret_files(&server(full_standard()).spec).len()
    );
}

#[test]
fn probes_ask_healthz_over_the_api_scheme_or_a_tcp_connect_when_client_certs_are_required() {
    let https = stateful_set(&server(full_standard()), "i", "h", Some(&claim())).unwrap();
    let get = klio_container(&https)
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .clone()
        .unwrap();
    assert_eq!(get.path.as_deref(), Some("/healthz"));
    assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(get.port, IntOrString::String("api".into()));

    let http = stateful_set(&server(read_only()), "i", "h", None).unwrap();
    let get = klio_container(&http)
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .clone()
        .unwrap();
    assert_eq!(get.scheme.as_deref(), Some("HTTP"));

    let mut spec = full_standard();
    spec.tls.as_mut().unwrap().require_client_cert = true;
    let mtls = stateful_set(&server(spec), "i", "h", Some(&claim())).unwrap();
    let p = klio_container(&mtls).readiness_probe.clone().unwrap();
    assert!(p.http_get.is_none() && p.tcp_socket.is_some());
}

#[test]
fn a_password_comes_from_its_secret_and_is_expanded_into_the_conninfo_override() {
    let sts = stateful_set(&server(full_standard()), "i", "h", Some(&claim())).unwrap();
    let env = klio_container(&sts).env.clone().unwrap();
    assert_eq!(env[0].name, "KLIO_CLUSTER_PASSWORD_1");
    let sel = env[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (sel.name.as_str(), sel.key.as_str()),
        ("pg-other-pw", "password")
    );
    assert_eq!(env[1].name, "KLIO_CLUSTER_PG_OTHER_CONNINFO");
    assert!(env[1]
        .value
        .as_ref()
        .unwrap()
        .ends_with("password='$(KLIO_CLUSTER_PASSWORD_1)'"));
}

#[test]
fn every_object_is_owned_by_the_server_and_labelled() {
    let s = server(full_standard());
    let cm = config_map(&s).unwrap();
    let svc = service(&s);
    let sts = stateful_set(&s, "i", "h", Some(&claim())).unwrap();
    for meta in [&cm.metadata, &svc.metadata, &sts.metadata] {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "Server");
        assert_eq!(owner.name, "klio");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("db"));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "klio-operator"
        );
    }
    assert_eq!(cm.metadata.name.as_deref(), Some("klio-config"));
    assert!(cm.data.unwrap()["klio.toml"].contains("[[cluster]]"));
    assert_eq!(svc.spec.unwrap().selector.unwrap(), selector_labels(&s));
    assert_eq!(api_url(&s), "https://klio.db.svc:7070");
}

#[test]
fn the_rollout_hash_follows_the_config_and_every_secret_byte() {
    let config = BTreeMap::from([("klio.toml".to_string(), "a = 1".to_string())]);
    let secrets = |v: &[u8]| {
        BTreeMap::from([(
            "klio-keys".to_string(),
            BTreeMap::from([("master.key".to_string(), ByteString(v.to_vec()))]),
        )])
    };
    let h = rollout_hash(&config, &secrets(b"k1"));
    assert_eq!(h, rollout_hash(&config, &secrets(b"k1")), "stable");
    assert_eq!(h.len(), 32);
    assert_ne!(
        h,
        rollout_hash(&config, &secrets(b"k2")),
        "a Secret's content"
    );
    let other = BTreeMap::from([("klio.toml".to_string(), "a = 2".to_string())]);
    assert_ne!(
        h,
        rollout_hash(&other, &secrets(b"k1")),
        "the configuration"
    );
    // Length-prefixed fields: moving bytes between key and value changes the hash.
    let shifted = BTreeMap::from([(
        "klio-keys".to_string(),
        BTreeMap::from([("master.keyk".to_string(), ByteString(b"1".to_vec()))]),
    )]);
    assert_ne!(h, rollout_hash(&config, &shifted));
}

#[test]
fn quantities_are_read_in_bytes() {
    assert_eq!(quantity_bytes("50Gi"), Some(50 << 30));
    assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
    assert_eq!(quantity_bytes("100G"), Some(100_000_000_000));
    assert_eq!(quantity_bytes("1024"), Some(1024));
    assert_eq!(quantity_bytes("0.5k"), Some(500));
    assert!(quantity_bytes("51200Mi") > quantity_bytes("50Gi").map(|b| b - 1));
    assert_eq!(quantity_bytes("51200Mi"), quantity_bytes("50Gi"));
    assert_eq!(quantity_bytes("1e3"), None);
    assert_eq!(quantity_bytes("Gi"), None);
    assert_eq!(quantity_bytes("10Xi"), None);
}

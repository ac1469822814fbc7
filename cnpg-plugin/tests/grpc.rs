//! gRPC tests of every role's services, with a client generated from the same protos:
//! over a unix socket (the sidecars) and over TCP with mTLS (the operator side). The
//! operator side accepts only the trusted client certificate and only TLS 1.3; each role
//! advertises exactly the services it serves, and the others answer Unimplemented.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use klio_cnpg_plugin::identity::Role;
use klio_cnpg_plugin::lifecycle::{LifecycleService, SidecarSettings};
use klio_cnpg_plugin::proto::backup::backup_client::BackupClient;
use klio_cnpg_plugin::proto::backup::{BackupCapabilitiesRequest, BackupRequest};
use klio_cnpg_plugin::proto::identity::identity_client::IdentityClient;
use klio_cnpg_plugin::proto::identity::plugin_capability::service::Type as ServiceType;
use klio_cnpg_plugin::proto::identity::plugin_capability::Type as CapabilityType;
use klio_cnpg_plugin::proto::identity::{
    GetPluginCapabilitiesRequest, GetPluginMetadataRequest, ProbeRequest,
};
use klio_cnpg_plugin::proto::lifecycle::operator_lifecycle_client::OperatorLifecycleClient;
use klio_cnpg_plugin::proto::lifecycle::operator_operation_type::Type as OpType;
use klio_cnpg_plugin::proto::lifecycle::{
    OperatorLifecycleCapabilitiesRequest, OperatorLifecycleRequest, OperatorOperationType,
};
use klio_cnpg_plugin::proto::wal::restore_job_hooks_client::RestoreJobHooksClient;
use klio_cnpg_plugin::proto::wal::wal_capability::rpc::Type as WalRpc;
use klio_cnpg_plugin::proto::wal::wal_capability::Type as WalCap;
use klio_cnpg_plugin::proto::wal::wal_client::WalClient;
use klio_cnpg_plugin::proto::wal::{
    RestoreJobHooksCapabilitiesRequest, RestoreRequest, WalArchiveRequest, WalCapabilitiesRequest,
    WalRestoreRequest,
};
use klio_cnpg_plugin::server::{bind_unix, serve_tls, serve_unix};
use klio_cnpg_plugin::tls::TlsFiles;
use klio_cnpg_plugin::{backup, restore_job, wal, PLUGIN_NAME};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A self-signed leaf certificate and its key (PEM), as cert-manager's self-signed
/// Issuer makes them for CloudNativePG plugins.
struct Leaf {
    cert: String,
    key: String,
}

fn leaf(name: &str) -> Leaf {
    let k = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    Leaf {
        cert: k.cert.pem(),
        key: k.signing_key.serialize_pem(),
    }
}

const SERVER_NAME: &str = "klio-cnpg-plugin";

struct Operator {
    addr: std::net::SocketAddr,
    server: Leaf,
    client: Leaf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_operator() -> Operator {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = (leaf(SERVER_NAME), leaf("klio-cnpg-operator-client"));
    let w = |n: &str, s: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    let tls = TlsFiles {
        server_cert: w("server.crt", &server.cert),
        server_key: w("server.key", &server.key),
        client_cert: w("client.crt", &client.cert),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = klio_cnpg_plugin::operator_routes(LifecycleService::new(SidecarSettings {
        image: "example.com/klio:test".into(),
    }));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve_tls(routes, listener, tls, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Operator {
        addr,
        server,
        client,
        _dir: dir,
        stop: Some(stop),
    }
}

async fn mtls_channel(
    op: &Operator,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&op.server.cert))
        .domain_name(SERVER_NAME);
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{}", op.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn services(channel: Channel) -> Vec<ServiceType> {
    let caps = IdentityClient::new(channel)
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    caps.into_iter()
        .map(|c| match c.r#type {
            Some(CapabilityType::Service(s)) => ServiceType::try_from(s.r#type).unwrap(),
            None => panic!("a capability without a type"),
        })
        .collect()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn operator_side_serves_identity_and_lifecycle_over_mtls() {
    let op = start_operator().await;
    let channel = mtls_channel(&op, Some(&op.client)).await.unwrap();
    let meta = IdentityClient::new(channel.clone())
        .get_plugin_metadata(GetPluginMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, PLUGIN_NAME);
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(meta.license, "Apache-2.0");
    assert!(
        IdentityClient::new(channel.clone())
            .probe(ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        services(channel.clone()).await,
        vec![ServiceType::LifecycleService]
    );

    let mut lc = OperatorLifecycleClient::new(channel.clone());
    let caps = lc
        .get_capabilities(OperatorLifecycleCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .lifecycle_capabilities;
    let kinds: Vec<(String, String)> = caps
        .iter()
        .map(|c| (c.group.clone(), c.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![("".into(), "Pod".into()), ("batch".into(), "Job".into())]
    );
    let patch = lc
        .lifecycle_hook(OperatorLifecycleRequest {
            operation_type: Some(OperatorOperationType {
                r#type: OpType::Create as i32,
            }),
            cluster_definition: fixture("cluster.json"),
            object_definition: fixture("pod.json"),
        })
        .await
        .unwrap()
        .into_inner()
        .json_patch;
    let patch: serde_json::Value = serde_json::from_slice(&patch).unwrap();
    assert!(
        patch.to_string().contains("klio-cnpg-plugin"),
        "the patch injects the sidecar: {patch}"
    );

    // The operator side serves nothing of the sidecars.
    let e = WalClient::new(channel.clone())
        .get_capabilities(WalCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let e = BackupClient::new(channel)
        .get_capabilities(BackupCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

/// A connection that fails at the TLS handshake shows up at the first call at the
/// latest.
async fn refused(op: &Operator, identity: Option<&Leaf>) -> bool {
    match mtls_channel(op, identity).await {
        Err(_) => true,
        Ok(ch) => IdentityClient::new(ch)
            .probe(ProbeRequest {})
            .await
            .is_err(),
    }
}

#[tokio::test]
async fn operator_side_refuses_other_client_certificates_and_tls12() {
    let op = start_operator().await;
    assert!(
        !refused(&op, Some(&op.client)).await,
        "the trusted client is served"
    );
    let stranger = leaf("klio-cnpg-operator-client");
    assert!(
        refused(&op, Some(&stranger)).await,
        "another certificate with the same name"
    );
    assert!(refused(&op, None).await, "no client certificate");
    // The server's own certificate is not the client's either.
    let server_as_client = Leaf {
        cert: op.server.cert.clone(),
        key: op.server.key.clone(),
    };
    assert!(refused(&op, Some(&server_as_client)).await);

    // TLS 1.2 is refused even with the right certificates.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut op.server.cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut op.client.cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut op.client.key.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(op.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    assert!(r.is_err(), "a TLS 1.2 handshake must fail");
}

struct Sidecar {
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Sidecar {
    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join(PLUGIN_NAME)
    }

    fn pgdata(&self) -> std::path::PathBuf {
        self.dir.path().join("pgdata")
    }

    async fn channel(&self) -> Channel {
        klio_cnpg_plugin::unix_channel(&self.socket())
            .await
            .unwrap()
    }
}

async fn start_sidecar(role: Role) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    let wal = wal::WalService {
        credentials_dir: dir.path().join("credentials"),
        pgdata: pgdata.clone(),
        prefetch: 0,
        spool: None,
    };
    let routes = match role {
        Role::Instance => klio_cnpg_plugin::instance_routes(
            backup::BackupService {
                credentials_dir: dir.path().join("credentials"),
                instance: None,
            },
            wal,
        ),
        Role::Restore => klio_cnpg_plugin::restore_routes(
            restore_job::RestoreJobService {
                credentials_dir: dir.path().join("credentials"),
                pgdata,
                wal_restore_command: restore_job::DEFAULT_WAL_RESTORE_COMMAND.into(),
                jobs: 2,
            },
            wal,
        ),
        Role::Operator => unreachable!(),
    };
    let listener = bind_unix(&dir.path().join(PLUGIN_NAME)).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve_unix(routes, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Sidecar {
        dir,
        stop: Some(stop),
    }
}

/// A Cluster enabling the plugin with `params`, as its own and as recovery source.
fn cluster_json(params: &[(&str, &str)]) -> Vec<u8> {
    let params: BTreeMap<&str, &str> = params.iter().copied().collect();
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "pg", "namespace": "db"},
        "spec": {
            "plugins": [{"name": PLUGIN_NAME, "parameters": params}],
            "bootstrap": {"recovery": {"source": "origin"}},
            "externalClusters": [{"name": "origin", "plugin": {"name": PLUGIN_NAME, "parameters": params}}],
        },
        "status": {"currentPrimary": "pg-1"},
    }))
    .unwrap()
}

#[tokio::test]
async fn instance_sidecar_serves_identity_backup_and_wal_restore_on_its_socket() {
    let sc = start_sidecar(Role::Instance).await;
    let ch = sc.channel().await;
    assert_eq!(
        services(ch.clone()).await,
        vec![ServiceType::BackupService, ServiceType::WalService]
    );
    let caps = BackupClient::new(ch.clone())
        .get_capabilities(BackupCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(caps.len(), 1);
    // WAL: Restore only; Archive is not offered and not served.
    let wal_caps: Vec<WalRpc> = WalClient::new(ch.clone())
        .get_capabilities(WalCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .map(|c| match c.r#type {
            Some(WalCap::Rpc(r)) => WalRpc::try_from(r.r#type).unwrap(),
            None => panic!("no type"),
        })
        .collect();
    assert_eq!(wal_caps, vec![WalRpc::RestoreWal]);
    let e = WalClient::new(ch.clone())
        .archive(WalArchiveRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    // Not this role's services.
    let e = RestoreJobHooksClient::new(ch.clone())
        .get_capabilities(RestoreJobHooksCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let e = OperatorLifecycleClient::new(ch.clone())
        .get_capabilities(OperatorLifecycleCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);

    // An unknown parameter is refused by name before the server is contacted.
    let e = BackupClient::new(ch.clone())
        .backup(BackupRequest {
            cluster_definition: cluster_json(&[
                ("server", "http://127.0.0.1:1"),
                ("cluster", "pg"),
                ("secret", "pg-klio"),
                ("destinationPath", "s3://x"),
            ]),
            backup_definition: Vec::new(),
            parameters: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("\"destinationPath\""),
        "{}",
        e.message()
    );

    // A destination outside PGDATA is refused before anything is fetched or written.
    let good = cluster_json(&[
        ("server", "http://127.0.0.1:1"),
        ("cluster", "pg"),
        ("secret", "pg-klio"),
    ]);
    for dest in [
        "/etc/passwd".to_string(),
        format!("{}/../x", sc.pgdata().display()),
    ] {
        let e = WalClient::new(ch.clone())
            .restore(WalRestoreRequest {
                cluster_definition: good.clone(),
                source_wal_name: "000000010000000000000003".into(),
                destination_file_name: dest.clone(),
                parameters: Default::default(),
                mode: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{dest}: {}", e.message());
    }
    assert!(!Path::new("/etc/passwd.klio-tmp").exists());
    // A bad WAL name too.
    let e = WalClient::new(ch)
        .restore(WalRestoreRequest {
            cluster_definition: good,
            source_wal_name: "../../x".into(),
            destination_file_name: format!("{}/pg_wal/RECOVERYXLOG", sc.pgdata().display()),
            parameters: Default::default(),
            mode: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn restore_sidecar_serves_identity_restore_hooks_and_wal_restore() {
    let sc = start_sidecar(Role::Restore).await;
    let ch = sc.channel().await;
    assert_eq!(
        services(ch.clone()).await,
        vec![ServiceType::RestoreJob, ServiceType::WalService]
    );
    let caps = RestoreJobHooksClient::new(ch.clone())
        .get_capabilities(RestoreJobHooksCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(caps.len(), 1);
    let e = BackupClient::new(ch.clone())
        .get_capabilities(BackupCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    // Restore with a Cluster that does not recover through the plugin.
    let e = RestoreJobHooksClient::new(ch.clone())
        .restore(RestoreRequest {
            cluster_definition: br#"{"metadata":{"name":"pg"},"spec":{}}"#.to_vec(),
            check_empty_wal_archive: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("recovery.source"), "{}", e.message());
    // The Klio Server unreachable: Unavailable, and nothing written to PGDATA.
    let e = RestoreJobHooksClient::new(ch)
        .restore(RestoreRequest {
            cluster_definition: cluster_json(&[
                ("server", "http://127.0.0.1:1"),
                ("cluster", "pg"),
                ("secret", "pg-klio"),
            ]),
            check_empty_wal_archive: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::FailedPrecondition),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read_dir(sc.pgdata()).unwrap().count(),
        1,
        "only pg_wal"
    );
}

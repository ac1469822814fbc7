//! Unit tests of config parsing and validation: one per error path.

use super::*;
use std::collections::HashMap;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("a.token", "token-for-cluster-a-0123456789\n");
        f.write("b.token", "token-for-cluster-b-0123456789");
        f
    }

    /// Writes a file readable by its owner only (as secret files must be).
    fn write(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("klio.toml")
    }

    fn parse_env(&self, text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(text, &self.file(), |k| env.get(k).cloned())
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        self.parse_env(text, &[])
    }

    /// The error's key, asserting the message also names the file.
    fn err_key(&self, text: &str) -> (String, String) {
        let e = self.parse(text).expect_err("config should be rejected");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&self.file().display().to_string()),
            "error does not name the file: {shown}"
        );
        (e.key().unwrap_or("").to_string(), shown)
    }
}

const HEAD: &str = r#"
data_dir = "/var/lib/klio"
master_key_file = "/etc/klio/master.key"
"#;

fn cluster(name: &str, token: &str) -> String {
    format!(
        "[[cluster]]\nname = \"{name}\"\nconninfo = \"host=127.0.0.1 user=r\"\ntoken_file = \"{token}\"\n"
    )
}

fn with_clusters(extra: &str) -> String {
    format!(
        "{HEAD}{}{}{extra}",
        cluster("pg-a", "a.token"),
        cluster("pg-b", "b.token")
    )
}

#[test]
fn full_config_parses_with_defaults() {
    let f = Fixture::new();
    let c = f.parse(&with_clusters("")).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/klio"));
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.clusters.len(), 2);
    let a = &c.clusters[0];
    assert_eq!(a.name.as_str(), "pg-a");
    assert_eq!(a.slot, "klio");
    assert_eq!(a.application_name, "klio");
    assert_eq!(a.token.expose(), "token-for-cluster-a-0123456789");
    assert_eq!(a.token_file, f.dir.path().join("a.token"));
    let tokens = c.tokens();
    assert_eq!(
        tokens.authorize("token-for-cluster-b-0123456789"),
        vec![c.clusters[1].name.clone()]
    );
    assert!(!format!("{c:?}").contains("token-for-cluster"));
}

#[test]
fn explicit_values_are_kept() {
    let f = Fixture::new();
    let text = "data_dir = \"data\"\nlisten = \"0.0.0.0:9000\"\nmaster_key_file = \"m.key\"\nlog_format = \"json\"\n\
         [[cluster]]\nname = \"pg-a\"\nconninfo = \"host=x\"\nslot = \"klio_a\"\napplication_name = \"klio a\"\ntoken_file = \"a.token\"\n";
    let c = f.parse(text).unwrap();
    assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.data_dir, f.dir.path().join("data"));
    assert_eq!(c.master_key_file, f.dir.path().join("m.key"));
    assert_eq!(c.clusters[0].slot, "klio_a");
    assert_eq!(c.clusters[0].application_name, "klio a");
}

#[test]
fn env_overrides_win_and_empty_means_unset() {
    let f = Fixture::new();
    let c = f
        .parse_env(
            &with_clusters(""),
            &[
                ("KLIO_DATA_DIR", "/srv/klio"),
                ("KLIO_LISTEN", "127.0.0.1:8080"),
                ("KLIO_MASTER_KEY_FILE", "/run/secrets/mk"),
                ("KLIO_LOG_FORMAT", "json"),
                ("KLIO_CLUSTER_PG_B_CONNINFO", "host=other"),
                ("KLIO_CLUSTER_PG_A_CONNINFO", ""),
            ],
        )
        .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/srv/klio"));
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.master_key_file, PathBuf::from("/run/secrets/mk"));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.clusters[0].conninfo, "host=127.0.0.1 user=r");
    assert_eq!(c.clusters[1].conninfo, "host=other");
}

#[test]
fn env_can_supply_a_missing_key() {
    let f = Fixture::new();
    let text = "master_key_file = \"/k\"\n[[cluster]]\nname = \"pg-a\"\ntoken_file = \"a.token\"\n";
    let c = f
        .parse_env(
            text,
            &[
                ("KLIO_DATA_DIR", "/d"),
                ("KLIO_CLUSTER_PG_A_CONNINFO", "host=h"),
            ],
        )
        .unwrap();
    assert_eq!(c.clusters[0].conninfo, "host=h");
}

#[test]
fn bad_env_value_names_the_variable() {
    let f = Fixture::new();
    let e = f
        .parse_env(&with_clusters(""), &[("KLIO_LISTEN", "localhost")])
        .unwrap_err();
    assert_eq!(e.key(), Some("listen (KLIO_LISTEN)"));
    let e = f
        .parse_env(&with_clusters(""), &[("KLIO_LOG_FORMAT", "xml")])
        .unwrap_err();
    assert_eq!(e.key(), Some("log_format (KLIO_LOG_FORMAT)"));
}

#[test]
fn unknown_top_level_key_is_rejected_with_line() {
    let f = Fixture::new();
    let e = f
        .parse(&format!("{}\nlisten_addr = \"x\"\n", with_clusters("")))
        .unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, ConfigError::Parse { .. }), "{s}");
    assert!(s.contains("listen_addr"), "{s}");
    assert!(s.starts_with(&format!("{}:", f.file().display())), "{s}");
}

#[test]
fn unknown_cluster_key_is_rejected() {
    let f = Fixture::new();
    let e = f.parse(&with_clusters("slots = \"x\"\n")).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("slots"), "{s}");
    let ConfigError::Parse { line, .. } = e else {
        panic!("{s}")
    };
    assert_eq!(line, with_clusters("").lines().count() + 1, "{s}");
}

#[test]
fn toml_syntax_error_is_reported() {
    let f = Fixture::new();
    let e = f.parse("data_dir = \n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { line: 1, .. }), "{e}");
}

#[test]
fn missing_data_dir() {
    let f = Fixture::new();
    let text = format!("master_key_file = \"/k\"\n{}", cluster("pg-a", "a.token"));
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "data_dir");
    assert!(msg.contains("KLIO_DATA_DIR"), "{msg}");
}

#[test]
fn missing_master_key_file() {
    let f = Fixture::new();
    let text = format!("data_dir = \"/d\"\n{}", cluster("pg-a", "a.token"));
    assert_eq!(f.err_key(&text).0, "master_key_file");
}

#[test]
fn bad_listen_address() {
    let f = Fixture::new();
    let (key, msg) = f.err_key(&format!(
        "listen = \"localhost:7070\"\n{}",
        with_clusters("")
    ));
    assert_eq!(key, "listen");
    assert!(msg.contains("IP:PORT"), "{msg}");
}

#[test]
fn bad_log_format() {
    let f = Fixture::new();
    let (key, _) = f.err_key(&format!("log_format = \"yaml\"\n{}", with_clusters("")));
    assert_eq!(key, "log_format");
}

#[test]
fn no_cluster() {
    let f = Fixture::new();
    let (key, msg) = f.err_key(HEAD);
    assert_eq!(key, "cluster");
    assert!(msg.contains("at least one"), "{msg}");
}

#[test]
fn invalid_cluster_name() {
    let f = Fixture::new();
    let text = format!(
        "{HEAD}{}{}",
        cluster("pg-a", "a.token"),
        cluster("PG/B", "b.token")
    );
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "cluster[1].name");
    assert!(msg.contains("invalid cluster name"), "{msg}");
}

#[test]
fn missing_cluster_name() {
    let f = Fixture::new();
    let text = format!("{HEAD}[[cluster]]\nconninfo = \"h\"\ntoken_file = \"a.token\"\n");
    assert_eq!(f.err_key(&text).0, "cluster[0].name");
}

#[test]
fn duplicate_cluster_name() {
    let f = Fixture::new();
    let text = format!(
        "{HEAD}{}{}",
        cluster("pg-a", "a.token"),
        cluster("pg-a", "b.token")
    );
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "cluster[1].name");
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn missing_conninfo_names_the_env_var() {
    let f = Fixture::new();
    let text = format!("{HEAD}[[cluster]]\nname = \"pg-a\"\ntoken_file = \"a.token\"\n");
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "cluster[0].conninfo");
    assert!(msg.contains("KLIO_CLUSTER_PG_A_CONNINFO"), "{msg}");
}

#[test]
fn empty_conninfo() {
    let f = Fixture::new();
    let text =
        format!("{HEAD}[[cluster]]\nname = \"pg-a\"\nconninfo = \" \"\ntoken_file = \"a.token\"\n");
    assert_eq!(f.err_key(&text).0, "cluster[0].conninfo");
}

#[test]
fn bad_slot_name() {
    let f = Fixture::new();
    let (key, _) = f.err_key(&with_clusters("slot = \"Klio-Slot\"\n"));
    assert_eq!(key, "cluster[1].slot");
}

#[test]
fn bad_application_name() {
    let f = Fixture::new();
    let (key, _) = f.err_key(&with_clusters("application_name = \"\"\n"));
    assert_eq!(key, "cluster[1].application_name");
}

#[test]
fn missing_token_file_key() {
    let f = Fixture::new();
    let text = format!("{HEAD}[[cluster]]\nname = \"pg-a\"\nconninfo = \"h\"\n");
    assert_eq!(f.err_key(&text).0, "cluster[0].token_file");
}

#[test]
fn unreadable_token_file() {
    let f = Fixture::new();
    let text = format!("{HEAD}{}", cluster("pg-a", "nope.token"));
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "cluster[0].token_file");
    assert!(
        msg.contains("cannot read") && msg.contains("nope.token"),
        "{msg}"
    );
}

#[test]
fn empty_token_file() {
    let f = Fixture::new();
    f.write("empty.token", "\n  \n");
    let text = format!(
        "{HEAD}{}{}",
        cluster("pg-a", "a.token"),
        cluster("pg-b", "empty.token")
    );
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "cluster[1].token_file");
    assert!(msg.contains("is empty"), "{msg}");
}

#[test]
fn short_token() {
    let f = Fixture::new();
    f.write("short.token", "abc123\n");
    let (key, msg) = f.err_key(&format!("{HEAD}{}", cluster("pg-a", "short.token")));
    assert_eq!(key, "cluster[0].token_file");
    assert!(msg.contains("at least 16"), "{msg}");
}

#[test]
fn shared_token_between_clusters() {
    let f = Fixture::new();
    f.write("copy.token", "token-for-cluster-a-0123456789");
    let text = format!(
        "{HEAD}{}{}",
        cluster("pg-a", "a.token"),
        cluster("pg-b", "copy.token")
    );
    let (key, msg) = f.err_key(&text);
    assert_eq!(key, "cluster[1].token_file");
    assert!(msg.contains("its own token"), "{msg}");
}

#[test]
fn unreadable_config_file() {
    let f = Fixture::new();
    let e = Config::load(&f.dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.toml"), "{e}");
}

#[test]
fn master_key_errors_name_the_key() {
    let f = Fixture::new();
    let c = f
        .parse(&format!(
            "data_dir = \"/d\"\nmaster_key_file = \"m.key\"\n{}",
            cluster("pg-a", "a.token")
        ))
        .unwrap();
    let e = c.load_master_key().unwrap_err();
    assert_eq!(e.key(), Some("master_key_file"));
    f.write("m.key", &MasterKey::generate().to_hex());
    assert!(c.load_master_key().is_ok());
}

#[test]
fn backup_schedule_and_checkpoint() {
    let f = Fixture::new();
    let c = f.parse(&with_clusters("")).unwrap();
    assert!(c.clusters[0].backup_schedule.is_none());
    assert!(c.clusters[0].backup_fast_checkpoint);
    let text = format!(
        "{HEAD}{}backup_schedule = \"30 2 * * *\"\nbackup_checkpoint = \"spread\"\n",
        cluster("pg-a", "a.token")
    );
    let c = f.parse(&text).unwrap();
    assert_eq!(
        c.clusters[0].backup_schedule.as_ref().unwrap().to_string(),
        "30 2 * * *"
    );
    assert!(!c.clusters[0].backup_fast_checkpoint);
    let text = format!(
        "{HEAD}{}backup_schedule = \"61 * * * *\"\n",
        cluster("pg-a", "a.token")
    );
    let (key, shown) = f.err_key(&text);
    assert_eq!(key, "cluster[0].backup_schedule");
    assert!(shown.contains("minute"), "{shown}");
    let text = format!(
        "{HEAD}{}backup_checkpoint = \"slow\"\n",
        cluster("pg-a", "a.token")
    );
    let (key, _) = f.err_key(&text);
    assert_eq!(key, "cluster[0].backup_checkpoint");
}

impl Fixture {
    /// A CA, a server certificate and key, and an unrelated key, as PEM files.
    fn tls_files(&self) {
        let ca = klio_harness::TestCa::new("config test CA").unwrap();
        ca.write_cert(&self.dir.path().join("ca.crt")).unwrap();
        let (cert, key) = ca.server_cert().unwrap();
        self.write("server.crt", &cert);
        self.write("server.key", &key);
        self.write("other.key", &ca.server_cert().unwrap().1);
    }
}

#[test]
fn tls_section_loads_relative_files() {
    let f = Fixture::new();
    f.tls_files();
    let c = f.parse(&with_clusters("")).unwrap();
    assert!(c.tls.is_none());
    let c = f
        .parse(&with_clusters(
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.crt\"\nclient_ca_shared = true\n",
        ))
        .unwrap();
    let tls = c.tls.expect("tls configured");
    assert_eq!(tls.cert_file, f.dir.path().join("server.crt"));
    assert_eq!(tls.client_cas.shared, Some(f.dir.path().join("ca.crt")));
    assert!(!tls.require_client_cert);
}

#[test]
fn tls_env_overrides_name_their_variable() {
    let f = Fixture::new();
    f.tls_files();
    let cert = f.dir.path().join("server.crt");
    let key = f.dir.path().join("server.key");
    let c = f
        .parse_env(
            &with_clusters(""),
            &[
                ("KLIO_TLS_CERT_FILE", cert.to_str().unwrap()),
                ("KLIO_TLS_KEY_FILE", key.to_str().unwrap()),
            ],
        )
        .unwrap();
    assert_eq!(c.tls.unwrap().key_file, key);
    let e = f
        .parse_env(
            &with_clusters(""),
            &[
                ("KLIO_TLS_CERT_FILE", cert.to_str().unwrap()),
                ("KLIO_TLS_KEY_FILE", "/nonexistent/tls.key"),
            ],
        )
        .unwrap_err();
    assert_eq!(e.key(), Some("tls.key_file (KLIO_TLS_KEY_FILE)"));
    assert!(e.to_string().contains("/nonexistent/tls.key"), "{e}");
}

#[test]
fn bad_tls_settings_name_the_key_and_file() {
    let f = Fixture::new();
    f.tls_files();
    let cases = [
        ("[tls]\ncert_file = \"server.crt\"\n", "tls.key_file", "key_file"),
        ("[tls]\nkey_file = \"server.key\"\n", "tls.cert_file", "cert_file"),
        ("[tls]\nclient_ca_file = \"ca.crt\"\n", "tls.cert_file", "cert_file"),
        (
            "[tls]\ncert_file = \"missing.crt\"\nkey_file = \"server.key\"\n",
            "tls.cert_file",
            "missing.crt",
        ),
        (
            "[tls]\ncert_file = \"server.key\"\nkey_file = \"server.key\"\n",
            "tls.cert_file",
            "no certificate",
        ),
        (
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.crt\"\n",
            "tls.key_file",
            "private key",
        ),
        (
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"other.key\"\n",
            "tls.key_file",
            "does not go with the certificate",
        ),
        (
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nclient_ca_file = \"server.key\"\nclient_ca_shared = true\n",
            "tls.client_ca_file",
            "server.key",
        ),
        (
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.crt\"\n",
            "tls.client_ca_file",
            "client_ca_shared = true",
        ),
        (
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nrequire_client_cert = true\n",
            "tls.require_client_cert",
            "client_ca_file",
        ),
        (
            "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nclient_ca = \"ca.crt\"\n",
            "",
            "client_ca",
        ),
    ];
    for (extra, key, mentions) in cases {
        let (k, shown) = f.err_key(&with_clusters(extra));
        assert_eq!(k, key, "{extra}: {shown}");
        assert!(shown.contains(mentions), "{extra}: {shown}");
    }
}

#[test]
fn per_cluster_client_cas_and_dns_names() {
    let f = Fixture::new();
    f.tls_files();
    let text = format!(
        "{HEAD}{}client_ca_file = \"ca.crt\"\nclient_cert_dns_names = [\"Klio-A.db.svc\"]\n{}[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n",
        cluster("pg-a", "a.token"),
        cluster("pg-b", "b.token")
    );
    let tls = f.parse(&text).unwrap().tls.unwrap();
    assert!(tls.client_cas.shared.is_none());
    let a = &tls.client_cas.clusters[0];
    assert_eq!(a.ca_file, Some(f.dir.path().join("ca.crt")));
    assert_eq!(a.dns_names, vec!["klio-a.db.svc".to_string()]);
    assert_eq!(tls.client_cas.clusters[1].ca_file, None);

    // A cluster's CA file that is not a certificate names that cluster's key.
    let text = format!(
        "{HEAD}{}{}client_ca_file = \"server.key\"\n[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n",
        cluster("pg-a", "a.token"),
        cluster("pg-b", "b.token")
    );
    let (key, shown) = f.err_key(&text);
    assert_eq!(key, "cluster[1].client_ca_file", "{shown}");
    // A per-cluster CA needs [tls].
    let text = format!(
        "{HEAD}{}client_ca_file = \"ca.crt\"\n",
        cluster("pg-a", "a.token")
    );
    let (key, _) = f.err_key(&text);
    assert_eq!(key, "tls.cert_file");
    // Wildcards are not names.
    let text = format!(
        "{HEAD}{}client_cert_dns_names = [\"*.db.svc\"]\n",
        cluster("pg-a", "a.token")
    );
    let (key, shown) = f.err_key(&text);
    assert_eq!(key, "cluster[0].client_cert_dns_names", "{shown}");
}

#[test]
fn secret_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    f.tls_files();
    let open = |name: &str| {
        std::fs::set_permissions(
            f.dir.path().join(name),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap()
    };
    let close = |name: &str| {
        std::fs::set_permissions(
            f.dir.path().join(name),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap()
    };
    open("b.token");
    let (key, shown) = f.err_key(&with_clusters(""));
    assert_eq!(key, "cluster[1].token_file");
    assert!(shown.contains("chmod 600"), "{shown}");
    close("b.token");

    open("server.key");
    let (key, shown) = f.err_key(&with_clusters(
        "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n",
    ));
    assert_eq!(key, "tls.key_file");
    assert!(shown.contains("chmod 600"), "{shown}");
    close("server.key");

    let c = f
        .parse(&format!(
            "data_dir = \"/d\"\nmaster_key_file = \"m.key\"\n{}",
            cluster("pg-a", "a.token")
        ))
        .unwrap();
    f.write("m.key", &MasterKey::generate().to_hex());
    assert!(c.load_master_key().is_ok());
    open("m.key");
    let e = c.load_master_key().unwrap_err();
    assert_eq!(e.key(), Some("master_key_file"));
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

#[test]
fn metrics_and_api_limits() {
    let f = Fixture::new();
    let c = f.parse(&with_clusters("")).unwrap();
    assert!(matches!(c.metrics, MetricsAccess::Disabled));
    assert_eq!(c.api_max_connections, DEFAULT_API_MAX_CONNECTIONS);
    assert_eq!(
        c.api_header_timeout.as_secs(),
        DEFAULT_API_HEADER_TIMEOUT_SECS
    );
    f.write("metrics.token", "metrics-token-0123456789");
    let c = f
        .parse(&format!(
            "metrics_token_file = \"metrics.token\"\napi_max_connections = 10\napi_header_timeout_secs = 3\n{}",
            with_clusters("")
        ))
        .unwrap();
    assert!(matches!(&c.metrics, MetricsAccess::Token(t) if t.matches("metrics-token-0123456789")));
    assert_eq!(c.api_max_connections, 10);
    assert_eq!(c.api_header_timeout.as_secs(), 3);
    let c = f
        .parse_env(
            &with_clusters(""),
            &[("KLIO_METRICS_LISTEN", "127.0.0.1:9187")],
        )
        .unwrap();
    assert!(matches!(c.metrics, MetricsAccess::Listen(a) if a.port() == 9187));
    for (extra, key) in [
        (
            "metrics_listen = \"127.0.0.1:9\"\nmetrics_token_file = \"metrics.token\"\n",
            "metrics_listen",
        ),
        ("metrics_listen = \"nowhere\"\n", "metrics_listen"),
        ("api_max_connections = 0\n", "api_max_connections"),
        ("api_header_timeout_secs = 0\n", "api_header_timeout_secs"),
    ] {
        let (k, shown) = f.err_key(&format!("{extra}{}", with_clusters("")));
        assert_eq!(k, key, "{extra}: {shown}");
    }
}

#[test]
fn offload_roots_are_existing_absolute_directories_resolved_at_load() {
    let f = Fixture::new();
    let c = f.parse(&with_clusters("")).unwrap();
    assert!(c.clusters[0].offload_roots.is_empty());
    let snaps = f.dir.path().join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    std::os::unix::fs::symlink(&snaps, f.dir.path().join("via-link")).unwrap();
    let roots = |list: &str| {
        format!(
            "{HEAD}{}offload_roots = [{list}]\n",
            cluster("pg-a", "a.token")
        )
    };
    let link = f.dir.path().join("via-link").display().to_string();
    let c = f.parse(&roots(&format!("{link:?}"))).unwrap();
    assert_eq!(
        c.clusters[0].offload_roots,
        [std::fs::canonicalize(&snaps).unwrap()]
    );
    let file = f.write("plain-file", "x").display().to_string();
    let missing = f.dir.path().join("missing").display().to_string();
    for (list, why) in [
        ("\"snaps\"".to_string(), "absolute"),
        (format!("{link:?}, {missing:?}"), "existing directory"),
        (format!("{file:?}"), "existing directory"),
        ("\"/\"".to_string(), "Klio's own"),
    ] {
        let (key, shown) = f.err_key(&roots(&list));
        assert!(key.starts_with("cluster[0].offload_roots["), "{key}");
        assert!(shown.contains(why), "{list}: {shown}");
    }
}

#[test]
fn tier2_is_off_without_a_table_or_variable() {
    let f = Fixture::new();
    assert!(f.parse(&with_clusters("")).unwrap().tier2.is_none());
}

#[test]
fn tier2_table_loads_relative_credential_files() {
    let f = Fixture::new();
    f.write("s3.id", "AKIDEXAMPLE");
    f.write("s3.secret", "wJalrXUtnFEMI");
    let c = f
        .parse(&with_clusters(
            "[tier2]\nurl = \"s3://backups/site-a\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             access_key_id_file = \"s3.id\"\nsecret_access_key_file = \"s3.secret\"\nallow_http = true\n",
        ))
        .unwrap();
    let t = c.tier2.expect("tier2 configured");
    assert_eq!(
        t.location,
        klio_tiering::config::Tier2Location::S3 {
            bucket: "backups".into(),
            prefix: "site-a".into()
        }
    );
    assert!(t.keys.is_some());
    // Secrets never show in Debug output.
    assert!(!format!("{t:?}").contains("wJalrXUtnFEMI"));
}

#[test]
fn tier2_url_from_the_environment_alone_configures_it() {
    let f = Fixture::new();
    let dir = f.dir.path().join("bucket");
    std::fs::create_dir(&dir).unwrap();
    let url = format!("file://{}", dir.display());
    let c = f
        .parse_env(&with_clusters(""), &[("KLIO_TIER2_URL", &url)])
        .unwrap();
    assert!(matches!(
        c.tier2.map(|t| t.location),
        Some(klio_tiering::config::Tier2Location::File { .. })
    ));
}

#[test]
fn tier2_errors_name_the_field_and_the_file() {
    let f = Fixture::new();
    f.write("s3.id", "AKIDEXAMPLE");
    for (table, key, words) in [
        ("[tier2]\n", "", "url"),
        ("[tier2]\nurl = \"ftp://x/y\"\n", "tier2.url", "ftp"),
        (
            "[tier2]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9000\"\n",
            "tier2.endpoint",
            "allow_http",
        ),
        (
            "[tier2]\nurl = \"s3://b/p\"\naccess_key_id_file = \"s3.id\"\n",
            "tier2.access_key_id_file",
            "secret_access_key_file",
        ),
        (
            "[tier2]\nurl = \"s3://b/p\"\nbucket = \"x\"\n",
            "",
            "bucket",
        ),
    ] {
        let (k, shown) = f.err_key(&with_clusters(table));
        assert_eq!(k, key, "{shown}");
        assert!(shown.contains(words), "{table}: {shown}");
    }
}

/// A read-only server's config: `mode`, `[tier2]`, clusters with a name and a token.
fn read_only(cluster_extra: &str, tier2: bool) -> String {
    let tier2 = match tier2 {
        true => "[tier2]\nurl = \"s3://backups/site-a\"\n",
        false => "",
    };
    format!(
        "{HEAD}mode = \"read-only\"\n[[cluster]]\nname = \"pg-a\"\ntoken_file = \"a.token\"\n{cluster_extra}{tier2}"
    )
}

#[test]
fn mode_defaults_to_standard_and_read_only_needs_no_conninfo() {
    let f = Fixture::new();
    assert_eq!(
        f.parse(&with_clusters("")).unwrap().mode,
        ServerMode::Standard
    );
    let c = f.parse(&read_only("", true)).unwrap();
    assert_eq!(c.mode, ServerMode::ReadOnly);
    assert_eq!(c.clusters[0].conninfo, "");
    assert_eq!(c.rescan_interval.as_secs(), DEFAULT_RESCAN_INTERVAL_SECS);
    let c = f
        .parse(&read_only("", true).replace("mode =", "rescan_interval = \"30s\"\nmode ="))
        .unwrap();
    assert_eq!(c.rescan_interval.as_secs(), 30);
    // The variable sets it too.
    let text = format!("{HEAD}[tier2]\nurl = \"s3://b/p\"\n[[cluster]]\nname = \"pg-a\"\ntoken_file = \"a.token\"\n");
    let c = f.parse_env(&text, &[("KLIO_MODE", "read-only")]).unwrap();
    assert_eq!(c.mode, ServerMode::ReadOnly);
}

#[test]
fn read_only_refuses_what_would_write_and_needs_tier2() {
    let f = Fixture::new();
    for (text, key, words) in [
        (read_only("", false), "tier2".to_string(), "[tier2]"),
        (
            read_only("conninfo = \"host=db\"\n", true),
            "cluster[0].conninfo".into(),
            "does not stream",
        ),
        (
            read_only("backup_schedule = \"0 3 * * *\"\n", true),
            "cluster[0].backup_schedule".into(),
            "takes no backups",
        ),
        (
            read_only("offload_roots = [\"/snap\"]\n", true),
            "cluster[0].offload_roots".into(),
            "takes no backups",
        ),
        (
            with_clusters("").replace(HEAD, &format!("{HEAD}mode = \"standby\"\n")),
            "mode".into(),
            "read-only",
        ),
        (
            with_clusters("").replace(HEAD, &format!("{HEAD}rescan_interval = \"5m\"\n")),
            "rescan_interval".into(),
            "read-only servers only",
        ),
        (
            read_only("", true).replace("mode =", "rescan_interval = \"soon\"\nmode ="),
            "rescan_interval".into(),
            "not a duration",
        ),
        (
            read_only("", true).replace("[tier2]", "[retention]\nlatest = 1\n[tier2]"),
            "retention".into(),
            "removes nothing",
        ),
    ] {
        let (k, shown) = f.err_key(&text);
        assert_eq!(k, key, "{shown}");
        assert!(shown.contains(words), "{shown}");
    }
    // A conninfo given by the environment is refused the same way, naming the variable.
    let e = f
        .parse_env(
            &read_only("", true),
            &[("KLIO_CLUSTER_PG_A_CONNINFO", "host=db")],
        )
        .unwrap_err();
    assert_eq!(
        e.key(),
        Some("cluster[0].conninfo (KLIO_CLUSTER_PG_A_CONNINFO)")
    );
}

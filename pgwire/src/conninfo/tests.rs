//! Unit and property tests of conninfo parsing.

use super::*;

fn parse(s: &str) -> ConnInfo {
    ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn key_value_basics_and_defaults() {
    let c = parse("host=db.example port=5433 user=streaming_replica dbname=postgres");
    assert_eq!(c.host.as_deref(), Some("db.example"));
    assert_eq!(c.port, 5433);
    assert_eq!(c.user, "streaming_replica");
    assert_eq!(c.dbname.as_deref(), Some("postgres"));
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.application_name, "klio");
    assert_eq!(c.connect_timeout, None);
    assert_eq!(
        c.endpoint(),
        Endpoint::Tcp {
            host: "db.example".into(),
            port: 5433
        }
    );
}

#[test]
fn key_value_quoting_and_whitespace() {
    let c =
        parse("  host = h  password = 'it\\'s a \\\\ secret'  application_name='a b' user=u\\ x ");
    assert_eq!(c.password(), Some("it's a \\ secret"));
    assert_eq!(c.application_name, "a b");
    assert_eq!(c.user, "u x");
    assert_eq!(c.host.as_deref(), Some("h"));
    let c = parse("user=u password=''");
    assert_eq!(
        c.password(),
        None,
        "an empty value means unset, as in libpq"
    );
}

#[test]
fn key_value_errors() {
    assert!(matches!(
        ConnInfo::parse("host"),
        Err(ConnInfoError::Syntax(m)) if m.contains("missing \"=\" after \"host\"")
    ));
    assert!(matches!(
        ConnInfo::parse("user=u password='abc"),
        Err(ConnInfoError::Syntax(m)) if m.contains("unterminated")
    ));
    let err = ConnInfo::parse("user=u frobnicate=1").unwrap_err();
    assert_eq!(err, ConnInfoError::UnknownKey("frobnicate".into()));
    assert!(err.to_string().contains("\"frobnicate\""));
    assert!(matches!(
        ConnInfo::parse("user=u sslmode=bogus"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "sslmode"
    ));
    assert!(matches!(
        ConnInfo::parse("user=u port=0"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "port"
    ));
    assert!(matches!(
        ConnInfo::parse("user=u keepalives=1"),
        Err(ConnInfoError::Unsupported { key, .. }) if key == "keepalives"
    ));
    assert!(ConnInfo::parse("user=u host=a,b").is_err());
}

#[test]
fn pg_basebackup_primary_conninfo_is_accepted() {
    let c = parse(
        "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
         host=/var/run/postgresql port=5432 sslmode=prefer sslcompression=0 \
         sslcertmode=allow sslsni=1 ssl_min_protocol_version=TLSv1.2 gssencmode=prefer \
         krbsrvname=postgres gssdelegation=0 target_session_attrs=any \
         load_balance_hosts=disable",
    );
    assert_eq!(
        c.endpoint(),
        Endpoint::Unix("/var/run/postgresql/.s.PGSQL.5432".into())
    );
    assert_eq!(c.channel_binding, ChannelBinding::Prefer);
    assert_eq!(
        parse("user=u channel_binding=require").channel_binding,
        ChannelBinding::Require
    );
}

#[test]
fn sslmodes_and_timeout() {
    for (s, m) in [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        assert_eq!(parse(&format!("user=u sslmode={s}")).sslmode, m);
        assert_eq!(m.as_str(), s);
    }
    assert_eq!(
        parse("user=u connect_timeout=1").connect_timeout,
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        parse("user=u connect_timeout=10").connect_timeout,
        Some(Duration::from_secs(10))
    );
    assert_eq!(parse("user=u connect_timeout=0").connect_timeout, None);
}

#[test]
fn unix_socket_and_hostaddr() {
    let c = parse("host=/tmp/pg port=6000 user=u");
    assert_eq!(c.endpoint(), Endpoint::Unix("/tmp/pg/.s.PGSQL.6000".into()));
    assert_eq!(c.tls_server_name(), None);
    let c = parse("user=u");
    assert_eq!(
        c.endpoint(),
        Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET_DIR).join(".s.PGSQL.5432"))
    );
    assert_eq!(c.passfile_host(), "localhost");
    let c = parse("host=db.example hostaddr=10.0.0.7 user=u");
    assert_eq!(
        c.endpoint(),
        Endpoint::Tcp {
            host: "10.0.0.7".into(),
            port: 5432
        }
    );
    assert_eq!(c.tls_server_name().as_deref(), Some("db.example"));
    assert_eq!(c.passfile_host(), "db.example");
    assert!(ConnInfo::parse("user=u hostaddr=db.example").is_err());
}

#[test]
fn uri_form() {
    let c = parse("postgresql://rep%40l:p%3Ass%40w@db.example:5433/my%20db?sslmode=require&application_name=k%20x");
    assert_eq!(c.user, "rep@l");
    assert_eq!(c.password(), Some("p:ss@w"));
    assert_eq!(c.host.as_deref(), Some("db.example"));
    assert_eq!(c.port, 5433);
    assert_eq!(c.dbname.as_deref(), Some("my db"));
    assert_eq!(c.sslmode, SslMode::Require);
    assert_eq!(c.application_name, "k x");

    let c = parse("postgres://u@[::1]:6543");
    assert_eq!(c.host.as_deref(), Some("::1"));
    assert_eq!(
        c.endpoint().to_string(),
        "[::1]:6543",
        "IPv6 endpoints are bracketed"
    );

    let c = parse("postgresql://u@%2Fvar%2Flib%2Fpg:7000");
    assert_eq!(
        c.endpoint(),
        Endpoint::Unix("/var/lib/pg/.s.PGSQL.7000".into())
    );

    let c = parse("postgresql:///db?host=/tmp/s&user=u&ssl=true");
    assert_eq!(c.endpoint(), Endpoint::Unix("/tmp/s/.s.PGSQL.5432".into()));
    assert_eq!(c.dbname.as_deref(), Some("db"));
    assert_eq!(c.sslmode, SslMode::Require);

    assert!(ConnInfo::parse("postgresql://u@[::1/db").is_err());
    assert!(ConnInfo::parse("postgresql://u@h/db?nope=1").is_err());
    assert!(ConnInfo::parse("postgresql://u@h/d%zz").is_err());
    assert!(ConnInfo::parse("postgresql://u@h/d%00").is_err());
    assert!(ConnInfo::parse("postgresql://u@h1,h2/d").is_err());
    assert!(ConnInfo::parse("postgresql://u@h:notaport").is_err());
}

#[test]
fn debug_redacts_password() {
    let c = parse("user=u password=hunter2");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
    let c = parse("postgresql://u:hunter2@h/");
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn passfile_resolution_and_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgpass");
    std::fs::write(&path, "/tmp/sock:6000:replication:rep:s3cret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let info = parse(&format!(
        "host=/tmp/sock port=6000 user=rep passfile='{}'",
        path.display()
    ));
    assert_eq!(info.resolve_password().as_deref(), Some("s3cret"));
    // Explicit password wins.
    assert_eq!(
        info.clone()
            .with_password("x")
            .resolve_password()
            .as_deref(),
        Some("x")
    );
    // Group/world readable: ignored, as libpq does.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(info.resolve_password(), None);
    // Missing file: no password, no error.
    let missing = parse("user=rep passfile=/nonexistent/pgpass");
    assert_eq!(missing.resolve_password(), None);
}

#[test]
fn channel_binding_and_require_auth_options() {
    let c = parse("user=u sslmode=verify-full channel_binding=disable require_auth=scram-sha-256");
    assert_eq!(c.channel_binding, ChannelBinding::Disable);
    let r = c.require_auth.expect("require_auth");
    assert!(r.allows(AuthMethod::ScramSha256) && !r.allows(AuthMethod::Password));
    let c = parse("postgresql://u@h/?require_auth=password,md5&channel_binding=require");
    assert!(c.require_auth.expect("require_auth").lists_password());
    assert_eq!(c.channel_binding, ChannelBinding::Require);
    assert_eq!(parse("user=u").require_auth, None);
    assert!(matches!(
        ConnInfo::parse("user=u channel_binding=yes"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "channel_binding"
    ));
    assert!(matches!(
        ConnInfo::parse("user=u require_auth=kerberos"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "require_auth"
    ));
    let err = ConnInfo::parse("user=u sslmode=disable channel_binding=require").unwrap_err();
    assert!(err.to_string().contains("needs TLS"), "{err}");
}

#[test]
fn system_roots_mean_verify_full() {
    let c = parse("host=db.example user=u sslrootcert=system");
    assert_eq!(
        c.sslmode,
        SslMode::VerifyFull,
        "libpq 16's default with system roots"
    );
    assert_eq!(
        parse("host=db.example user=u sslrootcert=system sslmode=require").sslmode,
        SslMode::Require,
        "accepted; TLS setup then checks the host name (pgwire::tls tests)"
    );
    for weak in ["disable", "allow", "prefer", "verify-ca"] {
        let err =
            ConnInfo::parse(&format!("user=u sslrootcert=system sslmode={weak}")).expect_err(weak);
        assert!(
            err.to_string().contains("use sslmode=verify-full"),
            "{weak}: {err}"
        );
    }
}

#[test]
fn uri_errors_never_echo_the_password() {
    let secret = "s3cr%t-pa55word";
    let err = ConnInfo::parse(&format!("postgresql://rep:{secret}@db.example/postgres"))
        .expect_err("bad escape");
    let text = err.to_string();
    assert!(!text.contains("s3cr"), "{text}");
    assert!(
        !text.contains("db.example"),
        "the URI is not printed: {text}"
    );
    assert!(
        text.contains("byte 21") && text.contains("password") && text.contains("%25"),
        "names the position, the part and the fix: {text}"
    );
    // A password holding "/" splits the URI early: what looks like a port is a piece of it.
    let err = ConnInfo::parse("postgresql://rep:abc/defgh@db.example/postgres").unwrap_err();
    assert!(!err.to_string().contains("abc"), "{err}");
    assert!(err.to_string().contains("invalid port at byte 17"), "{err}");
    let err = ConnInfo::parse("postgresql://u@h/db?password=x%zzsecret").unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(
        err.to_string()
            .contains("value of query parameter \"password\""),
        "{err}"
    );
    // %00 and invalid UTF-8 are refused the same way.
    for bad in ["postgresql://u:zq%00xy@h/", "postgresql://u:zq%FFxy@h/"] {
        let err = ConnInfo::parse(bad).unwrap_err();
        assert!(!err.to_string().contains("zq"), "{err}");
    }
}

#[test]
fn key_value_errors_do_not_echo_unquoted_password_pieces() {
    let err = ConnInfo::parse("user=u password=correct horse").unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("horse"), "{text}");
    assert!(text.contains("byte 24") && text.contains("quote"), "{text}");
}

/// Fuzz and round-trip properties (bounded; `PROPTEST_CASES` raises the count).
mod properties {
    use super::*;
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    /// The options a conninfo can carry, as a user would write them.
    #[derive(Clone, Debug)]
    struct Fields {
        host: String,
        port: u16,
        user: String,
        password: String,
        dbname: String,
        sslmode: SslMode,
        channel_binding: ChannelBinding,
        application_name: String,
    }

    fn fields() -> impl Strategy<Value = Fields> {
        let host = prop_oneof![
            "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}",
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
            "/[a-z0-9 _.-]{1,12}",
        ];
        let sslmode = prop_oneof![
            Just(SslMode::Disable),
            Just(SslMode::Allow),
            Just(SslMode::Prefer),
            Just(SslMode::Require),
            Just(SslMode::VerifyCa),
            Just(SslMode::VerifyFull),
        ];
        let binding = prop_oneof![Just(ChannelBinding::Disable), Just(ChannelBinding::Prefer)];
        (
            host,
            1..=u16::MAX,
            "\\PC{1,12}",
            "\\PC{1,16}",
            "\\PC{1,12}",
            sslmode,
            binding,
            "\\PC{1,12}",
        )
            .prop_map(
                |(host, port, user, password, dbname, sslmode, channel_binding, app)| Fields {
                    host,
                    port,
                    user,
                    password,
                    dbname,
                    sslmode,
                    channel_binding,
                    application_name: app,
                },
            )
    }

    fn quote(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    fn key_values(f: &Fields) -> String {
        format!(
            "host={} port={} user={} password={} dbname={} sslmode={} channel_binding={} \
             application_name={}",
            quote(&f.host),
            f.port,
            quote(&f.user),
            quote(&f.password),
            quote(&f.dbname),
            f.sslmode,
            f.channel_binding,
            quote(&f.application_name)
        )
    }

    fn uri(f: &Fields) -> String {
        let enc = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let host = if f.host.contains(':') {
            format!("[{}]", f.host)
        } else {
            enc(&f.host)
        };
        format!(
            "postgresql://{}:{}@{host}:{}/{}?sslmode={}&channel_binding={}&application_name={}",
            enc(&f.user),
            enc(&f.password),
            f.port,
            enc(&f.dbname),
            f.sslmode,
            f.channel_binding,
            enc(&f.application_name)
        )
    }

    fn assert_fields(c: &ConnInfo, f: &Fields) -> Result<(), TestCaseError> {
        prop_assert_eq!(c.host.as_deref(), Some(f.host.as_str()));
        prop_assert_eq!(c.port, f.port);
        prop_assert_eq!(&c.user, &f.user);
        prop_assert_eq!(c.password(), Some(f.password.as_str()));
        prop_assert_eq!(c.dbname.as_deref(), Some(f.dbname.as_str()));
        prop_assert_eq!(c.sslmode, f.sslmode);
        prop_assert_eq!(c.channel_binding, f.channel_binding);
        prop_assert_eq!(&c.application_name, &f.application_name);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Rendering options as key=value or as a URI and parsing them back gives the
        /// options, and the two forms agree.
        #[test]
        fn rendered_conninfo_parses_back(f in fields()) {
            let kv = ConnInfo::parse(&key_values(&f))
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", key_values(&f))))?;
            assert_fields(&kv, &f)?;
            let from_uri = ConnInfo::parse(&uri(&f))
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", uri(&f))))?;
            assert_fields(&from_uri, &f)?;
            prop_assert_eq!(kv, from_uri);
        }

        /// Fuzz: any text, as key=value or after a URI prefix, never panics.
        #[test]
        fn arbitrary_conninfo_never_panics(s in "\\PC{0,64}", raw in ".{0,64}") {
            let _ = ConnInfo::parse(&s);
            let _ = ConnInfo::parse(&raw);
            let _ = ConnInfo::parse(&format!("postgresql://{s}"));
            let _ = ConnInfo::parse(&format!("postgres://{raw}"));
        }

        /// A password pasted into a URI unencoded, with a stray "%" (or "/", "@", ":"),
        /// never shows up in the error.
        #[test]
        fn uri_errors_never_contain_the_password(
            head in "[A-Za-z0-9/@:%]{3,12}",
            tail in "[A-Za-z0-9/@:%]{3,12}",
            bad in "%[g-zG-Z%]?",
        ) {
            let password = format!("{head}{bad}{tail}");
            let uri = format!("postgresql://rep:{password}@db.example:5432/postgres");
            if let Err(e) = ConnInfo::parse(&uri) {
                let text = e.to_string();
                prop_assert!(!text.contains(&password), "{}", text);
                for piece in [&head, &tail] {
                    if piece.len() >= 5 {
                        prop_assert!(!text.contains(piece.as_str()), "{}", text);
                    }
                }
            }
        }
    }
}

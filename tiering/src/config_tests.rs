//! Unit tests of `[tier2]` parsing, overrides and validation (every refusal, and that no
//! secret reaches Debug output).

use super::*;
use klio_harness::{write_file, TestCa};
use std::collections::HashMap;

fn s3(url: &str) -> Tier2Config {
    Tier2Config {
        url: url.to_string(),
        ..Tier2Config::default()
    }
}

fn err(cfg: &Tier2Config) -> String {
    cfg.validate().unwrap_err().to_string()
}

/// Two key files with the given contents and mode in a fresh directory.
fn key_files(dir: &Path, mode: u32) -> (PathBuf, PathBuf) {
    let id = dir.join("access_key_id");
    let secret = dir.join("secret_access_key");
    write_file(&id, "AKIAKLIOTESTKEYID\n", mode).unwrap();
    write_file(&secret, "klio-very-secret-access-key\n", mode).unwrap();
    (id, secret)
}

#[test]
fn urls_of_every_scheme_parse_into_bucket_and_prefix() {
    let loc = |u: &str| s3(u).validate().unwrap().location;
    assert_eq!(
        loc("s3://backups/klio/prod"),
        Tier2Location::S3 {
            bucket: "backups".into(),
            prefix: "klio/prod".into()
        }
    );
    assert_eq!(
        loc("s3://backups"),
        Tier2Location::S3 {
            bucket: "backups".into(),
            prefix: String::new()
        }
    );
    assert_eq!(
        loc("gs://b/p/"),
        Tier2Location::Gcs {
            bucket: "b".into(),
            prefix: "p".into()
        }
    );
    assert_eq!(
        loc("az://c/p%20q"),
        Tier2Location::Azure {
            container: "c".into(),
            prefix: "p q".into()
        }
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    assert_eq!(
        loc(&url),
        Tier2Location::File {
            root: dir.path().to_path_buf()
        }
    );
    assert_eq!(s3("s3://b").validate().unwrap().region, "us-east-1");
}

#[test]
fn bad_urls_name_the_field_and_the_fix() {
    let e = err(&s3("ftp://bucket/p"));
    assert!(
        e.contains("tier2.url") && e.contains("unknown scheme \"ftp\""),
        "{e}"
    );
    assert!(e.contains("s3://, gs://, az:// or file://"), "{e}");
    let e = err(&s3("s3:///prefix"));
    assert!(
        e.contains("names no bucket") && e.contains("s3://bucket/prefix"),
        "{e}"
    );
    let e = err(&s3(""));
    assert!(e.contains("tier2.url") && e.contains("is empty"), "{e}");
    let e = err(&s3("not a url"));
    assert!(e.contains("is not a URL"), "{e}");
    let e = err(&s3("s3://b/a/../c"));
    assert!(e.contains("`..`"), "{e}");
    let e = err(&s3("s3://AKIAX:hunter2@bucket/p"));
    assert!(
        e.contains("holds credentials") && e.contains("<redacted>@bucket/p"),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("AKIAX"), "{e}");
    let e = err(&s3("s3://AKIAX:hunter2@"));
    assert!(!e.contains("hunter2") && !e.contains("AKIAX"), "{e}");
    let e = err(&s3("s3://bucket:9000/p"));
    assert!(e.contains("tier2.endpoint"), "{e}");
    let e = err(&s3("file:///no/such/klio/dir"));
    assert!(
        e.contains("not an existing directory") && e.contains("create it"),
        "{e}"
    );
    let e = err(&s3("file://host/tmp"));
    assert!(e.contains("three slashes"), "{e}");
}

#[test]
fn a_plain_http_endpoint_needs_allow_http() {
    let mut cfg = s3("s3://b/p");
    cfg.endpoint = Some("http://127.0.0.1:9000".into());
    let e = err(&cfg);
    assert!(
        e.contains("tier2.endpoint") && e.contains("tier2.allow_http = true"),
        "{e}"
    );
    cfg.allow_http = true;
    let ok = cfg.validate().unwrap();
    assert_eq!(ok.endpoint.unwrap().as_str(), "http://127.0.0.1:9000/");
    cfg.endpoint = Some("https://s3.example.net".into());
    cfg.allow_http = false;
    assert!(cfg.validate().is_ok());
    cfg.endpoint = Some("ftp://s3.example.net".into());
    assert!(err(&cfg).contains("use https://"));
    cfg.endpoint = Some("https://user:pw@s3.example.net".into());
    let e = err(&cfg);
    assert!(e.contains("holds credentials") && !e.contains("pw@"), "{e}");
}

#[test]
fn credential_files_must_exist_and_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = key_files(dir.path(), 0o600);
    let mut cfg = s3("s3://b");
    cfg.access_key_id_file = Some(id.clone());
    cfg.secret_access_key_file = Some(dir.path().join("missing"));
    let e = err(&cfg);
    assert!(
        e.contains("tier2.secret_access_key_file") && e.contains("missing"),
        "{e}"
    );

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let (open_id, open_secret) = key_files(&open, 0o644);
    cfg.access_key_id_file = Some(open_id);
    cfg.secret_access_key_file = Some(open_secret);
    let e = err(&cfg);
    assert!(
        e.contains("tier2.access_key_id_file") && e.contains("chmod 600"),
        "{e}"
    );

    cfg.access_key_id_file = Some(id);
    cfg.secret_access_key_file = Some(secret);
    let keys = cfg.validate().unwrap().keys.unwrap();
    assert_eq!(keys.access_key_id.as_str(), "AKIAKLIOTESTKEYID");
    assert_eq!(
        keys.secret_access_key.as_str(),
        "klio-very-secret-access-key"
    );
}

#[test]
fn an_empty_credential_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = key_files(dir.path(), 0o600);
    let secret = dir.path().join("blank");
    write_file(&secret, " \n", 0o600).unwrap();
    let mut cfg = s3("s3://b");
    cfg.access_key_id_file = Some(id);
    cfg.secret_access_key_file = Some(secret);
    let e = err(&cfg);
    assert!(
        e.contains("tier2.secret_access_key_file") && e.contains("is empty"),
        "{e}"
    );
}

#[test]
fn one_key_file_without_the_other_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = key_files(dir.path(), 0o600);
    let mut cfg = s3("s3://b");
    cfg.access_key_id_file = Some(id);
    let e = err(&cfg);
    assert!(
        e.contains("tier2.access_key_id_file is set but tier2.secret_access_key_file is not"),
        "{e}"
    );
    cfg.access_key_id_file = None;
    cfg.secret_access_key_file = Some(secret);
    let e = err(&cfg);
    assert!(
        e.contains("tier2.secret_access_key_file is set but tier2.access_key_id_file is not"),
        "{e}"
    );
    // Neither: the usual credential chain.
    assert!(s3("s3://b").validate().unwrap().keys.is_none());
}

#[test]
fn ca_file_must_hold_pem_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = s3("s3://b");
    let junk = dir.path().join("junk.pem");
    write_file(&junk, "this is not a certificate\n", 0o644).unwrap();
    cfg.ca_file = Some(junk);
    let e = err(&cfg);
    assert!(
        e.contains("tier2.ca_file") && e.contains("BEGIN CERTIFICATE"),
        "{e}"
    );
    cfg.ca_file = Some(dir.path().join("absent.pem"));
    assert!(err(&cfg).contains("cannot be read"));
    let ca = TestCa::new("klio test ca").unwrap();
    let good = dir.path().join("ca.pem");
    ca.write_cert(&good).unwrap();
    cfg.ca_file = Some(good);
    let pem = cfg.validate().unwrap().ca_pem.unwrap();
    assert!(String::from_utf8(pem)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn s3_only_fields_are_refused_for_other_schemes() {
    let mut cfg = s3("gs://b/p");
    cfg.endpoint = Some("https://storage.example".into());
    let e = err(&cfg);
    assert!(e.contains("tier2.endpoint applies to s3:// only"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = s3(&format!("file://{}", dir.path().display()));
    cfg.region = Some("eu-west-1".into());
    assert!(err(&cfg).contains("tier2.region applies to s3:// only"));
}

#[test]
fn debug_output_never_shows_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = key_files(dir.path(), 0o600);
    let mut cfg = s3("s3://b/p");
    cfg.access_key_id_file = Some(id);
    cfg.secret_access_key_file = Some(secret);
    let settings = cfg.validate().unwrap();
    for text in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{cfg:?}"),
    ] {
        assert!(!text.contains("AKIAKLIOTESTKEYID"), "{text}");
        assert!(!text.contains("klio-very-secret"), "{text}");
    }
    assert!(format!("{settings:?}").contains("<redacted>"));
}

#[test]
fn env_overrides_replace_every_field() {
    let env: HashMap<&str, &str> = [
        (ENV_URL, "s3://other/pfx"),
        (ENV_ENDPOINT, "http://127.0.0.1:1"),
        (ENV_REGION, "eu-central-1"),
        (ENV_ACCESS_KEY_ID_FILE, "/k/id"),
        (ENV_SECRET_ACCESS_KEY_FILE, "/k/secret"),
        (ENV_CA_FILE, "/k/ca.pem"),
        (ENV_ALLOW_HTTP, "true"),
    ]
    .into();
    let mut cfg = s3("s3://b");
    cfg.apply_overrides_from(|k| env.get(k).map(|v| v.to_string()))
        .unwrap();
    assert_eq!(
        cfg,
        Tier2Config {
            url: "s3://other/pfx".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("eu-central-1".into()),
            access_key_id_file: Some("/k/id".into()),
            secret_access_key_file: Some("/k/secret".into()),
            ca_file: Some("/k/ca.pem".into()),
            allow_http: true,
        }
    );
    // An empty variable clears an optional field; a bad boolean is refused by name.
    let clear: HashMap<&str, &str> = [(ENV_ENDPOINT, ""), (ENV_ALLOW_HTTP, "maybe")].into();
    let e = cfg
        .apply_overrides_from(|k| clear.get(k).map(|v| v.to_string()))
        .unwrap_err();
    assert_eq!(cfg.endpoint, None);
    assert!(e.to_string().contains("KLIO_TIER2_ALLOW_HTTP"), "{e}");
}

#[test]
fn the_toml_table_refuses_unknown_fields() {
    let cfg: Tier2Config = toml::from_str(
        "url = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\n",
    )
    .unwrap();
    assert!(cfg.allow_http && cfg.validate().is_ok());
    let e =
        toml::from_str::<Tier2Config>("url = \"s3://b\"\nsecret_access_key = \"x\"\n").unwrap_err();
    assert!(
        e.to_string().contains("unknown field `secret_access_key`"),
        "{e}"
    );
}

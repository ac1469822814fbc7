//! Test PKI for one instance, generated with rcgen: a CA, a server certificate for
//! `127.0.0.1`/`localhost`, and a client certificate `CN=streaming_replica` for `cert`
//! authentication. Writes PEM files into the instance's `tls/` directory: server files
//! owned by the PostgreSQL account with mode 0600 (the server insists), the client key
//! 0640 root:postgres when we are root (libpq accepts that for root-owned keys, so both
//! root and the walreceiver of a standby can use it), certificates 0644.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::pg_command::Owner;
use crate::REPLICATION_USER;

/// PEM files of an instance's test PKI (all readable by root).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate that signed both the server and the client certificate.
    pub ca_cert: PathBuf,
    /// Server certificate, SAN `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// Server private key (owned by the PostgreSQL account, 0600).
    pub server_key: PathBuf,
    /// Client certificate with `CN=streaming_replica`.
    pub client_cert: PathBuf,
    /// Client private key (PKCS#8).
    pub client_key: PathBuf,
}

/// Generates the PKI into `dir` (which must exist and belong to `owner`).
pub(crate) fn generate(dir: &Path, owner: &Owner) -> Result<TlsFiles> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "klio test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, REPLICATION_USER);
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.use_authority_key_identifier_extension = true;
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    write(&files.ca_cert, &ca_cert.pem(), 0o644)?;
    write(&files.server_cert, &server_cert.pem(), 0o644)?;
    write(&files.server_key, &server_key.serialize_pem(), 0o600)?;
    owner.chown(&files.server_cert)?;
    owner.chown(&files.server_key)?;
    write(&files.client_cert, &client_cert.pem(), 0o644)?;
    match owner.gid() {
        Some(gid) => {
            write(&files.client_key, &client_key.serialize_pem(), 0o640)?;
            nix::unistd::chown(&files.client_key, None, Some(gid))
                .context("chgrp client.key to postgres")?;
        }
        None => write(&files.client_key, &client_key.serialize_pem(), 0o600)?,
    }
    Ok(files)
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    // The umask may have narrowed the mode; certificates must be world-readable.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

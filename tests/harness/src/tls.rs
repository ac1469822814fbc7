//! Test PKI, generated with rcgen: [`TestCa`] issues certificates (also used for Klio's
//! own API); per instance a CA, a server certificate for
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

/// A throwaway certificate authority that issues server and client certificates.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl TestCa {
    /// A new self-signed CA with this common name.
    pub fn new(common_name: &str) -> Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// Writes the CA certificate (0644).
    pub fn write_cert(&self, path: &Path) -> Result<()> {
        write_file(path, &self.cert_pem, 0o644)
    }

    /// A server certificate for `127.0.0.1` and `localhost`: (certificate PEM, key PEM).
    pub fn server_cert(&self) -> Result<(String, String)> {
        self.issue(
            "localhost",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with this subject CN and DNS subject alternative names.
    pub fn client_cert(&self, common_name: &str, dns: &[&str]) -> Result<(String, String)> {
        self.issue(common_name, dns, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// [`TestCa::client_cert`] written to `<dir>/<name>.crt` and `<dir>/<name>.key` (0644,
    /// 0600); returns their paths.
    pub fn write_client_cert(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        dns: &[&str],
    ) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.client_cert(common_name, dns)?;
        let paths = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        write_file(&paths.0, &cert, 0o644)?;
        write_file(&paths.1, &key, 0o600)?;
        Ok(paths)
    }

    fn issue(
        &self,
        common_name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Generates the PKI into `dir` (which must exist and belong to `owner`).
pub(crate) fn generate(dir: &Path, owner: &Owner) -> Result<TlsFiles> {
    let ca = TestCa::new("klio test CA")?;
    let (server_cert, server_key) = ca.server_cert()?;
    let (client_cert, client_key) = ca.client_cert(REPLICATION_USER, &[])?;

    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    ca.write_cert(&files.ca_cert)?;
    write_file(&files.server_cert, &server_cert, 0o644)?;
    write_file(&files.server_key, &server_key, 0o600)?;
    owner.chown(&files.server_cert)?;
    owner.chown(&files.server_key)?;
    write_file(&files.client_cert, &client_cert, 0o644)?;
    match owner.gid() {
        Some(gid) => {
            write_file(&files.client_key, &client_key, 0o640)?;
            nix::unistd::chown(&files.client_key, None, Some(gid))
                .context("chgrp client.key to postgres")?;
        }
        None => write_file(&files.client_key, &client_key, 0o600)?,
    }
    Ok(files)
}

/// Writes `contents` to a new file with `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
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

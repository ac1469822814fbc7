//! Key hierarchy: one master key per server (from a file), one data key per
//! cluster, stored in the catalog wrapped (AES-256-GCM) by the master key.
//!
//! Nothing here writes to disk; the catalog stores the wrapped bytes.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::cluster::ClusterName;

const WRAP_VERSION: u8 = 1;
const WRAP_AD: &[u8] = b"klio-data-key-v1";
const CHECK_AD: &[u8] = b"klio-master-key-check-v1";
const CHECK_PLAINTEXT: &[u8] = b"klio master key check";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read master key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("master key file {path} must hold 32 raw bytes or 64 hexadecimal characters (found {found} bytes); generate one with `klio keys generate > {path}`")]
    Format { path: String, found: usize },
    #[error("the master key does not match the one this data directory was created with (it cannot unwrap {what}); start with the original master_key_file")]
    WrongMasterKey { what: String },
    #[error("wrapped key for cluster {cluster} is malformed ({len} bytes)")]
    Malformed { cluster: String, len: usize },
}

/// The server's 256-bit master key.
pub struct MasterKey(Zeroizing<[u8; 32]>);

/// A cluster's 256-bit data key.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

fn random_32() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut k[..]);
    k
}

fn seal(key: &[u8; 32], ad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte AES-256 key");
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain,
                aad: ad,
            },
        )
        .expect("AES-GCM encryption of a small buffer cannot fail");
    let mut out = Vec::with_capacity(1 + 12 + ct.len());
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open(key: &[u8; 32], ad: &[u8], wrapped: &[u8]) -> Option<Vec<u8>> {
    if wrapped.len() < 1 + 12 + 16 || wrapped[0] != WRAP_VERSION {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte AES-256 key");
    cipher
        .decrypt(
            &Nonce::try_from(&wrapped[1..13]).expect("12 bytes"),
            Payload {
                msg: &wrapped[13..],
                aad: ad,
            },
        )
        .ok()
}

impl MasterKey {
    /// Reads 32 raw bytes or 64 hex characters (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyError> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?);
        Self::from_bytes(&raw).ok_or_else(|| KeyError::Format {
            path: path.display().to_string(),
            found: raw.len(),
        })
    }

    pub fn from_bytes(raw: &[u8]) -> Option<MasterKey> {
        let mut k = Zeroizing::new([0u8; 32]);
        if raw.len() == 32 {
            k.copy_from_slice(raw);
            return Some(MasterKey(k));
        }
        let text = std::str::from_utf8(raw).ok()?.trim();
        if text.len() == 64 {
            hex::decode_to_slice(text, &mut k[..]).ok()?;
            return Some(MasterKey(k));
        }
        None
    }

    pub fn generate() -> MasterKey {
        MasterKey(random_32())
    }

    /// Hex form, for writing a freshly generated key to a file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    fn wrap_ad(cluster: &ClusterName) -> Vec<u8> {
        let mut ad = WRAP_AD.to_vec();
        ad.extend_from_slice(cluster.as_str().as_bytes());
        ad
    }

    /// Wraps a cluster's data key; the cluster name is bound in the associated data.
    pub fn wrap(&self, key: &DataKey, cluster: &ClusterName) -> Vec<u8> {
        seal(&self.0, &Self::wrap_ad(cluster), &key.0[..])
    }

    pub fn unwrap(&self, wrapped: &[u8], cluster: &ClusterName) -> Result<DataKey, KeyError> {
        let plain = open(&self.0, &Self::wrap_ad(cluster), wrapped).ok_or_else(|| {
            if wrapped.len() != 1 + 12 + 32 + 16 {
                KeyError::Malformed {
                    cluster: cluster.to_string(),
                    len: wrapped.len(),
                }
            } else {
                KeyError::WrongMasterKey {
                    what: format!("the data key of cluster {cluster}"),
                }
            }
        })?;
        let plain = Zeroizing::new(plain);
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&plain);
        Ok(DataKey(k))
    }

    /// A value stored once per data directory to recognise this key at startup.
    pub fn check_value(&self) -> Vec<u8> {
        seal(&self.0, CHECK_AD, CHECK_PLAINTEXT)
    }

    pub fn verify_check_value(&self, stored: &[u8]) -> Result<(), KeyError> {
        match open(&self.0, CHECK_AD, stored) {
            Some(p) if p == CHECK_PLAINTEXT => Ok(()),
            _ => Err(KeyError::WrongMasterKey {
                what: "the catalog's key check value".into(),
            }),
        }
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(random_32())
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A 32-byte subkey for another purpose (HKDF-SHA256 with this salt and info),
    /// e.g. the key of the chunk-id hash. Different `info` gives unrelated keys.
    pub fn derive_subkey(&self, salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &self.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(info, &mut out[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let m = MasterKey::generate();
        let d = DataKey::generate();
        let w = m.wrap(&d, &c("a"));
        assert_eq!(m.unwrap(&w, &c("a")).unwrap().0[..], d.0[..]);
        assert!(matches!(
            m.unwrap(&w, &c("b")),
            Err(KeyError::WrongMasterKey { .. })
        ));
        let other = MasterKey::generate();
        assert!(matches!(
            other.unwrap(&w, &c("a")),
            Err(KeyError::WrongMasterKey { .. })
        ));
        assert!(other.verify_check_value(&m.check_value()).is_err());
        assert!(m.verify_check_value(&m.check_value()).is_ok());
    }

    #[test]
    fn reads_raw_and_hex_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = MasterKey::generate();
        let hexp = dir.path().join("hex");
        std::fs::write(&hexp, format!("{}\n", m.to_hex().as_str())).unwrap();
        let rawp = dir.path().join("raw");
        std::fs::write(&rawp, &m.0[..]).unwrap();
        let a = MasterKey::from_file(&hexp).unwrap();
        let b = MasterKey::from_file(&rawp).unwrap();
        assert_eq!(a.0[..], m.0[..]);
        assert_eq!(b.0[..], m.0[..]);
        let badp = dir.path().join("bad");
        std::fs::write(&badp, "short").unwrap();
        let err = MasterKey::from_file(&badp).unwrap_err().to_string();
        assert!(err.contains("64 hexadecimal"), "{err}");
    }
}

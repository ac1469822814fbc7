//! SCRAM channel binding data of type `tls-server-end-point` (RFC 5929 §4.1): the hash of
//! the server's TLS certificate, with the certificate's signature hash, except that MD5
//! and SHA-1 become SHA-256. Reads the signature algorithm with a small DER walk of the
//! (untrusted, server-sent) certificate. Touches no files.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The hash functions a certificate signature can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SigHash {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

// Signature algorithm OIDs (DER content octets).
const RSA_PKCS1: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01]; // 1.2.840.113549.1.1
const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03]; // 1.2.840.10045.4.3
const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01]; // 1.2.840.10045.4.1
const DSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02]; // 2.16.840.1.101.3.4.2
const SHA1: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1A]; // 1.3.14.3.2.26
const ED25519: &[u8] = &[0x2B, 0x65, 0x70];
const ED448: &[u8] = &[0x2B, 0x65, 0x71];

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// `[0] EXPLICIT`: RSASSA-PSS-params' hashAlgorithm.
const CONTEXT_0: u8 = 0xA0;

/// The channel binding data for the server certificate `cert_der`, or why there is none.
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let hash = signature_hash(cert_der)?;
    Ok(match hash {
        SigHash::Md5 | SigHash::Sha1 | SigHash::Sha256 => Sha256::digest(cert_der).to_vec(),
        SigHash::Sha224 => Sha224::digest(cert_der).to_vec(),
        SigHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        SigHash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

/// The hash of the certificate's `signatureAlgorithm`.
fn signature_hash(cert_der: &[u8]) -> Result<SigHash, String> {
    let malformed = || "the server certificate is not valid DER".to_owned();
    let (cert, _) = expect(cert_der, SEQUENCE).ok_or_else(malformed)?;
    let (_tbs, rest) = expect(cert, SEQUENCE).ok_or_else(malformed)?;
    let (algorithm, _) = expect(rest, SEQUENCE).ok_or_else(malformed)?;
    let (oid, params) = expect(algorithm, OID).ok_or_else(malformed)?;
    let last = |prefix: &[u8]| {
        oid.strip_prefix(prefix).and_then(|tail| match tail {
            [b] => Some(*b),
            _ => None,
        })
    };
    let hash = if let Some(n) = last(RSA_PKCS1) {
        match n {
            4 => Some(SigHash::Md5),
            5 => Some(SigHash::Sha1),
            10 => Some(pss_hash(params).ok_or_else(malformed)?),
            11 => Some(SigHash::Sha256),
            12 => Some(SigHash::Sha384),
            13 => Some(SigHash::Sha512),
            14 => Some(SigHash::Sha224),
            _ => None,
        }
    } else if let Some(n) = last(ECDSA_SHA2).or_else(|| last(NIST_SIG)) {
        // ecdsa-with-SHA224..512 and dsa-with-sha224..512 are 1..4; the SHA-3 ones
        // (5..16) are not supported.
        match n {
            1 => Some(SigHash::Sha224),
            2 => Some(SigHash::Sha256),
            3 => Some(SigHash::Sha384),
            4 => Some(SigHash::Sha512),
            _ => None,
        }
    } else if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        Some(SigHash::Sha1)
    } else {
        None
    };
    hash.ok_or_else(|| {
        let name = if oid == ED25519 {
            "Ed25519".to_owned()
        } else if oid == ED448 {
            "Ed448".to_owned()
        } else {
            format!("OID {}", hex::encode(oid))
        };
        format!(
            "the server certificate is signed with {name}, which has no hash for \
             tls-server-end-point channel binding"
        )
    })
}

/// RSASSA-PSS-params: `hashAlgorithm [0] EXPLICIT AlgorithmIdentifier DEFAULT sha1`.
fn pss_hash(params: &[u8]) -> Option<SigHash> {
    let (params, _) = expect(params, SEQUENCE)?;
    let Some((explicit, _)) = expect(params, CONTEXT_0) else {
        return Some(SigHash::Sha1);
    };
    let (algorithm, _) = expect(explicit, SEQUENCE)?;
    let (oid, _) = expect(algorithm, OID)?;
    if oid == SHA1 {
        return Some(SigHash::Sha1);
    }
    match oid.strip_prefix(NIST_HASH)? {
        [1] => Some(SigHash::Sha256),
        [2] => Some(SigHash::Sha384),
        [3] => Some(SigHash::Sha512),
        [4] => Some(SigHash::Sha224),
        _ => None,
    }
}

/// Splits one DER element with tag `tag` off `input`: (its content, what follows).
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(signature_hash(&p256), Ok(SigHash::Sha256));
        assert_eq!(
            tls_server_end_point(&p256).unwrap(),
            Sha256::digest(&p256).to_vec()
        );
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(signature_hash(&p384), Ok(SigHash::Sha384));
        assert_eq!(
            tls_server_end_point(&p384).unwrap(),
            Sha384::digest(&p384).to_vec()
        );
        let ed = cert(&rcgen::PKCS_ED25519);
        let err = tls_server_end_point(&ed).unwrap_err();
        assert!(err.contains("Ed25519"), "{err}");
    }

    /// Certificates with only the signature algorithm that matters (the rest is opaque).
    fn fake_cert(alg: &[u8]) -> Vec<u8> {
        let mut body = vec![SEQUENCE, 3, 2, 1, 0]; // a stand-in tbsCertificate
        body.push(SEQUENCE);
        body.push(alg.len() as u8);
        body.extend_from_slice(alg);
        body.extend_from_slice(&[0x03, 1, 0]); // empty BIT STRING
        let mut der = vec![SEQUENCE, 0x81, body.len() as u8];
        der.extend(body);
        der
    }

    fn oid(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![OID, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn md5_and_sha1_become_sha256_and_rsa_variants_are_named() {
        let rsa = |n: u8| oid(&[RSA_PKCS1, &[n]].concat());
        for (n, want) in [
            (4, SigHash::Md5),
            (5, SigHash::Sha1),
            (11, SigHash::Sha256),
            (12, SigHash::Sha384),
            (13, SigHash::Sha512),
            (14, SigHash::Sha224),
        ] {
            let der = fake_cert(&rsa(n));
            assert_eq!(signature_hash(&der), Ok(want), "rsa {n}");
        }
        let md5 = fake_cert(&rsa(4));
        assert_eq!(
            tls_server_end_point(&md5).unwrap(),
            Sha256::digest(&md5).to_vec()
        );
        assert_eq!(
            signature_hash(&fake_cert(&oid(ECDSA_SHA1))),
            Ok(SigHash::Sha1)
        );
        // RSASSA-PSS with SHA-384 in its parameters, and with the default (SHA-1).
        let mut pss = rsa(10);
        let hash_alg = [&[SEQUENCE, 11][..], &oid(&[NIST_HASH, &[2]].concat())].concat();
        let explicit = [&[CONTEXT_0, hash_alg.len() as u8][..], &hash_alg].concat();
        pss.extend([&[SEQUENCE, explicit.len() as u8][..], &explicit].concat());
        assert_eq!(signature_hash(&fake_cert(&pss)), Ok(SigHash::Sha384));
        let mut pss_default = rsa(10);
        pss_default.extend([SEQUENCE, 0]);
        assert_eq!(signature_hash(&fake_cert(&pss_default)), Ok(SigHash::Sha1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Fuzz: a hostile certificate never panics the DER walk.
        #[test]
        fn arbitrary_certificates_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = tls_server_end_point(&bytes);
        }
    }
}

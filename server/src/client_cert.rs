//! Which clusters a verified client certificate speaks for.
//!
//! A certificate names a cluster the way CloudNativePG issues them: subject
//! `CN=user@cluster` (e.g. `streaming_replica@pg-main`), or a DNS subject alternative
//! name that is *exactly* one of the names configured for the cluster
//! (`client_cert_dns_names`; the bare cluster name always counts). A CN without `@`
//! names no cluster, and a DNS name is never cut into labels (`pg-main.evil.example`
//! names nothing unless configured).
//!
//! A name counts only if the certificate chains to a CA trusted *for that cluster*: the
//! cluster's own `client_ca_file` (CloudNativePG issues one CA per cluster, the
//! `<cluster>-ca` Secret) or the server-wide `[tls] client_ca_file` when the operator
//! explicitly keeps one shared CA (`client_ca_shared = true`). So cluster A's CA cannot
//! issue a certificate for cluster B. Reads nothing from disk itself.

use std::sync::Arc;

use klio_core::ClusterName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

/// What a connection's verified client certificate says (empty without one). Handlers
/// see it as `ConnectInfo<ClientCert>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate's subject, for logs (empty without a certificate).
    pub subject: String,
    /// The clusters it speaks for (see the module documentation).
    pub clusters: Vec<ClusterName>,
}

/// The names a certificate carries, before any CA is consulted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CertNames {
    /// Subject common names.
    pub common_names: Vec<String>,
    /// DNS subject alternative names, as written in the certificate.
    pub dns_names: Vec<String>,
}

impl CertNames {
    /// Reads the subject's common names and the DNS subject alternative names of a
    /// certificate (DER). A certificate that cannot be parsed names nothing.
    pub(crate) fn from_der(der: &[u8]) -> CertNames {
        let der = CertificateDer::from(der);
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
            return CertNames::default();
        };
        CertNames {
            common_names: subject_common_names(cert.subject()),
            dns_names: cert.valid_dns_names().map(str::to_string).collect(),
        }
    }

    fn subject(&self) -> String {
        self.common_names
            .iter()
            .map(|cn| format!("CN={cn}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One cluster's client-certificate trust: its CA (if any) and the DNS names that name it.
#[derive(Clone)]
pub(crate) struct ClusterTrust {
    pub cluster: ClusterName,
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
    pub dns_names: Vec<String>,
}

/// How client certificates map to clusters (see the module documentation).
#[derive(Clone, Default)]
pub(crate) struct ClientCertPolicy {
    /// The server-wide CA, when it is explicitly shared by every cluster.
    pub shared: Option<Arc<dyn ClientCertVerifier>>,
    pub clusters: Vec<ClusterTrust>,
}

impl std::fmt::Debug for ClientCertPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertPolicy")
            .field("shared", &self.shared.is_some())
            .field(
                "clusters",
                &self
                    .clusters
                    .iter()
                    .map(|c| (c.cluster.as_str(), c.verifier.is_some(), &c.dns_names))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ClientCertPolicy {
    /// The clusters a presented chain (leaf first) speaks for.
    pub(crate) fn identify(&self, chain: &[CertificateDer<'_>]) -> ClientCert {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return ClientCert::default();
        };
        let names = CertNames::from_der(leaf);
        let now = UnixTime::now();
        let chains_to = |v: &Arc<dyn ClientCertVerifier>| {
            v.verify_client_cert(leaf, intermediates, now).is_ok()
        };
        let shared_ok = self.shared.as_ref().is_some_and(chains_to);
        let mut clusters: Vec<ClusterName> = self
            .clusters
            .iter()
            .filter(|t| names_cluster(&names, t))
            .filter(|t| shared_ok || t.verifier.as_ref().is_some_and(chains_to))
            .map(|t| t.cluster.clone())
            .collect();
        clusters.sort();
        clusters.dedup();
        ClientCert {
            subject: names.subject(),
            clusters,
        }
    }
}

/// Whether the certificate's names designate `t`'s cluster (CA not considered).
fn names_cluster(names: &CertNames, t: &ClusterTrust) -> bool {
    names
        .common_names
        .iter()
        .filter_map(|cn| cluster_of_common_name(cn))
        .any(|c| c == t.cluster)
        || names.dns_names.iter().any(|d| {
            d.eq_ignore_ascii_case(t.cluster.as_str())
                || t.dns_names.iter().any(|n| d.eq_ignore_ascii_case(n))
        })
}

/// `user@cluster` → `cluster` (CloudNativePG's client certificates).
pub fn cluster_of_common_name(cn: &str) -> Option<ClusterName> {
    let (user, cluster) = cn.rsplit_once('@')?;
    if user.is_empty() {
        return None;
    }
    cluster.parse().ok()
}

/// The common names (OID 2.5.4.3) in a DER subject `Name` given without its outer
/// SEQUENCE header (as webpki hands it out). Malformed input yields what was read so far.
fn subject_common_names(mut name: &[u8]) -> Vec<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut out = Vec::new();
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while let Some((0x31, mut set, rest)) = der_tlv(name) {
        name = rest;
        while let Some((0x30, attr, rest)) = der_tlv(set) {
            set = rest;
            let Some((0x06, oid, value)) = der_tlv(attr) else {
                continue;
            };
            // UTF8String, PrintableString, IA5String
            if let Some((0x0c | 0x13 | 0x16, text, _)) = der_tlv(value) {
                if oid == CN {
                    if let Ok(t) = std::str::from_utf8(text) {
                        out.push(t.to_string());
                    }
                }
            }
        }
    }
    out
}

/// One DER tag-length-value (single-byte tags, definite lengths): tag, value, rest.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (digits, rest) = b.split_at(n);
        b = rest;
        digits
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_harness::TestCa;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    fn name(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    #[test]
    fn common_names_map_user_at_cluster() {
        assert_eq!(
            cluster_of_common_name("streaming_replica@pg-main"),
            Some(name("pg-main"))
        );
        assert_eq!(cluster_of_common_name("a@b@pg-main"), Some(name("pg-main")));
        assert_eq!(cluster_of_common_name("streaming_replica"), None);
        assert_eq!(cluster_of_common_name("@pg-main"), None);
        assert_eq!(cluster_of_common_name("x@"), None);
        assert_eq!(cluster_of_common_name("x@Bad/Name"), None);
    }

    fn self_signed(cn: &str, dns: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn certificate_names_are_read() {
        let n = CertNames::from_der(&self_signed("streaming_replica@pg-a", &["pg-b.ns.svc"]));
        assert_eq!(n.common_names, vec!["streaming_replica@pg-a".to_string()]);
        assert_eq!(n.dns_names, vec!["pg-b.ns.svc".to_string()]);
        assert_eq!(CertNames::from_der(b"not DER"), CertNames::default());
    }

    #[test]
    fn der_reader_survives_any_bytes() {
        let der = self_signed("x@pg-a", &["pg-b"]);
        // Every truncation and every single-byte corruption: no panic.
        for n in 0..der.len() {
            let _ = CertNames::from_der(&der[..n]);
            let mut bad = der.clone();
            bad[n] ^= 0xff;
            let _ = CertNames::from_der(&bad);
        }
        for n in 0..64 {
            let _ = subject_common_names(&der[n..]);
        }
    }

    fn verifier(ca: &TestCa) -> Arc<dyn ClientCertVerifier> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        ca.write_cert(&path).unwrap();
        let pem = std::fs::read(&path).unwrap();
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile_certs(&pem) {
            roots.add(c).unwrap();
        }
        WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn issue(ca: &TestCa, cn: &str, dns: &[&str]) -> Vec<CertificateDer<'static>> {
        let dir = tempfile::tempdir().unwrap();
        let (crt, _) = ca.write_client_cert(dir.path(), "c", cn, dns).unwrap();
        rustls_pemfile_certs(&std::fs::read(crt).unwrap())
    }

    #[test]
    fn a_cluster_ca_cannot_issue_for_another_cluster() {
        let (ca_a, ca_b) = (TestCa::new("ca a").unwrap(), TestCa::new("ca b").unwrap());
        let policy = ClientCertPolicy {
            shared: None,
            clusters: vec![
                ClusterTrust {
                    cluster: name("a"),
                    verifier: Some(verifier(&ca_a)),
                    dns_names: vec![],
                },
                ClusterTrust {
                    cluster: name("b"),
                    verifier: Some(verifier(&ca_b)),
                    dns_names: vec!["klio-b.ns.svc".into()],
                },
            ],
        };
        let ids = |chain: Vec<CertificateDer<'static>>| policy.identify(&chain).clusters;
        assert_eq!(ids(issue(&ca_a, "u@a", &[])), vec![name("a")]);
        assert_eq!(ids(issue(&ca_b, "u@b", &[])), vec![name("b")]);
        // Cluster a's CA naming b (by CN or by DNS name): nothing.
        assert!(ids(issue(&ca_a, "u@b", &[])).is_empty());
        assert!(ids(issue(&ca_a, "x", &["b", "klio-b.ns.svc"])).is_empty());
        // DNS names match whole configured names only.
        assert_eq!(ids(issue(&ca_b, "x", &["klio-b.ns.svc"])), vec![name("b")]);
        assert_eq!(ids(issue(&ca_b, "x", &["b"])), vec![name("b")]);
        assert!(ids(issue(&ca_b, "x", &["b.evil.example"])).is_empty());
        assert!(ids(issue(&ca_b, "x", &["klio-b.ns.svc.evil.example"])).is_empty());
        assert!(policy.identify(&[]).clusters.is_empty());
    }

    #[test]
    fn a_shared_ca_speaks_for_every_cluster_it_names() {
        let shared = TestCa::new("shared").unwrap();
        let policy = ClientCertPolicy {
            shared: Some(verifier(&shared)),
            clusters: vec![
                ClusterTrust {
                    cluster: name("a"),
                    verifier: None,
                    dns_names: vec![],
                },
                ClusterTrust {
                    cluster: name("b"),
                    verifier: None,
                    dns_names: vec![],
                },
            ],
        };
        let c = policy.identify(&issue(&shared, "u@b", &["a"]));
        assert_eq!(c.clusters, vec![name("a"), name("b")]);
        assert_eq!(c.subject, "CN=u@b");
        let other = TestCa::new("other").unwrap();
        assert!(policy
            .identify(&issue(&other, "u@b", &[]))
            .clusters
            .is_empty());
    }
}

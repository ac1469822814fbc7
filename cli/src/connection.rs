//! What every client command shares: where the server is, which credentials to present
//! ([`ConnectionArgs`]), and which cluster is meant ([`cluster_arg`]).

use std::path::PathBuf;

use clap::Args;
use klio_api::client::{Client, ClientError, Credentials, DEFAULT_SERVER};
use klio_core::ClusterName;

/// Where the server is and which token to present.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// URL of the Klio server's HTTP API.
    #[arg(long, env = "KLIO_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// File holding the cluster's bearer token (optional with --cert).
    #[arg(long, env = "KLIO_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// server instead of the built-in roots.
    #[arg(long, env = "KLIO_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) naming the cluster (CN user@cluster), for mTLS.
    #[arg(long, env = "KLIO_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KLIO_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Send the token over plain http:// to a server on another machine (anyone on the
    /// network path can read it: prefer an https:// server).
    #[arg(long, env = "KLIO_INSECURE_HTTP")]
    pub insecure_http: bool,
}

impl ConnectionArgs {
    pub(crate) fn credentials(&self) -> Credentials {
        Credentials {
            token_file: self.token_file.clone(),
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure_http: self.insecure_http,
        }
    }

    pub(crate) fn client(&self) -> Result<Client, ClientError> {
        Client::connect(&self.server, &self.credentials())
    }
}

pub(crate) fn cluster_arg(cluster: Option<&str>) -> Result<ClusterName, ClientError> {
    let raw = cluster.ok_or_else(|| {
        ClientError::Usage("no cluster given: pass --cluster NAME or set KLIO_CLUSTER".into())
    })?;
    raw.parse()
        .map_err(|e| ClientError::Usage(format!("--cluster / KLIO_CLUSTER: {e}")))
}

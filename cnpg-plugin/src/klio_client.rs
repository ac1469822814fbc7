//! The Klio Server as the sidecars reach it: an API client built from a parameter set
//! and the Secret mounted for it, and the mapping of the client's errors onto gRPC
//! status codes. Reads the mounted `token` (and `ca.crt`); writes nothing.

use std::path::{Path, PathBuf};

use klio_api::client::{Client, ClientError, Credentials};
use tonic::Status;

use crate::params::KlioParams;

/// The API client for `params`, with the Secret files found under `credentials_dir`
/// (`<dir>/<secret>/token`, and `<dir>/<secret>/ca.crt` for an https:// server when
/// present).
pub fn connect(params: &KlioParams, credentials_dir: &Path) -> Result<Client, Status> {
    let dir: PathBuf = credentials_dir.join(params.secret.as_str());
    let cacert = dir.join("ca.crt");
    let creds = Credentials {
        token_file: Some(dir.join("token")),
        cacert: (params.server.starts_with("https://") && cacert.exists()).then_some(cacert),
        cert: None,
        key: None,
        insecure_http: params.insecure_http,
    };
    Client::connect(&params.server, &creds).map_err(|e| {
        Status::failed_precondition(format!(
            "cannot set up the Klio client for cluster {} (Secret {}): {e}",
            params.cluster,
            params.secret.as_str()
        ))
    })
}

/// A Klio client error as a gRPC status: absent things are NotFound (what the instance
/// manager expects of a WAL archive), the server being unreachable is Unavailable.
pub fn status(e: ClientError) -> Status {
    let msg = e.to_string();
    match e {
        ClientError::NotFound(_) => Status::not_found(msg),
        ClientError::Usage(_) | ClientError::WrongSystem(_) | ClientError::AbortRecovery(_) => {
            Status::failed_precondition(msg)
        }
        ClientError::Connect { .. } => Status::unavailable(msg),
        ClientError::Unauthorized { .. } => Status::unauthenticated(msg),
        ClientError::Forbidden { .. } => Status::permission_denied(msg),
        ClientError::Conflict(_) | ClientError::Failed(_) => Status::aborted(msg),
        ClientError::Server { permanent, .. } => {
            if permanent {
                Status::internal(msg)
            } else {
                Status::unavailable(msg)
            }
        }
        ClientError::Io(_) | ClientError::BadManifest(_) => Status::internal(msg),
    }
}

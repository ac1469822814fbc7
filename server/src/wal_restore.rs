//! `klio wal-restore`'s fetch: one WAL file from the server into the path PostgreSQL's
//! `restore_command` names, refused when it is another database system's; written
//! atomically (a temporary file in the same directory, renamed over the destination).

use std::io::Write;
use std::path::{Path, PathBuf};

use klio_api::client::{Client, ClientError};
use klio_core::{ClusterName, WalFileKind, WalFileName};

/// `klio wal-restore`: validates `walfile` before any I/O, fetches it and writes it to
/// `dest` atomically. Returns the number of bytes written.
/// Fetches `walfile` into `dest`. With `system_id` (the data directory's), a segment whose
/// header names another database system is refused and nothing is written.
pub async fn wal_restore(
    client: &Client,
    cluster: &ClusterName,
    walfile: &str,
    dest: &Path,
    system_id: Option<u64>,
) -> Result<u64, ClientError> {
    let name = parse_wal_name(walfile)?;
    let bytes = client
        .fetch_wal(cluster, &name)
        .await
        .map_err(|e| match e {
            ClientError::NotFound(_) => ClientError::NotFound(format!(
                "{name} not found on the server for cluster {cluster}"
            )),
            other => other,
        })?;
    if let (Some(expected), Some(h), WalFileKind::Segment) = (
        system_id,
        klio_core::SegmentHeader::parse(&bytes),
        name.kind(),
    ) {
        if h.system_id != expected {
            return Err(ClientError::WrongSystem(format!(
                "refusing {name}: cluster {cluster} on the server is database system {}, \
                 but this data directory is {expected}; check --cluster / KLIO_CLUSTER \
                 (recovery stops here rather than end early)",
                h.system_id
            )));
        }
    }
    let len = bytes.len() as u64;
    let dest_owned: PathBuf = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&dest_owned, &bytes))
        .await
        .map_err(|e| ClientError::Io(format!("writing {}: {e}", dest.display())))?
        .map_err(|e| ClientError::Io(format!("cannot write {}: {e}", dest.display())))?;
    Ok(len)
}

/// Validates a WAL file name given on the command line.
pub fn parse_wal_name(walfile: &str) -> Result<WalFileName, ClientError> {
    walfile.parse().map_err(|e| {
        ClientError::Usage(format!(
            "{e}; restore_command should be 'klio wal-restore %f %p'"
        ))
    })
}

/// Writes `bytes` to `dest` so that `dest` is either absent/unchanged or complete:
/// temporary file in the same directory, then rename. Not fsync'ed: what a
/// restore_command writes is read once by the startup process and never relied on after
/// a crash (recovery restarts and fetches it again), and spool entries are checked
/// against their CRC before use; two 16 MB fsyncs per segment would halve replay speed.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = dest.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "destination is not a file path",
        )
    })?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".klio-tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // On error the temporary file is removed when `tmp` drops.
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
#[path = "wal_restore_tests.rs"]
mod tests;

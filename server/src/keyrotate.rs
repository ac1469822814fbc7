//! Master-key rotation (`klio keys rotate`, the server stopped): every cluster's data key
//! is wrapped again with the new master key, in the catalog and in the cluster's
//! `cluster.json` in Tier 2; no data is rewritten (the data keys stay). Afterwards the
//! key check file names the new key, so the old one opens nothing Klio keeps.
//!
//! Crash safety: a journal (`key-rotation.json` in the data directory, written durably
//! first) holds both key check values and every cluster's old and new wrapped key
//! (useless without a master key). Until it is removed, each start of the server
//! resolves it with the configured master key: the new key completes the rotation, the
//! old key rolls it back; every step is idempotent.

use std::sync::Arc;

use anyhow::{bail, Context};
use klio_catalog::{Catalog, RelayKind, Tier2Object};
use klio_core::clock::unix_now;
use klio_core::crashsafe::write_file_durably;
use klio_core::layout::DataDir;
use klio_core::{ClusterName, MasterKey};
use klio_receiver::cluster::{decode_key_check, encode_key_check, ServerContext};
use klio_tiering::objects::{cluster_key, ClusterObject};
use klio_tiering::Tier2;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ServerMode};

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// Hex key check values of the old and the new master key.
    old_check: String,
    new_check: String,
    clusters: Vec<JournalCluster>,
}

#[derive(Debug, Serialize, Deserialize)]
struct JournalCluster {
    name: ClusterName,
    old_wrapped: String,
    new_wrapped: String,
}

/// What a rotation changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RotateReport {
    pub clusters: usize,
    /// `cluster.json` objects rewritten in Tier 2.
    pub tier2_objects: usize,
}

/// Tier 2 as configured (read-only on a read-only server: its bucket is the writer's).
fn open_tier2(config: &Config) -> anyhow::Result<Option<Arc<Tier2>>> {
    Ok(match &config.tier2 {
        Some(s) => {
            let t = Tier2::open(s).context("[tier2]")?;
            Some(Arc::new(match config.mode {
                ServerMode::ReadOnly => t.read_only(),
                ServerMode::Standard => t,
            }))
        }
        None => None,
    })
}

/// Rotates the master key of `config`'s data directory to `new` (the server must be
/// stopped). A rotation left unfinished is first resolved with the configured key.
pub async fn rotate(config: &Config, new: &MasterKey) -> anyhow::Result<RotateReport> {
    let old = config.load_master_key()?;
    if new.verify_check_value(&old.check_value()).is_ok() {
        bail!("the new master key is the key in use ({}): generate another with `klio keys generate --output FILE`", config.master_key_file.display());
    }
    let tier2 = open_tier2(config)?;
    finish_pending(config, &old, tier2.as_deref()).await?;
    let data = DataDir::new(&config.data_dir);
    let ctx = ServerContext::open(&config.data_dir, config.load_master_key()?)
        .context("opening the data directory (is the server still running? stop it first)")?;
    let mut clusters = Vec::new();
    for rec in ctx.catalog.clusters()? {
        let key = old
            .unwrap(&rec.wrapped_key, &rec.name)
            .with_context(|| format!("cluster {}: unwrapping its data key", rec.name))?;
        clusters.push(JournalCluster {
            name: rec.name.clone(),
            old_wrapped: hex::encode(&rec.wrapped_key),
            new_wrapped: hex::encode(new.wrap(&key, &rec.name)),
        });
    }
    let journal = Journal {
        old_check: hex::encode(old.check_value()),
        new_check: hex::encode(new.check_value()),
        clusters,
    };
    let path = data.key_rotation();
    write_file_durably(&path, &serde_json::to_vec_pretty(&journal)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let tier2_objects = apply(&data, &ctx.catalog, &journal, true, tier2.as_deref()).await?;
    Ok(RotateReport {
        clusters: journal.clusters.len(),
        tier2_objects,
    })
}

/// Completes (configured key = the new one) or rolls back (= the old one) a rotation
/// that was interrupted; nothing to do without a journal. Returns what it did.
pub async fn finish_pending(
    config: &Config,
    master: &MasterKey,
    tier2: Option<&Tier2>,
) -> anyhow::Result<Option<&'static str>> {
    let data = DataDir::new(&config.data_dir);
    let path = data.key_rotation();
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let journal: Journal = serde_json::from_slice(&raw)
        .with_context(|| format!("{}: not a key rotation journal", path.display()))?;
    let opens = |hex_value: &str| {
        hex::decode(hex_value).is_ok_and(|v| master.verify_check_value(&v).is_ok())
    };
    let to_new = if opens(&journal.new_check) {
        true
    } else if opens(&journal.old_check) {
        false
    } else {
        bail!(
            "{}: a master-key rotation was interrupted, and master_key_file ({}) is neither its old nor its new key; configure one of them and start again",
            path.display(),
            config.master_key_file.display()
        );
    };
    let catalog = Catalog::open(&data.catalog_dir())
        .with_context(|| format!("opening the catalog in {}", data.catalog_dir().display()))?;
    apply(&data, &catalog, &journal, to_new, tier2).await?;
    let done = if to_new { "completed" } else { "rolled back" };
    tracing::warn!(journal = %path.display(), "an interrupted master-key rotation was {done}");
    Ok(Some(done))
}

/// Makes the catalog, the key check file and Tier 2's cluster objects hold the new
/// (`to_new`) or the old wrapped keys, then removes the journal. Returns how many Tier 2
/// objects it rewrote.
async fn apply(
    data: &DataDir,
    catalog: &Catalog,
    journal: &Journal,
    to_new: bool,
    tier2: Option<&Tier2>,
) -> anyhow::Result<usize> {
    let mut records = Vec::new();
    for c in &journal.clusters {
        let wrapped = hex::decode(if to_new {
            &c.new_wrapped
        } else {
            &c.old_wrapped
        })
        .context("the rotation journal holds a wrapped key that is not hex")?;
        let Some(mut rec) = catalog.cluster(&c.name)? else {
            continue;
        };
        if rec.wrapped_key != wrapped {
            rec.wrapped_key = wrapped;
            catalog.put_cluster(&rec)?;
        }
        records.push(rec);
    }
    let check = hex::decode(if to_new {
        &journal.new_check
    } else {
        &journal.old_check
    })
    .context("the rotation journal holds a check value that is not hex")?;
    let check_path = data.key_check();
    let current = std::fs::read(&check_path).ok();
    if current.as_deref().and_then(decode_key_check) != Some(check.as_slice()) {
        write_file_durably(&check_path, &encode_key_check(&check))
            .with_context(|| format!("writing {}", check_path.display()))?;
    }
    klio_core::failpoint::hit("keys-rotate-after-catalog");
    let mut rewritten = 0;
    if let Some(t2) = tier2.filter(|t| !t.is_read_only()) {
        for rec in &records {
            // Not uploaded yet: the relay uploads the object as the catalog has it now.
            let name = rec.name.as_str();
            if catalog
                .tier2_object(&rec.name, RelayKind::Cluster, name)?
                .is_none()
            {
                continue;
            }
            let body = ClusterObject::from_record(rec).to_bytes();
            let key = cluster_key(&rec.name);
            t2.replace(&key, body.clone().into())
                .await
                .with_context(|| format!("rewriting {t2}/{key}"))?;
            use sha2::Digest;
            let held = Tier2Object {
                kind: RelayKind::Cluster,
                name: name.to_string(),
                key: key.to_string(),
                bytes: body.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(&body)),
                uploaded_unix: unix_now(),
                pruned_unix: None,
            };
            catalog.record_tier2_scan(&rec.name, std::slice::from_ref(&held), &[], &[])?;
            rewritten += 1;
        }
    }
    let path = data.key_rotation();
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    klio_core::crashsafe::fsync_dir(data.root())
        .with_context(|| format!("syncing {}", data.root().display()))?;
    Ok(rewritten)
}

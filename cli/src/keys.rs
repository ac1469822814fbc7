//! `klio keys generate`: a new master key, into a file only its owner can read.
//! `klio keys rotate`: wrap every cluster key with a new master key (server stopped).

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use klio_core::MasterKey;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// A new random master key (32 bytes as 64 hex characters), into a new file readable
    /// by its owner only (--output), or to stdout.
    Generate {
        /// Create this file (mode 0600; an existing file is never replaced).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Wrap every cluster's data key with a new master key, in the catalog and in Tier 2
    /// (no data is rewritten); the old key opens nothing afterwards. Stop the server
    /// first; then point master_key_file at the new key and start it.
    #[cfg(feature = "server")]
    Rotate {
        /// The server's configuration (its master_key_file is the current key).
        #[arg(long, short, env = "KLIO_CONFIG", value_name = "PATH")]
        config: PathBuf,
        /// The new master key (`klio keys generate --output FILE`), mode 0600.
        #[arg(long, value_name = "FILE")]
        new_master_key_file: PathBuf,
    },
}

/// `klio keys rotate`.
#[cfg(feature = "server")]
pub(crate) async fn rotate(
    config: &std::path::Path,
    new_key: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = klio_server::config::Config::load(config)?;
    let new = MasterKey::from_file(new_key)
        .with_context(|| format!("--new-master-key-file {}", new_key.display()))?;
    klio_core::secret_file::check(new_key)
        .with_context(|| format!("--new-master-key-file {}", new_key.display()))?;
    let r = klio_server::keyrotate::rotate(&config, &new).await?;
    eprintln!(
        "klio: {} cluster key(s) wrapped with the new master key ({} cluster object(s) rewritten in Tier 2); the old key opens nothing any more. Now set master_key_file = {:?} in {} (or put the new key in {}) and start the server; keep the new key safe",
        r.clusters,
        r.tier2_objects,
        new_key.display().to_string(),
        config.file.display(),
        config.master_key_file.display()
    );
    Ok(())
}

/// `klio keys generate [--output FILE]`.
pub(crate) fn generate_key(output: Option<&std::path::Path>) -> u8 {
    let key = MasterKey::generate();
    let Some(path) = output else {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            eprintln!("klio: note: prefer `klio keys generate --output FILE`, which creates the file with mode 0600");
        }
        return match writeln!(std::io::stdout(), "{}", key.to_hex().as_str()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("klio: cannot write the key to stdout: {e}");
                2
            }
        };
    };
    let written = klio_core::secret_file::create_private(path).and_then(|mut f| {
        writeln!(f, "{}", key.to_hex().as_str())?;
        f.sync_all()
    });
    match written {
        Ok(()) => {
            eprintln!(
                "klio: wrote a new master key to {} (mode 0600); keep a copy somewhere safe: without it nothing Klio stored can be read",
                path.display()
            );
            0
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "klio: {} already exists: a master key is never overwritten (remove the file first if you really mean to replace it)",
                path.display()
            );
            2
        }
        Err(e) => {
            eprintln!("klio: cannot create {}: {e}", path.display());
            2
        }
    }
}

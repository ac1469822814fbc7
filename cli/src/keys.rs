//! `klio keys generate`: a new master key, into a file only its owner can read.

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

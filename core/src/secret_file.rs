//! Secret files: the rule a file holding a key or a token must meet before Klio reads
//! it, and the way Klio creates one. Reads metadata only; [`create_private`] writes the
//! one file it is given.
//!
//! The rule is PostgreSQL's for its SSL key: a secret file owned by the account Klio
//! runs as must not be readable, writable or executable by group or others (`0600` or
//! stricter); one owned by root may in addition be group-readable (`0640`), which is how
//! Kubernetes mounts a Secret with `defaultMode: 0440` and an `fsGroup`. Any other
//! owner is refused. Symlinks are followed (Kubernetes Secret volumes are symlinks into
//! a `..data` directory): what counts is the file that would be read.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A secret file that may not be used; Display names the file, why, and the fix.
#[derive(Debug)]
pub enum SecretFileError {
    /// The file cannot be examined (missing, unreadable directory, ...).
    Stat { path: String, source: io::Error },
    /// Others (or the group) may read it.
    TooOpen {
        path: String,
        mode: u32,
        allowed: u32,
    },
    /// Owned by an account that is neither Klio's nor root.
    Owner { path: String, uid: u32, ours: u32 },
}

impl fmt::Display for SecretFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretFileError::Stat { path, source } => write!(f, "{path}: {source}"),
            SecretFileError::TooOpen {
                path,
                mode,
                allowed,
            } => write!(
                f,
                "{path} holds a secret but has mode {mode:04o}, so other accounts can read it; \
                 allowed is at most {allowed:04o}: run `chmod {allowed:o} {path}` \
                 (in Kubernetes, mount the Secret with defaultMode: 0400)"
            ),
            SecretFileError::Owner { path, uid, ours } => write!(
                f,
                "{path} holds a secret but is owned by uid {uid}; it must belong to the \
                 account Klio runs as (uid {ours}) or to root: run `chown {ours} {path}`"
            ),
        }
    }
}

impl std::error::Error for SecretFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretFileError::Stat { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Checks that `path` may hold a secret (see the module documentation).
pub fn check(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Stat {
        path: path.display().to_string(),
        source,
    })?;
    check_metadata(
        &path.display().to_string(),
        meta.uid(),
        meta.mode(),
        effective_uid(),
    )
}

/// The rule itself, on an owner and mode, for `ours` = the effective uid.
pub fn check_metadata(path: &str, uid: u32, mode: u32, ours: u32) -> Result<(), SecretFileError> {
    let perms = mode & 0o7777;
    let allowed = if uid == ours {
        0o600
    } else if uid == 0 {
        0o640
    } else {
        return Err(SecretFileError::Owner {
            path: path.to_string(),
            uid,
            ours,
        });
    };
    // Anything beyond `allowed` (group write, any bit for others, execute, special bits).
    if perms & !allowed != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_string(),
            mode: perms,
            allowed,
        });
    }
    Ok(())
}

/// Creates `path` as a new file readable by its owner only (`0600`, whatever the umask).
/// Refuses to replace an existing file or to follow a symlink at `path`.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        // `create_new` (O_EXCL) already refuses a symlink at `path`; O_NOFOLLOW says so.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owner_may_read_and_write_nobody_else() {
        assert!(check_metadata("k", 1000, 0o100600, 1000).is_ok());
        assert!(check_metadata("k", 1000, 0o100400, 1000).is_ok());
        for mode in [0o644, 0o640, 0o604, 0o660, 0o700, 0o4600] {
            let e = check_metadata("/etc/klio/k", 1000, mode, 1000).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("chmod 600 /etc/klio/k"), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
        }
    }

    #[test]
    fn root_owned_files_may_be_group_readable() {
        assert!(check_metadata("k", 0, 0o640, 1000).is_ok());
        assert!(check_metadata("k", 0, 0o440, 1000).is_ok());
        assert!(check_metadata("k", 0, 0o644, 1000).is_err());
        assert!(check_metadata("k", 0, 0o660, 1000).is_err());
        // Running as root, root's files follow the owner rule.
        assert!(check_metadata("k", 0, 0o640, 0).is_err());
        assert!(check_metadata("k", 0, 0o600, 0).is_ok());
    }

    #[test]
    fn other_owners_are_refused() {
        let e = check_metadata("k", 1001, 0o600, 1000).unwrap_err();
        assert!(e.to_string().contains("chown 1000 k"), "{e}");
    }

    #[test]
    fn created_files_are_private_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        drop(create_private(&p).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        check(&p).unwrap();
        assert_eq!(
            create_private(&p).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        // A symlink planted at the path is not followed.
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_private(&link).is_err());
        assert!(!target.exists());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check(&p).is_err());
    }
}

//! Which members a `BASE_BACKUP` archive may hold, beyond the well-formed paths the
//! [`crate::tar`] parser already demands (relative, normalised, no `..`): symbolic links
//! only where PostgreSQL sends them, and nothing below a link. Checks only; writes
//! nothing to disk.

use std::collections::HashSet;

use klio_core::offload::tablespace_link_oid;

use crate::tar::{EntryKind, TarEntry};

/// What a `BASE_BACKUP` archive may hold beyond well-formed paths (the parser already
/// refuses absolute paths and `..`). PostgreSQL sends a symbolic link only for a
/// tablespace, `pg_tblspc/<oid>` in the data directory's archive (a linked `pg_wal`
/// arrives as a directory; other links are left out with a warning), so any other link,
/// and any member below a link, is refused: stored, it would have a restore create the
/// link and then write through it, outside the data directory. One per archive.
#[derive(Debug, Default)]
pub struct MemberRule {
    links: HashSet<String>,
}

impl MemberRule {
    /// Checks the next member of the archive of `tablespace` (`None`: the data directory).
    pub fn check(&mut self, e: &TarEntry, tablespace: Option<u32>) -> Result<(), String> {
        let below_link = e
            .path
            .match_indices('/')
            .map(|(i, _)| &e.path[..i])
            .find(|prefix| self.links.contains(*prefix));
        if let Some(link) = below_link {
            return Err(format!(
                "member {} lies below the symbolic link {link}: an archive that writes through a link is refused",
                e.path
            ));
        }
        if e.kind == EntryKind::Symlink {
            if tablespace.is_some() || tablespace_link_oid(&e.path).is_none() {
                return Err(format!(
                    "symbolic link {} -> {} is not a tablespace link (pg_tblspc/<oid>), the only kind PostgreSQL sends: the archive is refused",
                    e.path,
                    e.link_target.as_deref().unwrap_or("?")
                ));
            }
            self.links.insert(e.path.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::{TarBuilder, TarEvent, TarParser};

    /// The events of `archive` with [`MemberRule`] applied (archive of `tablespace`).
    fn checked(archive: &[u8], tablespace: Option<u32>) -> Result<Vec<String>, String> {
        let mut rule = MemberRule::default();
        let mut paths = Vec::new();
        TarParser::new()
            .feed(archive, &mut |ev| {
                if let TarEvent::Entry(e) = ev {
                    rule.check(&e, tablespace)?;
                    paths.push(e.path);
                }
                Ok::<(), String>(())
            })
            .map_err(|e| e.to_string())?;
        Ok(paths)
    }

    #[test]
    fn links_only_for_tablespaces_and_nothing_below_a_link() {
        let mut ok = TarBuilder::default();
        ok.dir("pg_tblspc")
            .symlink("pg_tblspc/16385", "/srv/ts")
            .file("base/1/1", b"x")
            .end();
        assert_eq!(checked(&ok.out, None).unwrap().len(), 3);
        for (name, target) in [
            ("evil", "/etc"),
            ("pg_wal", "/mnt/wal"),
            ("base/1/2", "../../../etc/passwd"),
            ("pg_tblspc/x", "/srv/ts"),
            ("pg_tblspc/+1", "/srv/ts"),
            ("pg_tblspc/16385/PG_17", "/etc"),
        ] {
            let mut t = TarBuilder::default();
            t.symlink(name, target).end();
            let e = checked(&t.out, None).unwrap_err();
            assert!(
                e.contains("not a tablespace link") && e.contains(name),
                "{name}: {e}"
            );
        }
        // In a tablespace's own archive no link at all.
        let mut t = TarBuilder::default();
        t.symlink("pg_tblspc/16385", "/srv/ts").end();
        assert!(checked(&t.out, Some(16385)).is_err());
        // A member below an accepted link would be written through it.
        let mut t = TarBuilder::default();
        t.symlink("pg_tblspc/16385", "/etc")
            .file("pg_tblspc/16385/passwd", b"x")
            .end();
        let e = checked(&t.out, None).unwrap_err();
        assert!(e.contains("below the symbolic link pg_tblspc/16385"), "{e}");
        // Path rules: absolute, climbing, normalised.
        for bad in ["/etc/passwd", "base/../../etc/passwd", "../x"] {
            let mut t = TarBuilder::default();
            t.file(bad, b"x").end();
            assert!(checked(&t.out, None).is_err(), "{bad}");
        }
        let mut t = TarBuilder::default();
        t.file("./base//1/./2", b"x").end();
        assert_eq!(checked(&t.out, None).unwrap(), ["base/1/2"]);
    }
}

//! libpq's password file (`hostname:port:database:username:password`): permission check and
//! matching. Reads the file; writes nothing.

use std::path::Path;

/// Reads `path` as a libpq password file and returns the password of the first matching entry
/// for the physical-replication pseudo-database `replication`. A file that is not a plain file
/// or is accessible by group or others is ignored with a warning, like libpq does.
pub(super) fn read_passfile(path: &Path, host: &str, port: &str, user: &str) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(passfile = %path.display(), error = %e, "cannot read password file");
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!(passfile = %path.display(), "password file is not a plain file; ignored");
        return None;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                passfile = %path.display(),
                "password file has group or world access; permissions should be u=rw (0600) or \
                 less; ignored"
            );
            return None;
        }
    }
    match std::fs::read(path) {
        Ok(contents) => passfile_lookup(&contents, host, port, "replication", user),
        Err(e) => {
            tracing::warn!(passfile = %path.display(), error = %e, "cannot read password file");
            None
        }
    }
}

/// libpq's password-file matching: `hostname:port:database:username:password`, `*` matches
/// any value, `\` escapes the next character, lines starting with `#` are comments.
fn passfile_lookup(
    contents: &[u8],
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    for line in contents.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let rest = [host, port, dbname, user]
            .iter()
            .try_fold(line, |rest, token| match_field(rest, token.as_bytes()));
        let Some(rest) = rest else { continue };
        let mut password = Vec::new();
        let mut i = 0;
        while i < rest.len() && rest[i] != b':' {
            if rest[i] == b'\\' && i + 1 < rest.len() {
                i += 1;
            }
            password.push(rest[i]);
            i += 1;
        }
        return Some(String::from_utf8_lossy(&password).into_owned());
    }
    None
}

/// Matches one `:`-terminated field at the start of `buf` against `token`; returns the rest
/// after the `:` on a match.
fn match_field<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if buf.starts_with(b"*:") {
        return Some(&buf[2..]);
    }
    let mut i = 0;
    let mut t = 0;
    while i < buf.len() {
        let mut escaped = false;
        if buf[i] == b'\\' {
            i += 1;
            escaped = true;
            if i == buf.len() {
                return None;
            }
        }
        if buf[i] == b':' && !escaped && t == token.len() {
            return Some(&buf[i + 1..]);
        }
        if t == token.len() || buf[i] != token[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_matching_rules() {
        let file = b"# comment line\n\
            other:5432:*:u:wrong-host\n\
            h:5433:*:u:wrong-port\n\
            h:5432:postgres:u:wrong-db\n\
            h:5432:replication:u:right\\:pw\\\\x:ignored-extra-field\n\
            *:*:*:*:catch-all\n";
        assert_eq!(
            passfile_lookup(file, "h", "5432", "replication", "u").as_deref(),
            Some("right:pw\\x")
        );
        assert_eq!(
            passfile_lookup(file, "h", "5432", "replication", "v").as_deref(),
            Some("catch-all")
        );
        // Escaped colons in the key fields, CRLF line ends, '*' only as a whole field.
        let file = b"a\\:b:5432:*:u:pw1\r\nh*:5432:*:u:pw2\r\n";
        assert_eq!(
            passfile_lookup(file, "a:b", "5432", "replication", "u").as_deref(),
            Some("pw1")
        );
        assert_eq!(
            passfile_lookup(file, "hx", "5432", "replication", "u"),
            None
        );
        assert_eq!(passfile_lookup(b"", "h", "5432", "replication", "u"), None);
        // A prefix of the field is not a match.
        assert_eq!(
            passfile_lookup(
                b"hostname:5432:*:u:pw\n",
                "host",
                "5432",
                "replication",
                "u"
            ),
            None
        );
    }
}

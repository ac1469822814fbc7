//! The `postgresql://` URI form of a conninfo (libpq's syntax, one host). Errors name the
//! part of the URI and the byte position, never the text of a part: the URI may hold the
//! password, and a mis-split URI (an unescaped `/`, `?` or `%` in the password) puts pieces
//! of it where a host, port or escape was expected. Touches no files.

use percent_encoding::percent_decode_str;

use super::{is_option_name, Builder, ConnInfoError};

/// Parses `rest` (the URI after `postgresql://`, a sub-slice of `whole`) into `builder`.
pub(super) fn parse_uri(
    whole: &str,
    rest: &str,
    builder: &mut Builder,
) -> Result<(), ConnInfoError> {
    let at = |part: &str| position(whole, part);
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (main, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            builder.set("user", decode(whole, user, "user name")?)?;
            if let Some(p) = password {
                builder.set("password", decode(whole, p, "password")?)?;
            }
            hostport
        }
        None => authority,
    };
    if let Some(comma) = hostport.find(',') {
        return Err(ConnInfoError::Syntax(format!(
            "multiple hosts (a comma at byte {} of the URI) are not supported: give one host \
             per cluster",
            at(hostport) + comma
        )));
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| {
            ConnInfoError::Syntax(format!(
                "missing \"]\" after the IPv6 host address that starts at byte {} of the URI",
                at(hostport)
            ))
        })?;
        if host.is_empty() {
            return Err(ConnInfoError::Syntax(
                "empty IPv6 host address in the URI".into(),
            ));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ConnInfoError::Syntax(format!(
                    "unexpected text at byte {} of the URI after the IPv6 host address \
                     (expected \":port\")",
                    at(p)
                ))
            })?),
        };
        (host.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(whole, h, "host")?, Some(p)),
            None => (decode(whole, hostport, "host")?, None),
        }
    };
    builder.set("host", host)?;
    if let Some(port) = port {
        let decoded = decode(whole, port, "port")?;
        let valid = decoded.is_empty()
            || (decoded.bytes().all(|b| b.is_ascii_digit())
                && decoded.parse::<u16>().is_ok_and(|p| p != 0));
        if !valid {
            return Err(ConnInfoError::Syntax(format!(
                "invalid port at byte {} of the URI: expected a number 1-65535 (a password \
                 holding \"/\", \"?\", \"@\" or \"%\" must be percent-encoded)",
                at(port)
            )));
        }
        builder.set("port", decoded)?;
    }
    if let Some(path) = path {
        builder.set("dbname", decode(whole, path, "database name")?)?;
    }
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                ConnInfoError::Syntax(format!(
                    "missing \"=\" in the URI query parameter at byte {}",
                    at(pair)
                ))
            })?;
            let key_at = at(key);
            let key = decode(whole, key, "query parameter name")?;
            // Name the parameter only if it is an option: a mis-split password can put a
            // piece of itself here.
            if !is_option_name(&key) && key != "ssl" {
                return Err(ConnInfoError::Syntax(format!(
                    "unknown connection option in the URI query at byte {key_at} (Klio accepts \
                     the libpq options of the key=value form)"
                )));
            }
            let value = decode(whole, value, &format!("value of query parameter \"{key}\""))?;
            // libpq maps the JDBC-style ssl=true to sslmode=require.
            if key == "ssl" {
                if value != "true" {
                    return Err(ConnInfoError::InvalidValue {
                        key,
                        value,
                        expected: "true (or use sslmode=…)",
                    });
                }
                builder.set("sslmode", "require".into())?;
                continue;
            }
            builder.set(&key, value)?;
        }
    }
    Ok(())
}

/// Byte offset of `part` (a sub-slice of `whole`) in `whole`.
fn position(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// Percent-decodes one part of the URI. libpq rejects malformed escapes and `%00`
/// (`percent_decode_str` would pass malformed ones through).
fn decode(whole: &str, part: &str, what: &str) -> Result<String, ConnInfoError> {
    let start = position(whole, part);
    let bytes = part.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'%' {
            continue;
        }
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(ConnInfoError::Syntax(format!(
                "invalid percent-encoded token at byte {} of the URI (in the {what}): \"%\" \
                 must be followed by two hex digits; write a literal \"%\" as %25",
                start + i
            )));
        }
        if hex == Some(b"00") {
            return Err(ConnInfoError::Syntax(format!(
                "forbidden %00 at byte {} of the URI (in the {what})",
                start + i
            )));
        }
    }
    percent_decode_str(part)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            ConnInfoError::Syntax(format!(
                "the {what} at byte {start} of the URI is not valid UTF-8 once decoded"
            ))
        })
}

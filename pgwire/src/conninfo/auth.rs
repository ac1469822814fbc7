//! The conninfo options that say which authentication the client accepts, with libpq's
//! semantics: `channel_binding` (SCRAM-SHA-256-PLUS over TLS) and `require_auth` (libpq 16).
//! Touches no files.

use std::fmt;

use super::ConnInfoError;

/// libpq's `channel_binding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never bind SCRAM to the TLS channel.
    Disable,
    /// Bind when the connection is TLS and the server offers SCRAM-SHA-256-PLUS (default).
    #[default]
    Prefer,
    /// Authenticate only with SCRAM-SHA-256-PLUS: the server proves it knows the password
    /// *and* that it holds the certificate's key, so a man in the middle cannot relay it.
    Require,
}

impl ChannelBinding {
    pub(super) fn parse(value: &str) -> Result<ChannelBinding, ConnInfoError> {
        match value {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            _ => Err(ConnInfoError::InvalidValue {
                key: "channel_binding".into(),
                value: value.into(),
                expected: "disable, prefer or require",
            }),
        }
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl fmt::Display for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authentication method a server can ask for, by its `require_auth` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// AuthenticationCleartextPassword: the password itself goes to the server.
    Password,
    Md5,
    Gss,
    Sspi,
    ScramSha256,
    /// The server asked for nothing (trust, peer, or a TLS client certificate).
    None,
}

impl AuthMethod {
    const ALL: [AuthMethod; 6] = [
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::Gss,
        AuthMethod::Sspi,
        AuthMethod::ScramSha256,
        AuthMethod::None,
    ];

    /// The `require_auth` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::None => "none",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq 16's `require_auth`: `m1,m2,…` allows only those methods, `!m1,!m2,…` allows all
/// but those. Listing `password` (not negated) is also the explicit opt-in to send the
/// password in clear text over a connection whose server is not verified by TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireAuth {
    negated: bool,
    methods: Vec<AuthMethod>,
}

impl RequireAuth {
    pub(super) fn parse(value: &str) -> Result<RequireAuth, ConnInfoError> {
        let invalid = |expected| ConnInfoError::InvalidValue {
            key: "require_auth".into(),
            value: value.into(),
            expected,
        };
        let mut negated = None;
        let mut methods = Vec::new();
        for item in value.split(',') {
            let (neg, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if *negated.get_or_insert(neg) != neg {
                return Err(invalid(
                    "a list of methods, all negated with \"!\" or none (not mixed)",
                ));
            }
            let method = AuthMethod::ALL
                .into_iter()
                .find(|m| m.as_str() == name)
                .ok_or_else(|| {
                    invalid(
                        "a comma-separated list of password, md5, gss, sspi, scram-sha-256, \
                         none (each optionally negated with \"!\")",
                    )
                })?;
            if methods.contains(&method) {
                return Err(invalid("each method at most once"));
            }
            methods.push(method);
        }
        Ok(RequireAuth {
            negated: negated.unwrap_or(false),
            methods,
        })
    }

    /// Whether a server may authenticate the client with `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method) != self.negated
    }

    /// Whether `password` is listed (not negated): the user asked for cleartext passwords.
    pub fn lists_password(&self) -> bool {
        !self.negated && self.methods.contains(&AuthMethod::Password)
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.methods.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let neg = if self.negated { "!" } else { "" };
            write!(f, "{sep}{neg}{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_auth_lists_and_negations() {
        let r = RequireAuth::parse("scram-sha-256,none").unwrap();
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::None));
        assert!(!r.allows(AuthMethod::Password) && !r.allows(AuthMethod::Md5));
        assert!(!r.lists_password());
        assert_eq!(r.to_string(), "scram-sha-256,none");

        let r = RequireAuth::parse("!password,!md5").unwrap();
        assert!(!r.allows(AuthMethod::Password) && !r.allows(AuthMethod::Md5));
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::None));
        assert_eq!(r.to_string(), "!password,!md5");

        let r = RequireAuth::parse("password").unwrap();
        assert!(r.lists_password() && r.allows(AuthMethod::Password));
        assert!(
            !RequireAuth::parse("!md5").unwrap().lists_password(),
            "a negated list allows password but is no opt-in to cleartext"
        );

        for bad in ["", "md5,", "scram", "md5,!password", "md5,md5", "PASSWORD"] {
            assert!(
                matches!(
                    RequireAuth::parse(bad),
                    Err(ConnInfoError::InvalidValue { ref key, .. }) if key == "require_auth"
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn channel_binding_values() {
        for (s, m) in [
            ("disable", ChannelBinding::Disable),
            ("prefer", ChannelBinding::Prefer),
            ("require", ChannelBinding::Require),
        ] {
            assert_eq!(ChannelBinding::parse(s).unwrap(), m);
            assert_eq!(m.to_string(), s);
        }
        assert!(ChannelBinding::parse("on").is_err());
        assert_eq!(ChannelBinding::default(), ChannelBinding::Prefer);
    }
}

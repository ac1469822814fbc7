//! [`Tier2Error`], the one error type of Tier 2 operations, and the one place that decides
//! whether a failure is transient (a retry may help) or permanent. Touches no storage.

use std::error::Error as StdError;

use object_store::client::HttpErrorKind;

/// A Tier 2 operation that failed. [`Tier2Error::is_permanent`] says whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum Tier2Error {
    /// The store could not be set up from the configuration.
    #[error("tier2: cannot open {url}: {source}")]
    Build {
        url: String,
        source: object_store::Error,
    },
    /// A create-only upload found a different object already under the key. Tier 2 never
    /// overwrites; the existing object is left as it was.
    #[error(
        "tier2: {key} already exists with different content ({detail}); Klio never \
         overwrites an object in Tier 2: find out which writer put it there (two servers \
         writing to one bucket and prefix?) before removing it by hand"
    )]
    Conflict { key: String, detail: String },
    /// A write on a Tier 2 opened read-only ([`crate::Tier2::read_only`]).
    #[error(
        "tier2: refusing to {op} {key}: this server is in read-only mode and never writes \
         to Tier 2"
    )]
    ReadOnly { op: &'static str, key: String },
    /// The object does not exist.
    #[error("tier2: {key} not found")]
    NotFound { key: String },
    /// A multipart upload completed but the object read back is not what was sent.
    #[error("tier2: {key} after upload: {detail}")]
    Verify { key: String, detail: String },
    /// The data to upload could not be read (the caller's stream failed).
    #[error("tier2: reading the data for {key}: {source}")]
    Source { key: String, source: std::io::Error },
    /// The store refused or failed the request; `transient` is decided by [`classify`].
    #[error("tier2: {op} {key}: {}{}", with_causes(.source), .transient.then_some(" (transient)").unwrap_or_default())]
    Store {
        op: &'static str,
        key: String,
        transient: bool,
        source: object_store::Error,
    },
}

impl Tier2Error {
    /// Whether retrying the same operation later cannot help (a dead letter for the relay).
    pub fn is_permanent(&self) -> bool {
        match self {
            Tier2Error::Store { transient, .. } => !transient,
            Tier2Error::Build { .. }
            | Tier2Error::Conflict { .. }
            | Tier2Error::ReadOnly { .. }
            | Tier2Error::NotFound { .. }
            | Tier2Error::Verify { .. } => true,
            // The caller's data source: an I/O error there is the caller's to judge;
            // retrying the upload with a fresh stream may well help.
            Tier2Error::Source { .. } => false,
        }
    }

    pub(crate) fn store(op: &'static str, key: &str, source: object_store::Error) -> Self {
        if let object_store::Error::NotFound { .. } = source {
            return Tier2Error::NotFound {
                key: key.to_string(),
            };
        }
        Tier2Error::Store {
            op,
            key: key.to_string(),
            transient: classify(&source) == Retry::Transient,
            source,
        }
    }
}

/// What a failure means for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Transient,
    Permanent,
}

/// The decision: 5xx, 408, 429, connection errors, timeouts and interrupted transfers
/// are transient; everything the server refused on purpose (4xx, a missing object, a
/// failed precondition, bad credentials) and every local error except a timeout or an
/// interruption is permanent.
pub(crate) fn classify(error: &object_store::Error) -> Retry {
    use object_store::Error as E;
    match error {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => Retry::Permanent,
        E::JoinError { .. } => Retry::Transient,
        _ => classify_chain(error),
    }
}

fn classify_chain(error: &object_store::Error) -> Retry {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            if tls_refused(http) {
                return Retry::Permanent;
            }
            return match http.kind() {
                HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted
                | HttpErrorKind::Decode => Retry::Transient,
                _ => Retry::Permanent,
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::TimedOut | K::Interrupted | K::ConnectionReset | K::ConnectionAborted => {
                    Retry::Transient
                }
                _ => Retry::Permanent,
            };
        }
        current = e.source();
    }
    // object_store keeps the HTTP status of a failed request in a private type; its text
    // is the only stable way to it ("... status code: 503 Service Unavailable ...").
    classify_status_text(&error.to_string())
}

/// A connection refused by TLS (an untrusted or mismatched certificate; rustls reports it
/// as `InvalidData` below the HTTP error): a configuration problem, not an outage.
fn tls_refused(http: &object_store::client::HttpError) -> bool {
    let mut current = http.source();
    while let Some(e) = current {
        // `io::Error::source` skips the error it wraps, so look inside each one.
        let mut io = e.downcast_ref::<std::io::Error>();
        while let Some(err) = io {
            if err.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            io = err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        current = e.source();
    }
    false
}

/// `error` and the causes below it that its own text leaves out (object_store's HTTP
/// errors say "error sending request" and keep the reason, such as an unknown
/// certificate issuer, in their sources).
fn with_causes(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        current = cause.source();
    }
    text
}

fn classify_status_text(text: &str) -> Retry {
    if let Some(at) = text.find("status code: ") {
        let code = &text[at + "status code: ".len()..];
        if let Some(code) = code.get(..3).and_then(|c| c.parse::<u16>().ok()) {
            return if code >= 500 || code == 408 || code == 429 {
                Retry::Transient
            } else {
                Retry::Permanent
            };
        }
    }
    // S3 may answer 200 with an `InternalError`/`SlowDown` body (object_store: "error
    // response"): S3's own advice is to retry.
    if text.contains("Server returned error response") {
        return Retry::Transient;
    }
    Retry::Permanent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn server_errors_are_transient_refusals_permanent() {
        let t = |s: &str| classify(&generic(s));
        assert_eq!(
            t("Error performing PUT http://h/b/k in 1ms - Server returned non-2xx status code: 503 Service Unavailable: "),
            Retry::Transient
        );
        assert_eq!(
            t("... status code: 500 Internal Server Error"),
            Retry::Transient
        );
        assert_eq!(
            t("... status code: 429 Too Many Requests"),
            Retry::Transient
        );
        assert_eq!(
            t("... status code: 400 Bad Request: <Error/>"),
            Retry::Permanent
        );
        assert_eq!(
            t("Server returned error response: <Error><Code>InternalError</Code></Error>"),
            Retry::Transient
        );
        assert_eq!(t("something else entirely"), Retry::Permanent);
    }

    #[test]
    fn named_refusals_are_permanent() {
        let e = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "status code: 503".to_string().into(),
        };
        assert_eq!(classify(&e), Retry::Permanent);
        let missing = Tier2Error::store(
            "get",
            "k",
            object_store::Error::NotFound {
                path: "k".into(),
                source: "no".to_string().into(),
            },
        );
        assert!(matches!(missing, Tier2Error::NotFound { .. }));
        assert!(missing.is_permanent());
    }

    #[test]
    fn local_timeouts_are_transient_other_io_errors_permanent() {
        let io = |kind| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::new(kind, "x")),
        };
        assert_eq!(
            classify(&io(std::io::ErrorKind::TimedOut)),
            Retry::Transient
        );
        assert_eq!(
            classify(&io(std::io::ErrorKind::PermissionDenied)),
            Retry::Permanent
        );
        let store = Tier2Error::store("put", "k", io(std::io::ErrorKind::TimedOut));
        assert!(!store.is_permanent());
        assert!(store.to_string().contains("(transient)"), "{store}");
    }
}

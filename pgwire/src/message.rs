//! Backend messages as the client reads them: framing (with CopyBothResponse, which
//! `postgres-protocol` does not know), size limit, and decoding of the bodies the client
//! uses (row descriptions, data rows, error and notice fields, `server_version`).
//! Every byte here comes from the server and is untrusted. Touches no files.

use std::io;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{
    DataRowBody, ErrorFields, Header, Message, RowDescriptionBody,
};

use super::PgError;

/// Largest backend message accepted (the server never sends more than 1 GiB in one message).
const MAX_MESSAGE_LEN: usize = 1 << 30;
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// A backend message, with CopyBothResponse (unknown to `postgres-protocol`) handled here.
pub(super) enum Backend {
    Message(Message),
    CopyBothResponse,
}

/// Whether `buf` starts with a complete message (or a malformed header, which the
/// next parse reports).
pub(super) fn has_complete_message(buf: &[u8]) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    len < 4 || buf.len() > len
}

/// Splits one complete message off `buf`; `Ok(None)` if more bytes are needed.
pub(super) fn parse_backend(buf: &mut BytesMut) -> Result<Option<Backend>, PgError> {
    let header = match Header::parse(buf) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err(PgError::Protocol(format!("bad message header: {e}"))),
    };
    let len = header.len() as usize; // Header::parse rejected len < 4
    if len > MAX_MESSAGE_LEN {
        return Err(PgError::Protocol(format!(
            "server sent a {len}-byte message (tag {:?}); the limit is 1 GiB",
            header.tag() as char
        )));
    }
    let total = len + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == COPY_BOTH_RESPONSE_TAG {
        // Int8 format, Int16 column count, Int16 format per column.
        let body = buf.split_to(total);
        let body = &body[5..];
        let ok = body.len() >= 3 && {
            let columns = u16::from_be_bytes([body[1], body[2]]) as usize;
            body.len() == 3 + 2 * columns
        };
        if !ok {
            return Err(PgError::protocol("malformed CopyBothResponse"));
        }
        return Ok(Some(Backend::CopyBothResponse));
    }
    match Message::parse(buf) {
        Ok(Some(msg)) => Ok(Some(Backend::Message(msg))),
        Ok(None) => Err(PgError::protocol("incomplete message after length check")),
        Err(e) => Err(PgError::Protocol(format!(
            "cannot parse message with tag {:?}: {e}",
            header.tag() as char
        ))),
    }
}

pub(super) fn row_description(body: &RowDescriptionBody) -> Result<Vec<String>, PgError> {
    body.fields()
        .map(|f| Ok(f.name().to_owned()))
        .collect()
        .map_err(|e: io::Error| PgError::Protocol(format!("RowDescription: {e}")))
}

pub(super) fn data_row(body: &DataRowBody) -> Result<Vec<Option<Bytes>>, PgError> {
    let buf = body.buffer_bytes();
    body.ranges()
        .map(|r| Ok(r.map(|r| buf.slice(r))))
        .collect()
        .map_err(|e: io::Error| PgError::Protocol(format!("DataRow: {e}")))
}

fn field_text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Turns ErrorResponse fields into [`PgError::Server`] (SlotExists for 42710 is decided by the
/// caller, which knows the slot).
pub(super) fn server_error(mut fields: ErrorFields<'_>) -> PgError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let (mut detail, mut hint) = (None, None);
    let mut localized_severity = String::new();
    loop {
        match fields.next() {
            Ok(Some(f)) => {
                let v = field_text(f.value_bytes());
                match f.type_() {
                    b'V' => severity = v,
                    b'S' => localized_severity = v,
                    b'C' => code = v,
                    b'M' => message = v,
                    b'D' => detail = Some(v),
                    b'H' => hint = Some(v),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => {
                message = format!("{message} (malformed ErrorResponse: {e})");
                break;
            }
        }
    }
    if severity.is_empty() {
        severity = localized_severity;
    }
    PgError::Server {
        severity,
        code,
        message,
        detail,
        hint,
    }
}

pub(super) fn log_notice(fields: ErrorFields<'_>) {
    if let PgError::Server {
        severity,
        code,
        message,
        detail,
        ..
    } = server_error(fields)
    {
        if severity == "WARNING" {
            tracing::warn!(%code, ?detail, "server warning: {message}");
        } else {
            tracing::debug!(%severity, %code, ?detail, "server notice: {message}");
        }
    }
}

pub(super) fn describe(msg: &Backend) -> &'static str {
    match msg {
        Backend::CopyBothResponse => "CopyBothResponse",
        Backend::Message(m) => match m {
            Message::AuthenticationOk
            | Message::AuthenticationCleartextPassword
            | Message::AuthenticationMd5Password(_)
            | Message::AuthenticationSasl(_)
            | Message::AuthenticationSaslContinue(_)
            | Message::AuthenticationSaslFinal(_) => "an authentication message",
            Message::BackendKeyData(_) => "BackendKeyData",
            Message::CommandComplete(_) => "CommandComplete",
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::CopyInResponse(_) => "CopyInResponse",
            Message::CopyOutResponse(_) => "CopyOutResponse",
            Message::DataRow(_) => "DataRow",
            Message::EmptyQueryResponse => "EmptyQueryResponse",
            Message::ErrorResponse(_) => "ErrorResponse",
            Message::NoticeResponse(_) => "NoticeResponse",
            Message::NotificationResponse(_) => "NotificationResponse",
            Message::ParameterStatus(_) => "ParameterStatus",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::RowDescription(_) => "RowDescription",
            _ => "message",
        },
    }
}

/// `server_version` ("15.18 (Debian 15.18-1.pgdg120+1)", "17.2", "18beta1", "9.6.24") as
/// `server_version_num` (150018, 170002, 180000, 90624).
pub fn parse_server_version(version: &str) -> Option<u32> {
    let token = version.split_whitespace().next()?;
    let mut parts = token.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

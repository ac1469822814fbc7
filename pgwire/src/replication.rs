//! Typed physical-replication commands on a [`ReplicationConn`] (`IDENTIFY_SYSTEM`, `SHOW`,
//! slots, `TIMELINE_HISTORY`, `START_REPLICATION`) and the CopyData payloads of the streaming
//! protocol (XLogData, primary keepalive, standby status update). Owns no disk state.
//!
//! Positions, timelines and system identifiers are `klio_core`'s newtypes ([`Lsn`],
//! [`TimelineId`], [`SystemId`], [`WalSegSize`]), checked as they are decoded.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use klio_core::{Lsn, SystemId, TimelineId, WalSegSize};

use crate::{CopyBothStart, PgError, ReplicationConn, ResultSet};

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// `READ_REPLICATION_SLOT`'s answer for an existing physical slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
}

/// What `START_REPLICATION` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamStart {
    /// CopyBoth started: read with [`ReplicationConn::recv_copy`].
    Streaming,
    /// The start point is exactly the end of a past timeline: no COPY; continue on
    /// `next_tli` from `next_tli_startpos`.
    TimelineEnded {
        next_tli: TimelineId,
        next_tli_startpos: Lsn,
    },
}

/// An LSN the server sent in PostgreSQL's `X/Y` form, by [`Lsn`]'s parser (the only one).
fn parse_lsn(s: &str) -> Result<Lsn, PgError> {
    s.parse::<Lsn>()
        .map_err(|_| PgError::Protocol(format!("invalid LSN {s:?}: expected X/Y in hex")))
}

/// A timeline the server sent (decimal, never 0).
fn parse_tli(s: &str, what: &str) -> Result<TimelineId, PgError> {
    TimelineId::new(parse_num(s, what)?)
        .map_err(|_| PgError::Protocol(format!("invalid {what} {s:?}: timelines start at 1")))
}

/// Parses a PostgreSQL size setting as `SHOW` prints it ("16MB", "1GB", "8kB", "512") into
/// bytes.
pub fn parse_size(s: &str) -> Result<u64, PgError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(PgError::Protocol(format!("invalid size {s:?}"))),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| PgError::Protocol(format!("invalid size {s:?}")))
}

/// Quotes an identifier for the replication grammar.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// PostgreSQL's slot-name rule: lower-case letters, digits and `_`, at most 63 bytes.
fn check_slot_name(slot: &str) -> Result<(), PgError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PgError::Config(format!(
            "invalid replication slot name {slot:?}: use lower-case letters, digits and \
             underscores, at most 63 characters"
        )))
    }
}

/// The one row of a single-row result, or a protocol error naming the command.
fn single_row<'a>(sets: &'a [ResultSet], command: &str) -> Result<&'a ResultSet, PgError> {
    match sets.iter().find(|s| !s.columns.is_empty()) {
        Some(set) if set.rows.len() == 1 => Ok(set),
        Some(set) => Err(PgError::Protocol(format!(
            "{command} returned {} rows, expected 1",
            set.rows.len()
        ))),
        None => Err(PgError::Protocol(format!("{command} returned no rows"))),
    }
}

fn required<'a>(set: &'a ResultSet, column: &str, command: &str) -> Result<&'a str, PgError> {
    set.get(0, column)
        .ok_or_else(|| PgError::Protocol(format!("{command}: column {column} missing or NULL")))
}

fn parse_num<T: std::str::FromStr>(v: &str, what: &str) -> Result<T, PgError> {
    v.trim()
        .parse()
        .map_err(|_| PgError::Protocol(format!("invalid {what} {v:?}")))
}

impl ReplicationConn {
    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, PgError> {
        let sets = self.simple_query("IDENTIFY_SYSTEM").await?;
        let set = single_row(&sets, "IDENTIFY_SYSTEM")?;
        Ok(SystemInfo {
            system_id: parse_num(
                required(set, "systemid", "IDENTIFY_SYSTEM")?,
                "system identifier",
            )?,
            timeline: parse_tli(required(set, "timeline", "IDENTIFY_SYSTEM")?, "timeline")?,
            xlogpos: parse_lsn(required(set, "xlogpos", "IDENTIFY_SYSTEM")?)?,
            dbname: set.get(0, "dbname").map(str::to_owned),
        })
    }

    /// `SHOW name` (e.g. `wal_segment_size`; parse sizes with [`parse_size`]).
    pub async fn show(&mut self, name: &str) -> Result<String, PgError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(PgError::Config(format!("invalid setting name {name:?}")));
        }
        let sets = self.simple_query(&format!("SHOW {name}")).await?;
        let set = single_row(&sets, "SHOW")?;
        set.rows[0]
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| PgError::Protocol(format!("SHOW {name} returned NULL")))
    }

    /// `SHOW wal_segment_size` in bytes.
    pub async fn wal_segment_size(&mut self) -> Result<WalSegSize, PgError> {
        let size = parse_size(&self.show("wal_segment_size").await?)?;
        WalSegSize::new(size).map_err(|_| {
            PgError::Protocol(format!(
                "server reports an invalid wal_segment_size of {size} bytes"
            ))
        })
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15+). `None` if the slot does not exist.
    pub async fn read_replication_slot(&mut self, slot: &str) -> Result<Option<SlotInfo>, PgError> {
        check_slot_name(slot)?;
        if self.server_version_num() < 150000 {
            return Err(PgError::Unsupported(format!(
                "READ_REPLICATION_SLOT needs PostgreSQL 15 or later; the server is {}",
                self.parameter("server_version").unwrap_or("older")
            )));
        }
        let sets = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(slot)))
            .await?;
        let set = single_row(&sets, "READ_REPLICATION_SLOT")?;
        // A missing slot is a row of NULLs.
        let Some(slot_type) = set.get(0, "slot_type") else {
            return Ok(None);
        };
        if slot_type != "physical" {
            return Err(PgError::Config(format!(
                "replication slot \"{slot}\" is a {slot_type} slot; Klio needs a physical slot"
            )));
        }
        Ok(Some(SlotInfo {
            restart_lsn: set.get(0, "restart_lsn").map(parse_lsn).transpose()?,
            restart_tli: set
                .get(0, "restart_tli")
                .map(|v| parse_tli(v, "restart_tli"))
                .transpose()?,
        }))
    }

    /// `CREATE_REPLICATION_SLOT "slot" PHYSICAL RESERVE_WAL` (the syntax every supported
    /// version accepts). Returns the slot's consistent point if the server reports one
    /// (physical slots report `0/0`, returned as `None`: read the restart LSN with
    /// [`read_replication_slot`](Self::read_replication_slot) on 15+).
    /// An existing slot is [`PgError::SlotExists`].
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<Option<Lsn>, PgError> {
        check_slot_name(slot)?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
            quote_ident(slot)
        );
        let sets = match self.simple_query(&sql).await {
            Ok(sets) => sets,
            Err(PgError::Server { code, .. }) if code == "42710" => {
                return Err(PgError::SlotExists {
                    slot: slot.to_owned(),
                })
            }
            Err(e) => return Err(e),
        };
        let set = single_row(&sets, "CREATE_REPLICATION_SLOT")?;
        Ok(set
            .get(0, "consistent_point")
            .map(parse_lsn)
            .transpose()?
            .filter(|lsn| *lsn != Lsn(0)))
    }

    /// `DROP_REPLICATION_SLOT "slot"`.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), PgError> {
        check_slot_name(slot)?;
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(slot)))
            .await
            .map(drop)
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and exact content.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes), PgError> {
        let sets = self
            .simple_query(&format!("TIMELINE_HISTORY {tli}"))
            .await?;
        let set = single_row(&sets, "TIMELINE_HISTORY")?;
        let filename = required(set, "filename", "TIMELINE_HISTORY")?.to_owned();
        let col = set
            .column("content")
            .ok_or_else(|| PgError::protocol("TIMELINE_HISTORY: no content column"))?;
        let content = set
            .raw(0, col)
            .cloned()
            .ok_or_else(|| PgError::protocol("TIMELINE_HISTORY: content is NULL"))?;
        Ok((filename, content))
    }

    /// `START_REPLICATION [SLOT "s"] PHYSICAL X/Y TIMELINE n`.
    pub async fn start_physical_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<StreamStart, PgError> {
        let slot_clause = match slot {
            Some(s) => {
                check_slot_name(s)?;
                format!("SLOT {} ", quote_ident(s))
            }
            None => String::new(),
        };
        let sql = format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {tli}");
        match self.start_copy_both(&sql).await? {
            CopyBothStart::Started => Ok(StreamStart::Streaming),
            CopyBothStart::Completed(sets) => {
                let (next_tli, next_tli_startpos) = parse_timeline_end(&sets)?;
                Ok(StreamStart::TimelineEnded {
                    next_tli,
                    next_tli_startpos,
                })
            }
        }
    }
}

/// The `next_tli, next_tli_startpos` result set that follows the end of a timeline.
pub fn parse_timeline_end(sets: &[ResultSet]) -> Result<(TimelineId, Lsn), PgError> {
    let set = single_row(sets, "end of timeline")?;
    Ok((
        parse_tli(required(set, "next_tli", "end of timeline")?, "next_tli")?,
        parse_lsn(required(set, "next_tli_startpos", "end of timeline")?)?,
    ))
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_OFFSET_SECS * 1_000_000
}

/// `'w'`: a chunk of WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// LSN of the first byte of `data`.
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// Server clock, µs since 2000-01-01.
    pub send_time: i64,
    pub data: Bytes,
}

/// `'k'`: primary keepalive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub send_time: i64,
    /// The server wants a status update now (or it will time the client out).
    pub reply_requested: bool,
}

/// A CopyData payload the server sends during physical streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    Keepalive(PrimaryKeepalive),
}

impl ReplicationMessage {
    /// Decodes a CopyData payload. Short or unknown messages are protocol errors.
    pub fn decode(mut payload: Bytes) -> Result<ReplicationMessage, PgError> {
        let Some(&kind) = payload.first() else {
            return Err(PgError::protocol("empty CopyData during streaming"));
        };
        payload.advance(1);
        match kind {
            b'w' => {
                if payload.len() < 24 {
                    return Err(PgError::Protocol(format!(
                        "XLogData message too short: {} header bytes, need 24",
                        payload.len()
                    )));
                }
                let wal_start = Lsn(payload.get_u64());
                let wal_end = Lsn(payload.get_u64());
                let send_time = payload.get_i64();
                Ok(ReplicationMessage::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data: payload,
                }))
            }
            b'k' => {
                if payload.len() != 17 {
                    return Err(PgError::Protocol(format!(
                        "keepalive message has {} bytes, expected 17",
                        payload.len()
                    )));
                }
                Ok(ReplicationMessage::Keepalive(PrimaryKeepalive {
                    wal_end: Lsn(payload.get_u64()),
                    send_time: payload.get_i64(),
                    reply_requested: payload.get_u8() != 0,
                }))
            }
            other => Err(PgError::Protocol(format!(
                "unknown streaming message type {:?}",
                other as char
            ))),
        }
    }
}

impl XLogData {
    /// The LSN just past `data`. A message whose end would overflow the WAL address space is a
    /// protocol error (the primary's bytes are untrusted).
    pub fn end(&self) -> Result<Lsn, PgError> {
        self.wal_start
            .checked_add(self.data.len() as u64)
            .ok_or_else(|| {
                PgError::Protocol(format!(
                    "the primary sent {} bytes of WAL at {}, past the end of the WAL address space",
                    self.data.len(),
                    self.wal_start
                ))
            })
    }

    /// Encodes as the server would (for tests and fakes).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(25 + self.data.len());
        buf.put_u8(b'w');
        buf.put_u64(self.wal_start.0);
        buf.put_u64(self.wal_end.0);
        buf.put_i64(self.send_time);
        buf.put_slice(&self.data);
        buf.freeze()
    }
}

impl PrimaryKeepalive {
    /// Encodes as the server would (for tests and fakes).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(18);
        buf.put_u8(b'k');
        buf.put_u64(self.wal_end.0);
        buf.put_i64(self.send_time);
        buf.put_u8(u8::from(self.reply_requested));
        buf.freeze()
    }
}

/// `'r'`: standby status update (write/flush/apply positions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub write: Lsn,
    /// Last WAL byte + 1 durably stored. Never more than what is fsynced.
    pub flush: Lsn,
    /// Last WAL byte + 1 applied; 0 for a client that does not replay (like pg_receivewal).
    pub apply: Lsn,
    /// Client clock, µs since 2000-01-01 (see [`pg_now_micros`]).
    pub client_time: i64,
    /// Ask the server to reply immediately.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// The CopyData payload.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(34);
        buf.put_u8(b'r');
        buf.put_u64(self.write.0);
        buf.put_u64(self.flush.0);
        buf.put_u64(self.apply.0);
        buf.put_i64(self.client_time);
        buf.put_u8(u8::from(self.reply_requested));
        buf.freeze()
    }

    /// Decodes a payload produced by [`encode`](Self::encode) (for tests and fakes).
    pub fn decode(mut payload: Bytes) -> Result<StandbyStatusUpdate, PgError> {
        if payload.len() != 34 || payload[0] != b'r' {
            return Err(PgError::protocol("malformed standby status update"));
        }
        payload.advance(1);
        Ok(StandbyStatusUpdate {
            write: Lsn(payload.get_u64()),
            flush: Lsn(payload.get_u64()),
            apply: Lsn(payload.get_u64()),
            client_time: payload.get_i64(),
            reply_requested: payload.get_u8() != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_and_timeline_from_the_server() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), Lsn(0x16_B374_D848));
        for bad in ["", "0", "/0", "0/", "g/0", "1/123456789", "0/-1", " 0/1"] {
            assert!(
                matches!(parse_lsn(bad), Err(PgError::Protocol(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse_tli("3", "t").unwrap().get(), 3);
        for bad in ["0", "-1", "x", "4294967296"] {
            assert!(
                matches!(parse_tli(bad, "t"), Err(PgError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn xlogdata_end_is_checked() {
        let msg = |start: u64, len: usize| XLogData {
            wal_start: Lsn(start),
            wal_end: Lsn(0),
            send_time: 0,
            data: vec![0u8; len].into(),
        };
        assert_eq!(msg(0x100, 16).end().unwrap(), Lsn(0x110));
        assert_eq!(msg(u64::MAX - 4, 4).end().unwrap(), Lsn(u64::MAX));
        assert!(matches!(
            msg(u64::MAX - 4, 5).end(),
            Err(PgError::Protocol(_))
        ));
    }

    proptest! {
        #[test]
        fn xlogdata_roundtrip(start in any::<u64>(), end in any::<u64>(), t in any::<i64>(),
                              data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let msg = XLogData { wal_start: Lsn(start), wal_end: Lsn(end), send_time: t, data: data.into() };
            prop_assert_eq!(
                ReplicationMessage::decode(msg.encode()).unwrap(),
                ReplicationMessage::XLogData(msg)
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("64kB").unwrap(), 64 << 10);
        assert_eq!(parse_size("2TB").unwrap(), 2 << 40);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert_eq!(parse_size("8192B").unwrap(), 8192);
        for bad in ["", "MB", "16 XB", "16mb", "-1MB", "99999999999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decode_xlogdata_and_keepalive() {
        let mut raw = vec![b'w'];
        raw.extend_from_slice(&0x0100_0000u64.to_be_bytes());
        raw.extend_from_slice(&0x0200_0000u64.to_be_bytes());
        raw.extend_from_slice(&(-5i64).to_be_bytes());
        raw.extend_from_slice(b"WAL!");
        let ReplicationMessage::XLogData(x) = ReplicationMessage::decode(raw.into()).unwrap()
        else {
            panic!("not XLogData")
        };
        assert_eq!(
            (x.wal_start, x.wal_end, x.send_time),
            (Lsn(0x0100_0000), Lsn(0x0200_0000), -5)
        );
        assert_eq!(&x.data[..], b"WAL!");

        let mut raw = vec![b'k'];
        raw.extend_from_slice(&42u64.to_be_bytes());
        raw.extend_from_slice(&7i64.to_be_bytes());
        raw.push(1);
        assert_eq!(
            ReplicationMessage::decode(raw.into()).unwrap(),
            ReplicationMessage::Keepalive(PrimaryKeepalive {
                wal_end: Lsn(42),
                send_time: 7,
                reply_requested: true
            })
        );
    }

    #[test]
    fn short_messages_are_protocol_errors() {
        for raw in [
            &b""[..],
            b"w",
            &[b'w'; 24],
            &[b'k'; 17],
            &[b'k'; 19],
            b"x123",
        ] {
            assert!(
                matches!(
                    ReplicationMessage::decode(Bytes::copy_from_slice(raw)),
                    Err(PgError::Protocol(_))
                ),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn status_update_layout() {
        let update = StandbyStatusUpdate {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(2),
            apply: Lsn(0),
            client_time: 0x1122,
            reply_requested: true,
        };
        let bytes = update.encode();
        assert_eq!(bytes.len(), 34);
        assert_eq!(bytes[0], b'r');
        assert_eq!(&bytes[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[9..17], &2u64.to_be_bytes());
        assert_eq!(&bytes[17..25], &[0; 8]);
        assert_eq!(&bytes[25..33], &0x1122i64.to_be_bytes());
        assert_eq!(bytes[33], 1);
        assert_eq!(StandbyStatusUpdate::decode(bytes).unwrap(), update);
    }

    #[test]
    fn pg_epoch() {
        // 2024-01-01 is 24 years (6 leap days) after 2000-01-01.
        let now = pg_now_micros();
        let days = now / 86_400_000_000;
        assert!(days > 8766, "{days}");
    }

    #[test]
    fn identifiers_and_slot_names() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(check_slot_name("klio_slot_1").is_ok());
        for bad in ["", "Upper", "with-dash", "x\"y", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeline_end_result() {
        let set = ResultSet {
            columns: vec!["next_tli".into(), "next_tli_startpos".into()],
            rows: vec![vec![Some("3".into()), Some("0/5000000".into())]],
            command_tag: String::new(),
            ..ResultSet::default()
        };
        assert_eq!(
            parse_timeline_end(&[set]).unwrap(),
            (TimelineId::new(3).unwrap(), Lsn(0x500_0000))
        );
        assert!(parse_timeline_end(&[]).is_err());
    }

    /// Fuzzing of what the server sends during streaming and in command results
    /// (bounded; `PROPTEST_CASES` raises the count for a long run).
    mod fuzz {
        use super::*;
        use proptest::collection::vec;

        fn result_set() -> impl Strategy<Value = ResultSet> {
            let column = prop_oneof![
                Just("next_tli".to_owned()),
                Just("next_tli_startpos".to_owned()),
                "[a-z_]{0,10}",
            ];
            let value = proptest::option::of(prop_oneof![
                "[0-9A-Fa-f/ -]{0,20}",
                any::<u64>().prop_map(|l| Lsn(l).to_string()),
                "\\PC{0,12}",
            ]);
            (vec(column, 0..3), vec(vec(value, 0..3), 0..3)).prop_map(|(columns, rows)| ResultSet {
                columns,
                rows,
                ..ResultSet::default()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_copy_data_never_panics(bytes in vec(any::<u8>(), 0..600)) {
                let _ = ReplicationMessage::decode(Bytes::from(bytes.clone()));
                let _ = StandbyStatusUpdate::decode(Bytes::from(bytes));
            }

            #[test]
            fn keepalive_and_status_update_roundtrip(
                end in any::<u64>(), t in any::<i64>(), reply in any::<bool>(),
                write in any::<u64>(), flush in any::<u64>(), apply in any::<u64>(),
            ) {
                let k = PrimaryKeepalive { wal_end: Lsn(end), send_time: t, reply_requested: reply };
                prop_assert_eq!(
                    ReplicationMessage::decode(k.encode()).unwrap(),
                    ReplicationMessage::Keepalive(k)
                );
                let u = StandbyStatusUpdate {
                    write: Lsn(write), flush: Lsn(flush), apply: Lsn(apply),
                    client_time: t, reply_requested: reply,
                };
                prop_assert_eq!(StandbyStatusUpdate::decode(u.encode()).unwrap(), u);
            }

            /// Any text is a valid LSN only if it reads back the same after formatting
            /// (up to case and leading zeros), and parsing never panics.
            #[test]
            fn lsn_and_size_parsers_never_panic(s in "[0-9A-Fa-f/]{0,20}|\\PC{0,20}") {
                if let Ok(lsn) = parse_lsn(&s) {
                    let canonical = lsn.to_string();
                    prop_assert_eq!(parse_lsn(&canonical).unwrap(), lsn);
                    let trim = |p: &str| p.trim_start_matches('0').to_ascii_uppercase();
                    let (hi, lo) = s.split_once('/').unwrap();
                    let (chi, clo) = canonical.split_once('/').unwrap();
                    prop_assert_eq!((trim(hi), trim(lo)), (trim(chi), trim(clo)));
                }
                let _ = parse_size(&s);
            }

            #[test]
            fn arbitrary_result_sets_never_panic(sets in vec(result_set(), 0..3)) {
                let _ = parse_timeline_end(&sets);
                if let Ok(set) = single_row(&sets, "fuzz") {
                    let _ = required(set, "next_tli", "fuzz");
                }
            }
        }
    }
}

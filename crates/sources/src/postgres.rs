//! PostgreSQL change data capture: logical replication with the built-in
//! `pgoutput` plugin from a publication, through a durable replication
//! slot. Each inserted, updated or deleted row becomes an event
//! (`dev.gust.postgres.insert|update|delete`; `truncate` per table) whose
//! data is `{"table", "operation", "key", "new", "old", "lsn"}` and whose
//! subject is `<schema>.<table>/<key values>` (the replica identity's
//! columns): one row's changes are delivered one at a time in commit order.
//!
//! The slot's position (the standby status's flush LSN) moves only past
//! transactions whose every event is queued, so after a crash the server
//! sends them again; the event id (`<commit LSN>/<n>`) is the same, so a
//! change already queued is recognised and not queued twice. Transactions
//! that have arrived together are queued together (one batch, in commit
//! order), so many small ones cost one commit in Gust, not one each.
//!
//! What the database needs, checked when the source is added: `wal_level =
//! logical`, a role with `REPLICATION` (or a superuser), the publication.
//! The slot is made if missing (and dropped when a source that made it
//! under its default name is removed: a slot nobody reads keeps WAL).
//! `old` values need `REPLICA IDENTITY FULL` on the table (else only the
//! key's columns are sent).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use gust_core::FunctionName;
use gust_core::source::SourceSpec;
use gust_events::SourceMessage;
use serde_json::{Map, Value};

use crate::SourceError;
use crate::ctx::Ctx;
use crate::pgwire::{Address, Conn, literal};

/// Changes queued at a time (a large transaction is queued in chunks).
const CHUNK: usize = 1024;
/// The server hears where the source is at least this often.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The slot a source uses: its own, or `gust_<function>_<id>`.
pub(crate) fn slot_name(spec: &SourceSpec, function: &FunctionName, id: &str) -> String {
    spec.slot
        .clone()
        .unwrap_or_else(|| default_slot(function, id))
}

fn default_slot(function: &FunctionName, id: &str) -> String {
    let name: String = format!("gust_{function}_{id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.chars().take(63).collect()
}

/// Checks what the database must have and makes the slot if missing.
pub(crate) async fn prepare(
    url: &str,
    spec: &SourceSpec,
    function: &FunctionName,
    id: &str,
) -> Result<(), SourceError> {
    let address = Address::parse(url, spec.ca.as_deref())?;
    let mut conn = Conn::connect(&address).await?;
    let wal_level = first(conn.query("SHOW wal_level").await?);
    if wal_level.as_deref() != Some("logical") {
        return Err(SourceError::Config(format!(
            "the database has wal_level = {}; logical replication needs wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)",
            wal_level.unwrap_or_default()
        )));
    }
    let may = first(
        conn.query(
            "SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user",
        )
        .await?,
    );
    if may.as_deref() != Some("true") {
        return Err(SourceError::Config(format!(
            "the role `{}` may not replicate: ALTER ROLE \"{}\" WITH REPLICATION",
            address.user, address.user
        )));
    }
    let publication = spec.publication.clone().unwrap_or_default();
    let found = conn
        .query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            literal(&publication)
        ))
        .await?;
    if found.is_empty() {
        return Err(SourceError::Config(format!(
            "the database `{}` has no publication `{publication}`: CREATE PUBLICATION \"{publication}\" FOR TABLE …",
            address.database
        )));
    }
    let slot = slot_name(spec, function, id);
    let plugin = conn
        .query(&format!(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = {}",
            literal(&slot)
        ))
        .await?;
    match plugin
        .first()
        .and_then(|row| row.first().cloned().flatten())
    {
        Some(plugin) if plugin == "pgoutput" => Ok(()),
        Some(other) => Err(SourceError::Config(format!(
            "the replication slot `{slot}` exists with the plugin `{other}`; Gust needs pgoutput (name another slot)"
        ))),
        None => {
            conn.query(&format!(
                "SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                literal(&slot)
            ))
            .await?;
            Ok(())
        }
    }
}

fn first(rows: Vec<Vec<Option<String>>>) -> Option<String> {
    rows.into_iter().next()?.into_iter().next()?
}

/// Drops the slot a removed source made under its default name (retrying
/// while the server still sees it in use).
pub(crate) async fn drop_default_slot(
    url: String,
    spec: SourceSpec,
    function: FunctionName,
    id: String,
) {
    if spec.slot.is_some() {
        return;
    }
    let slot = default_slot(&function, &id);
    for _ in 0..20 {
        let dropped = async {
            let mut conn = Conn::connect(&Address::parse(&url, spec.ca.as_deref())?).await?;
            conn.query(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {} AND NOT active",
                literal(&slot)
            ))
            .await?;
            let left = conn
                .query(&format!(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = {}",
                    literal(&slot)
                ))
                .await?;
            Ok::<bool, SourceError>(left.is_empty())
        }
        .await;
        if matches!(dropped, Ok(true)) {
            tracing::info!(%slot, "dropped the replication slot of a removed source");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::warn!(%slot, "could not drop the replication slot of a removed source; drop it by hand (it keeps WAL)");
}

/// A table as the stream last described it.
#[derive(Debug, Clone)]
struct Relation {
    name: String,
    columns: Vec<Column>,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    key: bool,
    type_oid: u32,
}

/// One row change, decoded.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    operation: &'static str,
    table: String,
    key: Map<String, Value>,
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
}

/// The decoder's state across messages: relations and the open transaction.
#[derive(Default)]
struct Decoder {
    relations: HashMap<u32, Relation>,
    /// The open transaction's commit LSN and how many changes it has had.
    txn: Option<(u64, usize)>,
}

/// What one pgoutput message means for the source.
#[derive(Debug, PartialEq)]
enum Step {
    Begin,
    Change(Change),
    Commit {
        end_lsn: u64,
    },
    /// A table described, with its replica identity (`f`: every column).
    Relation {
        id: u32,
        identity: u8,
    },
    Nothing,
}

fn bad(what: &str) -> SourceError {
    SourceError::Broker(format!("postgres: a malformed {what} message"))
}

fn cstr(b: &mut Bytes) -> Result<String, SourceError> {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .ok_or_else(|| bad("string"))?;
    let text = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(text)
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<(), SourceError> {
    if b.len() < n { Err(bad(what)) } else { Ok(()) }
}

impl Decoder {
    /// Makes `columns` a table's key (its primary key, where the replica
    /// identity names every column).
    fn set_key(&mut self, id: u32, columns: &[String]) {
        if let Some(relation) = self.relations.get_mut(&id) {
            for column in &mut relation.columns {
                column.key = columns.contains(&column.name);
            }
        }
    }

    fn decode(&mut self, mut b: Bytes) -> Result<Step, SourceError> {
        need(&b, 1, "pgoutput")?;
        let kind = b.get_u8();
        match kind {
            b'B' => {
                need(&b, 20, "begin")?;
                let final_lsn = b.get_u64();
                self.txn = Some((final_lsn, 0));
                Ok(Step::Begin)
            }
            b'C' => {
                need(&b, 25, "commit")?;
                let _flags = b.get_u8();
                let _commit_lsn = b.get_u64();
                let end_lsn = b.get_u64();
                self.txn = None;
                Ok(Step::Commit { end_lsn })
            }
            b'R' => {
                need(&b, 4, "relation")?;
                let id = b.get_u32();
                let namespace = cstr(&mut b)?;
                let name = cstr(&mut b)?;
                need(&b, 3, "relation")?;
                let identity = b.get_u8();
                let n = b.get_i16();
                let mut columns = Vec::new();
                for _ in 0..n {
                    need(&b, 1, "relation")?;
                    let flags = b.get_u8();
                    let column = cstr(&mut b)?;
                    need(&b, 8, "relation")?;
                    let type_oid = b.get_u32();
                    let _modifier = b.get_i32();
                    columns.push(Column {
                        name: column,
                        key: flags & 1 == 1,
                        type_oid,
                    });
                }
                let schema = if namespace.is_empty() {
                    "pg_catalog".to_string()
                } else {
                    namespace
                };
                self.relations.insert(
                    id,
                    Relation {
                        name: format!("{schema}.{name}"),
                        columns,
                    },
                );
                Ok(Step::Relation { id, identity })
            }
            b'I' | b'U' | b'D' => {
                need(&b, 5, "row")?;
                let id = b.get_u32();
                let relation = self
                    .relations
                    .get(&id)
                    .ok_or_else(|| bad("row of an unknown table"))?
                    .clone();
                let (mut old, mut new) = (None, None);
                loop {
                    if b.is_empty() {
                        break;
                    }
                    match b.get_u8() {
                        b'N' => new = Some(tuple(&mut b, &relation)?),
                        b'O' | b'K' => old = Some(tuple(&mut b, &relation)?),
                        _ => return Err(bad("row")),
                    }
                }
                let operation = match kind {
                    b'I' => "insert",
                    b'U' => "update",
                    _ => "delete",
                };
                let source = new.as_ref().or(old.as_ref());
                let key: Map<String, Value> = relation
                    .columns
                    .iter()
                    .filter(|c| c.key)
                    .filter_map(|c| Some((c.name.clone(), source?.get(&c.name)?.clone())))
                    .collect();
                Ok(Step::Change(Change {
                    operation,
                    table: relation.name.clone(),
                    key,
                    new,
                    old,
                }))
            }
            b'T' => {
                need(&b, 5, "truncate")?;
                let n = b.get_u32();
                let _options = b.get_u8();
                need(&b, 4 * n as usize, "truncate")?;
                let mut tables = Vec::new();
                for _ in 0..n {
                    if let Some(r) = self.relations.get(&b.get_u32()) {
                        tables.push(r.name.clone());
                    }
                }
                // One event per table; a truncate of several is rare.
                match tables.into_iter().next() {
                    Some(table) => Ok(Step::Change(Change {
                        operation: "truncate",
                        table,
                        key: Map::new(),
                        new: None,
                        old: None,
                    })),
                    None => Ok(Step::Nothing),
                }
            }
            _ => Ok(Step::Nothing), // type, origin, message
        }
    }
}

/// A row's columns as JSON: numbers, booleans and JSON as such, the rest as
/// text; a TOASTed value the change did not touch is left out.
fn tuple(b: &mut Bytes, relation: &Relation) -> Result<Map<String, Value>, SourceError> {
    need(b, 2, "tuple")?;
    let n = b.get_i16();
    let mut row = Map::new();
    for i in 0..n.max(0) as usize {
        need(b, 1, "tuple")?;
        let column = relation.columns.get(i).ok_or_else(|| bad("tuple"))?;
        match b.get_u8() {
            b'n' => {
                row.insert(column.name.clone(), Value::Null);
            }
            b'u' => {}
            b't' | b'b' => {
                need(b, 4, "tuple")?;
                let len = b.get_i32();
                let len = usize::try_from(len).map_err(|_| bad("tuple"))?;
                need(b, len, "tuple")?;
                let text = String::from_utf8_lossy(&b[..len]).into_owned();
                b.advance(len);
                row.insert(column.name.clone(), typed(column.type_oid, text));
            }
            _ => return Err(bad("tuple")),
        }
    }
    Ok(row)
}

fn typed(oid: u32, text: String) -> Value {
    match oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 => text.parse::<i64>().map_or(Value::String(text), Value::from),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(text), Value::Number),
        114 | 3802 => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        _ => Value::String(text),
    }
}

fn key_text(key: &Map<String, Value>) -> String {
    key.values()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub(crate) async fn run(ctx: &Arc<Ctx>) -> Result<(), SourceError> {
    let record = &ctx.record;
    let spec = &record.spec;
    let address = Address::parse(&ctx.url, spec.ca.as_deref())?;
    let slot = slot_name(spec, &record.function, &record.id);
    let publication = spec.publication.clone().unwrap_or_default();
    let mut conn = Conn::connect(&address).await?;
    conn.start_replication(&format!(
        "START_REPLICATION SLOT \"{slot}\" LOGICAL 0/0 (proto_version '1', publication_names {})",
        literal(&format!("\"{}\"", publication.replace('"', "\"\"")))
    ))
    .await?;
    ctx.set_state("connected", None).await;
    let source = format!(
        "{}/{publication}",
        gust_core::source::redact_url(&ctx.url).trim_end_matches('/')
    );
    let mut decoder = Decoder::default();
    let mut catalog: Option<Conn> = None;
    let mut pending: Vec<SourceMessage> = Vec::new();
    // What the server may forget: the end of the last transaction whose
    // every change is queued.
    let mut flushed = 0u64;
    let mut received = 0u64;
    let mut last_status = Instant::now();
    // The end of the last transaction whose changes are all in `pending`:
    // committed transactions are queued together, in one batch, once the
    // server has nothing more to send at once (or a chunk is full), so a
    // stream of small transactions costs a commit per batch, not per row.
    let mut committed: Option<u64> = None;
    loop {
        let next = match committed {
            // Only what has already arrived (reading is cancel-safe).
            Some(end_lsn) => match tokio::time::timeout(Duration::ZERO, conn.next()).await {
                Ok(message) => Ok(message),
                Err(_) => {
                    deliver(ctx, std::mem::take(&mut pending)).await?;
                    flushed = flushed.max(end_lsn);
                    committed = None;
                    continue;
                }
            },
            None => {
                let wait = STATUS_EVERY.saturating_sub(last_status.elapsed());
                tokio::time::timeout(wait, conn.next()).await
            }
        };
        let (kind, mut body) = match next {
            Ok(message) => message?,
            Err(_) => {
                conn.standby_status(flushed, false).await?;
                last_status = Instant::now();
                continue;
            }
        };
        match kind {
            b'd' => {}
            b'E' => {
                return Err(SourceError::Broker(format!(
                    "postgres: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            b'c' => {
                return Err(SourceError::Broker(
                    "postgres ended the replication stream".into(),
                ));
            }
            _ => continue,
        }
        need(&body, 1, "copy data")?;
        match body.get_u8() {
            b'w' => {
                need(&body, 24, "XLogData")?;
                let _start = body.get_u64();
                let end = body.get_u64();
                let _clock = body.get_i64();
                received = received.max(end);
                match decoder.decode(body)? {
                    Step::Change(change) => {
                        let (commit_lsn, n) = decoder.txn.unwrap_or((end, 0));
                        decoder.txn = Some((commit_lsn, n + 1));
                        pending.push(message(&source, commit_lsn, n, change));
                        if pending.len() >= CHUNK {
                            deliver(ctx, std::mem::take(&mut pending)).await?;
                            if let Some(end_lsn) = committed.take() {
                                flushed = flushed.max(end_lsn);
                            }
                        }
                    }
                    Step::Commit { end_lsn } => {
                        committed = Some(end_lsn);
                        if pending.len() >= CHUNK {
                            deliver(ctx, std::mem::take(&mut pending)).await?;
                            flushed = flushed.max(end_lsn);
                            committed = None;
                        }
                    }
                    Step::Relation { id, identity: b'f' } => {
                        // REPLICA IDENTITY FULL flags every column: the
                        // row's key is its primary key, where it has one.
                        let key = primary_key(&address, &mut catalog, id).await;
                        if !key.is_empty() {
                            decoder.set_key(id, &key);
                        }
                    }
                    Step::Begin | Step::Relation { .. } | Step::Nothing => {}
                }
            }
            b'k' => {
                need(&body, 17, "keepalive")?;
                let wal_end = body.get_u64();
                let _clock = body.get_i64();
                let reply = body.get_u8() == 1;
                // Nothing open and everything before `wal_end` handled: the
                // server may forget up to there (WAL of other tables).
                if decoder.txn.is_none() && pending.is_empty() {
                    flushed = flushed.max(wal_end);
                }
                if reply {
                    conn.standby_status(flushed, false).await?;
                    last_status = Instant::now();
                }
            }
            _ => {}
        }
        if last_status.elapsed() >= STATUS_EVERY {
            conn.standby_status(flushed, false).await?;
            last_status = Instant::now();
        }
    }
}

/// The primary key's columns of the table with OID `id` (none when it has
/// none or the catalog cannot be read: then every column is the key).
async fn primary_key(address: &Address, catalog: &mut Option<Conn>, id: u32) -> Vec<String> {
    if catalog.is_none() {
        *catalog = Conn::connect_sql(address).await.ok();
    }
    let Some(conn) = catalog.as_mut() else {
        return Vec::new();
    };
    let sql = format!(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = {id} AND i.indisprimary"
    );
    match conn.query(&sql).await {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect(),
        Err(_) => {
            *catalog = None;
            Vec::new()
        }
    }
}

fn message(source: &str, commit_lsn: u64, n: usize, change: Change) -> SourceMessage {
    let subject = if change.key.is_empty() {
        change.table.clone()
    } else {
        format!("{}/{}", change.table, key_text(&change.key))
    };
    let data = serde_json::json!({
        "table": change.table,
        "operation": change.operation,
        "key": change.key,
        "new": change.new,
        "old": change.old,
        "lsn": lsn_text(commit_lsn),
    });
    SourceMessage {
        id: Some(format!("{}/{n}", lsn_text(commit_lsn))),
        ty: format!("dev.gust.postgres.{}", change.operation),
        source: source.to_string(),
        subject: Some(subject.clone()),
        ordering_key: Some(subject),
        content_type: Some("application/json".to_string()),
        data: serde_json::to_vec(&data).unwrap_or_default(),
    }
}

/// Queues a transaction's changes (or a chunk of a large one): one row's
/// in order, one commit per row key.
async fn deliver(ctx: &Arc<Ctx>, messages: Vec<SourceMessage>) -> Result<(), SourceError> {
    if messages.is_empty() {
        return Ok(());
    }
    ctx.room().await?;
    ctx.submit_batch(messages).await
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut as _, BytesMut};

    use super::*;

    fn relation() -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(7);
        b.put_slice(b"public\0orders\0");
        b.put_u8(b'd');
        b.put_i16(3);
        for (flags, name, oid) in [(1u8, "id", 23u32), (0, "note", 25), (0, "meta", 3802)] {
            b.put_u8(flags);
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(oid);
            b.put_i32(-1);
        }
        b.freeze()
    }

    fn tuple(b: &mut BytesMut, values: &[Option<&str>]) {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(text) => {
                    b.put_u8(b't');
                    b.put_i32(text.len() as i32);
                    b.put_slice(text.as_bytes());
                }
                None => b.put_u8(b'n'),
            }
        }
    }

    #[test]
    fn pgoutput_rows_decode_with_their_key_and_types() {
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.decode(relation()).unwrap(),
            Step::Relation {
                id: 7,
                identity: b'd'
            }
        );
        let mut begin = BytesMut::new();
        begin.put_u8(b'B');
        begin.put_u64(0x1_0000_0010);
        begin.put_i64(0);
        begin.put_i32(42);
        assert_eq!(decoder.decode(begin.freeze()).unwrap(), Step::Begin);
        let mut update = BytesMut::new();
        update.put_u8(b'U');
        update.put_u32(7);
        update.put_u8(b'O');
        tuple(&mut update, &[Some("5"), Some("old"), None]);
        update.put_u8(b'N');
        tuple(&mut update, &[Some("5"), Some("new"), Some(r#"{"a":1}"#)]);
        let Step::Change(change) = decoder.decode(update.freeze()).unwrap() else {
            panic!("a change")
        };
        assert_eq!(change.operation, "update");
        assert_eq!(change.table, "public.orders");
        assert_eq!(
            Value::Object(change.key.clone()),
            serde_json::json!({"id": 5})
        );
        assert_eq!(
            Value::Object(change.new.clone().unwrap()),
            serde_json::json!({"id": 5, "note": "new", "meta": {"a": 1}})
        );
        assert_eq!(change.old.as_ref().unwrap()["meta"], Value::Null);
        let m = message("pg", 0x1_0000_0010, 3, change);
        assert_eq!(m.id.as_deref(), Some("1/10/3"));
        assert_eq!(m.subject.as_deref(), Some("public.orders/5"));
        assert_eq!(m.ty, "dev.gust.postgres.update");
        let mut commit = BytesMut::new();
        commit.put_u8(b'C');
        commit.put_u8(0);
        commit.put_u64(0x1_0000_0010);
        commit.put_u64(0x1_0000_0040);
        commit.put_i64(0);
        assert_eq!(
            decoder.decode(commit.freeze()).unwrap(),
            Step::Commit {
                end_lsn: 0x1_0000_0040
            }
        );
        // A truncated message is an error, not a panic.
        assert!(decoder.decode(Bytes::from_static(b"U\0\0")).is_err());
        assert!(
            decoder
                .decode(Bytes::from_static(b"R\0\0\0\x07public"))
                .is_err()
        );
    }

    #[test]
    fn default_slot_names_follow_postgres_rules() {
        let f = FunctionName::new("order-sync").unwrap();
        assert_eq!(default_slot(&f, "s1-a"), "gust_order_sync_s1_a");
    }
}

//! Redis Streams: a consumer group read by one consumer (`gust`) per
//! source. Entries are read with `XREADGROUP`, queued, then `XACK`ed; after
//! a crash the consumer's pending entries (read, never acknowledged) are
//! read again first (`XREADGROUP … 0`) and entries another consumer left
//! pending are taken over with `XAUTOCLAIM`, so nothing read is lost.
//!
//! An event's id is `<stream>/<entry id>` (stable: a redelivery is
//! recognised and queued once). Its data is the entry's fields as a JSON
//! object (a value that is not UTF-8 as `{"base64": …}`); with `key_field`,
//! that field's value is the subject and the ordering key.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gust_core::source::SourceSpec;
use gust_events::SourceMessage;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::SourceError;
use crate::ctx::{Ctx, json_bytes};

const CONSUMER: &str = "gust";
const DEFAULT_GROUP: &str = "gust";
/// How long one read waits for new entries.
const BLOCK_MS: u64 = 2_000;
/// Entries pending with another consumer this long are taken over.
const CLAIM_IDLE_MS: u64 = 60_000;
/// How often the group's lag (`XINFO GROUPS`) is read.
const LAG_EVERY: Duration = Duration::from_secs(1);

fn group(spec: &SourceSpec) -> &str {
    spec.group.as_deref().unwrap_or(DEFAULT_GROUP)
}

async fn connect(url: &str, spec: &SourceSpec) -> Result<MultiplexedConnection, SourceError> {
    // `rediss://` is TLS, checked against the machine's roots and the
    // source's CA.
    let client = match &spec.ca {
        Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.as_bytes().to_vec()),
            },
        ),
        _ => redis::Client::open(url),
    }
    .map_err(SourceError::broker)?;
    // A blocking read outlasts the default response timeout.
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 10_000)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| SourceError::Broker(format!("{}: {e}", gust_core::source::redact_url(url))))
}

/// Makes the consumer group (from the stream's end: entries added from now
/// on) unless it exists, and the stream with it.
pub(crate) async fn prepare(url: &str, spec: &SourceSpec) -> Result<(), SourceError> {
    let mut con = connect(url, spec).await?;
    let stream = spec.stream.as_deref().unwrap_or_default();
    let made: Result<Value, _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group(spec))
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await;
    match made {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(SourceError::Broker(format!(
            "cannot make consumer group `{}` on stream `{stream}`: {e}",
            group(spec)
        ))),
    }
}

pub(crate) async fn run(ctx: &Arc<Ctx>) -> Result<(), SourceError> {
    let spec = &ctx.record.spec;
    prepare(&ctx.url, spec).await?;
    let mut con = connect(&ctx.url, spec).await?;
    let stream = spec.stream.clone().unwrap_or_default();
    let group = group(spec).to_string();
    let count = spec.prefetch();
    let source = format!(
        "{}/{stream}",
        gust_core::source::redact_url(&ctx.url).trim_end_matches('/')
    );
    ctx.set_state("connected", None).await;
    // First what this consumer read and never acknowledged, then new entries.
    let mut from = "0".to_string();
    let mut last_claim = Instant::now() - Duration::from_secs(3600);
    let mut last_lag = Instant::now() - LAG_EVERY;
    loop {
        // Room for more entries. The lag is read every LAG_EVERY, a paused
        // source's too: what the broker keeps then is what Gust had no
        // room for. (`room` is waited on to its end, never dropped: it
        // says "connected" again only if the same call said "paused".)
        let room = ctx.room();
        tokio::pin!(room);
        loop {
            if last_lag.elapsed() >= LAG_EVERY {
                last_lag = Instant::now();
                if let Some(lag) = lag(&mut con, &stream, &group).await {
                    ctx.counters.lag.store(lag, Ordering::Relaxed);
                }
            }
            tokio::select! {
                room = &mut room => break room?,
                () = tokio::time::sleep(LAG_EVERY.saturating_sub(last_lag.elapsed())) => {}
            }
        }
        let mut entries =
            if from == ">" && last_claim.elapsed() >= Duration::from_millis(CLAIM_IDLE_MS / 2) {
                last_claim = Instant::now();
                autoclaim(&mut con, &stream, &group, count).await?
            } else {
                Vec::new()
            };
        if entries.is_empty() {
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&group)
                .arg(CONSUMER)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(if from == ">" { BLOCK_MS } else { 0 })
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from)
                .query_async(&mut con)
                .await
                .map_err(|e| {
                    if e.code() == Some("NOGROUP") {
                        SourceError::Broker(format!(
                            "the stream `{stream}` or its group `{group}` was removed; it is made again"
                        ))
                    } else {
                        SourceError::broker(e)
                    }
                })?;
            entries = parse_read(reply);
            // The pending list is drained: read new entries from now on.
            if from == "0" && entries.is_empty() {
                from = ">".to_string();
                continue;
            }
        }
        if entries.is_empty() {
            continue;
        }
        deliver(ctx, &source, &stream, &entries).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        redis::cmd("XACK")
            .arg(&stream)
            .arg(&group)
            .arg(&ids)
            .query_async::<Value>(&mut con)
            .await
            .map_err(SourceError::broker)?;
    }
}

/// Queues a batch: entries of one key in order (one commit per key).
async fn deliver(
    ctx: &Arc<Ctx>,
    source: &str,
    stream: &str,
    entries: &[Entry],
) -> Result<(), SourceError> {
    let key_field = ctx.record.spec.key_field.as_deref();
    let messages = entries
        .iter()
        .map(|entry| {
            let key = key_field.and_then(|field| {
                entry
                    .fields
                    .iter()
                    .find(|(k, _)| k == field)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            });
            let data: serde_json::Map<String, serde_json::Value> = entry
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), json_bytes(v)))
                .collect();
            SourceMessage {
                id: Some(format!("{stream}/{}", entry.id)),
                ty: "dev.gust.redis.message".to_string(),
                source: source.to_string(),
                subject: key.clone(),
                ordering_key: key,
                content_type: Some("application/json".to_string()),
                data: serde_json::to_vec(&data).unwrap_or_default(),
            }
        })
        .collect();
    ctx.submit_batch(messages).await
}

#[derive(Debug)]
struct Entry {
    id: String,
    fields: Vec<(String, Vec<u8>)>,
}

/// `[[stream, [[id, [field, value, …]], …]]]` (or nil: nothing new).
fn parse_read(reply: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        if let Value::Array(mut parts) = stream
            && parts.len() == 2
            && let Value::Array(entries) = parts.remove(1)
        {
            out.extend(entries.into_iter().filter_map(parse_entry));
        }
    }
    out
}

fn parse_entry(entry: Value) -> Option<Entry> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = text(parts.pop()?)?;
    let fields = match fields {
        Value::Array(flat) => {
            let mut fields = Vec::new();
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                fields.push((text(k)?, bytes(v)?));
            }
            fields
        }
        // A deleted entry still pending: nothing to deliver but its id.
        Value::Nil => Vec::new(),
        _ => return None,
    };
    Some(Entry { id, fields })
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn text(value: Value) -> Option<String> {
    bytes(value).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Takes over entries another consumer read and left pending.
async fn autoclaim(
    con: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    count: u32,
) -> Result<Vec<Entry>, SourceError> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(CONSUMER)
        .arg(CLAIM_IDLE_MS)
        .arg("0")
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await
        .map_err(SourceError::broker)?;
    let Value::Array(mut parts) = reply else {
        return Ok(Vec::new());
    };
    if parts.len() < 2 {
        return Ok(Vec::new());
    }
    let Value::Array(entries) = parts.swap_remove(1) else {
        return Ok(Vec::new());
    };
    Ok(entries.into_iter().filter_map(parse_entry).collect())
}

/// The group's lag as Redis (7+) reports it.
async fn lag(con: &mut MultiplexedConnection, stream: &str, group: &str) -> Option<u64> {
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(con)
        .await
        .ok()?;
    let Value::Array(groups) = reply else {
        return None;
    };
    for info in groups {
        let pairs: Vec<(String, Value)> = match info {
            Value::Array(flat) => {
                let mut pairs = Vec::new();
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((text(k)?, v));
                }
                pairs
            }
            Value::Map(map) => map
                .into_iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
            _ => continue,
        };
        let name = pairs
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| text(v.clone()));
        if name.as_deref() == Some(group) {
            let field = |f: &str| match pairs.iter().find(|(k, _)| k == f) {
                Some((_, Value::Int(n))) => u64::try_from(*n).ok(),
                _ => None,
            };
            return Some(field("lag").unwrap_or(0) + field("pending").unwrap_or(0));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_read_reply_becomes_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("orders"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("k"), bulk("a"), bulk("n"), bulk("1")]),
                ]),
                Value::Array(vec![bulk("1-1"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            vec![("k".into(), b"a".to_vec()), ("n".into(), b"1".to_vec())]
        );
        assert!(entries[1].fields.is_empty());
        assert!(parse_read(Value::Nil).is_empty());
    }
}

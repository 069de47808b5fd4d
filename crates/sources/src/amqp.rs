//! AMQP 0-9-1 (RabbitMQ): a queue consumed with manual acknowledgements
//! and a prefetch of `prefetch` (`basic.qos`): the broker sends no more
//! than that many unacknowledged messages, and one whose channel closes
//! before its ack (a crash, a lost connection) goes back to the queue and
//! comes again, flagged redelivered.
//!
//! The event id is the message's `message-id` property when the publisher
//! set one (then a redelivery is recognised and queued once); otherwise each
//! delivery is a new event. The routing key is the subject and ordering
//! key: messages of one routing key are queued, and delivered, in the
//! order the broker sent them.
//!
//! `amqps://` (port 5671 by default) connects over TLS, through a
//! loopback [`Tunnel`] (lapin's own TLS is not built in).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use gust_core::source::SourceSpec;
use gust_core::{FunctionName, TenantId};
use gust_events::SourceMessage;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::mpsc;

use crate::SourceError;
use crate::ctx::{Ctx, lane_of, next_batch};
use crate::tls::Tunnel;

const LANES: usize = 8;
/// Messages a lane queues with one commit, at most.
const BATCH: usize = 256;
const LAG_EVERY: Duration = Duration::from_secs(5);

/// A connection, and for `amqps://` the tunnel it goes through (which must
/// live as long as it).
async fn connect(
    url: &str,
    spec: &SourceSpec,
) -> Result<(Connection, Option<Tunnel>), SourceError> {
    let (tunnel, local) = if url.starts_with("amqps://") {
        let (host, port) = crate::supervisor::host_port(url, 5671)?;
        let config = crate::tls::client_config(spec.ca.as_deref(), crate::tls::Check::Full)?;
        let (tunnel, port) = Tunnel::loopback(&host, port, config).await?;
        let local = through_loopback(url, port);
        (Some(tunnel), local)
    } else {
        (None, url.to_string())
    };
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&local, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| {
        SourceError::Broker(format!(
            "{} did not answer",
            gust_core::source::redact_url(url)
        ))
    })?
    .map_err(|e| SourceError::Broker(format!("{}: {e}", gust_core::source::redact_url(url))))?;
    Ok((connection, tunnel))
}

/// `amqps://user:pass@host:port/vhost` as `amqp://user:pass@127.0.0.1:<port>/vhost`.
fn through_loopback(url: &str, port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority
        .rsplit_once('@')
        .map(|(info, _)| format!("{info}@"))
        .unwrap_or_default();
    format!("amqp://{userinfo}127.0.0.1:{port}{tail}")
}

/// The queue as the broker has it (it must exist: Gust declares none).
async fn queue(channel: &lapin::Channel, name: &str) -> Result<lapin::Queue, SourceError> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| SourceError::Broker(format!("queue `{name}`: {e}")))
}

/// Checks the broker answers with these credentials and the queue exists.
pub(crate) async fn prepare(url: &str, spec: &SourceSpec) -> Result<(), SourceError> {
    let (connection, _tunnel) = connect(url, spec).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(SourceError::broker)?;
    queue(&channel, spec.queue.as_deref().unwrap_or_default()).await?;
    let _ = connection.close(200, "checked".into()).await;
    Ok(())
}

fn consumer_tag(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("gust-{tenant}-{function}-{id}")
}

pub(crate) async fn run(ctx: &Arc<Ctx>) -> Result<(), SourceError> {
    let record = &ctx.record;
    let spec = &record.spec;
    let name = spec.queue.clone().unwrap_or_default();
    let (connection, _tunnel) = connect(&ctx.url, spec).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(SourceError::broker)?;
    let prefetch = u16::try_from(spec.prefetch()).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(SourceError::broker)?;
    queue(&channel, &name).await?;
    let mut deliveries = channel
        .basic_consume(
            name.as_str().into(),
            consumer_tag(&record.tenant, &record.function, &record.id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| SourceError::Broker(format!("consuming `{name}`: {e}")))?;
    ctx.set_state("connected", None).await;
    let broker = gust_core::source::redact_url(&ctx.url)
        .trim_end_matches('/')
        .to_string();
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        // Unbounded: what waits here is bounded by the prefetch.
        let (tx, mut rx) = mpsc::unbounded_channel::<lapin::message::Delivery>();
        lanes.push(tx);
        let ctx = ctx.clone();
        let source = format!("{broker}/{name}");
        workers.spawn(async move {
            while let Some(batch) = next_batch(&mut rx, BATCH).await {
                ctx.room().await?;
                let messages = batch
                    .iter()
                    .map(|delivery| {
                        let routing_key = delivery.routing_key.to_string();
                        let properties = &delivery.properties;
                        SourceMessage {
                            id: properties.message_id().as_ref().map(|id| id.to_string()),
                            ty: "dev.gust.amqp.message".to_string(),
                            source: source.clone(),
                            subject: Some(routing_key.clone()),
                            ordering_key: Some(routing_key),
                            content_type: properties.content_type().as_ref().map(|c| c.to_string()),
                            data: delivery.data.clone(),
                        }
                    })
                    .collect();
                ctx.submit_batch(messages).await?;
                for delivery in &batch {
                    // `false`: the channel this delivery came on is gone;
                    // the broker sends the message again on the next one.
                    let acked = delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| SourceError::Broker(format!("acknowledging: {e}")))?;
                    if !acked {
                        return Err(SourceError::Broker(
                            "the channel closed before an acknowledgement".into(),
                        ));
                    }
                }
            }
            Ok::<(), SourceError>(())
        });
    }
    let mut lag_tick = tokio::time::interval(LAG_EVERY);
    loop {
        tokio::select! {
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let lane = lane_of(delivery.routing_key.as_str(), LANES);
                    lanes[lane]
                        .send(delivery)
                        .map_err(|_| SourceError::Broker("a lane stopped".into()))?;
                }
                Some(Err(e)) => return Err(SourceError::Broker(format!("amqp: {e}"))),
                None => return Err(SourceError::Broker("the broker cancelled the consumer".into())),
            },
            Some(done) = workers.join_next() => {
                return match done {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(SourceError::Broker(e.to_string())),
                };
            }
            _ = lag_tick.tick() => {
                if let Ok(queue) = queue(&channel, &name).await {
                    ctx.counters.lag.store(u64::from(queue.message_count()), Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_address_goes_through_the_loopback_with_its_login_and_vhost() {
        assert_eq!(
            through_loopback("amqps://app:p%40w@mq.example:5671/%2f?heartbeat=10", 40001),
            "amqp://app:p%40w@127.0.0.1:40001/%2f?heartbeat=10"
        );
        assert_eq!(
            through_loopback("amqps://mq.example", 40002),
            "amqp://127.0.0.1:40002"
        );
    }
}

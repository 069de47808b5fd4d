//! NATS: with `stream`, a JetStream durable pull consumer (at least once):
//! each message is queued, then acknowledged; one not acknowledged (or
//! whose ack was lost) within the consumer's
//! ack wait is sent again, and `max_ack_pending` (the source's `prefetch`)
//! bounds what is taken and not acknowledged. The event id is
//! `<stream>/<stream sequence>`, stable across redeliveries. Without
//! `stream`, core NATS subjects: **at most once** — a message published
//! while the source is not connected, or dropped by the server because the
//! source fell behind (a slow consumer), is gone; the server gives no id.
//!
//! The subject is the event's subject and ordering key: messages of one
//! subject are queued, and delivered, in the order the server sent them.
//! After a crash, those taken and not acknowledged come again once their
//! ack wait (10 s) is over; a restarted source waits that long before it
//! pulls, so they come before newer ones and the order holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt as _;
use gust_core::FunctionName;
use gust_core::source::SourceSpec;
use gust_events::SourceMessage;
use tokio::sync::mpsc;

use crate::SourceError;
use crate::ctx::{Ctx, lane_of, next_batch};

/// Lanes messages are queued on: one subject always takes the same lane.
const LANES: usize = 8;
/// Messages a lane queues with one commit, at most.
const BATCH: usize = 256;
const LAG_EVERY: Duration = Duration::from_secs(5);
/// How long the server waits for an acknowledgement before it sends a
/// message again.
const ACK_WAIT: Duration = Duration::from_secs(10);

fn durable(spec: &SourceSpec, function: &FunctionName, id: &str) -> String {
    spec.group
        .clone()
        .unwrap_or_else(|| format!("gust-{function}-{id}"))
}

async fn connect(url: &str, spec: &SourceSpec) -> Result<async_nats::Client, SourceError> {
    let mut options = async_nats::ConnectOptions::new();
    // `tls://`, or a server that asks for it: checked against the public
    // roots and the source's CA.
    let tls = crate::tls::client_config(spec.ca.as_deref(), crate::tls::Check::Full)?;
    options = options
        .tls_client_config(tls)
        .require_tls(url.starts_with("tls://") || spec.ca.is_some());
    options
        .connection_timeout(Duration::from_secs(5))
        // The supervisor reconnects (and reports it); a client retrying on
        // its own would hide a broker that is down.
        .max_reconnects(Some(1))
        .connect(url)
        .await
        .map_err(|e| SourceError::Broker(format!("{}: {e}", gust_core::source::redact_url(url))))
}

fn consumer_config(spec: &SourceSpec, name: String) -> consumer::pull::Config {
    let mut config = consumer::pull::Config {
        durable_name: Some(name),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::New,
        max_ack_pending: i64::from(spec.prefetch()),
        ack_wait: ACK_WAIT,
        ..Default::default()
    };
    match spec.topics.as_slice() {
        [one] => config.filter_subject = one.clone(),
        many => config.filter_subjects = many.to_vec(),
    }
    config
}

async fn consumer(
    client: &async_nats::Client,
    spec: &SourceSpec,
    name: String,
) -> Result<consumer::PullConsumer, SourceError> {
    let stream_name = spec.stream.as_deref().unwrap_or_default();
    let stream = jetstream::new(client.clone())
        .get_stream(stream_name)
        .await
        .map_err(|e| SourceError::Broker(format!("JetStream stream `{stream_name}`: {e}")))?;
    stream
        .get_or_create_consumer(&name, consumer_config(spec, name.clone()))
        .await
        .map_err(|e| {
            SourceError::Broker(format!("durable consumer `{name}` on `{stream_name}`: {e}"))
        })
}

/// Checks the server answers; with a stream, makes the durable consumer
/// (from now on: messages stored from here are kept for the source).
pub(crate) async fn prepare(
    url: &str,
    spec: &SourceSpec,
    function: &FunctionName,
    id: &str,
) -> Result<(), SourceError> {
    let client = connect(url, spec).await?;
    if spec.stream.is_some() {
        consumer(&client, spec, durable(spec, function, id)).await?;
    }
    Ok(())
}

pub(crate) async fn run(ctx: &Arc<Ctx>) -> Result<(), SourceError> {
    let record = &ctx.record;
    let spec = &record.spec;
    let client = connect(&ctx.url, spec).await?;
    let broker = gust_core::source::redact_url(&ctx.url)
        .trim_end_matches('/')
        .to_string();
    match &spec.stream {
        Some(stream) => {
            let consumer =
                consumer(&client, spec, durable(spec, &record.function, &record.id)).await?;
            jetstream_loop(ctx, consumer, &broker, stream).await
        }
        None => core_loop(ctx, &client, &broker).await,
    }
}

async fn jetstream_loop(
    ctx: &Arc<Ctx>,
    mut consumer: consumer::PullConsumer,
    broker: &str,
    stream: &str,
) -> Result<(), SourceError> {
    // Messages taken by a previous run and never acknowledged (it crashed)
    // come again once their ack wait is over, and then before new ones:
    // pulling only after that keeps each subject's order across the crash.
    if let Ok(info) = consumer.info().await
        && info.num_ack_pending > 0
    {
        let wait = info.config.ack_wait;
        ctx.set_state(
            "starting",
            Some(format!(
                "{} messages taken before a restart are sent again in {} s, before new ones",
                info.num_ack_pending,
                wait.as_secs()
            )),
        )
        .await;
        tokio::time::sleep(wait).await;
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| SourceError::Broker(format!("pulling: {e}")))?;
    ctx.set_state("connected", None).await;
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        // Unbounded: what waits here is bounded by `max_ack_pending`.
        let (tx, mut rx) = mpsc::unbounded_channel::<jetstream::Message>();
        lanes.push(tx);
        let ctx = ctx.clone();
        let (broker, stream) = (broker.to_string(), stream.to_string());
        workers.spawn(async move {
            while let Some(batch) = next_batch(&mut rx, BATCH).await {
                ctx.room().await?;
                let mut events = Vec::with_capacity(batch.len());
                for message in &batch {
                    let sequence = message.info().map(|i| i.stream_sequence).map_err(|e| {
                        SourceError::Broker(format!("a message without its info: {e}"))
                    })?;
                    let subject = message.subject.to_string();
                    events.push(SourceMessage {
                        id: Some(format!("{stream}/{sequence}")),
                        ty: "dev.gust.nats.message".to_string(),
                        source: format!("{broker}/{stream}"),
                        subject: Some(subject.clone()),
                        ordering_key: Some(subject),
                        content_type: header(&message.headers, "Content-Type"),
                        data: message.payload.to_vec(),
                    });
                }
                ctx.submit_batch(events).await?;
                // Plain acks: one the server never gets makes it send the
                // message again after the ack wait, and that redelivery is
                // recognised by its id and not queued twice.
                for message in &batch {
                    message
                        .ack()
                        .await
                        .map_err(|e| SourceError::Broker(format!("acknowledging: {e}")))?;
                }
            }
            Ok::<(), SourceError>(())
        });
    }
    let mut lag_tick = tokio::time::interval(LAG_EVERY);
    loop {
        tokio::select! {
            next = messages.next() => match next {
                Some(Ok(message)) => {
                    let lane = lane_of(message.subject.as_str(), LANES);
                    lanes[lane]
                        .send(message)
                        .map_err(|_| SourceError::Broker("a lane stopped".into()))?;
                }
                Some(Err(e)) => return Err(SourceError::Broker(format!("pulling: {e}"))),
                None => return Err(SourceError::Broker("the consumer's stream ended".into())),
            },
            Some(done) = workers.join_next() => {
                return match done {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(SourceError::Broker(e.to_string())),
                };
            }
            _ = lag_tick.tick() => {
                if let Ok(info) = consumer.info().await {
                    ctx.counters.lag.store(
                        info.num_pending + info.num_ack_pending as u64,
                        Ordering::Relaxed,
                    );
                }
            }
        }
    }
}

async fn core_loop(
    ctx: &Arc<Ctx>,
    client: &async_nats::Client,
    broker: &str,
) -> Result<(), SourceError> {
    let mut subscriptions = Vec::new();
    for subject in &ctx.record.spec.topics {
        subscriptions.push(
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| SourceError::Broker(format!("subscribing to `{subject}`: {e}")))?,
        );
    }
    let mut all = futures_util::stream::select_all(subscriptions);
    ctx.set_state("connected", None).await;
    let mut state = client.connection_state();
    loop {
        tokio::select! {
            next = all.next() => {
                let Some(message) = next else {
                    return Err(SourceError::Broker("the subscription ended".into()));
                };
                ctx.room().await?;
                let subject = message.subject.to_string();
                ctx.submit(SourceMessage {
                    id: None,
                    ty: "dev.gust.nats.message".to_string(),
                    source: format!("{broker}/{subject}"),
                    subject: Some(subject.clone()),
                    ordering_key: Some(subject),
                    content_type: header(&message.headers, "Content-Type"),
                    data: message.payload.to_vec(),
                })
                .await?;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let now = client.connection_state();
                if now != state && now != async_nats::connection::State::Connected {
                    return Err(SourceError::Broker("the connection to the server was lost".into()));
                }
                state = now;
            }
        }
    }
}

fn header(headers: &Option<async_nats::HeaderMap>, name: &str) -> Option<String> {
    headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

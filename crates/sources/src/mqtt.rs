//! MQTT 3.1.1: topic filters subscribed at QoS 1 or 2 in a persistent
//! session (`clean_session = false`, a client id stable per source), so the
//! broker keeps what is published while Gust is away. Acknowledgements are
//! manual: a message's PUBACK (QoS 1) or PUBREC (QoS 2) is sent only after
//! its event is queued; a crash before that has the broker send it again.
//!
//! MQTT gives a message no id that outlives a delivery, so a redelivery
//! after a crash is a new event (at least once, duplicates possible). The
//! topic is the subject and the ordering key: messages of one topic are
//! queued, and delivered, in the order the broker sent them.
//!
//! `mqtts://` (or `ssl://`, port 8883 by default) connects over TLS,
//! through a [`Tunnel`] (rumqttc's own TLS is not built in).

use std::sync::Arc;
use std::time::Duration;

use gust_core::source::SourceSpec;
use gust_core::{FunctionName, TenantId};
use gust_events::SourceMessage;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

use crate::SourceError;
use crate::ctx::{Ctx, lane_of, next_batch};
use crate::supervisor::host_port;
use crate::tls::Tunnel;

/// Lanes messages are queued on: one topic always takes the same lane.
const LANES: usize = 8;
/// Messages a lane queues with one commit, at most.
const BATCH: usize = 256;

/// The client id of a source's session: stable, so a reconnect (on any
/// node) resumes it.
fn client_id(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("gust-{tenant}-{function}-{id}")
}

fn qos(spec: &SourceSpec) -> QoS {
    match spec.qos {
        Some(2) => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// `mqtts://` or `ssl://`: TLS.
fn is_tls(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// The broker's host and port (8883 by default over TLS, else 1883).
fn address(url: &str) -> Result<(String, u16), SourceError> {
    host_port(url, if is_tls(url) { 8883 } else { 1883 })
}

/// The client's options, and over TLS the tunnel they connect through
/// (which must live as long as the client).
async fn connection(
    url: &str,
    client: String,
    spec: &SourceSpec,
    max_event_bytes: usize,
) -> Result<(MqttOptions, Option<Tunnel>), SourceError> {
    if !is_tls(url) {
        return Ok((options(url, client, spec, max_event_bytes, None)?, None));
    }
    let (host, port) = address(url)?;
    let config = crate::tls::client_config(spec.ca.as_deref(), crate::tls::Check::Full)?;
    let (tunnel, socket) = Tunnel::unix(&host, port, config).await?;
    let options = options(url, client, spec, max_event_bytes, Some(&socket))?;
    Ok((options, Some(tunnel)))
}

/// The client's options, connecting to the broker, or `via` a tunnel's socket.
fn options(
    url: &str,
    client: String,
    spec: &SourceSpec,
    max_event_bytes: usize,
    via: Option<&std::path::Path>,
) -> Result<MqttOptions, SourceError> {
    let mut options = match via {
        Some(socket) => {
            let mut options = MqttOptions::new(client, socket.to_string_lossy(), 0);
            options.set_transport(rumqttc::Transport::unix());
            options
        }
        None => {
            let (host, port) = address(url)?;
            MqttOptions::new(client, host, port)
        }
    };
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_keep_alive(Duration::from_secs(30));
    let inflight = u16::try_from(spec.prefetch()).unwrap_or(u16::MAX);
    options.set_inflight(inflight.max(1));
    // Room for the largest event and the packet's own header; a larger
    // packet ends the connection with a readable error.
    options.set_max_packet_size(max_event_bytes + 64 * 1024, 64 * 1024);
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        options.set_credentials(decode_percent(user), decode_percent(pass));
    }
    Ok(options)
}

fn decode_percent(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Connects once with the source's session and subscribes, so the broker
/// keeps messages for it from now on, even before the source first runs.
pub(crate) async fn prepare(
    url: &str,
    spec: &SourceSpec,
    tenant: &TenantId,
    function: &FunctionName,
    id: &str,
) -> Result<(), SourceError> {
    let (options, _tunnel) =
        connection(url, client_id(tenant, function, id), spec, 1 << 20).await?;
    let (client, mut events) = AsyncClient::new(options, 16);
    for topic in &spec.topics {
        client
            .subscribe(topic.clone(), qos(spec))
            .await
            .map_err(SourceError::broker)?;
    }
    let mut acked = 0;
    loop {
        match events.poll().await.map_err(describe)? {
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return Err(SourceError::Broker(
                        "the broker refused a subscription (check the topic filters and the user's ACL)".into(),
                    ));
                }
                acked += 1;
                if acked == spec.topics.len() {
                    break;
                }
            }
            // A message already waiting stays with the broker: not acknowledged.
            _ => continue,
        }
    }
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

fn describe(e: rumqttc::ConnectionError) -> SourceError {
    match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => SourceError::Broker(format!(
            "the broker refused the connection ({code:?}): check the user name and password in the source's url"
        )),
        other => SourceError::Broker(format!("mqtt: {other}")),
    }
}

pub(crate) async fn run(ctx: &Arc<Ctx>) -> Result<(), SourceError> {
    let record = &ctx.record;
    let spec = &record.spec;
    let (options, _tunnel) = connection(
        &ctx.url,
        client_id(&record.tenant, &record.function, &record.id),
        spec,
        ctx.max_event_bytes,
    )
    .await?;
    let cap = spec.prefetch() as usize;
    let (client, events) = AsyncClient::new(options, cap.max(16));
    let broker = gust_core::source::redact_url(&ctx.url)
        .trim_end_matches('/')
        .to_string();
    // Each lane queues its messages in order and acknowledges each after.
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        // Unbounded, so the connection is always polled (pings, acks
        // going out); what waits here is bounded by the broker, which sends
        // no more than its in-flight limit of unacknowledged messages.
        let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
        lanes.push(tx);
        let ctx = ctx.clone();
        let client = client.clone();
        let broker = broker.clone();
        workers.spawn(async move {
            while let Some(batch) = next_batch(&mut rx, BATCH).await {
                ctx.room().await?;
                let messages = batch
                    .iter()
                    .map(|publish| SourceMessage {
                        id: None,
                        ty: "dev.gust.mqtt.message".to_string(),
                        source: format!("{broker}/{}", publish.topic),
                        subject: Some(publish.topic.clone()),
                        ordering_key: Some(publish.topic.clone()),
                        content_type: None,
                        data: publish.payload.to_vec(),
                    })
                    .collect();
                ctx.submit_batch(messages).await?;
                for publish in &batch {
                    client.ack(publish).await.map_err(SourceError::broker)?;
                }
            }
            Ok::<(), SourceError>(())
        });
    }
    let polling = poll(ctx, client.clone(), events, lanes);
    tokio::select! {
        result = polling => result,
        Some(done) = workers.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(SourceError::Broker(e.to_string())),
        },
    }
}

/// Drives the connection: (re)subscribes when the broker has no session
/// for this client, and hands each message to its topic's lane.
async fn poll(
    ctx: &Arc<Ctx>,
    client: AsyncClient,
    mut events: EventLoop,
    lanes: Vec<mpsc::UnboundedSender<Publish>>,
) -> Result<(), SourceError> {
    let spec = &ctx.record.spec;
    loop {
        match events.poll().await.map_err(describe)? {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if !ack.session_present {
                    for topic in &spec.topics {
                        client
                            .subscribe(topic.clone(), qos(spec))
                            .await
                            .map_err(SourceError::broker)?;
                    }
                }
                ctx.set_state("connected", None).await;
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let lane = lane_of(&publish.topic, LANES);
                lanes[lane]
                    .send(publish)
                    .map_err(|_| SourceError::Broker("a lane stopped".into()))?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_url() {
        let spec = SourceSpec {
            kind: "mqtt".into(),
            topics: vec!["a/#".into()],
            ..Default::default()
        };
        let options = options(
            "mqtt://dev%40x:p%3Aw@broker:1884",
            "c".into(),
            &spec,
            1024,
            None,
        )
        .unwrap();
        assert_eq!(options.broker_address(), ("broker".to_string(), 1884));
        let login = options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("dev@x", "p:w")
        );
        assert!(!options.clean_session());
    }
}

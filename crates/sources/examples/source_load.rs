//! The load `bench/sources.sh` drives: publishes messages to a broker, or
//! consumes them with a plain client (the broker's own consume rate, the
//! limit a source is compared with).
//!
//! ```text
//! source_load pub  <redis|mqtt|nats|amqp> <url> <target> <n> [interval-ms]
//! source_load sub  <redis|mqtt|nats|amqp> <url> <target> <n>
//! source_load mkstream nats <url> <stream> 0     (subjects `bench.>`)
//! ```
//!
//! `pub` prints each message's publish time (Unix ms) on a line when an
//! interval is given (light load, for latencies); `sub` prints
//! `consumed N in S s: R msgs/s`. Targets: a Redis stream, an MQTT topic,
//! a NATS JetStream subject (its stream must exist), an AMQP queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: source_load pub|sub <redis|mqtt|nats|amqp> <url> <target> <n> [interval-ms]"
        );
        std::process::exit(2);
    }
    let (mode, kind, url, target) = (&args[1], &args[2], &args[3], &args[4]);
    let n: u64 = args[5].parse().expect("n");
    let interval = args
        .get(6)
        .map(|ms| Duration::from_millis(ms.parse().expect("interval")));
    match (mode.as_str(), kind.as_str()) {
        ("pub", "redis") => publish_redis(url, target, n, interval).await,
        ("sub", "redis") => consume_redis(url, target, n).await,
        ("pub", "mqtt") => publish_mqtt(url, target, n, interval).await,
        ("sub", "mqtt") => consume_mqtt(url, target, n).await,
        ("pub", "nats") => publish_nats(url, target, n, interval).await,
        ("sub", "nats") => consume_nats(url, target, n).await,
        ("mkstream", "nats") => {
            let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: target.clone(),
                subjects: vec!["bench.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        ("pub", "amqp") => publish_amqp(url, target, n, interval).await,
        ("sub", "amqp") => consume_amqp(url, target, n).await,
        _ => {
            eprintln!("unknown mode or kind");
            std::process::exit(2);
        }
    }
}

/// Waits between light-load messages and says when each went.
async fn pace(interval: Option<Duration>) {
    if let Some(interval) = interval {
        println!("{}", now_ms());
        tokio::time::sleep(interval).await;
    }
}

fn report(n: u64, started: Instant) {
    let s = started.elapsed().as_secs_f64();
    println!("consumed {n} in {s:.2} s: {:.0} msgs/s", n as f64 / s);
}

async fn publish_redis(url: &str, stream: &str, n: u64, interval: Option<Duration>) {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Pipelined in batches of 100 unless paced.
    let batch = if interval.is_some() { 1 } else { 100 };
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for i in sent..(sent + batch).min(n) {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("n")
                .arg(i)
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await.unwrap();
        sent = (sent + batch).min(n);
        pace(interval).await;
    }
}

async fn consume_redis(url: &str, stream: &str, n: u64) {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let group = format!("plain-{}", std::process::id());
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(&group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = 0;
    while got < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("c")
            .arg("COUNT")
            .arg(64)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut con)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|e| e.id))
            .collect();
        if ids.is_empty() {
            break;
        }
        got += ids.len() as u64;
        let _: redis::Value = redis::cmd("XACK")
            .arg(stream)
            .arg(&group)
            .arg(&ids)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    report(got, started);
}

fn mqtt_options(url: &str, id: &str) -> rumqttc::MqttOptions {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    let mut options =
        rumqttc::MqttOptions::new(id, host, port.trim_end_matches('/').parse().unwrap());
    options.set_inflight(100);
    options
}

async fn publish_mqtt(url: &str, topic: &str, n: u64, interval: Option<Duration>) {
    let (client, mut events) = rumqttc::AsyncClient::new(
        mqtt_options(url, &format!("pub-{}", std::process::id())),
        1000,
    );
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = events.poll().await {
                acked += 1;
            }
        }
    });
    for i in 0..n {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
        pace(interval).await;
    }
    acks.await.unwrap();
}

async fn consume_mqtt(url: &str, topic: &str, n: u64) {
    let (client, mut events) = rumqttc::AsyncClient::new(
        mqtt_options(url, &format!("sub-{}", std::process::id())),
        1000,
    );
    client
        .subscribe(topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut started = None;
    let mut got = 0;
    while got < n {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) = events.poll().await {
            started.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    report(got, started.unwrap());
}

async fn publish_nats(url: &str, subject: &str, n: u64, interval: Option<Duration>) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        pending.push_back(
            js.publish(subject.to_string(), i.to_string().into())
                .await
                .unwrap(),
        );
        if pending.len() >= 256 || interval.is_some() {
            pending.pop_front().unwrap().await.unwrap();
        }
        pace(interval).await;
    }
    for ack in pending {
        ack.await.unwrap();
    }
}

async fn consume_nats(url: &str, subject: &str, n: u64) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream_no_info(stream_of(subject)).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let started = Instant::now();
    let mut got = 0;
    while got < n {
        let message = messages.next().await.unwrap().unwrap();
        message.ack().await.unwrap();
        got += 1;
    }
    report(got, started);
}

/// `bench.x` publishes into stream `BENCH` (the script makes it).
fn stream_of(_subject: &str) -> &'static str {
    "BENCH"
}

async fn amqp_channel(url: &str) -> lapin::Channel {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    // The connection lives as long as the process.
    std::mem::forget(connection);
    channel
}

async fn publish_amqp(url: &str, queue: &str, n: u64, interval: Option<Duration>) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let channel = amqp_channel(url).await;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() >= 256 || interval.is_some() {
            pending.pop_front().unwrap().await.unwrap();
        }
        pace(interval).await;
    }
    for confirm in pending {
        confirm.await.unwrap();
    }
}

async fn consume_amqp(url: &str, queue: &str, n: u64) {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let channel = amqp_channel(url).await;
    channel
        .basic_qos(64, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "plain".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = 0;
    while got < n {
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
        else {
            break;
        };
        delivery
            .unwrap()
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        got += 1;
    }
    report(got, started);
}

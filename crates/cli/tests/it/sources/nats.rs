//! NATS sources: JetStream at least once across faults, core subjects at most once.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn nats_jetstream_messages_survive_a_kill_9_and_a_broker_restart_and_core_subjects_arrive_at_most_once()
 {
    let Some(mut broker) = Broker::nats() else {
        return;
    };
    let url = format!("nats://127.0.0.1:{}", broker.port);
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    deploy_collector(&server, "orders");
    // A stream that does not exist is refused when added.
    let refused = server.gust(&[
        "source", "add", "orders", "--kind", "nats", "--url", &url, "--stream", "NOPE", "--topic",
        "x.>",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("NOPE"));
    server.gust_json(&[
        "source", "add", "orders", "--kind", "nats", "--url", &url, "--stream", "ORDERS",
        "--topic", "orders.>", "--path", "/collect", "--id", "js",
    ]);
    let publish = |from: u32, to: u32| {
        let js = js.clone();
        async move {
            for n in from..to {
                let subject = format!("orders.{}", n % 4);
                js.publish(subject, format!("{n}").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    publish(0, 150).await;
    collected_until(&server, "orders", Duration::from_secs(30), |r| {
        r.len() >= 40
    })
    .await;
    server.kill9();
    publish(150, 300).await;
    let server = Server::start_in(dir.path(), &[]);
    let records = collected_until(&server, "orders", Duration::from_secs(60), |r| {
        let seen: BTreeSet<&str> = r.iter().map(|c| c.body.as_str()).collect();
        (0..300).all(|n| seen.contains(n.to_string().as_str()))
    })
    .await;
    let mut by_id: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &records {
        by_id.entry(r.id.as_str()).or_default().push(r.attempt);
    }
    assert_eq!(by_id.len(), 300, "one event per stream sequence");
    assert_at_most_a_few_queued_twice(&records, 64);
    // Per subject, in the order published.
    for s in 0..4 {
        let seen: Vec<u32> = records
            .iter()
            .filter(|r| r.subject == format!("orders.{s}") && r.attempt == 1)
            .map(|r| r.body.parse().unwrap())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted, "orders.{s} out of order");
    }
    assert!(records[0].ty == "dev.gust.nats.message");

    // The server restarted while messages are published: none lost.
    let restarted = {
        let js = js.clone();
        tokio::spawn(async move {
            for n in 300..400u32 {
                let subject = format!("orders.{}", n % 4);
                // Published again until the restarted server acknowledges it.
                loop {
                    if let Ok(ack) = js.publish(subject.clone(), format!("{n}").into()).await
                        && ack.await.is_ok()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.restart(Duration::from_millis(500));
    restarted.await.unwrap();
    collected_until(&server, "orders", Duration::from_secs(60), |r| {
        let seen: BTreeSet<&str> = r.iter().map(|c| c.body.as_str()).collect();
        (0..400).all(|n| seen.contains(n.to_string().as_str()))
    })
    .await;

    // Core NATS: what is published while connected arrives (at most once).
    server.gust_json(&[
        "source", "add", "orders", "--kind", "nats", "--url", &url, "--topic", "pings", "--path",
        "/collect", "--id", "core",
    ]);
    assert!(
        connected(&server, "orders", "core").await,
        "the core subscription connects"
    );
    for n in 0..10 {
        client
            .publish("pings", format!("ping {n}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    collected_until(&server, "orders", Duration::from_secs(20), |r| {
        r.iter().filter(|c| c.body.starts_with("ping")).count() == 10
    })
    .await;

    js.create_stream(async_nats::jetstream::stream::Config {
        name: "POLICY".into(),
        subjects: vec!["policy.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    server.gust_json(&[
        "source",
        "add",
        "orders",
        "--kind",
        "nats",
        "--url",
        &url,
        "--stream",
        "POLICY",
        "--topic",
        "policy.>",
        "--path",
        POLICY_PATH,
        "--id",
        "policy",
    ]);
    retried_dead_lettered_and_redriven(&server, "orders", |tag| {
        let js = js.clone();
        async move {
            js.publish("policy.x", tag.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
    .await;
}

//! MQTT sources: order per topic across a Gust outage and a broker restart.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_messages_keep_their_order_per_topic_across_a_gust_outage_and_a_broker_restart() {
    let Some(mut broker) = Broker::mosquitto() else {
        return;
    };
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    deploy_collector(&server, "devices");
    let added = server.gust_json(&[
        "source",
        "add",
        "devices",
        "--kind",
        "mqtt",
        "--url",
        &url,
        "--topic",
        "sensors/+/temp",
        "--qos",
        "1",
        "--path",
        "/collect",
        "--id",
        "temps",
    ]);
    assert_eq!(added["kind"], "mqtt");
    // Subscribed when added: published before the source first runs is kept.
    let batch = |topic: &str, from: u32, to: u32| -> Vec<String> {
        (from..to).map(|n| format!("{topic} {n}")).collect()
    };
    mqtt_publish(broker.port, "sensors/a/temp", &batch("a", 0, 50));
    mqtt_publish(broker.port, "sensors/b/temp", &batch("b", 0, 50));
    mqtt_publish(broker.port, "sensors/a/humidity", &batch("x", 0, 5));
    collected_until(&server, "devices", Duration::from_secs(30), |r| {
        r.len() >= 100
    })
    .await;

    // Gust away (kill -9): the persistent session keeps what is published.
    server.kill9();
    mqtt_publish(broker.port, "sensors/a/temp", &batch("a", 50, 100));
    let server = Server::start_in(dir.path(), &[]);
    collected_until(&server, "devices", Duration::from_secs(30), |r| {
        r.iter().any(|c| c.body == "a 99")
    })
    .await;
    // The broker restarted (it keeps sessions on disk): resumes by itself.
    broker.restart(Duration::from_millis(300));
    mqtt_publish(broker.port, "sensors/b/temp", &batch("b", 50, 100));
    let records = collected_until(&server, "devices", Duration::from_secs(60), |r| {
        r.iter().any(|c| c.body == "b 99")
    })
    .await;
    for topic in ["a", "b"] {
        let seen: Vec<u32> = records
            .iter()
            .filter(|r| r.subject == format!("sensors/{topic}/temp"))
            .map(|r| r.body.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        let distinct: BTreeSet<u32> = seen.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            100,
            "{topic}: every message, at least once: {seen:?}"
        );
        // In order, a redelivery (after the kill) at most repeating a tail.
        let mut high = 0;
        for (i, n) in seen.iter().enumerate() {
            assert!(
                *n + 20 >= high,
                "{topic}: message {n} after {high} (at {i}): {seen:?}"
            );
            high = high.max(*n);
        }
        let in_order = seen.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            in_order + 25 >= seen.len(),
            "{topic}: out of order: {seen:?}"
        );
    }
    assert!(records.iter().all(|r| r.ty == "dev.gust.mqtt.message"));
    assert!(!records.iter().any(|r| r.subject.contains("humidity")));
    let listed = server.gust_json(&["source", "ls", "devices"]);
    assert_eq!(listed[0]["status"]["state"], "connected", "{listed}");

    // A payload that is not UTF-8 is delivered as the bytes it is.
    let binary = dir.path().join("binary");
    std::fs::write(&binary, [0xff, 0xfe, b'b', b'i', b'n']).unwrap();
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "sensors/c/temp", "-f", &binary.to_string_lossy()])
        .status()
        .unwrap();
    assert!(published.success());
    let records = collected_until(&server, "devices", Duration::from_secs(20), |r| {
        r.iter().any(|c| c.subject == "sensors/c/temp")
    })
    .await;
    let bin = records
        .iter()
        .find(|c| c.subject == "sensors/c/temp")
        .unwrap();
    assert_eq!(bin.body, "\u{fffd}\u{fffd}bin", "{bin:?}");
    assert!(connected(&server, "devices", "temps").await);

    server.gust_json(&[
        "source",
        "add",
        "devices",
        "--kind",
        "mqtt",
        "--url",
        &url,
        "--topic",
        "policy/#",
        "--qos",
        "2",
        "--path",
        POLICY_PATH,
        "--id",
        "policy",
    ]);
    let port = broker.port;
    retried_dead_lettered_and_redriven(&server, "devices", |tag| async move {
        mqtt_publish(port, "policy/x", &[tag.to_string()]);
    })
    .await;
}

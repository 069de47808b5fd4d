//! Redis Streams sources: the delivery policy, and no loss across a `kill -9` or a broker restart.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn redis_stream_entries_become_events_retried_dead_lettered_and_redriven() {
    let Some(broker) = Broker::redis() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", broker.port);
    let server = Server::start();
    deploy_collector(&server, "orders");
    // A wrong address is refused when the source is added, with why.
    let refused = server.gust(&[
        "source",
        "add",
        "orders",
        "--kind",
        "redis",
        "--url",
        "redis://127.0.0.1:1",
        "--stream",
        "s",
    ]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("redis source was not added"), "{why}");

    // Entries of one key in order; the first two attempts of each fail.
    let added = server.gust_json(&[
        "source",
        "add",
        "orders",
        "--kind",
        "redis",
        "--url",
        &url,
        "--stream",
        "orders",
        "--key-field",
        "k",
        "--path",
        "/collect?fail_first=2",
        "--id",
        "rs",
    ]);
    assert_eq!(added["kind"], "redis");
    let mut con = redis(broker.port).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        let key = format!("key-{}", n % 3);
        ids.push((key.clone(), xadd(&mut con, "orders", &key, n).await));
    }
    let records = collected_until(&server, "orders", Duration::from_secs(30), |r| {
        r.len() >= 12
    })
    .await;
    assert_eq!(records.len(), 12, "{records:?}");
    for r in &records {
        assert_eq!(r.attempt, 3, "failed twice, then delivered: {r:?}");
        assert_eq!(r.ty, "dev.gust.redis.message");
        assert_eq!(r.source, format!("{url}/orders"));
    }
    // Per key, in the stream's order.
    for key in ["key-0", "key-1", "key-2"] {
        let sent: Vec<String> = ids
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, id)| format!("orders/{id}"))
            .collect();
        let seen: Vec<String> = records
            .iter()
            .filter(|r| r.subject == key)
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(seen, sent, "{key}");
    }
    let first = records.iter().find(|r| r.subject == "key-0").unwrap();
    assert!(
        first.body.contains("\"k\":\"key-0\",\"n\":\"0\""),
        "{first:?}"
    );
    // Every entry acknowledged: nothing left pending in the group.
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg("orders")
        .arg("gust")
        .query_async(&mut con)
        .await
        .unwrap();
    let redis::Value::Array(parts) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(parts[0], redis::Value::Int(0), "pending entries left");

    // A function that always fails: dead letters, then redrive.
    server.gust_json(&[
        "source",
        "add",
        "orders",
        "--kind",
        "redis",
        "--url",
        &url,
        "--stream",
        "doomed",
        "--path",
        "/collect?fail_always=1",
        "--id",
        "doomed",
    ]);
    xadd(&mut con, "doomed", "x", 1).await;
    let letters = Server::eventually(Duration::from_secs(20), || async {
        let letters = server.gust_json(&["dlq", "orders"]);
        (letters.as_array().unwrap().len() == 1).then_some(letters)
    })
    .await
    .expect("a dead letter");
    assert_eq!(letters[0]["attempts"], 3);
    // The source now delivers to a path that succeeds; redrive it.
    server.gust_json(&[
        "source", "add", "orders", "--kind", "redis", "--url", &url, "--stream", "doomed",
        "--path", "/collect", "--id", "doomed",
    ]);
    server.gust_json(&["dlq", "orders", "--redrive"]);
    let text = server
        .http
        .get(format!("{}/metrics", server.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("gust_source_messages_total{tenant=\"default\",function=\"orders\",source=\"rs\",kind=\"redis\",outcome=\"queued\"} 12"),
        "{text}"
    );
    // Each delivery is metered with its source's kind as the trigger.
    let metered = Server::eventually(Duration::from_secs(10), || async {
        let out = server.gust(&["usage", "--export", "jsonl"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let n = text
            .lines()
            .filter(|l| l.contains("\"trigger\":\"redis\""))
            .count();
        (n >= 36).then_some(n)
    })
    .await;
    assert!(metered.is_some(), "36 attempts metered as `redis`");
    let listed = server.gust_json(&["source", "ls", "orders"]);
    let rs = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "rs")
        .unwrap();
    assert_eq!(rs["status"]["state"], "connected", "{rs}");

    // An entry over the event limit is acknowledged, not queued, and said.
    let big = "x".repeat((1 << 20) + 10);
    let _: String = redis::cmd("XADD")
        .arg("orders")
        .arg("*")
        .arg("k")
        .arg("key-9")
        .arg("blob")
        .arg(&big)
        .query_async(&mut con)
        .await
        .unwrap();
    let said = Server::eventually(Duration::from_secs(10), || async {
        let listed = server.gust_json(&["source", "ls", "orders"]);
        let rs = listed.as_array()?.iter().find(|s| s["id"] == "rs")?.clone();
        let error = rs["status"]["last_error"].as_str()?.to_string();
        error.contains("over the event limit").then_some(error)
    })
    .await;
    assert!(said.is_some(), "the refused entry was not reported");
    let rejected = r#"gust_source_messages_total{tenant="default",function="orders",source="rs",kind="redis",outcome="rejected"}"#;
    assert_eq!(metric_or_zero(&server, rejected).await, 1);

    // The broker gone: the source says it is retrying, and why.
    drop(broker);
    let retrying = Server::eventually(Duration::from_secs(20), || async {
        let listed = server.gust_json(&["source", "ls", "orders"]);
        let rs = listed.as_array()?.iter().find(|s| s["id"] == "rs")?.clone();
        (rs["status"]["state"] == "retrying" && rs["status"]["last_error"].is_string())
            .then_some(rs)
    })
    .await;
    assert!(retrying.is_some(), "no retrying state with its error");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_a_broker_restart_while_redis_entries_flow_lose_none() {
    let Some(mut broker) = Broker::redis() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    deploy_collector(&server, "sink");
    server.gust_json(&[
        "source",
        "add",
        "sink",
        "--kind",
        "redis",
        "--url",
        &url,
        "--stream",
        "flow",
        "--path",
        "/collect",
        "--prefetch",
        "16",
    ]);
    let total = 400u64;
    let writer = {
        let port = broker.port;
        tokio::spawn(async move {
            let mut con = redis(port).await;
            let mut ids = Vec::new();
            for n in 0..total {
                ids.push(xadd(&mut con, "flow", "k", n).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ids
        })
    };
    // Let some be delivered, then kill gust mid-flow and start it again.
    collected_until(&server, "sink", Duration::from_secs(30), |r| r.len() >= 50).await;
    server.kill9();
    let server = Server::start_in(dir.path(), &[]);
    let ids = writer.await.unwrap();
    // Then restart the broker while more arrive.
    let more = {
        let port = broker.port;
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..100 {
                ids.push(xadd_retrying(port, "flow", "k", total + n).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.restart(Duration::from_millis(500));
    let more = more.await.unwrap();
    let sent: BTreeSet<String> = ids
        .into_iter()
        .chain(more)
        .map(|id| format!("flow/{id}"))
        .collect();
    let records = collected_until(&server, "sink", Duration::from_secs(60), |r| {
        let seen: BTreeSet<&str> = r.iter().map(|c| c.id.as_str()).collect();
        sent.iter().all(|id| seen.contains(id.as_str()))
    })
    .await;
    let mut times: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &records {
        times.entry(r.id.as_str()).or_default().push(r.attempt);
    }
    let twice: BTreeMap<&&str, &Vec<u64>> = times.iter().filter(|(_, a)| a.len() > 1).collect();
    eprintln!(
        "redis kill -9 and restart: {} entries, lost 0, delivered twice {} (attempts {twice:?})",
        sent.len(),
        twice.len()
    );
    assert_at_most_a_few_queued_twice(&records, 16);
}

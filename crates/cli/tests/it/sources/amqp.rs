//! RabbitMQ sources: acknowledged only once queued, no loss across faults.

use super::*;

/// Persistent messages `from..to` (payload `n`, message id `m-<n>`), each
/// confirmed by the broker.
async fn amqp_publish(channel: &lapin::Channel, queue: &str, from: u32, to: u32) {
    for n in from..to {
        amqp_publish_one(channel, queue, &format!("{n}"), &format!("m-{n}")).await;
    }
}

/// Restarts the machine's RabbitMQ (`rabbitmqctl stop_app`, `start_app`:
/// every connection drops, durable queues and persistent messages stay).
/// `false` after saying why it could not (in CI: a failure).
fn restart_rabbitmq(down_for: Duration) -> bool {
    let run = |what: &str| {
        Command::new("rabbitmqctl")
            .arg(what)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !run("stop_app") {
        let why = "`rabbitmqctl stop_app` failed (not installed, or not allowed)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped the broker restart: {why}");
        return false;
    }
    std::thread::sleep(down_for);
    assert!(run("start_app"), "`rabbitmqctl start_app` failed");
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_messages_are_acknowledged_only_once_queued_and_survive_a_kill_9_and_a_broker_restart()
 {
    let _machine = MACHINE_SERVICES.lock().await;
    if service("RabbitMQ", 5672).is_none() {
        return;
    }
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let channel = amqp_channel(url).await;
    let queue = amqp_queue(&channel, "gust-test").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    deploy_collector(&server, "jobs");
    // A queue that does not exist, or a wrong password: refused with why.
    let refused = server.gust(&[
        "source",
        "add",
        "jobs",
        "--kind",
        "amqp",
        "--url",
        url,
        "--queue",
        "no-such-queue",
    ]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no-such-queue"));
    let refused = server.gust(&[
        "source",
        "add",
        "jobs",
        "--kind",
        "amqp",
        "--url",
        "amqp://guest:wrong@127.0.0.1:5672/%2f",
        "--queue",
        &queue,
    ]);
    assert!(!refused.status.success());
    let added = server.gust_json(&[
        "source",
        "add",
        "jobs",
        "--kind",
        "amqp",
        "--url",
        url,
        "--queue",
        &queue,
        "--prefetch",
        "8",
        "--path",
        "/collect",
        "--id",
        "rmq",
    ]);
    assert_eq!(added["spec"]["url"], "amqp://guest:***@127.0.0.1:5672/%2f");
    amqp_publish(&channel, &queue, 0, 150).await;
    collected_until(&server, "jobs", Duration::from_secs(30), |r| r.len() >= 30).await;
    server.kill9();
    amqp_publish(&channel, &queue, 150, 250).await;
    let server = Server::start_in(dir.path(), &[]);
    let mut total = 250;
    // The broker restarted while messages are in flight: the source
    // reconnects by itself, and what was delivered but not acknowledged
    // comes again.
    let channel = if restart_rabbitmq(Duration::from_millis(500)) {
        let channel = amqp_channel(url).await;
        amqp_publish(&channel, &queue, 250, 300).await;
        total = 300;
        channel
    } else {
        channel
    };
    let records = collected_until(&server, "jobs", Duration::from_secs(60), |r| {
        let seen: BTreeSet<&str> = r.iter().map(|c| c.id.as_str()).collect();
        (0..total).all(|n| seen.contains(format!("m-{n}").as_str()))
    })
    .await;
    assert_at_most_a_few_queued_twice(&records, 8);
    assert!(records.iter().all(|r| r.ty == "dev.gust.amqp.message"));
    // Every message acknowledged: with the source removed (its consumer
    // gone, so whatever it held unacknowledged would be ready again), the
    // queue is empty.
    assert!(
        server
            .gust(&["source", "rm", "jobs", "rmq"])
            .status
            .success()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = Server::eventually(Duration::from_secs(10), || async {
        let q = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        (q.message_count() == 0).then_some(())
    })
    .await;
    assert!(left.is_some(), "messages left unacknowledged");

    let policy = amqp_queue(&channel, "gust-policy").await;
    server.gust_json(&[
        "source",
        "add",
        "jobs",
        "--kind",
        "amqp",
        "--url",
        url,
        "--queue",
        &policy,
        "--path",
        POLICY_PATH,
        "--id",
        "policy",
    ]);
    retried_dead_lettered_and_redriven(&server, "jobs", |tag| {
        let (channel, policy) = (channel.clone(), policy.clone());
        async move { amqp_publish_one(&channel, &policy, tag, tag).await }
    })
    .await;
    for queue in [&queue, &policy] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
}

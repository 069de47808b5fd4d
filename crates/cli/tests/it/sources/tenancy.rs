//! Sources and tenants: private addresses, other tenants' sources, backpressure,
//! a cluster's takeover, budgets.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_source_reaches_no_private_address_and_no_other_tenants_sources() {
    let Some(broker) = Broker::redis() else {
        return;
    };
    let server = Server::start();
    server.gust_json(&["tenant", "create", "acme"]);
    server.gust_json(&["tenant", "create", "other"]);
    let acme = server.token_for("acme", "owner", &[]);
    let other = server.token_for("other", "owner", &[]);
    let deployed = server.gust_as(
        &acme,
        &["deploy", "mine", guests().testbed.to_str().unwrap()],
    );
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    // This machine's Redis is a private address: refused for a tenant.
    let url = format!("redis://127.0.0.1:{}", broker.port);
    let refused = server.gust_as(
        &acme,
        &[
            "source", "add", "mine", "--kind", "redis", "--url", &url, "--stream", "s",
        ],
    );
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("private") && why.contains("--sources-private"),
        "{why}"
    );
    // A webhook it may have; another tenant sees none of it.
    let hook = server.gust_json_as(
        &acme,
        &[
            "source", "add", "mine", "--kind", "webhook", "--secret", "s", "--id", "h",
        ],
    );
    assert_eq!(
        hook["webhook_url"],
        format!("{}/_gust/webhooks/acme/mine/h", server.url)
    );
    // At its `sources` quota, another is refused; the same one may change.
    let response = server
        .http
        .put(format!("{}/v1/tenants/acme/quotas", server.api))
        .json(&serde_json::json!({"sources": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let over = server.gust_as(
        &acme,
        &[
            "source", "add", "mine", "--kind", "webhook", "--secret", "s", "--id", "h2",
        ],
    );
    let why = String::from_utf8_lossy(&over.stderr);
    assert!(
        !over.status.success() && why.contains("quota `sources` (1)"),
        "{why}"
    );
    let changed = server.gust_as(
        &acme,
        &[
            "source", "add", "mine", "--kind", "webhook", "--secret", "s2", "--id", "h",
        ],
    );
    assert!(changed.status.success(), "{changed:?}");
    assert_eq!(
        server.gust_json_as(&other, &["source", "ls"]),
        serde_json::json!([])
    );
    let removed = server.gust_as(&other, &["source", "rm", "mine", "h"]);
    assert!(!removed.status.success());
    assert_eq!(
        server
            .gust_json_as(&acme, &["source", "ls"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Its endpoint under another tenant's name is nobody's.
    let elsewhere = format!("{}/_gust/webhooks/other/mine/h", server.url);
    assert_eq!(
        server
            .http
            .post(&elsewhere)
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_function_makes_its_source_stop_pulling_at_max_backlog() {
    let Some(broker) = Broker::redis() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", broker.port);
    let server = Server::start();
    server.deploy("slow", &guests().testbed, &["--concurrency", "1"]);
    server.gust_json(&[
        "source",
        "add",
        "slow",
        "--kind",
        "redis",
        "--url",
        &url,
        "--stream",
        "work",
        "--path",
        "/sleep?ms=100",
        "--prefetch",
        "2",
        "--max-backlog",
        "5",
        "--id",
        "w",
    ]);
    let mut con = redis(broker.port).await;
    for n in 0..60 {
        xadd(&mut con, "work", "k", n).await;
    }
    // Gust holds at most max_backlog + prefetch of them; the rest wait in Redis.
    let labels = r#"{tenant="default",function="slow",source="w",kind="redis"}"#;
    let mut most = 0;
    let mut paused_seen = false;
    for _ in 0..30 {
        let accepted = server
            .metric("gust_events_total{outcome=\"accepted\"}")
            .await;
        let delivered = server
            .metric("gust_events_total{outcome=\"delivered\"}")
            .await;
        most = most.max(accepted - delivered);
        paused_seen |= metric_or_zero(&server, &format!("gust_source_paused{labels}")).await == 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        most <= 5 + 2 + 1,
        "gust held {most} events of a source limited to 5"
    );
    assert!(paused_seen, "the source never said it paused");
    let listed = server.gust_json(&["source", "ls", "slow"]);
    assert_eq!(listed[0]["status"]["state"], "paused", "{listed}");
    // Read every second while the source is paused.
    let lag = Server::eventually(Duration::from_secs(5), || async {
        let lag = metric_or_zero(&server, &format!("gust_source_lag{labels}")).await;
        (lag > 20).then_some(lag)
    })
    .await;
    assert!(
        lag.is_some(),
        "the broker keeps what Gust has no room for (lag {:?})",
        metric_or_zero(&server, &format!("gust_source_lag{labels}")).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_one_node_runs_a_source_and_another_takes_it_over_when_it_dies() {
    let Some(broker) = Broker::redis() else {
        return;
    };
    let Some(mut cluster) = crate::cluster::GustCluster::alive(2).await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", broker.port);
    let a = &cluster.nodes[0];
    deploy_collector(a, "moving");
    a.gust_json(&[
        "source", "add", "moving", "--kind", "redis", "--url", &url, "--stream", "moving",
        "--path", "/collect", "--id", "mv",
    ]);
    let mut con = redis(broker.port).await;
    let mut sent = BTreeSet::new();
    for n in 0..40 {
        sent.insert(format!("moving/{}", xadd(&mut con, "moving", "k", n).await));
    }
    collected_until(a, "moving", Duration::from_secs(30), |r| r.len() >= 40).await;
    // One node runs it: the one its state names.
    let listed = a.gust_json(&["source", "ls", "moving"]);
    let holder = listed[0]["status"]["node"].as_str().unwrap().to_string();
    let at = cluster
        .nodes
        .iter()
        .position(|n| n.gust_json(&["cluster", "status"])["node"] == holder.as_str())
        .expect("the holder is a node");
    cluster.nodes.remove(at).kill9();
    for n in 40..80 {
        sent.insert(format!("moving/{}", xadd(&mut con, "moving", "k", n).await));
    }
    // The other takes the source over once the lease runs out.
    let survivor = &cluster.nodes[0];
    let records = collected_until(survivor, "moving", Duration::from_secs(90), |r| {
        let seen: BTreeSet<&str> = r.iter().map(|c| c.id.as_str()).collect();
        sent.iter().all(|id| seen.contains(id.as_str()))
    })
    .await;
    assert_at_most_a_few_queued_twice(&records, 64);
    let listed = survivor.gust_json(&["source", "ls", "moving"]);
    assert_ne!(listed[0]["status"]["node"], holder.as_str(), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_out_of_budget_takes_no_more_messages_until_it_is_raised() {
    let Some(broker) = Broker::redis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &["--sources-private"]);
    server.gust_json(&["tenant", "create", "acme"]);
    let owner = server.token_for("acme", "owner", &[]);
    server.gust_json_as(
        &owner,
        &["deploy", "paid", guests().testbed.to_str().unwrap()],
    );
    let admin = |path: &str, body: serde_json::Value| {
        let request = server.http.put(format!("{}{path}", server.api)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    // 1000 micro-units a delivery, a budget of 2500: the third spends it.
    admin(
        "/v1/tenants/acme/plan",
        serde_json::json!({"id": "pricey", "per_million_requests": 1_000_000_000u64,
            "per_million_gb_seconds": 0, "free_requests": 0, "free_gb_seconds": 0}),
    )
    .await;
    admin(
        "/v1/tenants/acme/quotas",
        serde_json::json!({"monthly_budget_micros": 2500}),
    )
    .await;
    let url = format!("redis://127.0.0.1:{}", broker.port);
    server.gust_json_as(
        &owner,
        &[
            "source", "add", "paid", "--kind", "redis", "--url", &url, "--stream", "paid",
            "--path", "/collect", "--id", "rs",
        ],
    );
    let http = crate::harness::client_with_token(&owner);
    let delivered = || {
        let request = http.post(format!("{}/@acme/paid/kv/dump?bucket=seen", server.url));
        async move {
            let dump = request.send().await.unwrap().text().await.unwrap();
            dump.lines().filter(|l| !l.starts_with("n\t")).count()
        }
    };
    let state = || {
        let listed = server.gust_json_as(&owner, &["source", "ls", "paid"]);
        let rs = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "rs")
            .unwrap()
            .clone();
        (
            rs["status"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            rs["status"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    // One entry at a time, each waited for, until the source pauses.
    let mut con = redis(broker.port).await;
    let mut sent = 0;
    let paused = loop {
        assert!(sent < 8, "the budget never paused the source");
        xadd(&mut con, "paid", "k", sent).await;
        sent += 1;
        let settled = Server::eventually(Duration::from_secs(5), || async {
            let (state, why) = state();
            if state == "paused" {
                return Some(Some(why));
            }
            (delivered().await == sent as usize).then_some(None)
        })
        .await
        .expect("neither delivered nor paused");
        if let Some(why) = settled {
            break why;
        }
    };
    assert!(paused.contains("monthly budget"), "{paused}");
    // What is sent now stays with the broker.
    for n in sent..sent + 3 {
        xadd(&mut con, "paid", "k", n).await;
    }
    sent += 3;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = delivered().await;
    assert!(before < sent as usize, "delivered past the budget");
    assert_eq!(state().0, "paused");
    // Its webhook is refused as well.
    server.gust_json_as(
        &owner,
        &[
            "source", "add", "paid", "--kind", "webhook", "--secret", "s", "--id", "hook",
        ],
    );
    let refused = server
        .http
        .post(format!("{}/_gust/webhooks/acme/paid/hook", server.url))
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(b"s", b"{}")),
        )
        .header("x-github-delivery", "d")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await.unwrap().contains("monthly budget"));
    // Raised: the source resumes and takes the rest.
    admin(
        "/v1/tenants/acme/quotas",
        serde_json::json!({"monthly_budget_micros": 1_000_000_000u64}),
    )
    .await;
    let all = Server::eventually(Duration::from_secs(20), || async {
        (delivered().await >= sent as usize).then_some(())
    })
    .await;
    assert!(all.is_some(), "the source did not resume");
    assert_eq!(state().0, "connected");
}

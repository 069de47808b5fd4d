//! Schedules across nodes: one firing per tick, an owner's death, catch-up
//! after the whole cluster was down.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_once_per_tick_across_three_nodes() {
    let Some(cluster) = GustCluster::alive(3).await else {
        return;
    };
    let a = &cluster.nodes[0];
    add_ticker(a, &[]);
    tokio::time::sleep(Duration::from_secs(11)).await;
    a.gust_json(&["schedule", "rm", "ticker", "beat"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_tick = deliveries_per_tick(&cluster.nodes[2], "ticker", "beat");
    println!(
        "cluster schedule checker: {} ticks, counts {per_tick:?}",
        per_tick.len()
    );
    assert!(
        per_tick.len() >= 9,
        "a tick every second for 11 s: {per_tick:?}"
    );
    assert!(
        per_tick.values().all(|n| *n == 1),
        "each tick fires once: {per_tick:?}"
    );
    let ticks: Vec<u64> = per_tick.keys().copied().collect();
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1000),
        "no tick missed: {ticks:?}"
    );
}

/// Deploys `ticker` on `node` with schedule `beat`, `@every 1s` on
/// `/headers` (which prints the request's headers), plus `extra` flags.
fn add_ticker(node: &Server, extra: &[&str]) {
    node.deploy("ticker", &guests().testbed, &[]);
    let mut args = vec![
        "schedule",
        "add",
        "ticker",
        "@every 1s",
        "--path",
        "/headers",
        "--id",
        "beat",
    ];
    args.extend_from_slice(extra);
    node.gust_json(&args);
}

/// Every delivery of schedule `id` prints its `ce-id` (`<id>@<tick>`):
/// how many each tick had, from `node`'s view of every node's logs.
fn deliveries_per_tick(node: &Server, function: &str, id: &str) -> BTreeMap<u64, u32> {
    let out = node.gust(&["logs", function, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let needle = format!("ce-id: {id}@");
    let mut per_tick = BTreeMap::<u64, u32>::new();
    for (i, _) in text.match_indices(&needle) {
        let digits: String = text[i + needle.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        *per_tick.entry(digits.parse().unwrap()).or_default() += 1;
    }
    per_tick
}

#[tokio::test(flavor = "multi_thread")]
async fn when_a_schedules_owner_is_killed_another_node_fires_every_tick_it_missed() {
    let Some(mut cluster) = GustCluster::alive(3).await else {
        return;
    };
    let a = &cluster.nodes[0];
    add_ticker(a, &[]);
    // Every node names the same owner.
    let owners: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.gust_json(&["schedule", "ls", "ticker"])[0]["owner"].to_string())
        .collect();
    assert!(owners.iter().all(|o| *o == owners[0]), "{owners:?}");
    let owner = owners[0].trim_matches('"').to_string();
    let at = cluster
        .nodes
        .iter()
        .position(|n| n.gust_json(&["cluster", "status"])["node"] == owner.as_str())
        .expect("the owner is one of the nodes");
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.nodes.remove(at).kill9();
    // Declared dead after 10 s without heartbeats; then the next owner
    // fires the ticks nobody claimed, and carries on.
    let survivor = &cluster.nodes[0];
    let new_owner = Server::eventually(Duration::from_secs(30), || async {
        let owner_now = survivor.gust_json(&["schedule", "ls", "ticker"])[0]["owner"].clone();
        (owner_now != owner.as_str()).then_some(owner_now)
    })
    .await;
    assert!(new_owner.is_some(), "the killed owner {owner} is replaced");
    tokio::time::sleep(Duration::from_secs(4)).await;
    survivor.gust_json(&["schedule", "rm", "ticker", "beat"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // No tick missing in the whole run (the status records: one per
    // tick, however late it fired) …
    let records = survivor
        .api_json("/v1/functions/ticker/invocations?limit=10000")
        .await;
    let ticks: Vec<u64> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            r["invocation_id"]
                .as_str()?
                .strip_prefix("sched-ticker-beat-")?
                .parse()
                .ok()
        })
        .collect::<std::collections::BTreeSet<u64>>()
        .into_iter()
        .collect();
    println!(
        "schedule owner kill checker: owner {owner} killed, then {new_owner:?}; {} ticks",
        ticks.len()
    );
    assert!(ticks.len() >= 18, "a tick a second for ~20 s: {ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1000),
        "no tick missed: {ticks:?}"
    );
    // … and none delivered twice.
    let per_tick = deliveries_per_tick(survivor, "ticker", "beat");
    let twice: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks delivered twice: {twice:?}");
}

/// Every node stopped, then started again one after another: the last
/// `--catch-up` ticks before the first start fire once, then every tick.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_whole_cluster_was_down_catch_up_fires_the_last_missed_ticks_once() {
    let Some(mut cluster) = GustCluster::alive(3).await else {
        return;
    };
    let a = &cluster.nodes[0];
    add_ticker(a, &["--catch-up", "3"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every node stops; 8 ticks go by; every node starts again.
    let dirs: Vec<PathBuf> = cluster
        .nodes
        .iter()
        .map(|n| n.data_dir().to_path_buf())
        .collect();
    for node in cluster.nodes.drain(..) {
        assert_eq!(node.stop(), Some(0));
    }
    let stopped_ms = now_ms();
    tokio::time::sleep(Duration::from_secs(8)).await;
    for (i, dir) in dirs.iter().enumerate() {
        let node = cluster.start_node(dir, &node_name(i), &[]);
        cluster.nodes.push(node);
    }
    cluster.wait_alive(3).await;
    // The platform came back when its first node started: every node
    // catches up the ticks before that, whatever order the nodes settle in.
    let status = cluster.nodes[2].api_json("/v1/cluster").await;
    let up_ms = status["nodes"]
        .as_array()
        .expect("nodes listed")
        .iter()
        .filter_map(|n| n["started_ms"].as_u64())
        .min()
        .expect("a start time per node");
    // A node claims no tick until it has compared every live peer's clock
    // with its own (two heartbeats each, at most four): wait for the
    // schedule to fire on its usual time again, then two ticks more.
    let a = &cluster.nodes[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !deliveries_per_tick(a, "ticker", "beat")
        .keys()
        .any(|t| *t >= up_ms + 1000)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule fires again within 30 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.gust_json(&["schedule", "rm", "ticker", "beat"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_tick = deliveries_per_tick(a, "ticker", "beat");
    // The ticks after the stop up to the first node's start: the last 3.
    let down: Vec<u64> = per_tick
        .keys()
        .copied()
        .filter(|t| (stopped_ms..=up_ms).contains(t))
        .collect();
    println!(
        "cluster catch-up checker: {} s down, fired for it {down:?}; all {per_tick:?}",
        (up_ms - stopped_ms) / 1000
    );
    assert!(
        per_tick.values().all(|n| *n == 1),
        "each tick fires once: {per_tick:?}"
    );
    assert_eq!(
        down.len(),
        3,
        "the last 3 missed ticks fire, not all of them: {down:?}"
    );
    let after: Vec<u64> = per_tick.keys().copied().filter(|t| *t >= down[0]).collect();
    assert!(
        after.windows(2).all(|w| w[1] - w[0] == 1000),
        "from the caught-up ticks on, none missed: {after:?}"
    );
}

//! Cluster mode: several `gust up --cluster` nodes on a real 3-server NATS
//! JetStream cluster (started by the test from a pinned `nats-server`; see
//! `gust_store_nats::testkit`). Skipped, saying why, where no server is
//! installed, except in CI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gust_store_nats::testkit;

use crate::harness::{Server, guests, now_ms};

mod schedules;
mod websockets;

/// Gust nodes sharing one namespace of the shared NATS cluster.
pub struct GustCluster {
    pub nats: &'static testkit::Cluster,
    pub nodes: Vec<Server>,
    namespace: String,
    key: PathBuf,
    dirs: Vec<tempfile::TempDir>,
}

fn unique_namespace() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "G{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl GustCluster {
    /// `n` gust nodes (`a`, `b`, …) on the shared NATS cluster, or `None`
    /// without a NATS server.
    pub fn start(n: usize) -> Option<GustCluster> {
        Self::start_on(testkit::shared()?, n)
    }

    /// [`GustCluster::start`], then waits until every node sees all `n`
    /// alive.
    pub async fn alive(n: usize) -> Option<GustCluster> {
        Self::alive_with(n, &[]).await
    }

    /// [`GustCluster::alive`] with `extra` flags for every node.
    pub async fn alive_with(n: usize, extra: &[&str]) -> Option<GustCluster> {
        let cluster = Self::start_on_with(testkit::shared()?, n, extra)?;
        cluster.wait_alive(n).await;
        Some(cluster)
    }

    /// `n` gust nodes on `nats`.
    pub fn start_on(nats: &'static testkit::Cluster, n: usize) -> Option<GustCluster> {
        Self::start_on_with(nats, n, &[])
    }

    fn start_on_with(
        nats: &'static testkit::Cluster,
        n: usize,
        extra: &[&str],
    ) -> Option<GustCluster> {
        let namespace = unique_namespace();
        let key_dir = tempfile::tempdir().unwrap();
        let key = key_dir.path().join("cluster.key");
        std::fs::write(&key, [42u8; 32]).unwrap();
        let mut cluster = GustCluster {
            nats,
            nodes: Vec::new(),
            namespace,
            key,
            dirs: vec![key_dir],
        };
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let node = cluster.start_node(dir.path(), &node_name(i), extra);
            cluster.nodes.push(node);
            cluster.dirs.push(dir);
        }
        Some(cluster)
    }

    /// `n` gust nodes on the shared NATS cluster started all at once (each
    /// creating the namespace's streams and object store, racing the
    /// others), every one using the admin token the winner printed; `None`
    /// without a NATS server. A node that cannot start fails the test.
    pub fn start_at_once(n: usize) -> Option<GustCluster> {
        let nats = testkit::shared()?;
        let mut cluster = Self::start_on_with(nats, 0, &[])?;
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let starts: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let (path, flags) = (dir.path().to_path_buf(), cluster.flags(&node_name(i)));
                std::thread::spawn(move || {
                    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
                    Server::start_in(&path, &args)
                })
            })
            .collect();
        let mut nodes: Vec<Server> = starts
            .into_iter()
            .map(|start| start.join().expect("a node started at once with others"))
            .collect();
        let token = nodes
            .iter()
            .map(|node| node.token.clone())
            .find(|token| !token.is_empty())
            .expect("one node printed the admin token");
        for node in &mut nodes {
            node.use_token(&token);
        }
        cluster.nodes = nodes;
        cluster.dirs.extend(dirs);
        Some(cluster)
    }

    /// The flags that make a node of this cluster.
    pub fn flags(&self, node: &str) -> Vec<String> {
        vec![
            "--cluster".into(),
            self.nats.urls().join(","),
            "--cluster-monitor".into(),
            self.nats.monitor_urls().join(","),
            "--cluster-namespace".into(),
            self.namespace.clone(),
            "--cluster-key".into(),
            self.key.display().to_string(),
            "--node-id".into(),
            node.into(),
        ]
    }

    /// Starts node `name` on `dir`; it uses the first node's admin token.
    pub fn start_node(&self, dir: &Path, name: &str, extra: &[&str]) -> Server {
        let mut args = self.flags(name);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start_in(dir, &args);
        if let Some(first) = self.nodes.first() {
            server.use_token(&first.token);
        }
        server
    }

    /// Waits until every node's status lists `n` live nodes.
    pub async fn wait_alive(&self, n: usize) {
        let all = Server::eventually(Duration::from_secs(20), || async {
            for node in &self.nodes {
                let status = node.api_json("/v1/cluster").await;
                let alive = status["nodes"]
                    .as_array()?
                    .iter()
                    .filter(|n| n["alive"] == true)
                    .count();
                if alive != n {
                    return None;
                }
            }
            Some(())
        })
        .await;
        if all.is_none() {
            let status = self.nodes[0].api_json("/v1/cluster").await;
            panic!("{n} nodes alive: {status:#}");
        }
    }
}

fn node_name(i: usize) -> String {
    ((b'a' + i as u8) as char).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_deployed_on_one_node_is_served_by_every_node() {
    let Some(cluster) = GustCluster::alive(3).await else {
        return;
    };
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };

    // Deploy on a: it answers once every node serves it, compiled: no
    // first request on the others waits for a compiler.
    let deployed = a.deploy("hello", &guests().hello, &["--public"]);
    assert!(deployed.get("not_serving").is_none(), "{deployed}");
    for node in [b, c] {
        assert_eq!(node.metric("gust_compilations_total").await, 1);
        let (status, body) = node.get("/hello/").await;
        assert_eq!(status, 200, "{body}");
    }
    // The listing and the status agree from any node.
    let listed = c.gust_json(&["ls"]);
    assert_eq!(listed[0]["name"], "hello", "{listed}");
    let status = b.gust_json(&["cluster", "status"]);
    assert_eq!(status["mode"], "cluster");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["servers"].as_array().unwrap().len(), 3, "{status}");
    assert!(
        status["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["sync_always"] == true),
        "{status}"
    );
    assert!(
        status["streams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["leader"].is_string()),
        "{status}"
    );
    // Each node scales its own instances; any node shows all of them.
    let scale = a.gust_json(&["scale", "hello"]);
    let nodes: Vec<&str> = scale["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["a", "b", "c"], "{scale}");
    let revision = status["nodes"][0]["registry_revision"].as_u64().unwrap();
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["registry_revision"] == revision)
    );

    // A second version deployed on c replaces the first on a and b at once.
    let v2 = c.deploy("hello", &guests().echo, &["--public"]);
    assert_eq!(v2["version"], 2, "{v2}");
    for node in [a, b] {
        let response = node
            .http
            .post(format!("{}/hello/", node.url))
            .body("ping")
            .send()
            .await
            .unwrap();
        // The echo guest describes the request it got.
        let text = response.text().await.unwrap();
        assert!(text.starts_with("method: POST"), "{text}");
    }
    // Removed on b: gone everywhere.
    let out = b.gust(&["rm", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in [a, c] {
        let gone = Server::eventually(Duration::from_secs(5), || async {
            (node.get("/hello/").await.0 == 404).then_some(())
        })
        .await;
        assert!(gone.is_some());
    }

    // An application released, released again and rolled back on one
    // node is served whole by the others as soon as the command answers.
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().to_str().unwrap();
    let chain = "/a/chain?name=RELEASE&next=b,c";
    crate::apps::write_app(dir.path(), 1);
    a.gust_json(&["deploy", "--project", project]);
    for node in [b, c] {
        assert_eq!(node.get(chain).await, (200, "1 1 1".into()));
    }
    crate::apps::write_app(dir.path(), 2);
    let released = c.gust_json(&["deploy", "--project", project]);
    assert_eq!(released["version"], 2, "{released}");
    for node in [a, b] {
        assert_eq!(node.get(chain).await, (200, "2 2 2".into()));
    }
    b.gust_json(&["app", "rollback", "shop"]);
    for node in [a, c] {
        assert_eq!(node.get(chain).await, (200, "1 1 1".into()));
    }
}

/// Nodes started together on a new cluster all create the same streams
/// and object store at once; none may give up while the others win (it
/// did in one start of three on the test machine: a request answered
/// after its timeout, not tried again).
#[tokio::test(flavor = "multi_thread")]
async fn nodes_started_at_once_on_a_new_cluster_all_come_up() {
    for _ in 0..2 {
        let Some(cluster) = GustCluster::start_at_once(3) else {
            return;
        };
        cluster.wait_alive(3).await;
        for node in &cluster.nodes {
            let status = node.api_json("/v1/cluster").await;
            assert_eq!(
                status["nodes"].as_array().map(Vec::len),
                Some(3),
                "{status:#}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_is_reported_dead_and_another_id_is_refused_while_one_lives() {
    let Some(mut cluster) = GustCluster::start(2) else {
        return;
    };
    cluster.wait_alive(2).await;
    // A second node under a live node's id is refused.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gust"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(cluster.flags("a"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another gust node runs as `a`"), "{stderr}");

    cluster.nodes.pop().unwrap().kill9();
    let a = &cluster.nodes[0];
    let dead = Server::eventually(Duration::from_secs(20), || async {
        let status = a.api_json("/v1/cluster").await;
        let b = status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == "b")?
            .clone();
        (b["alive"] == false).then_some(())
    })
    .await;
    assert!(
        dead.is_some(),
        "b is reported dead after its heartbeats stop"
    );
    // Deploys no longer wait for it.
    let started = std::time::Instant::now();
    let deployed = a.deploy("hello", &guests().hello, &[]);
    assert!(deployed.get("not_serving").is_none(), "{deployed}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// `gust up --cluster` against `servers` with the given monitors; its exit
/// code and stderr.
fn refused(servers: &str, monitors: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, [1u8; 32]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gust"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args([
            "--cluster",
            servers,
            "--cluster-monitor",
            monitors,
            "--node-id",
            "x",
        ])
        .arg("--cluster-key")
        .arg(&key)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsafe_nats_cluster_is_refused_at_start() {
    let Some(binary) = testkit::require() else {
        return;
    };
    let Some(nats) = testkit::shared() else {
        return;
    };
    let urls = nats.urls().join(",");
    let monitors = nats.monitor_urls().join(",");

    // One replica: only for development.
    let (code, stderr) = refused(&urls, &monitors, &["--cluster-replicas", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--dev"), "{stderr}");

    // No cluster key (secrets could not be opened on the other nodes),
    // and a node id that cannot be a name: each refused, saying what to do.
    for (flags, says) in [
        (["--node-id", "x"], "--cluster-key"),
        (["--node-id", "no spaces"], "give each node a name"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_gust"))
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(["--cluster", &urls, "--cluster-monitor", &monitors])
            .args(["--cluster-namespace", "REFUSED"])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }

    // A monitoring endpoint that does not answer: nothing can be checked.
    let (code, stderr) = refused(&urls, "http://127.0.0.1:1", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--cluster-monitor"), "{stderr}");

    // A current server that acknowledges before syncing (the default).
    let stderr = refused_by_one_server(&binary);
    assert!(stderr.contains("sync_interval: always"), "{stderr}");

    // Debian's NATS 2.9, where the machine has it: too old.
    let old = Path::new("/usr/sbin/nats-server");
    if old.exists() {
        let stderr = refused_by_one_server(old);
        assert!(stderr.contains("2.12.0 or newer"), "{stderr}");
    }
}

/// Runs one JetStream server of `binary` with its defaults, and
/// `gust up --cluster --dev --cluster-replicas 1` against it, which must
/// exit 1; returns what gust printed on stderr.
fn refused_by_one_server(binary: &Path) -> String {
    let port = free_port();
    let http = free_port();
    let store = tempfile::tempdir().unwrap();
    let mut server = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &http.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_http(http);
    let (code, stderr) = refused(
        &format!("nats://127.0.0.1:{port}"),
        &format!("http://127.0.0.1:{http}"),
        &["--cluster-replicas", "1", "--dev"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, Some(1), "{stderr}");
    stderr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_http(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while testkit::http_get(port, "/varz").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_written_on_one_node_is_read_on_the_others() {
    let Some(cluster) = GustCluster::start(3) else {
        return;
    };
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let put = a.gust(&["kv", "put", "greeting", "hello"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    for node in [b, c] {
        let got = node.gust(&["kv", "get", "greeting"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello");
    }
    // A counter incremented by guests on every node loses nothing.
    a.deploy("tb", &guests().testbed, &[]);
    let mut tasks = Vec::new();
    for node in &cluster.nodes {
        for _ in 0..10 {
            let request = node.http.get(format!(
                "{}/tb/kv/incr?bucket=default&key=hits&by=1",
                node.url
            ));
            tasks.push(tokio::spawn(async move {
                request.send().await.unwrap().status()
            }));
        }
    }
    for task in tasks {
        assert!(task.await.unwrap().is_success());
    }
    let got = b.gust(&["kv", "get", "hits"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "30");
}

/// Submits `n` events to `/sink/sleep`, round-robin over the nodes that
/// run; returns the ids accepted (202) and how many were refused.
async fn submit_round_robin(nodes: &[&Server], from: usize, n: usize) -> (Vec<String>, usize) {
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in from..from + n {
        let node = nodes[i % nodes.len()];
        let response = node
            .http
            .post(format!("{}/sink/sleep?ms=20&n={i}", node.url))
            .header("Gust-Invocation-Type", "Event")
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match response {
            Ok(r) if r.status() == 202 => {
                let body: serde_json::Value = r.json().await.unwrap();
                accepted.push(body["invocation_id"].as_str().unwrap().to_string());
            }
            _ => refused += 1,
        }
    }
    (accepted, refused)
}

/// Waits until every id has succeeded (as any node reports it); returns
/// the ids lost and those delivered more than once.
async fn check_delivered(node: &Server, ids: &[String], within: Duration) -> (Vec<String>, usize) {
    let records = || async {
        node.api_json("/v1/functions/sink/invocations?limit=10000")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let _ = Server::eventually(within, || async {
        let records = records().await;
        ids.iter()
            .all(|id| {
                records
                    .iter()
                    .any(|r| r["invocation_id"] == id.as_str() && r["state"] == "succeeded")
            })
            .then_some(())
    })
    .await;
    let records = records().await;
    let mut lost = Vec::new();
    let mut again = 0;
    for id in ids {
        match records.iter().find(|r| r["invocation_id"] == id.as_str()) {
            Some(r) if r["state"] == "succeeded" => {
                if r["attempts"].as_u64().unwrap_or(0) > 1 {
                    again += 1;
                }
            }
            _ => lost.push(id.clone()),
        }
    }
    (lost, again)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_accepted_by_a_node_killed_with_kill_9_are_delivered_by_the_others() {
    let Some(mut cluster) = GustCluster::alive(3).await else {
        return;
    };
    cluster.nodes[0].deploy("sink", &guests().testbed, &["--concurrency", "2"]);
    let (first, refused) = {
        let nodes: Vec<&Server> = cluster.nodes.iter().collect();
        submit_round_robin(&nodes, 0, 150).await
    };
    assert_eq!(refused, 0);
    // b dies with events accepted and running; the others go on.
    let b_dir = cluster.nodes[1].data_dir().to_path_buf();
    cluster.nodes.remove(1).kill9();
    let (second, _) = {
        let nodes: Vec<&Server> = cluster.nodes.iter().collect();
        submit_round_robin(&nodes, 150, 90).await
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = cluster.start_node(&b_dir, "b", &[]);
    cluster.nodes.push(b);
    let ids: Vec<String> = first.into_iter().chain(second).collect();
    let (lost, again) = check_delivered(&cluster.nodes[0], &ids, Duration::from_secs(120)).await;
    // Usage from any node sums every node's ledger: at least one record
    // per delivered event, and the same sums asked of each node.
    let usage = Server::eventually(Duration::from_secs(10), || async {
        let totals: Vec<u64> = cluster
            .nodes
            .iter()
            .map(|n| {
                n.gust_json(&["usage"])["total"]["invocations"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        (totals
            .iter()
            .all(|t| *t >= ids.len() as u64 && *t == totals[0]))
        .then_some(totals)
    })
    .await;
    assert!(usage.is_some(), "every node reports the cluster's usage");
    println!(
        "cluster kill -9 checker: accepted {}, lost {}, delivered more than once {again}",
        ids.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {}: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

async fn burst(node: &Server, function: &str, n: usize, ms: u64) -> (usize, Vec<String>) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let http = node.http.clone();
            let url = format!("{}/{function}/sleep?ms={ms}", node.url);
            tokio::spawn(async move {
                let response = http.get(url).send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            })
        })
        .collect();
    let mut served = 0;
    let mut refused = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            (200, _) => served += 1,
            (429, message) => refused.push(message),
            (status, message) => panic!("{status}: {message}"),
        }
    }
    (served, refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_limit_is_shared_among_the_live_nodes() {
    let Some(mut cluster) = GustCluster::alive(3).await else {
        return;
    };
    let a = &cluster.nodes[0];
    a.deploy(
        "limited",
        &guests().testbed,
        &["--max-concurrency", "6", "--queue-depth", "0"],
    );
    Server::eventually(Duration::from_secs(10), || async {
        (cluster.nodes[2].get("/limited/").await.0 == 200).then_some(())
    })
    .await
    .expect("served on every node");
    // 6 across 3 nodes: 2 at once on each.
    let (served, refused) = burst(a, "limited", 5, 1500).await;
    assert_eq!(served, 2, "{refused:?}");
    assert!(
        refused[0].contains("(6 across 3 nodes, 2 on this one)"),
        "{refused:?}"
    );
    // The whole cluster runs the limit at once.
    let all = tokio::join!(
        burst(&cluster.nodes[0], "limited", 2, 1500),
        burst(&cluster.nodes[1], "limited", 2, 1500),
        burst(&cluster.nodes[2], "limited", 2, 1500),
    );
    assert_eq!((all.0.0, all.1.0, all.2.0), (2, 2, 2), "{all:?}");
    // c dies: a and b share the limit, 3 each, once they see it.
    cluster.nodes.pop().unwrap().kill9();
    let a = &cluster.nodes[0];
    let resized = Server::eventually(Duration::from_secs(30), || async {
        let (served, refused) = burst(a, "limited", 5, 500).await;
        (served == 3).then_some(refused)
    })
    .await;
    let refused = resized.expect("a node's share grows when another dies");
    assert!(
        refused[0].contains("(6 across 2 nodes, 3 on this one)"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_counts_what_every_node_spent() {
    let Some(cluster) = GustCluster::alive(3).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    a.deploy(
        "capped",
        &guests().testbed,
        &["--monthly-budget-micros", "5500"],
    );
    a.price_each_request().await;
    // Spent on a and c only, a request at a time …
    let mut served = 0;
    let mut refused_by = None;
    for i in 0..40 {
        let node = &cluster.nodes[if i % 2 == 0 { 0 } else { 2 }];
        match node.get("/capped/").await {
            (200, _) => served += 1,
            (429, body) => {
                assert!(body.contains("monthly budget"), "{body}");
                refused_by = Some(i);
                break;
            }
            (status, body) => panic!("{status}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "cluster budget checker: 5.5 requests' budget, {served} served before the first refusal"
    );
    assert!(
        refused_by.is_some(),
        "the budget never stopped the function"
    );
    assert!(
        (5..=8).contains(&served),
        "{served} served on a budget of 5.5"
    );
    // … and b, which served none, refuses too.
    let on_b = Server::eventually(Duration::from_secs(5), || async {
        let (status, body) = b.get("/capped/").await;
        (status == 429).then_some(body)
    })
    .await;
    assert!(
        on_b.is_some_and(|body| body.contains("monthly budget")),
        "a node that served nothing knows the budget is spent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_nats_servers_never_yields_a_false_202() {
    // Its own NATS cluster: servers are killed here.
    let Some(binary) = testkit::require() else {
        return;
    };
    let nats: &'static testkit::Cluster = Box::leak(Box::new(testkit::Cluster::start(&binary, 3)));
    let Some(mut cluster) = GustCluster::start_on(nats, 2) else {
        return;
    };
    cluster.wait_alive(2).await;
    cluster.nodes[0].deploy("sink", &guests().testbed, &["--concurrency", "4"]);
    let a = &cluster.nodes[0];
    let status = a.api_json("/v1/cluster").await;
    let leader = |stream: &str| {
        status["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"].as_str().is_some_and(|n| n.ends_with(stream)))?["leader"]
            .as_str()
            .map(str::to_string)
    };
    // The leader of the queues' stream dies mid-load.
    let (mut ids, _) = submit_round_robin(&[a], 0, 50).await;
    let name = leader("QUEUES").expect("a leader");
    let i = nats.nodes.iter().position(|n| n.name == name).unwrap();
    let started = std::time::Instant::now();
    nats.signal(i, "KILL");
    // Submissions go on: refused (503) while no leader is elected, never a
    // 202 that is then lost.
    let mut refused = 0;
    let mut first_accepted = None;
    let mut n = 50;
    while ids.len() < 100 && started.elapsed() < Duration::from_secs(60) {
        let (more, no) = submit_round_robin(&[a], n, 1).await;
        n += 1;
        refused += no;
        if !more.is_empty() && first_accepted.is_none() {
            first_accepted = Some(started.elapsed());
        }
        ids.extend(more);
    }
    println!(
        "stream leader {name} killed: submissions refused for {first_accepted:?} ({refused} refused), then accepted"
    );
    assert!(
        first_accepted.is_some(),
        "writes resume without the killed server"
    );
    nats.restart(i);
    let (lost, _) = check_delivered(a, &ids, Duration::from_secs(120)).await;
    assert!(lost.is_empty(), "lost {} acknowledged events", lost.len());

    // Two of three servers down: no quorum. Writes answer 503 with
    // Retry-After, never 202, and come back by themselves.
    nats.signal(0, "KILL");
    nats.signal(1, "KILL");
    let response = a
        .http
        .post(format!("{}/sink/sleep?ms=1", a.url))
        .header("Gust-Invocation-Type", "Event")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let deploy = a.gust(&["kv", "put", "k", "v"]);
    assert_eq!(deploy.status.code(), Some(1));
    nats.restart(0);
    nats.restart(1);
    let back = Server::eventually(Duration::from_secs(60), || async {
        let (ids, _) = submit_round_robin(&[a], 1000, 1).await;
        (ids.len() == 1).then_some(ids)
    })
    .await;
    assert!(back.is_some(), "writes resume once a quorum is back");
    cluster.nodes.clear();
    for i in 0..3 {
        let _ = std::panic::catch_unwind(|| nats.signal(i, "KILL"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_changes_on_any_node_trigger_once_each_in_order_per_key() {
    let Some(cluster) = GustCluster::alive(3).await else {
        return;
    };
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    a.deploy("recorder", &guests().testbed, &["--concurrency", "4"]);
    b.gust_json(&[
        "trigger", "add", "recorder", "--bucket", "data", "--path", "/record", "--id", "rec",
    ]);
    // Writes land on b and c; one node reads the feed for all.
    let on_c = async {
        for i in 0..5 {
            let response = c
                .http
                .put(format!("{}/v1/kv/data/keys/c{i}", c.api))
                .body("from c")
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
    };
    // b: three keys, eight changes each, the last of k0 a delete.
    let (on_b, ()) = tokio::join!(crate::kv::write_chains(b, 3, 8), on_c);
    let expected = (on_b.values().map(Vec::len).sum::<usize>() + 1 + 5) as u64;
    let count = Server::eventually(Duration::from_secs(60), || async {
        let n = crate::kv::recorded_count(a).await;
        (n >= expected).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = crate::kv::recorded_count(a).await;
    assert_eq!(
        count.map(|_| n),
        Some(expected),
        "each change delivered once"
    );
    let mut by_key = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for (key, revision, _, _) in crate::kv::recorded(a).await {
        by_key.entry(key).or_default().push(revision);
    }
    for (key, revisions) in &by_key {
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "{key}: {revisions:?}"
        );
    }
}

/// The invocation ids in `gust usage --export jsonl` as asked of `node`
/// (`None` if it did not answer).
fn exported_ids(node: &Server) -> Option<Vec<String>> {
    let out = node.gust(&["usage", "--export", "jsonl"]);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                record["invocation_id"].as_str().unwrap().to_string()
            })
            .collect()
    })
}

/// Waits until every node of `nodes` exports `n` records.
async fn all_export(nodes: &[Server], n: usize) -> Option<Vec<usize>> {
    Server::eventually(Duration::from_secs(30), || async {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|node| exported_ids(node).map_or(usize::MAX, |ids| ids.len()))
            .collect();
        counts.iter().all(|c| *c == n).then_some(counts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_counts_every_record_once_a_dead_nodes_included() {
    let Some(mut cluster) = GustCluster::alive(3).await else {
        return;
    };
    // A deploy answers once every node serves it.
    cluster.nodes[0].deploy("metered", &guests().testbed, &[]);
    let c = &cluster.nodes[2];
    for _ in 0..20 {
        assert_eq!(c.get("/metered/").await.0, 200);
    }
    // c's records reach every node's view …
    assert!(
        all_export(&cluster.nodes, 20).await.is_some(),
        "c's 20 shipped"
    );
    for node in &cluster.nodes[..2] {
        for _ in 0..20 {
            assert_eq!(node.get("/metered/").await.0, 200);
        }
    }
    // … and stay counted once c is dead; the 5 it ran just before it was
    // killed are in its journal only, so far.
    for _ in 0..5 {
        assert_eq!(c.get("/metered/").await.0, 200);
    }
    let c_dir = c.data_dir().to_path_buf();
    cluster.nodes.pop().unwrap().kill9();
    let a = &cluster.nodes[0];
    let local = Server::eventually(Duration::from_secs(10), || async {
        let local = a.gust_json(&["usage", "--local"])["total"]["invocations"].as_u64();
        (local == Some(20)).then_some(())
    })
    .await;
    assert!(local.is_some(), "a ran its own 20");
    let while_dead = Server::eventually(Duration::from_secs(30), || async {
        let counts: Vec<usize> = cluster
            .nodes
            .iter()
            .filter_map(exported_ids)
            .map(|ids| ids.len())
            .collect();
        (counts.len() == 2 && counts.iter().all(|n| *n >= 60)).then_some(counts)
    })
    .await
    .expect("a and b count c's shipped records while c is dead");
    assert!(while_dead.iter().all(|n| *n <= 65), "{while_dead:?}");
    // Back, c ships the rest: every node's report and export hold all 65,
    // each attempt once.
    let c = cluster.start_node(&c_dir, "c", &[]);
    cluster.nodes.push(c);
    let totals = all_export(&cluster.nodes, 65).await;
    let ids = exported_ids(&cluster.nodes[1]).unwrap_or_default();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each record once");
    assert!(
        totals.is_some(),
        "every node exports 65 records: {}",
        ids.len()
    );
    for node in &cluster.nodes {
        let usage = node.gust_json(&["usage"]);
        assert_eq!(usage["total"]["invocations"], 65, "{usage}");
    }
    // A node stopped for good ships its last records as it stops.
    let b = cluster.nodes.remove(1);
    for _ in 0..5 {
        assert_eq!(b.get("/metered/").await.0, 200);
    }
    assert_eq!(b.stop(), Some(0));
    assert!(
        all_export(&cluster.nodes, 70).await.is_some(),
        "b's last 5 counted after its stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_go_to_a_node_where_the_function_is_warm() {
    let Some(cluster) = GustCluster::alive_with(3, &["--scale-tick-ms", "100"]).await else {
        return;
    };
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    // A keep-alive of a few seconds: with 1 s, a loaded machine let it
    // lapse before the first event and a cold node took every event.
    a.deploy("warmth", &guests().testbed, &["--keep-alive", "4s"]);
    // Idle for its keep-alive, it leaves memory on every node …
    for node in &cluster.nodes {
        Server::eventually(Duration::from_secs(20), || async {
            (node.metric("gust_functions_warm").await == 0).then_some(())
        })
        .await
        .expect("scaled to zero on every node");
    }
    // … then a request warms it on a alone.
    assert_eq!(a.get("/warmth/").await.0, 200);
    let before = [delivered(a).await, delivered(b).await, delivered(c).await];
    // Events accepted by b and c, one at a time: a, warm, runs them.
    for i in 0..10 {
        let via = if i % 2 == 0 { b } else { c };
        let (status, id) = via.submit("/warmth/sleep?ms=1", &[], Vec::new()).await;
        assert_eq!(status, 202);
        via.wait_for_state(&id, "succeeded").await;
    }
    // A node counts a delivery once its status is written and the event
    // acknowledged: a moment after the status reads `succeeded`.
    let ran = Server::eventually(Duration::from_secs(10), || async {
        let after = [delivered(a).await, delivered(b).await, delivered(c).await];
        let ran: Vec<u64> = after.iter().zip(before).map(|(x, y)| x - y).collect();
        (ran.iter().sum::<u64>() == 10).then_some(ran)
    })
    .await
    .expect("10 deliveries counted");
    println!("cluster warm placement: a, b, c ran {ran:?} of 10");
    // Without the preference the accepting (cold) node, woken first, wins most.
    assert!(ran[0] >= 6, "the warm node runs most: {ran:?}");
}

async fn delivered(node: &Server) -> u64 {
    node.metric("gust_events_total{outcome=\"delivered\"}")
        .await
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_session_is_good_on_every_node_until_it_signs_out_on_any() {
    let Some(cluster) = GustCluster::start(2) else {
        return;
    };
    let [a, b] = &cluster.nodes[..] else {
        unreachable!()
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |url: String, cookie: Option<&str>, body: String| {
        let mut request = http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    let page = |node: &Server, cookie: &str| {
        http.get(format!("{}/ui/functions", node.api))
            .header("cookie", cookie)
            .send()
    };

    // Signed in on a.
    let signed = post(
        format!("{}/ui/signin", a.api),
        None,
        form(&[("token", &a.token)]),
    )
    .await
    .unwrap();
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("gust_session="), "{cookie}");

    // b shows the pages to that cookie, and so does a.
    let shown = page(b, &cookie).await.unwrap();
    assert_eq!(shown.status(), 200);
    let html = shown.text().await.unwrap();
    assert!(html.contains("Sign out"), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries the session's anti-forgery value")
        .to_string();
    assert_eq!(page(a, &cookie).await.unwrap().status(), 200);

    // A change on b with a wrong anti-forgery value is refused; the
    // session's own value passes, on the node that did not make it.
    let forged = post(
        format!("{}/ui/signout", b.api),
        Some(&cookie),
        form(&[("csrf", "0000")]),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(page(a, &cookie).await.unwrap().status(), 200);
    let out = post(
        format!("{}/ui/signout", b.api),
        Some(&cookie),
        form(&[("csrf", &csrf)]),
    )
    .await
    .unwrap();
    assert_eq!(out.status(), 303);

    // Signed out on b is signed out on a.
    for node in [a, b] {
        let after = page(node, &cookie).await.unwrap();
        assert_eq!(after.status(), 303, "{}", node.api);
        assert_eq!(after.headers()["location"], "/ui/signin");
    }
}

/// An event's status, from its 202 on: any node answers for it while it
/// waits and runs (its queue entry stands for it until a first attempt
/// ends), then with its record; an id no tenant's event has stays 404.
#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_event_has_a_status_on_every_node_from_its_202() {
    let Some(cluster) = GustCluster::alive(3).await else {
        return;
    };
    let [a, b, c] = &cluster.nodes[..] else {
        panic!("three nodes");
    };
    a.deploy("sink", &guests().testbed, &["--concurrency", "1"]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, id) = a
            .submit(&format!("/sink/sleep?ms=1500&n={i}"), &[], Vec::new())
            .await;
        assert_eq!(status, 202);
        ids.push(id);
    }
    // At once, from another node: queued or running, none finished yet.
    for id in &ids {
        let record = b.api_json(&format!("/v1/invocations/{id}")).await;
        assert!(
            record["state"] == "queued" || record["state"] == "running",
            "{record}"
        );
        assert_eq!(record["function"], "sink", "{record}");
    }
    let listed = c.api_json("/v1/functions/sink/invocations").await;
    let listed = listed.as_array().expect("a list");
    for id in &ids {
        assert!(
            listed.iter().any(|r| r["invocation_id"] == id.as_str()),
            "{id} not listed: {listed:?}"
        );
    }
    let unknown = b
        .http
        .get(format!("{}/v1/invocations/no-such-event", b.api))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    for id in &ids {
        let record = c.wait_for_state(id, "succeeded").await;
        assert_eq!(record["attempts"], 1, "{record}");
    }
}

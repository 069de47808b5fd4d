//! The processes under test: three `nats-server`s (the store-nats testkit's
//! loopback cluster) and three `gust up --cluster` nodes, each with its own
//! data directory, started, killed, stopped and restarted on command.
//!
//! A gust node listens on ports chosen by the kernel, so its addresses
//! change with every start; the workload reads them through [`Endpoints`],
//! which also says which nodes are down (a client of a real cluster would
//! be steered away from them by its load balancer).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gust_store_nats::testkit;

use crate::proxy::Proxy;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Where a node answers, while it is up.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Data plane, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Control API.
    pub api: String,
}

/// Every node's endpoint (`None` while it is down), shared with the workload.
pub type Endpoints = Arc<RwLock<Vec<Option<Endpoint>>>>;

/// One `gust up --cluster` process.
pub struct Gust {
    pub name: String,
    dir: PathBuf,
    child: Option<Child>,
    /// The NATS URLs it connects to (a proxy's, for the partition scenario).
    pub nats_urls: String,
    /// Extra environment (libfaketime for the clock scenario).
    pub env: Vec<(String, String)>,
    pub endpoint: Option<Endpoint>,
}

/// The whole system under test.
pub struct World {
    pub nats: testkit::Cluster,
    pub gust: Vec<Gust>,
    pub endpoints: Endpoints,
    pub token: String,
    pub http: reqwest::Client,
    binary: PathBuf,
    namespace: String,
    key: PathBuf,
    _dir: tempfile::TempDir,
    /// A file holding the offset libfaketime reads for a skewed node.
    pub clock_file: PathBuf,
    /// Node `c`'s links to the NATS servers, one proxy per server, to cut
    /// it off from NATS.
    pub proxies: Vec<Proxy>,
    /// The routes between NATS servers: (from, to, proxy).
    pub route_proxies: Vec<(usize, usize, Proxy)>,
    /// Store directories with a tmpfs mounted on them (unmounted at the end).
    mounted: Vec<PathBuf>,
}

impl World {
    /// Starts 3 NATS servers and 3 gust nodes (`a`, `b`, `c`), and waits
    /// until every node sees the other two alive.
    pub async fn start(gust_binary: &Path, nats_binary: &Path) -> anyhow::Result<World> {
        // Every route between two servers through a proxy of its own
        // (`from`, `to`, proxy), so a server can be partitioned.
        let nats_binary = nats_binary.to_path_buf();
        let (nats, route_proxies) = tokio::task::spawn_blocking(move || {
            let proxies = std::sync::Mutex::new(Vec::new());
            let via = |from: usize, to: usize, port: u16| -> u16 {
                match Proxy::start(([127, 0, 0, 1], port).into()) {
                    Ok(proxy) => {
                        let through = proxy.port;
                        if let Ok(mut all) = proxies.lock() {
                            all.push((from, to, proxy));
                        }
                        through
                    }
                    Err(_) => port,
                }
            };
            let nats = testkit::Cluster::start_routed(&nats_binary, 3, &via);
            (nats, proxies.into_inner().unwrap_or_default())
        })
        .await
        .context("start the NATS cluster")?;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, [7u8; 32])?;
        let clock_file = dir.path().join("clock-offset");
        std::fs::write(&clock_file, "+0\n")?;
        let namespace = format!("CHAOS{}", std::process::id());
        let mut world = World {
            endpoints: Arc::new(RwLock::new(vec![None, None, None])),
            gust: Vec::new(),
            token: String::new(),
            http: reqwest::Client::new(),
            binary: gust_binary.to_path_buf(),
            namespace,
            key,
            clock_file,
            proxies: Vec::new(),
            route_proxies,
            mounted: Vec::new(),
            nats,
            _dir: dir,
        };
        let urls = world.nats.urls().join(",");
        for node in &world.nats.nodes {
            world
                .proxies
                .push(Proxy::start(([127, 0, 0, 1], node.client_port).into())?);
        }
        let proxied: Vec<String> = world
            .proxies
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.port))
            .collect();
        for name in ["a", "b", "c"] {
            let node_dir = world._dir.path().join(name);
            std::fs::create_dir_all(&node_dir)?;
            world.gust.push(Gust {
                name: name.to_string(),
                dir: node_dir,
                child: None,
                nats_urls: if name == "c" {
                    proxied.join(",")
                } else {
                    urls.clone()
                },
                env: Vec::new(),
                endpoint: None,
            });
        }
        for i in 0..3 {
            world.start_gust(i)?;
        }
        world.wait_alive(3, Duration::from_secs(60)).await?;
        Ok(world)
    }

    /// Starts gust node `i` (again, on its data directory).
    pub fn start_gust(&mut self, i: usize) -> anyhow::Result<()> {
        let monitors = self.nats.monitor_urls().join(",");
        let node = &mut self.gust[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("server.log"))?;
        let mut child = Command::new(&self.binary)
            .arg("up")
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(["--cluster", &node.nats_urls])
            .args(["--cluster-monitor", &monitors])
            .args(["--cluster-namespace", &self.namespace])
            .arg("--cluster-key")
            .arg(&self.key)
            .args(["--node-id", &node.name])
            .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        let stdout = child.stdout.take().context("gust's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut api, mut token) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while url.is_none() || api.is_none() || (self.token.is_empty() && token.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let log = std::fs::read_to_string(node.dir.join("server.log")).unwrap_or_default();
                bail!("gust node {} did not start; its log:\n{log}", node.name);
            };
            if let Some(u) = line.strip_prefix("gust: functions on ") {
                url = Some(u.to_string());
            } else if let Some(a) = line.strip_prefix("gust: control API on ") {
                api = Some(a.to_string());
            } else if let Some(t) = line.strip_prefix("gust: admin token (shown once, keep it): ") {
                token = Some(t.to_string());
            }
        }
        if let Some(token) = token.filter(|_| self.token.is_empty()) {
            self.token = token;
            self.http = client(&self.token)?;
        }
        let endpoint = Endpoint {
            url: url.unwrap_or_default(),
            api: api.unwrap_or_default(),
        };
        node.child = Some(child);
        node.endpoint = Some(endpoint.clone());
        if let Ok(mut all) = self.endpoints.write() {
            all[i] = Some(endpoint);
        }
        Ok(())
    }

    /// `kill -9` gust node `i` (its endpoint goes away first).
    pub fn kill_gust(&mut self, i: usize) {
        if let Ok(mut all) = self.endpoints.write() {
            all[i] = None;
        }
        let node = &mut self.gust[i];
        node.endpoint = None;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops gust node `i` with SIGTERM (it drains) and waits for it to exit.
    pub fn stop_gust(&mut self, i: usize) {
        if let Ok(mut all) = self.endpoints.write() {
            all[i] = None;
        }
        self.signal_gust(i, "TERM");
        let node = &mut self.gust[i];
        node.endpoint = None;
        if let Some(mut child) = node.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether gust node `i` is running.
    pub fn gust_running(&self, i: usize) -> bool {
        self.gust[i].child.is_some()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to gust node `i`.
    pub fn signal_gust(&self, i: usize, signal: &str) {
        if let Some(child) = &self.gust[i].child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Restarts gust node `i` under libfaketime, its wall clock `offset`
    /// (e.g. `+30s`) away from the others'; `None` if libfaketime is missing.
    pub fn skew_gust(&mut self, i: usize, offset: &str) -> anyhow::Result<Option<()>> {
        if !Path::new(LIBFAKETIME).exists() {
            return Ok(None);
        }
        std::fs::write(&self.clock_file, format!("{offset}\n"))?;
        self.kill_gust(i);
        self.gust[i].env = vec![
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.clock_file.display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
        self.start_gust(i)?;
        Ok(Some(()))
    }

    /// Moves NATS server `i`'s store onto a tmpfs of its own (the server
    /// stopped, its files copied over, started again), so that its disk
    /// can be filled; `Err` if this process may not mount (not root).
    pub fn small_disk(&mut self, i: usize) -> anyhow::Result<()> {
        let store = self.nats.nodes[i].store_dir.clone();
        let saved = store.with_extension("saved");
        self.nats.signal(i, "TERM");
        let run = |cmd: &mut Command| -> anyhow::Result<()> {
            let out = cmd.output()?;
            if !out.status.success() {
                bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        run(Command::new("cp").arg("-a").arg(&store).arg(&saved))?;
        let mounted = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
            .arg(&store));
        if let Err(e) = mounted {
            self.nats.restart(i);
            return Err(e.context("mount a tmpfs (the disk-full scenario needs root)"));
        }
        self.mounted.push(store.clone());
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", saved.display()))
            .arg(&store))?;
        self.nats.restart(i);
        self.nats.wait_ready(Duration::from_secs(60));
        Ok(())
    }

    /// Fills (or frees) the tmpfs under NATS server `i`'s store, leaving
    /// 64 KiB free (more if the server writes between the measure and the
    /// fill: each try measures again and leaves twice the room).
    pub fn fill_disk(&self, i: usize, full: bool) -> anyhow::Result<()> {
        let filler = self.nats.nodes[i].store_dir.join("filler");
        if !full {
            let _ = std::fs::remove_file(&filler);
            return Ok(());
        }
        let mut room: u64 = 64 << 10;
        for _ in 0..6 {
            let out = Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&self.nats.nodes[i].store_dir)
                .output()?;
            let avail: u64 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .context("df's answer")?;
            let status = Command::new("fallocate")
                .args(["-l", &avail.saturating_sub(room).max(1).to_string()])
                .arg(&filler)
                .status()?;
            if status.success() {
                return Ok(());
            }
            let _ = std::fs::remove_file(&filler);
            room *= 2;
        }
        bail!("fallocate could not fill {}", filler.display())
    }

    /// Cuts (or heals) every route to and from NATS server `i`.
    pub fn partition_nats(&self, i: usize, cut: bool) {
        for (from, to, proxy) in &self.route_proxies {
            if *from == i || *to == i {
                if cut {
                    proxy.cut();
                } else {
                    proxy.heal();
                }
            }
        }
    }

    /// How many routes NATS server `i` reports (`/routez`).
    pub fn nats_routes(&self, i: usize) -> Option<u64> {
        let (_, body) = testkit::http_get(self.nats.nodes[i].http_port, "/routez")?;
        serde_json::from_str::<serde_json::Value>(&body).ok()?["num_routes"].as_u64()
    }

    /// The name of the NATS server leading the stream whose name ends
    /// with `suffix` (e.g. `QUEUES`), as gust node `i` reports it.
    pub async fn stream_leader(&self, suffix: &str) -> Option<usize> {
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .read()
            .ok()?
            .iter()
            .flatten()
            .cloned()
            .collect();
        for endpoint in endpoints {
            let Ok(response) = self
                .http
                .get(format!("{}/v1/cluster", endpoint.api))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            else {
                continue;
            };
            let Ok(status) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let leader = status["streams"].as_array().and_then(|streams| {
                streams
                    .iter()
                    .find(|s| s["name"].as_str().is_some_and(|n| n.ends_with(suffix)))?["leader"]
                    .as_str()
                    .map(str::to_string)
            });
            if let Some(name) = leader {
                return self.nats.nodes.iter().position(|n| n.name == name);
            }
        }
        None
    }

    /// Waits until every running node's status lists `n` live nodes.
    pub async fn wait_alive(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            let endpoints: Vec<Endpoint> = self
                .endpoints
                .read()
                .map(|e| e.iter().flatten().cloned().collect())
                .unwrap_or_default();
            for endpoint in &endpoints {
                let alive = async {
                    let status: serde_json::Value = self
                        .http
                        .get(format!("{}/v1/cluster", endpoint.api))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    Some(
                        status["nodes"]
                            .as_array()?
                            .iter()
                            .filter(|n| n["alive"] == true)
                            .count(),
                    )
                }
                .await;
                all &= alive == Some(n);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the gust nodes did not all see {n} live nodes within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs the `gust` client against node `i` (`--json` added).
    pub fn gust_json(&self, i: usize, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let api = self.gust[i]
            .endpoint
            .as_ref()
            .map(|e| e.api.clone())
            .context("the node is down")?;
        let out = Command::new(&self.binary)
            .args(args)
            .arg("--json")
            .env("GUST_API", api)
            .env("GUST_TOKEN", &self.token)
            .env_remove("GUST_TENANT")
            .output()?;
        if !out.status.success() {
            bail!(
                "gust {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Copies every gust node's log into `dir` as `<prefix>-<node>.log`.
    pub fn keep_logs(&self, dir: &Path, prefix: &str) -> std::io::Result<()> {
        for node in &self.gust {
            std::fs::copy(
                node.dir.join("server.log"),
                dir.join(format!("{prefix}-{}.log", node.name)),
            )?;
        }
        Ok(())
    }

    /// The last lines of node `i`'s log (for a report of what went wrong).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.gust[i].dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for node in &mut self.gust {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for i in 0..self.nats.nodes.len() {
            if let Some(pid) = self.nats.nodes[i].pid() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        for store in &self.mounted {
            let _ = Command::new("umount").arg("-l").arg(store).status();
        }
    }
}

/// An HTTP client sending `token` with every request.
pub fn client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(16)
        .build()?)
}

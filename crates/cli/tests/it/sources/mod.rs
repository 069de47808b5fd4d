//! Event sources against real brokers: messages published by an ordinary
//! client arrive at a function as CloudEvents, failures are retried and
//! dead-lettered like every event, and neither a `kill -9` of `gust up`
//! nor a restart of the broker loses a message. Each test starts its own
//! broker (Debian's `redis-server`, `mosquitto`) on a free port, so it can
//! restart it; where one is not installed the test says so and is skipped,
//! except in CI (`CI=true`), where it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Server, guests};

mod amqp;
mod mqtt;
mod nats;
mod postgres;
mod redis_streams;
mod tenancy;
mod tls;
mod webhooks;

/// One recorded delivery: `attempt, ce-id, ce-type, ce-subject, ce-source, body`.
#[derive(Debug, Clone)]
struct Collected {
    attempt: u64,
    id: String,
    ty: String,
    subject: String,
    source: String,
    body: String,
}

/// What `/collect` of function `name` recorded, in recording order.
async fn collected(server: &Server, name: &str) -> Vec<Collected> {
    let response = server
        .http
        .post(format!("{}/{name}/kv/dump?bucket=seen", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let dump = response.text().await.unwrap();
    let mut lines: Vec<(&str, &str)> = dump
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(k, _)| *k != "n")
        .collect();
    lines.sort();
    lines
        .into_iter()
        .map(|(_, line)| {
            let p: Vec<&str> = line.splitn(6, '\t').collect();
            Collected {
                attempt: p[0].parse().unwrap(),
                id: p[1].into(),
                ty: p[2].into(),
                subject: p[3].into(),
                source: p[4].into(),
                body: p.get(5).copied().unwrap_or_default().into(),
            }
        })
        .collect()
}

/// Waits until `check` holds of what `name` recorded.
async fn collected_until(
    server: &Server,
    name: &str,
    limit: Duration,
    check: impl Fn(&[Collected]) -> bool,
) -> Vec<Collected> {
    let done = Server::eventually(limit, || async {
        let records = collected(server, name).await;
        check(&records).then_some(records)
    })
    .await;
    match done {
        Some(records) => records,
        None => {
            let last = collected(server, name).await;
            let tail = &last[last.len().saturating_sub(5)..];
            panic!(
                "not collected in {limit:?}: {} records, the last: {tail:?}",
                last.len()
            )
        }
    }
}

/// A message redelivered after a crash keeps its id and is recognised and
/// not queued again, unless the crash fell between its batch's queue entry
/// and their status records: then it is queued twice under the same id (at
/// least once, the duplicate recognisable). Counts those: at most the
/// batches in flight when a kill -9 strikes (`limit`: the source's
/// prefetch).
fn assert_at_most_a_few_queued_twice(records: &[Collected], limit: usize) {
    let mut by_id: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in records {
        by_id.entry(r.id.as_str()).or_default().push(r.attempt);
    }
    let twice: Vec<(&&str, &Vec<u64>)> = by_id
        .iter()
        .filter(|(_, attempts)| {
            let distinct: BTreeSet<&u64> = attempts.iter().collect();
            distinct.len() < attempts.len()
        })
        .collect();
    eprintln!("queued twice (same id, same attempt): {twice:?}");
    assert!(twice.len() <= limit, "queued twice: {twice:?}");
}

/// The path a source under [`retried_dead_lettered_and_redriven`] delivers to.
const POLICY_PATH: &str = "/collect?fail_first=2&fail_unless=fixed";

/// The one delivery policy, through a source of any kind that delivers to
/// `function`'s [`POLICY_PATH`] (the function deployed by
/// [`deploy_collector`]: three attempts): a message whose function keeps
/// failing is dead-lettered after three attempts; once the function is
/// fixed, a redrive delivers it, failing twice then succeeding, the same
/// event each time; and a later message is retried the same way.
/// `publish(tag)` publishes one message whose payload holds `tag`.
async fn retried_dead_lettered_and_redriven<Fut>(
    server: &Server,
    function: &str,
    publish: impl Fn(&'static str) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    let dead_letters = || server.gust_json(&["dlq", function]);
    let before = dead_letters().as_array().unwrap().len();
    publish("policy-first").await;
    let letters = Server::eventually(Duration::from_secs(30), || async {
        let letters = dead_letters();
        (letters.as_array().unwrap().len() > before).then_some(letters)
    })
    .await
    .expect("the always-failing message was not dead-lettered");
    let letter = letters.as_array().unwrap().last().unwrap().clone();
    assert_eq!(letter["attempts"], 3, "{letter}");
    // Fixed (the flag the function checks), then redriven: delivered.
    let put = server.gust(&["kv", "put", "fixed", "1", "--bucket", "flags"]);
    assert!(put.status.success(), "{put:?}");
    server.gust_json(&["dlq", function, "--redrive"]);
    publish("policy-second").await;
    let records = collected_until(server, function, Duration::from_secs(30), |r| {
        ["policy-first", "policy-second"]
            .iter()
            .all(|tag| r.iter().any(|c| c.body.contains(tag)))
    })
    .await;
    for tag in ["policy-first", "policy-second"] {
        let seen: Vec<&Collected> = records.iter().filter(|c| c.body.contains(tag)).collect();
        assert_eq!(seen.len(), 1, "{tag}: delivered once: {seen:?}");
        assert_eq!(seen[0].attempt, 3, "{tag}: failed twice, then delivered");
    }
    assert!(
        dead_letters().as_array().unwrap().len() == before,
        "the redriven letter left the dead-letter queue"
    );
}

/// The binary's path, or `None` after saying why the test is skipped
/// (in CI: a failure).
fn installed(binary: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([Path::new("/usr/sbin").to_path_buf()])
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => Some(path.to_string_lossy().into_owned()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("`{binary}` is not installed; CI installs it (.ci/run)")
        }
        None => {
            eprintln!(
                "skipped: `{binary}` is not installed (apt-get install redis-server mosquitto mosquitto-clients)"
            );
            None
        }
    }
}

/// The machine's service on `port`, or `None` after saying why the test is
/// skipped (in CI: a failure).
fn service(name: &str, port: u16) -> Option<()> {
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        return Some(());
    }
    let why = format!("{name} is not running on 127.0.0.1:{port}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI needs it");
    }
    eprintln!("skipped: {why}");
    None
}

/// Held by the tests that use the machine's PostgreSQL and RabbitMQ, two
/// of which restart them: one at a time.
static MACHINE_SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker process of the test's own, durable on disk, restartable.
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    command: Vec<String>,
}

impl Broker {
    /// `redis-server` writing every change to its append-only file.
    fn redis() -> Option<Broker> {
        let binary = installed("redis-server")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let command = [
            binary.as_str(),
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().to_string_lossy(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .map(str::to_string)
        .to_vec();
        Some(Broker::start(command, port, dir))
    }

    /// `mosquitto` with persistence (sessions and queued messages kept
    /// across a restart).
    fn mosquitto() -> Option<Broker> {
        let binary = installed("mosquitto")?;
        installed("mosquitto_pub")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Run as root, mosquitto drops to its own user, which must be
        // able to write its persistence file here.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let command = vec![binary, "-c".into(), conf.to_string_lossy().into_owned()];
        Some(Broker::start(command, port, dir))
    }

    /// A `nats-server` with JetStream (the pinned one the cluster tests use).
    fn nats() -> Option<Broker> {
        let binary = gust_store_nats::testkit::require()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let command = vec![
            binary.to_string_lossy().into_owned(),
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            dir.path().to_string_lossy().into_owned(),
        ];
        Some(Broker::start(command, port, dir))
    }

    fn start(command: Vec<String>, port: u16, dir: tempfile::TempDir) -> Broker {
        let mut broker = Broker {
            child: None,
            port,
            dir,
            command,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the broker did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it gracefully (SIGTERM: it writes what it keeps) and starts it again.
    fn restart(&mut self, down_for: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn redis(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// [`xadd`], again until the broker answers (it may be restarting).
async fn xadd_retrying(port: u16, stream: &str, key: &str, n: u64) -> String {
    loop {
        if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && let Ok(mut con) = client.get_multiplexed_async_connection().await
            && let Ok(id) = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("k")
                .arg(key)
                .arg("n")
                .arg(n)
                .query_async::<String>(&mut con)
                .await
        {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `XADD stream * k <key> n <n>`; the entry's id.
async fn xadd(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    key: &str,
    n: u64,
) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("k")
        .arg(key)
        .arg("n")
        .arg(n)
        .query_async(con)
        .await
        .unwrap()
}

/// Publishes `lines` to `topic` at QoS 1 with the machine's `mosquitto_pub`.
fn mqtt_publish(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

fn deploy_collector(server: &Server, name: &str) {
    server.deploy(
        name,
        &guests().testbed,
        &[
            "--backoff-ms",
            "30",
            "--max-backoff-ms",
            "60",
            "--max-attempts",
            "3",
        ],
    );
}

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    use sha2::Digest as _;
    // HMAC-SHA256 by its definition (RFC 2104), so the test does not share
    // the server's implementation.
    let mut key = [0u8; 64];
    if secret.len() > 64 {
        key[..32].copy_from_slice(&sha2::Sha256::digest(secret));
    } else {
        key[..secret.len()].copy_from_slice(secret);
    }
    let pad = |byte: u8| key.map(|k| k ^ byte);
    let inner = sha2::Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = sha2::Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// A channel on the machine's RabbitMQ with publisher confirms.
async fn amqp_channel(url: &str) -> lapin::Channel {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

async fn amqp_publish_one(channel: &lapin::Channel, queue: &str, payload: &str, id: &str) {
    let properties = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into());
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            lapin::options::BasicPublishOptions::default(),
            payload.as_bytes(),
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A durable queue of a name no other run uses.
async fn amqp_queue(channel: &lapin::Channel, prefix: &str) -> String {
    let queue = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        crate::harness::now_ms()
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                auto_delete: false,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    queue
}

/// Whether source `id` of `function` says it is connected within 10 s.
async fn connected(server: &Server, function: &str, id: &str) -> bool {
    Server::eventually(Duration::from_secs(10), || async {
        let listed = server.gust_json(&["source", "ls", function]);
        let source = listed.as_array()?.iter().find(|s| s["id"] == id)?.clone();
        (source["status"]["state"] == "connected").then_some(())
    })
    .await
    .is_some()
}

/// A sample of `/metrics`, 0 while it is not there yet.
async fn metric_or_zero(server: &Server, name: &str) -> u64 {
    let text = server
        .http
        .get(format!("{}/metrics", server.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// `psql` on the machine's PostgreSQL (`test` database, as `postgres`).
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

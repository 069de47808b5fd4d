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

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_queued_only_when_signed_and_once_per_delivery() {
    let server = Server::start();
    deploy_collector(&server, "hooks");
    let github = server.gust_json(&[
        "source",
        "add",
        "hooks",
        "--kind",
        "webhook",
        "--style",
        "github",
        "--secret",
        "gh-secret",
        "--path",
        "/collect",
        "--id",
        "gh",
    ]);
    let hook_url = github["webhook_url"].as_str().unwrap().to_string();
    assert_eq!(
        hook_url,
        format!("{}/_gust/webhooks/default/hooks/gh", server.url)
    );
    // The secret is never shown again, in any listing.
    let listed = server.gust(&["source", "ls", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!listed.contains("gh-secret"), "{listed}");
    assert!(listed.contains("\"waiting\""), "{listed}");

    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = format!("sha256={}", hmac_hex(b"gh-secret", body));
    let post = |signature: Option<String>, delivery: &str, body: &'static [u8]| {
        let mut request = server
            .http
            .post(&hook_url)
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, text) = post(Some(signature.clone()), "d-1", body).await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("\"duplicate\":false"), "{text}");
    // GitHub redelivers with the same delivery id: queued once.
    let (status, text) = post(Some(signature.clone()), "d-1", body).await;
    assert_eq!(
        (status, text.contains("\"duplicate\":true")),
        (202, true),
        "{text}"
    );
    // Unsigned, signed with another secret, or over another body: 401.
    let (status, text) = post(None, "d-2", body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("X-Hub-Signature-256"), "{text}");
    let wrong = format!("sha256={}", hmac_hex(b"other", body));
    assert_eq!(post(Some(wrong), "d-3", body).await.0, 401);
    assert_eq!(post(Some(signature.clone()), "d-4", b"{}").await.0, 401);

    // Stripe style: the timestamp is signed, and an old one is refused.
    server.gust_json(&[
        "source", "add", "hooks", "--kind", "webhook", "--style", "stripe", "--secret", "whsec_1",
        "--path", "/collect", "--id", "stripe",
    ]);
    let stripe_url = format!("{}/_gust/webhooks/default/hooks/stripe", server.url);
    let event = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    let stripe = |t: u64| {
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(event);
        let header = format!("t={t},v1={}", hmac_hex(b"whsec_1", &signed));
        let request = server
            .http
            .post(&stripe_url)
            .header("stripe-signature", header)
            .body(&event[..]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let now = crate::harness::now_ms() / 1000;
    assert_eq!(stripe(now).await, 202);
    assert_eq!(stripe(now - 3_600).await, 401, "outside the replay window");

    // No such source, wrong method, over the size limit.
    let nowhere = format!("{}/_gust/webhooks/default/hooks/nope", server.url);
    assert_eq!(
        server
            .http
            .post(&nowhere)
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        server.http.get(&hook_url).send().await.unwrap().status(),
        405
    );
    let big = vec![b'x'; (1 << 20) + 1];
    assert_eq!(
        server
            .http
            .post(&hook_url)
            .body(big)
            .send()
            .await
            .unwrap()
            .status(),
        413
    );

    let records =
        collected_until(&server, "hooks", Duration::from_secs(20), |r| r.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = if records.len() == 2 {
        collected(&server, "hooks").await
    } else {
        records
    };
    assert_eq!(records.len(), 2, "one event per delivery: {records:?}");
    let push = records
        .iter()
        .find(|r| r.id == "d-1")
        .expect("the GitHub delivery");
    assert_eq!(push.ty, "dev.gust.webhook.github");
    assert_eq!(push.subject, "push");
    assert_eq!(push.body, r#"{"ref":"refs/heads/main"}"#);
    let paid = records
        .iter()
        .find(|r| r.id == "evt_1")
        .expect("the Stripe event");
    assert_eq!(paid.subject, "invoice.paid");

    // Removed: its endpoint answers 404.
    assert!(
        server
            .gust(&["source", "rm", "hooks", "gh"])
            .status
            .success()
    );
    assert_eq!(post(Some(signature), "d-5", body).await.0, 404);

    // The delivery policy, through a webhook of its own.
    server.gust_json(&[
        "source",
        "add",
        "hooks",
        "--kind",
        "webhook",
        "--secret",
        "p-secret",
        "--path",
        POLICY_PATH,
        "--id",
        "policy",
    ]);
    let policy_url = format!("{}/_gust/webhooks/default/hooks/policy", server.url);
    retried_dead_lettered_and_redriven(&server, "hooks", |tag| {
        let body = format!("{{\"tag\":\"{tag}\"}}");
        let request = server
            .http
            .post(&policy_url)
            .header("x-github-event", "push")
            .header("x-github-delivery", tag)
            .header(
                "x-hub-signature-256",
                format!("sha256={}", hmac_hex(b"p-secret", body.as_bytes())),
            )
            .body(body);
        async move {
            assert_eq!(request.send().await.unwrap().status(), 202);
        }
    })
    .await;

    // A client's event that calls itself a webhook's is metered as what it
    // is, an event; the webhook's own deliveries as webhooks.
    let response = server
        .http
        .post(format!("{}/hooks/collect", server.url))
        .header("Gust-Invocation-Type", "Event")
        .header("ce-type", "dev.gust.webhook.github")
        .body("spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let spoofed = body["invocation_id"].as_str().unwrap().to_string();
    let triggers = Server::eventually(Duration::from_secs(10), || async {
        let out = server.gust(&["usage", "--export", "jsonl"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let of = |id: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|r| r["invocation_id"] == id)
                .map(|r| r["trigger"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        let spoofed = of(&spoofed);
        let pushed = text.lines().any(|l| l.contains("\"trigger\":\"webhook\""));
        (!spoofed.is_empty() && pushed).then_some(spoofed)
    })
    .await
    .expect("the spoofed event and the webhooks metered");
    assert_eq!(triggers, ["event"]);
}

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

/// Persistent messages `from..to` (payload `n`, message id `m-<n>`), each
/// confirmed by the broker.
async fn amqp_publish(channel: &lapin::Channel, queue: &str, from: u32, to: u32) {
    for n in from..to {
        amqp_publish_one(channel, queue, &format!("{n}"), &format!("m-{n}")).await;
    }
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

/// Restarts the machine's PostgreSQL (`pg_ctlcluster … restart`: every
/// connection drops, replication slots stay) and waits for it to answer.
/// `false` after saying why it could not (in CI: a failure).
fn restart_postgres() -> bool {
    let clusters = Command::new("pg_lsclusters").arg("-h").output();
    let cluster = clusters.ok().and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut fields = text.lines().next()?.split_whitespace();
        Some((fields.next()?.to_string(), fields.next()?.to_string()))
    });
    let restarted = cluster.is_some_and(|(version, name)| {
        Command::new("pg_ctlcluster")
            .args([version.as_str(), name.as_str(), "restart"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if !restarted {
        let why = "`pg_ctlcluster … restart` failed (not installed, or not allowed)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped the database restart: {why}");
        return false;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", 5432)).is_err()
        || !Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-Atc",
                "SELECT 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_row_changes_arrive_in_order_per_row_and_survive_a_kill_9_and_a_restart() {
    let _machine = MACHINE_SERVICES.lock().await;
    if service("PostgreSQL", 5432).is_none() || installed("psql").is_none() {
        return;
    }
    let level = psql("SHOW wal_level");
    if level != "logical" {
        let why = format!("PostgreSQL has wal_level = {level}, not logical (.ci/run sets it)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let tag = format!("{}_{}", std::process::id(), crate::harness::now_ms());
    let (table, publication, role) = (
        format!("gust_t_{tag}"),
        format!("gust_p_{tag}"),
        format!("gust_r_{tag}"),
    );
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, note text); ALTER TABLE {table} REPLICA IDENTITY FULL; CREATE PUBLICATION {publication} FOR TABLE {table}; CREATE ROLE {role} LOGIN"
    ));
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let source_id = format!("cdc-{}", tag.replace('_', "-"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    deploy_collector(&server, "rows");
    // What the database lacks is said when the source is added.
    let refused = server.gust(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        url,
        "--publication",
        "nope",
    ]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("no publication `nope`"), "{why}");
    let norepl = format!("postgres://{role}@127.0.0.1:5432/test");
    let refused = server.gust(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        &norepl,
        "--publication",
        &publication,
    ]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("WITH REPLICATION"), "{why}");
    server.gust_json(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        url,
        "--publication",
        &publication,
        "--path",
        "/collect",
        "--id",
        &source_id,
    ]);
    let slot = format!("gust_rows_{}", source_id.replace('-', "_"));
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "1",
        "the slot is made when the source is added"
    );
    // Twenty rows, each updated three times, five deleted: 85 changes.
    let mut sql = String::new();
    for id in 1..=20 {
        sql.push_str(&format!("INSERT INTO {table} VALUES ({id}, 'v0');"));
    }
    psql(&sql);
    for v in 1..=3 {
        psql(&format!("UPDATE {table} SET note = 'v{v}'"));
    }
    psql(&format!("DELETE FROM {table} WHERE id <= 5"));
    let records =
        collected_until(&server, "rows", Duration::from_secs(30), |r| r.len() >= 85).await;
    assert_eq!(records.len(), 85);
    for id in 1..=20 {
        let subject = format!("public.{table}/{id}");
        let ops: Vec<String> = records
            .iter()
            .filter(|r| r.subject == subject)
            .map(|r| {
                let data: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                let note = data["new"]["note"].as_str().unwrap_or("-").to_string();
                format!("{}:{note}", r.ty.trim_start_matches("dev.gust.postgres."))
            })
            .collect();
        let mut expected = vec!["insert:v0", "update:v1", "update:v2", "update:v3"];
        if id <= 5 {
            expected.push("delete:-");
        }
        assert_eq!(ops, expected, "row {id}");
    }
    let update = records
        .iter()
        .find(|r| r.ty == "dev.gust.postgres.update")
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(&update.body).unwrap();
    assert_eq!(data["table"], format!("public.{table}"));
    assert!(
        data["old"]["note"].is_string() && data["key"]["id"].is_i64(),
        "{data}"
    );

    // Rows committed while gust is killed and started again: none lost.
    let writer = {
        let table = table.clone();
        std::thread::spawn(move || {
            for batch in 0..28 {
                let from = 21 + batch * 10;
                psql(&format!(
                    "INSERT INTO {table} SELECT g, 'bulk' FROM generate_series({from}, {}) g",
                    from + 9
                ));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    collected_until(&server, "rows", Duration::from_secs(30), |r| r.len() >= 120).await;
    server.kill9();
    writer.join().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    let records = collected_until(&server, "rows", Duration::from_secs(60), |r| {
        let inserted: BTreeSet<&str> = r
            .iter()
            .filter(|c| c.ty == "dev.gust.postgres.insert")
            .map(|c| c.subject.as_str())
            .collect();
        inserted.len() >= 300
    })
    .await;
    let mut by_id: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &records {
        by_id.entry(r.id.as_str()).or_default().push(r.attempt);
    }
    assert_eq!(by_id.len(), 85 + 280, "one event per change");
    assert_at_most_a_few_queued_twice(&records, 10);

    // The database restarted between writes: the source reconnects to its
    // slot by itself and loses none.
    let insert = |from: u32, to: u32| {
        psql(&format!(
            "INSERT INTO {table} SELECT g, 'again' FROM generate_series({from}, {to}) g"
        ))
    };
    insert(301, 320);
    if restart_postgres() {
        insert(321, 340);
        collected_until(&server, "rows", Duration::from_secs(60), |r| {
            let inserted: BTreeSet<&str> = r
                .iter()
                .filter(|c| c.ty == "dev.gust.postgres.insert")
                .map(|c| c.subject.as_str())
                .collect();
            inserted.len() >= 340
        })
        .await;
    }

    // The delivery policy, through a source of its own.
    let (policy_table, policy_publication, policy_id) = (
        format!("gust_pt_{tag}"),
        format!("gust_pp_{tag}"),
        format!("pol-{}", tag.replace('_', "-")),
    );
    psql(&format!(
        "CREATE TABLE {policy_table} (id int PRIMARY KEY, note text); CREATE PUBLICATION {policy_publication} FOR TABLE {policy_table}"
    ));
    server.gust_json(&[
        "source",
        "add",
        "rows",
        "--kind",
        "postgres",
        "--url",
        url,
        "--publication",
        &policy_publication,
        "--path",
        POLICY_PATH,
        "--id",
        &policy_id,
    ]);
    let written = std::sync::atomic::AtomicU32::new(0);
    retried_dead_lettered_and_redriven(&server, "rows", |tag| {
        let n = written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        psql(&format!("INSERT INTO {policy_table} VALUES ({n}, '{tag}')"));
        async {}
    })
    .await;
    assert!(
        server
            .gust(&["source", "rm", "rows", &policy_id])
            .status
            .success()
    );

    // Removed: its slot goes too (a slot nobody reads keeps WAL).
    assert!(
        server
            .gust(&["source", "rm", "rows", &source_id])
            .status
            .success()
    );
    let gone = Server::eventually(Duration::from_secs(20), || async {
        (psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )) == "0")
            .then_some(())
    })
    .await;
    let policy_slot = format!("gust_rows_{}", policy_id.replace('-', "_"));
    Server::eventually(Duration::from_secs(20), || async {
        (psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{policy_slot}'"
        )) == "0")
            .then_some(())
    })
    .await;
    psql(&format!(
        "DROP PUBLICATION {publication}, {policy_publication}; DROP TABLE {table}, {policy_table}; DROP ROLE {role}"
    ));
    assert!(gone.is_some(), "the slot was not dropped");
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
    let lag = metric_or_zero(&server, &format!("gust_source_lag{labels}")).await;
    assert!(
        lag > 20,
        "the broker keeps what Gust has no room for (lag {lag})"
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

/// A private CA and a certificate for 127.0.0.1 it signed (made with the
/// machine's `openssl`), readable by a broker that drops its privileges.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Option<Certs> {
        let openssl = installed("openssl")?;
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &key,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=gust-test-ca",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &key,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        use std::os::unix::fs::PermissionsExt as _;
        let open = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        open(dir.path(), 0o777);
        for file in ["ca.pem", "server.pem", "server.key"] {
            open(&dir.path().join(file), 0o644);
        }
        Some(Certs { dir })
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_string_lossy().into_owned()
    }
}

/// `source add` of `kind` to function `secure`, with `--ca-file` when given.
fn add_tls_source(
    server: &Server,
    kind: &str,
    url: &str,
    rest: &[&str],
    ca: Option<&str>,
) -> std::process::Output {
    let mut args = vec![
        "source", "add", "secure", "--kind", kind, "--url", url, "--path", "/collect",
    ];
    args.extend_from_slice(rest);
    if let Some(ca) = ca {
        args.extend_from_slice(&["--ca-file", ca]);
    }
    server.gust(&args)
}

/// A source over TLS: refused without the CA (with the certificate's
/// reason), added with it.
fn refused_without_the_ca_then_added_with_it(
    server: &Server,
    kind: &str,
    url: &str,
    rest: &[&str],
    ca: &str,
) {
    let refused = add_tls_source(server, kind, url, rest, None);
    assert_refused_for_its_certificate(&refused, &format!("{url} without the CA"));
    assert_added(&add_tls_source(server, kind, url, rest, Some(ca)), url);
}

/// Refused, with a certificate's reason.
fn assert_refused_for_its_certificate(out: &std::process::Output, what: &str) {
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: added");
    assert!(why.contains("certificate"), "{what}: {why}");
}

/// Added: its JSON.
fn assert_added(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_reach_brokers_over_tls_and_refuse_a_certificate_they_cannot_check() {
    let _machine = MACHINE_SERVICES.lock().await;
    let Some(certs) = Certs::new() else {
        return;
    };
    let (ca, cert, key) = (
        certs.path("ca.pem"),
        certs.path("server.pem"),
        certs.path("server.key"),
    );
    let server = Server::start();
    deploy_collector(&server, "secure");
    // Kept to the end, when every source must still be connected.
    let mut brokers = Vec::new();
    let mut amqp_queue_left = None;
    let arrives = |tag: &'static str| {
        let server = &server;
        async move {
            collected_until(server, "secure", Duration::from_secs(30), |r| {
                r.iter().any(|c| c.body.contains(tag))
            })
            .await;
        }
    };

    // MQTT: mosquitto with a TLS listener only.
    let (Some(mosquitto), Some(_)) = (installed("mosquitto"), installed("mosquitto_pub")) else {
        return;
    };
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"),
    )
    .unwrap();
    brokers.push(Broker::start(
        vec![mosquitto, "-c".into(), conf.to_string_lossy().into_owned()],
        port,
        dir,
    ));
    let url = format!("mqtts://127.0.0.1:{port}");
    let topic = ["--topic", "secure/#", "--qos", "1"];
    refused_without_the_ca_then_added_with_it(&server, "mqtt", &url, &topic, &ca);
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cafile",
            &ca,
            "-q",
            "1",
            "-t",
            "secure/x",
            "-m",
            "over-mqtts",
        ])
        .status()
        .unwrap();
    assert!(published.success());
    arrives("over-mqtts").await;
    let mut running = 1;

    // NATS: a server that takes TLS only.
    if let Some(nats) = gust_store_nats::testkit::require() {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let command = [
            nats.to_string_lossy().as_ref(),
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--tls",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ]
        .map(str::to_string)
        .to_vec();
        brokers.push(Broker::start(command, port, dir));
        let url = format!("tls://127.0.0.1:{port}");
        let subject = ["--topic", "secure", "--id", "nats"];
        refused_without_the_ca_then_added_with_it(&server, "nats", &url, &subject, &ca);
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone().into())
            .require_tls(true)
            .connect(&url)
            .await
            .unwrap();
        // Core NATS: what is published once the source is connected.
        assert!(
            connected(&server, "secure", "nats").await,
            "the NATS source connects over TLS"
        );
        client
            .publish("secure", "over-nats-tls".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        arrives("over-nats-tls").await;
        running += 1;
    }

    // Redis: TLS port only.
    if let Some(redis_server) = installed("redis-server") {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let command = [
            redis_server.as_str(),
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().to_string_lossy(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ]
        .map(str::to_string)
        .to_vec();
        brokers.push(Broker::start(command, port, dir));
        let url = format!("rediss://127.0.0.1:{port}");
        let stream = ["--stream", "secure", "--id", "redis"];
        refused_without_the_ca_then_added_with_it(&server, "redis", &url, &stream, &ca);
        let added = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &ca,
                "-p",
                &port.to_string(),
                "XADD",
                "secure",
                "*",
                "msg",
                "over-rediss",
            ])
            .output()
            .unwrap();
        assert!(added.status.success(), "{added:?}");
        arrives("over-rediss").await;
        running += 1;
    }

    // RabbitMQ: the machine's broker behind a TLS terminator (socat).
    if service("RabbitMQ", 5672).is_some()
        && let Some(socat) = installed("socat")
    {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={cert},key={key}"
        );
        brokers.push(Broker::start(
            vec![socat, listen, "TCP:127.0.0.1:5672".into()],
            port,
            dir,
        ));
        let channel = amqp_channel("amqp://guest:guest@127.0.0.1:5672/%2f").await;
        let queue = amqp_queue(&channel, "gust-tls").await;
        let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
        let rest = ["--queue", queue.as_str(), "--id", "amqp"];
        refused_without_the_ca_then_added_with_it(&server, "amqp", &url, &rest, &ca);
        amqp_publish_one(&channel, &queue, "over-amqps", "amqps-1").await;
        arrives("over-amqps").await;
        running += 1;
        amqp_queue_left = Some((channel, queue));
    }

    // PostgreSQL: the machine's server with its own (self-signed) certificate.
    if service("PostgreSQL", 5432).is_some()
        && installed("psql").is_some()
        && psql("SHOW wal_level") == "logical"
    {
        let own = psql("SHOW ssl_cert_file");
        assert_eq!(psql("SHOW ssl"), "on", "PostgreSQL without TLS");
        let tag = format!("{}_{}", std::process::id(), crate::harness::now_ms());
        let (table, publication) = (format!("gust_tls_{tag}"), format!("gust_tlsp_{tag}"));
        psql(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, note text); CREATE PUBLICATION {publication} FOR TABLE {table}"
        ));
        let id = format!("pg-{}", tag.replace('_', "-"));
        let base = "postgres://postgres@127.0.0.1:5432/test";
        let rest = ["--publication", publication.as_str(), "--id", id.as_str()];
        // Its certificate names the machine, not 127.0.0.1: verify-full refuses it.
        let full = format!("{base}?sslmode=verify-full");
        assert_refused_for_its_certificate(
            &add_tls_source(&server, "postgres", &full, &rest, Some(&own)),
            "verify-full",
        );
        let require = format!("{base}?sslmode=require");
        assert_refused_for_its_certificate(
            &add_tls_source(&server, "postgres", &require, &rest, None),
            "require without the CA",
        );
        let chain = format!("{base}?sslmode=verify-ca");
        // verify-ca trusts the CA given alone: another CA's is refused.
        assert_refused_for_its_certificate(
            &add_tls_source(&server, "postgres", &chain, &rest, Some(&ca)),
            "verify-ca with another CA",
        );
        assert_added(
            &add_tls_source(&server, "postgres", &chain, &rest, Some(&own)),
            "verify-ca",
        );
        psql(&format!(
            "INSERT INTO {table} VALUES (1, 'over-postgres-tls')"
        ));
        arrives("over-postgres-tls").await;
        let ssl = psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_replication r ON r.pid = s.pid WHERE s.ssl AND r.application_name = 'gust'",
        );
        assert_ne!(ssl, "0", "the replication connection is not over TLS");
        assert!(
            server
                .gust(&["source", "rm", "secure", &id])
                .status
                .success()
        );
        let slot = format!("gust_secure_{}", id.replace('-', "_"));
        Server::eventually(Duration::from_secs(20), || async {
            (psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            )) == "0")
                .then_some(())
        })
        .await;
        psql(&format!(
            "DROP PUBLICATION {publication}; DROP TABLE {table}"
        ));
    }
    // Every source still connected, over TLS.
    let listed = server.gust_json(&["source", "ls", "secure"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), running, "{listed:?}");
    for source in listed {
        assert_eq!(source["status"]["state"], "connected", "{source}");
    }
    if let Some((channel, queue)) = amqp_queue_left {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
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

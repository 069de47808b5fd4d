//! The built-in key-value store: guests through `wasi:keyvalue`, people
//! through `gust kv`, and change triggers delivered in order per key.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::harness::{Server, guests};

impl Server {
    /// A request to the testbed's `/kv/...` paths: (status, body).
    async fn kv(&self, function: &str, path_query: &str, body: &str) -> (u16, String) {
        let response = self
            .http
            .post(format!("{}/{function}/kv/{path_query}", self.url))
            .body(body.to_string())
            .send()
            .await
            .expect("kv request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Writes a value through the control API; returns its revision.
    async fn kv_put(&self, bucket: &str, key: &str, value: &str) -> u64 {
        let response = self
            .http
            .put(format!("{}/v1/kv/{bucket}/keys/{key}", self.api))
            .body(value.to_string())
            .send()
            .await
            .expect("kv put");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let written: serde_json::Value = response.json().await.expect("json");
        written["revision"].as_u64().expect("revision")
    }

    async fn kv_delete(&self, bucket: &str, key: &str) -> u16 {
        self.http
            .delete(format!("{}/v1/kv/{bucket}/keys/{key}", self.api))
            .send()
            .await
            .expect("kv delete")
            .status()
            .as_u16()
    }

    async fn kv_value(&self, bucket: &str, key: &str) -> Option<String> {
        let response = self
            .http
            .get(format!("{}/v1/kv/{bucket}/keys/{key}", self.api))
            .send()
            .await
            .expect("kv get");
        (response.status() == 200).then_some(response.text().await.expect("body"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_use_buckets_through_wasi_keyvalue_and_people_through_gust_kv() {
    let server = Server::start();
    server.deploy("kvt", &guests().testbed, &[]);

    // store: set, get, exists, delete.
    assert_eq!(
        server
            .kv("kvt", "set?bucket=b1&key=greeting", "hello")
            .await,
        (200, "set".into())
    );
    assert_eq!(
        server.kv("kvt", "get?bucket=b1&key=greeting", "").await,
        (200, "hello".into())
    );
    assert_eq!(
        server
            .kv("kvt", "exists?bucket=b1&key=greeting", "")
            .await
            .1,
        "true"
    );
    assert_eq!(
        server.kv("kvt", "get?bucket=b1&key=nothing", "").await.0,
        404
    );
    // Buckets are separate; `""` is the default bucket.
    assert_eq!(
        server.kv("kvt", "get?bucket=b2&key=greeting", "").await.0,
        404
    );
    server.kv("kvt", "set?bucket=&key=d", "in default").await;
    assert_eq!(
        server.kv_value("default", "d").await.as_deref(),
        Some("in default")
    );

    // atomics: a counter starts at its first delta.
    assert_eq!(
        server.kv("kvt", "incr?bucket=b1&key=hits&by=5", "").await.1,
        "5"
    );
    assert_eq!(
        server.kv("kvt", "incr?bucket=b1&key=hits&by=2", "").await.1,
        "7"
    );
    let (status, text) = server
        .kv("kvt", "incr?bucket=b1&key=greeting&by=1", "")
        .await;
    assert_eq!(status, 500);
    assert!(text.contains("not a counter"), "{text}");

    // batch: set-many, delete-many, get-many (in the order asked).
    let (status, text) = server.kv("kvt", "batch?bucket=b3&keys=a,b,c", "").await;
    assert_eq!((status, text.as_str()), (200, "-,b=B,c=C"));

    // A bad bucket name or key is the guest's error, not a crash.
    let (status, text) = server.kv("kvt", "get?bucket=Not_Valid&key=x", "").await;
    assert_eq!(status, 500);
    assert!(text.contains("NoSuchStore"), "{text}");
    let (status, text) = server.kv("kvt", "get?bucket=b1&key=", "").await;
    assert_eq!(status, 500);
    assert!(text.contains("must not be empty"), "{text}");

    // The CLI sees what the guest wrote, and the other way round.
    let out = server.gust(&["kv", "get", "greeting", "--bucket", "b1"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    let put = server.gust_json(&["kv", "put", "from/cli", "42", "--bucket", "b1"]);
    assert!(put["revision"].as_u64().unwrap() > 0);
    assert_eq!(
        server.kv("kvt", "get?bucket=b1&key=from/cli", "").await.1,
        "42"
    );
    let listed = server.gust_json(&["kv", "ls", "--bucket", "b1"]);
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["from/cli", "greeting", "hits"]);
    let prefixed = server.gust_json(&["kv", "ls", "from/", "--bucket", "b1"]);
    assert_eq!(prefixed.as_array().unwrap().len(), 1);
    let got = server.gust_json(&["kv", "get", "hits", "--bucket", "b1"]);
    assert_eq!(got["value"], "7");
    assert!(
        server
            .gust(&["kv", "rm", "greeting", "--bucket", "b1"])
            .status
            .success()
    );
    assert_eq!(
        server
            .kv("kvt", "exists?bucket=b1&key=greeting", "")
            .await
            .1,
        "false"
    );

    // Faults are named, exit 1, and change nothing.
    let out = server.gust(&["kv", "get", "greeting", "--bucket", "b1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key `greeting`"));
    let out = server.gust(&["kv", "put", "x", "y", "--bucket", "Bad!"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bucket name"));
    // A batch past 1000 keys is refused whole, naming the limit.
    let keys: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let (status, text) = server
        .kv(
            "kvt",
            &format!("batch?bucket=b4&keys={}", keys.join(",")),
            "",
        )
        .await;
    assert_eq!(status, 500);
    assert!(
        text.contains("1001 keys in one batch; the limit is 1000"),
        "{text}"
    );
    assert_eq!(server.kv_value("b4", "k1").await, None);
    // Triggers: a path that is not one, a function that does not exist.
    let out = server.gust(&[
        "trigger", "add", "kvt", "--bucket", "b1", "--path", "changed",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with `/`"));
    let out = server.gust(&["trigger", "add", "nope", "--bucket", "b1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let big = "v".repeat((1 << 20) + 1);
    let response = server
        .http
        .put(format!("{}/v1/kv/b1/keys/big", server.api))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(server.kv_value("b1", "big").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_keys_pages_through_a_large_bucket() {
    let server = Server::start();
    server.deploy("kvt", &guests().testbed, &[]);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..1500 {
        let (http, api) = (server.http.clone(), server.api.clone());
        writes.spawn(async move {
            let url = format!("{api}/v1/kv/many/keys/key-{i:05}");
            http.put(url)
                .body("x")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    while let Some(status) = writes.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let (status, text) = server.kv("kvt", "list?bucket=many", "").await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = text.lines().collect();
    assert_eq!(keys.len(), 1500, "two pages of list-keys, every key once");
    assert_eq!(keys[0], "key-00000");
    assert_eq!(keys[1499], "key-01499");
}

/// Writes `per_key` values to each of `keys` keys of bucket `data`, keys
/// in parallel, each key's writes in sequence; the last write of `k0` is a
/// delete. Returns each key's revisions (the delete's is not known).
pub(crate) async fn write_chains(
    server: &Server,
    keys: usize,
    per_key: usize,
) -> HashMap<String, Vec<u64>> {
    let mut writers = tokio::task::JoinSet::new();
    for k in 0..keys {
        let api = server.api.clone();
        let http = server.http.clone();
        writers.spawn(async move {
            let key = format!("k{k}");
            let url = format!("{api}/v1/kv/data/keys/{key}");
            let mut revisions = Vec::new();
            for i in 0..per_key {
                if k == 0 && i == per_key - 1 {
                    let status = http.delete(&url).send().await.unwrap().status();
                    assert_eq!(status, 204);
                    continue;
                }
                let response = http
                    .put(&url)
                    .body(format!("value {i}"))
                    .send()
                    .await
                    .unwrap();
                let written: serde_json::Value = response.json().await.unwrap();
                revisions.push(written["revision"].as_u64().unwrap());
            }
            (key, revisions)
        });
    }
    let mut written = HashMap::new();
    while let Some(done) = writers.join_next().await {
        let (key, revisions) = done.unwrap();
        written.insert(key, revisions);
    }
    written
}

/// Records written by the testbed's `/record`: `subject revision attempt operation`.
pub(crate) async fn recorded(server: &Server) -> Vec<(String, u64, u64, String)> {
    let (status, dump) = server.kv("recorder", "dump?bucket=seen", "").await;
    assert_eq!(status, 200, "{dump}");
    let mut lines: Vec<(&str, &str)> = dump.lines().filter_map(|l| l.split_once('\t')).collect();
    lines.sort();
    lines
        .into_iter()
        .filter(|(key, _)| *key != "n")
        .map(|(_, line)| {
            let parts: Vec<&str> = line.split(' ').collect();
            (
                parts[0].to_string(),
                parts[1].parse().unwrap(),
                parts[2].parse().unwrap(),
                parts[3].to_string(),
            )
        })
        .collect()
}

pub(crate) async fn recorded_count(server: &Server) -> u64 {
    server
        .kv_value("seen", "n")
        .await
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_changes_trigger_a_function_in_order_per_key() {
    let server = Server::start();
    server.deploy(
        "recorder",
        &guests().testbed,
        &[
            "--concurrency",
            "4",
            "--backoff-ms",
            "30",
            "--max-backoff-ms",
            "60",
        ],
    );
    let trigger = server.gust_json(&[
        "trigger",
        "add",
        "recorder",
        "--bucket",
        "data",
        "--path",
        "/record?fail_every=3",
        "--id",
        "rec",
    ]);
    assert_eq!(trigger["bucket"], "data");
    let listed = server.gust_json(&["trigger", "ls", "recorder"]);
    assert_eq!(listed[0]["id"], "rec");

    // Five keys written concurrently, 12 writes each in sequence, the
    // last of k0 a delete. Every third revision fails its first attempt,
    // so retries are interleaved with later changes of the same key.
    let written = write_chains(&server, 5, 12).await;
    // A change in another bucket triggers nothing.
    server.kv_put("other", "k0", "elsewhere").await;

    // `/record` counts first and writes its line after, so wait for the
    // lines, not the count: a dump taken between the two misses one.
    let expected = 60;
    let records = Server::eventually(Duration::from_secs(30), || async {
        let records = recorded(&server).await;
        (records.len() >= expected).then_some(records)
    })
    .await
    .expect("every change delivered within 30 s");
    assert_eq!(
        (records.len(), recorded_count(&server).await),
        (expected, expected as u64),
        "each change delivered once (no crash here)"
    );

    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, revision, _, _) in &records {
        by_key.entry(key.clone()).or_default().push(*revision);
    }
    for (key, revisions) in &by_key {
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "changes of {key} delivered out of order: {revisions:?}"
        );
    }
    let retried = records.iter().filter(|r| r.2 > 1).count();
    assert!(
        retried >= 10,
        "first attempts failed on purpose were retried ({retried})"
    );
    // Every put was seen, and the delete as a delete.
    for (key, revisions) in &written {
        let seen = &by_key[key];
        for revision in revisions {
            assert!(
                seen.contains(revision),
                "{key}@{revision} was never delivered"
            );
        }
    }
    let last_k0 = records.iter().rfind(|r| r.0 == "k0").unwrap();
    assert_eq!(last_k0.3, "delete");

    // Removed: further changes trigger nothing.
    assert!(
        server
            .gust(&["trigger", "rm", "recorder", "rec"])
            .status
            .success()
    );
    server.kv_put("data", "after", "x").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorded_count(&server).await, expected as u64);
    assert_eq!(server.kv_delete("data", "missing").await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_changes_in_flight_loses_none_and_keeps_each_keys_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("recorder", &guests().testbed, &["--concurrency", "8"]);
    server.gust_json(&[
        "trigger", "add", "recorder", "--bucket", "data", "--path", "/record",
    ]);
    let written = write_chains(&server, 20, 40).await;
    // Every write was acknowledged; kill the server while their events are
    // being queued and delivered.
    server.kill9();
    let server = Server::start_in(dir.path(), &[]);

    let total: usize = written.values().map(Vec::len).sum::<usize>() + 1;
    let records = Server::eventually(Duration::from_secs(60), || async {
        if recorded_count(&server).await < total as u64 {
            return None;
        }
        let records = recorded(&server).await;
        let mut distinct: Vec<(String, u64)> = records.iter().map(|r| (r.0.clone(), r.1)).collect();
        distinct.sort();
        distinct.dedup();
        (distinct.len() >= total).then_some(records)
    })
    .await
    .expect("every change delivered after the restart");

    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, revision, _, _) in &records {
        by_key.entry(key.clone()).or_default().push(*revision);
    }
    let mut lost = 0;
    for (key, revisions) in &written {
        lost += revisions
            .iter()
            .filter(|r| !by_key[key].contains(r))
            .count();
    }
    let duplicates = records.len() - total;
    eprintln!("kv kill -9: {total} changes, lost {lost}, delivered twice {duplicates}");
    assert_eq!(lost, 0);
    for (key, revisions) in &by_key {
        assert!(
            revisions.windows(2).all(|w| w[0] <= w[1]),
            "{key}: a redelivery went behind a later change: {revisions:?}"
        );
    }
}

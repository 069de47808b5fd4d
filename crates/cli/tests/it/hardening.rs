//! Hostile guests and hostile clients: each is survived, answered with the
//! right status, and leaves the platform serving.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::harness::{Server, guests};

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_traps_and_no_state_leaks_between_invocations() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let (status, body) = server.get("/tb/recurse?depth=100000000").await;
    assert_eq!(status, 500, "{body}");
    // Rust guests keep their stack in linear memory: overflowing it is an
    // out-of-bounds access; either way a trap, never a host crash.
    assert!(body.contains("wasm trap"), "the trap is named: {body}");
    assert_eq!(
        server.get("/tb/recurse?depth=1000").await,
        (200, "depth 1000".into())
    );
    // A fresh instance per invocation: a global counter starts over every time.
    for _ in 0..3 {
        assert_eq!(server.get("/tb/state").await, (200, "1".into()));
    }
    let (status, _) = server.get("/tb/trap").await;
    assert_eq!(status, 500);
    assert_eq!(server.get("/tb/state").await, (200, "1".into()));
}

/// Sends raw bytes to `addr` and returns what comes back within 5 s.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let _ = stream.write_all(request);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_urls_and_headers_are_refused_on_both_listeners() {
    let server = Server::start_with(&["--header-read-timeout-ms", "500"]);
    server.deploy("tb", &guests().testbed, &["--public"]);
    for base in [server.url.clone(), server.api.clone()] {
        let addr = base.trim_start_matches("http://").to_string();
        let long_url = format!("GET /tb/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        let answer = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || raw(&addr, long_url.as_bytes())
        })
        .await
        .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 414")
                || answer.starts_with("HTTP/1.1 431")
                || answer.starts_with("HTTP/1.1 400"),
            "{base}: a 70 kB URL: {}",
            answer.lines().next().unwrap_or("(connection closed)")
        );
        let big_header = format!(
            "GET /tb/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(1 << 20)
        );
        let answer = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || raw(&addr, big_header.as_bytes())
        })
        .await
        .unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{base}: a 1 MiB header: {}",
            answer.lines().next().unwrap_or_default()
        );
        // Slowloris: a head that never ends is cut off.
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || raw(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n"))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{base} held a slow client"
        );
    }
    // Still serving.
    assert_eq!(server.get("/tb/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_compiled_artifact_is_detected_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("tb", &guests().testbed, &[]);
    assert_eq!(server.stop(), Some(0));
    let artifacts: Vec<_> = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    let mut bytes = std::fs::read(&artifacts[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifacts[0], &bytes).unwrap();

    let server = Server::start_in(dir.path(), &[]);
    assert_eq!(server.get("/tb/").await, (200, "testbed ok".into()));
    assert_eq!(
        server.metric("gust_compilations_total").await,
        1,
        "recompiled once"
    );
    assert_eq!(
        server.metric("gust_artifact_loads_total").await,
        0,
        "the damaged file was not loaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_does_not_reach_names_that_resolve_to_this_machine() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--allow-host", "*"]);
    // This machine's own name resolves (through /etc/hosts) to a loopback or
    // private address: `*` must not reach it, though it is not an IP literal.
    let name = std::fs::read_to_string("/etc/hostname")
        .unwrap()
        .trim()
        .to_string();
    use std::net::ToSocketAddrs as _;
    let resolved: Vec<_> = (name.as_str(), 80)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    assert!(!resolved.is_empty(), "the host name `{name}` resolves");
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let (status, body) = server
        .get(&format!("/tb/fetch?url=http://{name}:{port}/tb/"))
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("HttpRequestDenied"),
        "`*` reached {name} ({resolved:?}): {body}"
    );
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://127.0.0.1/",
    ] {
        let (_, body) = server.get(&format!("/tb/fetch?url={url}")).await;
        assert!(body.contains("HttpRequestDenied"), "{url}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guests_output_cannot_drive_the_terminal_of_whoever_reads_its_logs() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    assert_eq!(server.get("/tb/escape").await.0, 200);
    let text = Server::eventually(Duration::from_secs(5), || async {
        let out = server.gust(&["logs", "tb"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("cleared").then_some(text)
    })
    .await
    .expect("the output is logged");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    // --json keeps the bytes as they were (escaped by JSON).
    let json = server.gust_json(&["logs", "tb"]);
    assert!(json[0]["stdout"].as_str().unwrap().contains('\x1b'));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_never_reads_its_body_answers_and_the_connection_stays_usable() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    // `/` answers without reading the 5 MB body it is sent.
    for _ in 0..3 {
        let response = server
            .http
            .post(format!("{}/tb/", server.url))
            .body(vec![7u8; 5 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "testbed ok");
    }
    assert_eq!(server.get("/tb/body").await, (200, "body 0".into()));
}

/// A component that exports `wasi:http/incoming-handler` (so it passes the
/// deploy checks) whose core module is `module_body`; its handler does nothing.
fn handler_component(module_body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $response-out))
  (core module $m
    {module_body}
    (func (export "handle") (param i32 i32)))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $response-out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))"#
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_and_table_bombs_are_refused_at_deploy() {
    let server = Server::start();
    server.deploy("hello", &guests().hello, &[]);
    let deploy = |name: &str, bytes: Vec<u8>, query: &str| {
        let request = server
            .http
            .post(format!(
                "{}/v1/functions/{name}/versions{query}",
                server.api
            ))
            .header("content-type", "application/wasm")
            .body(bytes);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    // A harmless one deploys (so the ones below fail for their bomb alone).
    let (status, body) = deploy("calm", handler_component("(memory 1)"), "").await;
    assert_eq!(status, 201, "{body}");

    // 4 GiB of initial memory: past any limit.
    let (status, body) = deploy("huge", handler_component("(memory 65536)"), "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("memory"), "{body}");
    // 192 MiB at start: over the default 128 MiB limit, fine with a larger one.
    let (status, body) = deploy("big", handler_component("(memory 3072)"), "").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("more than its memory limit of 134217728 bytes"),
        "{body}"
    );
    let (status, body) = deploy(
        "big",
        handler_component("(memory 3072)"),
        "?memory_bytes=268435456",
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Many tables, and one enormous table.
    let many: String = (0..64).map(|_| "(table 1 funcref) ").collect();
    let (status, body) = deploy("tables", handler_component(&many), "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("table"), "{body}");
    let (status, body) = deploy("table", handler_component("(table 100000000 funcref)"), "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("table"), "{body}");

    // Nothing of them was kept; the platform serves on.
    let names: Vec<String> = server
        .gust_json(&["ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["big", "calm", "hello"]);
    assert_eq!(server.get("/hello/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_times_overload_is_refused_fast_and_other_tenants_are_served() {
    // The node runs 8 invocations at once; `noisy` may use 4 of them.
    let server = Server::start_with(&["--max-in-flight", "8"]);
    server.gust_json(&["tenant", "create", "noisy"]);
    let noisy = server.token_for("noisy", "owner", &[]);
    let response = server
        .http
        .put(format!("{}/v1/tenants/noisy/quotas", server.api))
        .json(&serde_json::json!({"concurrency": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.gust_json_as(
        &noisy,
        &["deploy", "slow", guests().testbed.to_str().unwrap()],
    );
    server.deploy("hello", &guests().hello, &[]);

    // 80 clients (10× the node) hammer `noisy` for 3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let flood: Vec<_> = (0..80)
        .map(|_| {
            let http = crate::harness::client_with_token(&noisy);
            let url = format!("{}/@noisy/slow/sleep?ms=200", server.url);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while std::time::Instant::now() < deadline {
                    let started = std::time::Instant::now();
                    let response = http.get(&url).send().await.unwrap();
                    let status = response.status().as_u16();
                    let retry_after = response.headers().get("retry-after").is_some();
                    seen.push((status, retry_after, started.elapsed()));
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                seen
            })
        })
        .collect();
    // Meanwhile `noisy` also submits events, and another tenant is served.
    let mut events = Vec::new();
    let mut other = Vec::new();
    while std::time::Instant::now() < deadline {
        let (status, id) = server
            .submit_as(&noisy, "/@noisy/slow/sleep?ms=10", &[], Vec::new())
            .await;
        if status == 202 {
            events.push(id);
        }
        let started = std::time::Instant::now();
        let (status, _) = server.get("/hello/").await;
        other.push((status, started.elapsed()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut statuses = std::collections::BTreeMap::new();
    for task in flood {
        for (status, retry_after, elapsed) in task.await.unwrap() {
            *statuses.entry(status).or_insert(0) += 1;
            if status == 429 {
                assert!(retry_after, "429 carries Retry-After");
                assert!(
                    elapsed < Duration::from_secs(1),
                    "refused fast: {elapsed:?}"
                );
            }
        }
    }
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 429),
        "only served or refused by quota: {statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 10,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 100,
        "{statuses:?}"
    );
    assert!(other.len() >= 10, "{other:?}");
    for (status, elapsed) in &other {
        assert_eq!(*status, 200, "the other tenant is served: {other:?}");
        assert!(*elapsed < Duration::from_secs(2), "{other:?}");
    }

    // Every event accepted during the overload is delivered.
    assert!(!events.is_empty());
    for id in &events {
        server.wait_for_state_as(&noisy, id, "succeeded").await;
    }
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// libfaketime, which moves a process's wall clock (not its monotonic one).
fn libfaketime() -> Option<&'static str> {
    if std::path::Path::new(LIBFAKETIME).exists() {
        return Some(LIBFAKETIME);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{LIBFAKETIME} is missing: .ci/run installs it (`apt-get install faketime`)"
    );
    eprintln!(
        "SKIPPED: the clock test needs libfaketime at {LIBFAKETIME}; install it with `apt-get install faketime`"
    );
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wall_clock_going_backwards_breaks_no_timing() {
    let Some(lib) = libfaketime() else { return };
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let server = Server::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    server.deploy("tb", &guests().testbed, &["--timeout-ms", "1000"]);
    assert_eq!(server.get("/tb/").await.0, 200);

    // The server's wall clock steps back one day.
    std::fs::write(&offset, "-1d\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let started = std::time::Instant::now();
    assert_eq!(
        server.get("/tb/sleep?ms=300").await,
        (200, "slept 300".into())
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Timeouts run on the monotonic clock: still 1 s, not a day more or less.
    let started = std::time::Instant::now();
    let (status, _) = server.get("/tb/spin").await;
    assert_eq!(status, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The rate quota's bucket does not jam when time runs backwards.
    for _ in 0..50 {
        assert_eq!(server.get("/tb/").await.0, 200);
    }
    // Events still flow.
    let (status, id) = server.submit("/tb/", &[], Vec::new()).await;
    assert_eq!(status, 202);
    server.wait_for_state(&id, "succeeded").await;

    // The logs show the jump (so this test ran with the clock moved) and
    // the timeout's duration measured on the monotonic clock.
    let logs = Server::eventually(Duration::from_secs(10), || async {
        let logs = server.gust_json(&["logs", "tb"]);
        logs.as_array()
            .cloned()
            .filter(|entries| !entries.is_empty())
    })
    .await
    .expect("the timed-out invocation is logged");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let day_ms = 24 * 3600 * 1000;
    let slow = logs
        .iter()
        .find(|e| e["outcome"]["kind"] == "timed_out")
        .unwrap_or_else(|| panic!("the timeout is logged: {logs:#?}"));
    let duration_us = slow["duration_us"].as_u64().unwrap();
    assert!(
        (900_000..4_000_000).contains(&duration_us),
        "{duration_us} µs"
    );
    let logged_at = slow["time_ms"].as_u64().unwrap();
    assert!(
        now_ms - logged_at > day_ms - 60_000,
        "the server's clock was a day behind: logged at {logged_at}, now {now_ms}"
    );
}

/// A small file system of its own (tmpfs), unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            return Some(Self(dir));
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the full-disk test mounts a tmpfs: CI runs as root"
        );
        eprintln!("SKIPPED: the full-disk test needs root to mount a small tmpfs");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_clearly_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount("128m") else {
        return;
    };
    let data = disk.0.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let testbed = guests().testbed.to_str().unwrap();
    let server = Server::start_in(&data, &["--min-free-disk-bytes", "8388608"]);
    server.deploy("tb", &guests().testbed, &[]);
    let kv_put = |key: &str, value: &str| {
        let request = server
            .http
            .put(format!("{}/v1/kv/b/keys/{key}", server.api))
            .body(value.to_string());
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    };
    let kv_get = |key: &str| {
        let request = server
            .http
            .get(format!("{}/v1/kv/b/keys/{key}", server.api));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(kv_put("keep", "safe").await.0, 200);

    // Fill the disk to the last byte.
    let filler_path = disk.0.path().join("filler");
    {
        let mut filler = std::fs::File::create(&filler_path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while filler.write_all(&chunk).is_ok() {}
        let mut byte = [0u8; 1];
        while filler.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Writes are refused with 507 and a message that says what to do…
    let (status, body) = kv_put("new", "value").await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body.contains("disk under the data directory is full"),
        "{body}"
    );
    let (status, body) = server.submit("/tb/", &[], Vec::new()).await;
    assert_eq!(status, 507, "{body}");
    let (status, body) = server.get("/tb/kv/set?bucket=b&key=guest").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("full"), "{body}");
    let out = server.gust(&["deploy", "other", testbed]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("full") || stderr.contains("No space left"),
        "{stderr}"
    );
    // …while reads and synchronous invocations go on.
    assert_eq!(kv_get("keep").await, "safe");
    assert_eq!(server.get("/tb/").await.0, 200);

    // Space frees: writes resume by themselves, nothing was lost.
    std::fs::remove_file(&filler_path).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kv_put("new", "value").await.0, 200);
    let (status, id) = server.submit("/tb/", &[], Vec::new()).await;
    assert_eq!(status, 202);
    server.wait_for_state(&id, "succeeded").await;
    server.deploy("other", &guests().hello, &[]);
    assert_eq!(server.stop(), Some(0));

    // The database is whole after a restart.
    let server = Server::start_in(&data, &["--min-free-disk-bytes", "8388608"]);
    let read = server
        .http
        .get(format!("{}/v1/kv/b/keys/keep", server.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(read, "safe");
    assert_eq!(server.get("/other/").await.0, 200);
    drop(server);
    drop(disk);
}

/// A module body of `functions` functions of `ops` dependent additions
/// each: a few bytes per operation to upload, far more work to compile.
fn heavy_module(functions: usize, ops: usize) -> String {
    let mut function = String::from("(func (param i32) (result i32) local.get 0 ");
    for _ in 0..ops {
        function.push_str("local.get 0 i32.mul local.get 0 i32.add ");
    }
    function.push_str(")\n");
    function.repeat(functions)
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_bombs_are_bounded_in_time_and_memory() {
    let deploy = |server: &Server, name: &str, bytes: Vec<u8>| {
        let request = server
            .http
            .post(format!("{}/v1/functions/{name}/versions", server.api))
            .header("content-type", "application/wasm")
            .body(bytes);
        async move {
            let started = std::time::Instant::now();
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap(), started.elapsed())
        }
    };
    // 6 MB that take seconds to compile, against a budget of one second.
    let server = Server::start_with(&["--compile-timeout-ms", "1000"]);
    let (status, body, took) = deploy(
        &server,
        "slow",
        handler_component(&heavy_module(100, 10_000)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("time budget of 1000 ms"), "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let hello = std::fs::read(&guests().hello).unwrap();
    let (status, body, _) = deploy(&server, "hello", hello.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.get("/hello/").await.0, 200);
    drop(server);

    // 12 MB whose compilation needs more memory than a 250 MB budget.
    let server = Server::start_with(&[
        "--compile-memory-bytes",
        "250000000",
        "--max-upload-bytes",
        "30000000",
    ]);
    let (status, body, _) = deploy(
        &server,
        "big",
        handler_component(&heavy_module(200, 10_000)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("memory budget"), "{body}");
    let (status, body, _) = deploy(&server, "hello", hello).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.get("/hello/").await.0, 200);
    // Nothing of the refused uploads was kept.
    assert_eq!(server.gust_json(&["ls"]).as_array().unwrap().len(), 1);
}

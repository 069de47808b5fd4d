//! Noisy neighbours and hostile clients held to their share: request
//! heads, connections, compilations and logs each have a limit, on by
//! default, that keeps one client or tenant from taking what others need.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Server, client_with_token, guests};

/// Sends `request` to `addr` (ignoring a write cut short) and returns all
/// that comes back before the connection closes or 5 s pass.
fn exchange(addr: &str, request: Vec<u8>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let _ = sending.join();
    String::from_utf8_lossy(&answer).into_owned()
}

fn request_with_header(bytes: usize) -> Vec<u8> {
    format!(
        "GET /tb/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(bytes)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_heads_over_64_kib_get_a_readable_431_on_both_listeners() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--public"]);
    let data = server.url.trim_start_matches("http://").to_string();
    let api = server.api.trim_start_matches("http://").to_string();
    for addr in [data.clone(), api] {
        for size in [70 << 10, 1 << 20] {
            let addr = addr.clone();
            let answer =
                tokio::task::spawn_blocking(move || exchange(&addr, request_with_header(size)))
                    .await
                    .unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 431 "),
                "a {size}-byte header: {}",
                answer.lines().next().unwrap_or("(connection closed)")
            );
            assert!(
                answer.contains("at most 65536 bytes"),
                "the client reads why: {answer}"
            );
        }
    }
    // Just under the limit is served.
    let answer =
        tokio::task::spawn_blocking(move || exchange(&data, request_with_header(60 << 10)))
            .await
            .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "{}",
        answer.lines().next().unwrap_or("")
    );
    drop(server);

    // The limit is the operator's to change.
    let server = Server::start_with(&["--max-header-bytes", "200000"]);
    server.deploy("tb", &guests().testbed, &["--public"]);
    let data = server.url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || exchange(&data, request_with_header(100_000)))
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "{}",
        answer.lines().next().unwrap_or("")
    );
}

/// Whether the server closed `stream` (within `wait`).
fn closed(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_hold_more_connections_than_its_cap() {
    let server = Server::start_with(&["--max-connections-per-address", "20"]);
    server.deploy("tb", &guests().testbed, &["--public"]);
    let data = server.url.trim_start_matches("http://").to_string();

    // 40 idle connections from one address: the 20 idlest are closed.
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(&data).unwrap());
        std::thread::sleep(Duration::from_millis(5));
    }
    let states: Vec<bool> = tokio::task::spawn_blocking(move || {
        idle.iter_mut()
            .map(|s| closed(s, Duration::from_millis(300)))
            .collect()
    })
    .await
    .unwrap();
    assert!(
        states[..20].iter().all(|&c| c),
        "the oldest idle ones are closed: {states:?}"
    );
    assert!(
        states[20..].iter().all(|&c| !c),
        "the newest stay open: {states:?}"
    );

    // 20 connections busy with requests: a 21st is refused, none is cut.
    let mut busy = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&data).unwrap();
        stream
            .write_all(b"GET /tb/sleep?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = tokio::task::spawn_blocking({
        let data = data.clone();
        move || exchange(&data, b"GET /tb/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
    })
    .await
    .unwrap();
    assert_eq!(
        refused, "",
        "a connection past the cap is closed unanswered"
    );
    // The control API (its own listener) answers meanwhile.
    assert_eq!(server.gust_json(&["ls"]).as_array().unwrap().len(), 1);
    let answers = tokio::task::spawn_blocking(move || {
        busy.into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for answer in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "busy ones finish: {answer}"
        );
    }
    // Those connections are idle now; a new client takes the place of one.
    assert_eq!(server.get("/tb/").await, (200, "testbed ok".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_returns_after_thousands_of_connections_close() {
    let server = Server::start_with(&["--max-connections-per-address", "5000"]);
    server.deploy("tb", &guests().testbed, &["--public"]);
    assert_eq!(server.get("/tb/").await.0, 200);
    let data = server.url.trim_start_matches("http://").to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    // Each sends part of a head, so the server holds a read buffer for it.
    let streams = tokio::task::spawn_blocking(move || {
        (0..3000)
            .map(|_| {
                let mut s = TcpStream::connect(&data).unwrap();
                let _ =
                    s.write_all(format!("GET /tb/ HTTP/1.1\r\nX: {}", "y".repeat(6000)).as_bytes());
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = server.rss_kib();
    drop(streams);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    eprintln!("RSS before {before} KiB, with 3000 connections {during} KiB, after {after} KiB");
    assert!(
        after < before + (during.saturating_sub(before)) / 3 + 4096,
        "memory came back: before {before} KiB, during {during} KiB, after {after} KiB"
    );
    assert_eq!(server.get("/tb/").await.0, 200);
}

/// A component whose handler does nothing, with `extra` in its core module.
fn component(extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $response-out))
  (core module $m
    {extra}
    (func (export "handle") (param i32 i32)))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $response-out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))"#
    ))
    .unwrap()
}

/// A module body that takes long to compile; `salt` makes each one's digest its own.
fn heavy(salt: usize) -> String {
    let mut function = String::from("(func (param i32) (result i32) local.get 0 ");
    for _ in 0..2_500 {
        function.push_str("local.get 0 i32.mul local.get 0 i32.add ");
    }
    function.push_str(")\n");
    format!(
        "{}(func (result i32) i32.const {salt})",
        function.repeat(100)
    )
}

async fn deploy_as(
    server: &Server,
    client: &reqwest::Client,
    name: &str,
    bytes: Vec<u8>,
) -> (u16, Duration) {
    let started = Instant::now();
    let response = client
        .post(format!("{}/v1/functions/{name}/versions", server.api))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let _ = response.text().await;
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_slow_deploys_do_not_hold_back_anothers() {
    let server = Server::start();
    server.gust_json(&["tenant", "create", "noisy"]);
    server.gust_json(&["tenant", "create", "quiet"]);
    let noisy = client_with_token(&server.token_for("noisy", "deployer", &[]));
    let quiet = client_with_token(&server.token_for("quiet", "deployer", &[]));
    // How long one slow compile takes here.
    let (status, alone) = deploy_as(&server, &noisy, "slow0", component(&heavy(0))).await;
    assert_eq!(status, 201);
    let mut slow = Vec::new();
    for n in 1..=3 {
        let (server_api, noisy) = (server.api.clone(), noisy.clone());
        let bytes = component(&heavy(n));
        slow.push(tokio::spawn(async move {
            noisy
                .post(format!("{server_api}/v1/functions/slow{n}/versions"))
                .header("content-type", "application/wasm")
                .body(bytes)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, took) = deploy_as(&server, &quiet, "small", component("(memory 1)")).await;
    assert_eq!(status, 201);
    eprintln!("one slow compile {alone:?}; the other tenant's small deploy {took:?} behind three");
    // Before: it waited behind two of the noisy tenant's compiles at least.
    assert!(
        took < alone * 3 / 4,
        "the small deploy took {took:?}; one slow compile takes {alone:?}"
    );
    for deploy in slow {
        assert_eq!(deploy.await.unwrap().unwrap(), 201);
    }
}

/// Bytes under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_printing_heavily_cannot_grow_the_data_directory_past_its_limits() {
    let server = Server::start_with(&[
        "--log-rate-bytes",
        "100000",
        "--log-burst-bytes",
        "200000",
        "--log-max-bytes",
        "150000",
    ]);
    server.deploy("tb", &guests().testbed, &["--public"]);
    assert_eq!(server.get("/tb/").await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = server.data_dir().join("gust.redb");
    let before = std::fs::metadata(&db).unwrap().len();
    // 400 requests of 60 KiB of output each: 24 MB offered in about 2 s.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url) = (server.http.clone(), server.url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let r = http
                    .get(format!("{url}/tb/flood?kb=60"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200, "never an error to the guest");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grew = std::fs::metadata(&db).unwrap().len().saturating_sub(before);
    eprintln!(
        "400 floods in {took:?}: the database grew {grew} bytes; data directory {} bytes",
        dir_bytes(server.data_dir())
    );
    // Rate: at most burst + rate × time went in; size: 150 kB are kept.
    assert!(grew < 8 << 20, "the database grew by {grew} bytes");
    let dropped = server.metric("gust_logs_dropped_total").await;
    assert!(
        dropped >= 300,
        "records over the rate are dropped and counted: {dropped}"
    );
    // The stream keeps its newest 150 kB: the oldest records are gone.
    let page = server.api_json("/v1/functions/tb/logs?limit=1000").await;
    let entries = page["entries"].as_array().unwrap();
    let kept: usize = entries.iter().map(|e| e.to_string().len()).sum();
    assert!(!entries.is_empty(), "the newest logs are kept");
    assert!(
        kept < 200_000,
        "{} entries, {kept} bytes kept",
        entries.len()
    );
    let oldest = server.api_json("/v1/functions/tb/logs?limit=1").await;
    let first = oldest["next"].as_u64().unwrap();
    assert!(
        first > 1,
        "the oldest record was pruned; the first kept is {first}"
    );
}

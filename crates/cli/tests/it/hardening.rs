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

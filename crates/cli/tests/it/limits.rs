//! Limits that are on by default: memory, body size, output, header timeout.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::harness::{Server, guests};

#[tokio::test(flavor = "multi_thread")]
async fn memory_past_the_limit_fails_cleanly_and_server_memory_stays_bounded() {
    let server = Server::start();
    server.deploy("small", &guests().testbed, &["--memory-mb", "32"]);
    let (status, body) = server.get("/small/grow?mb=64").await;
    assert_eq!(status, 500);
    assert!(body.contains("memory limit of 32 MiB"), "{body}");
    let (status, body) = server.get("/small/grow?mb=8").await;
    assert_eq!((status, body.as_str()), (200, "grew 8"));

    // The default limit (128 MiB) holds too.
    server.deploy("default", &guests().testbed, &[]);
    let (status, _) = server.get("/default/grow?mb=200").await;
    assert_eq!(status, 500);

    // Many invocations that each touch 24 MiB leave the server's memory bounded.
    let before = server.rss_kib();
    for _ in 0..4 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let http = server.http.clone();
            let url = format!("{}/small/grow?mb=24", server.url);
            tasks.push(tokio::spawn(async move {
                http.get(url).send().await.unwrap().status().as_u16()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 200);
        }
    }
    let after = server.rss_kib();
    assert!(
        after < before + 256 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_gets_413() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--max-body-bytes", "1000"]);
    let post = |body: reqwest::Body| {
        let http = server.http.clone();
        let url = format!("{}/tb/body", server.url);
        async move {
            let response = http.post(url).body(body).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = post(vec![1u8; 500].into()).await;
    assert_eq!((status, body.as_str()), (200, "body 500"));
    // Declared too large: refused before the guest runs.
    let (status, body) = post(vec![1u8; 2000].into()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("1000 bytes"));
    // Streamed without a length: cut off as it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![2u8; 600])).collect();
    let stream = reqwest::Body::wrap_stream(futures_stream(chunks));
    let (status, _) = post(stream).await;
    assert_eq!(status, 413);

    // The default limit is 6 MiB. A client that waits for `100 Continue`
    // gets the answer before it sends the body.
    server.deploy("default", &guests().testbed, &["--public"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let head = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let request = format!(
            "POST /default/body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            7 << 20
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    ChunkStream(chunks.into_iter())
}

struct ChunkStream(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_capped_per_invocation() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--max-output-bytes", "2048"]);
    let (status, _) = server.get("/tb/flood?kb=64").await;
    assert_eq!(status, 200);
    let mut entry = serde_json::Value::Null;
    for _ in 0..50 {
        if let Some(first) = server.gust_json(&["logs", "tb"]).get(0) {
            entry = first.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(entry["truncated"], true);
    assert_eq!(entry["stdout"].as_str().unwrap().len(), 2048);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = Server::start_with(&["--header-read-timeout-ms", "500"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let result = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        (started.elapsed(), buf)
    })
    .await
    .unwrap();
    let (waited, answer) = result;
    assert!(
        waited < Duration::from_secs(3),
        "the server held the connection for {waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_gets_408() {
    let server = Server::start_with(&["--body-idle-timeout-ms", "500"]);
    // Public: the raw request below carries no token.
    server.deploy("tb", &guests().testbed, &["--public"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let (waited, head) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(
                b"POST /tb/body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
            )
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap_or(0);
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_concurrency_limit_requests_get_503_with_retry_after() {
    let server = Server::start_with(&["--max-in-flight", "2"]);
    server.deploy("tb", &guests().testbed, &[]);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let http = server.http.clone();
            let url = format!("{}/tb/sleep?ms=1500", server.url);
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = server
        .http
        .get(format!("{}/tb/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    for task in slow {
        assert_eq!(task.await.unwrap(), 200);
    }
    // Capacity comes back once they finish.
    let (status, _) = server.get("/tb/").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_at_its_concurrency_limit_queues_then_answers_429() {
    let server = Server::start();
    let limit = [
        "--max-concurrency",
        "2",
        "--queue-depth",
        "2",
        "--queue-wait-ms",
        "400",
    ];
    server.deploy("tb", &guests().testbed, &limit);
    server.deploy("other", &guests().testbed, &[]);
    // Within the limit: no error, however many come one after another.
    for _ in 0..5 {
        assert_eq!(server.get("/tb/").await.0, 200);
    }
    // Eight at once, each running 900 ms: two run, two wait 400 ms and are
    // refused, four are refused at once.
    let started = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let http = server.http.clone();
            let url = format!("{}/tb/sleep?ms=900", server.url);
            tokio::spawn(async move {
                // Stagger slightly so the first two surely take the places.
                tokio::time::sleep(Duration::from_millis(if i < 2 { 0 } else { 100 })).await;
                let response = http.get(url).send().await.unwrap();
                let status = response.status().as_u16();
                let retry = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (
                    status,
                    retry,
                    response.text().await.unwrap(),
                    started.elapsed(),
                )
            })
        })
        .collect();
    // Meanwhile another function of the tenant is served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.get("/other/").await.0, 200);
    let mut served = 0;
    let mut waited = 0;
    let mut at_once = 0;
    for call in calls {
        let (status, retry, body, elapsed) = call.await.unwrap();
        match status {
            200 => served += 1,
            429 => {
                assert_eq!(retry.as_deref(), Some("1"), "429 comes with Retry-After");
                assert!(body.contains("function `tb`"), "{body}");
                assert!(body.contains("max_concurrency"), "{body}");
                if body.contains("queue_wait_ms") {
                    waited += 1;
                    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
                } else {
                    at_once += 1;
                    assert!(body.contains("queue_depth"), "{body}");
                }
                // Refused in milliseconds, not after the 900 ms a place
                // takes to free (with room for a loaded machine).
                assert!(
                    elapsed < Duration::from_millis(2000),
                    "refused in {elapsed:?}"
                );
            }
            other => panic!("{other}: {body}"),
        }
    }
    // Usually 2 / 2 / 4; a request that a loaded machine starts late may
    // find the queue empty again and wait in turn.
    assert_eq!(served, 2);
    assert_eq!(waited + at_once, 6);
    assert!(
        waited >= 2 && at_once >= 2,
        "{waited} waited, {at_once} refused at once"
    );
    // Places free again once they finish.
    assert_eq!(server.get("/tb/").await.0, 200);
    // A bad limit is refused at deploy, naming it.
    let bad = server.gust(&[
        "deploy",
        "tb",
        guests().testbed.to_str().unwrap(),
        "--max-concurrency",
        "0",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_concurrency"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_keeps_its_share_of_the_node_and_takes_no_more() {
    let server = Server::start_with(&["--max-in-flight", "10"]);
    server.deploy(
        "vip",
        &guests().testbed,
        &["--reserved-concurrency", "7", "--queue-depth", "0"],
    );
    // 7 reserved and a tenth of 10 kept shared: at most 2 more.
    let bad = server.gust(&[
        "deploy",
        "greedy",
        guests().testbed.to_str().unwrap(),
        "--reserved-concurrency",
        "3",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("vip 7") && err.contains("at most 2"), "{err}");
    server.deploy("other", &guests().testbed, &["--reserved-concurrency", "2"]);
    // A new version replaces its own reservation rather than adding to it.
    server.deploy(
        "vip",
        &guests().testbed,
        &["--reserved-concurrency", "7", "--queue-depth", "0"],
    );
    server.deploy("shared", &guests().testbed, &[]);

    let slow = |path: &str, n: usize| -> Vec<_> {
        (0..n)
            .map(|_| {
                let http = server.http.clone();
                let url = format!("{}/{path}/sleep?ms=1500", server.url);
                tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
            })
            .collect()
    };
    // The one shared slot is taken: more unreserved work gets 503 ...
    let busy = slow("shared", 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.get("/shared/").await.0, 503);
    // ... while the reserved function still runs on its own slots, up to
    // its reservation (then it queues and gets 429 like max_concurrency).
    let vip = slow("vip", 7);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let over = server
        .http
        .get(format!("{}/vip/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    assert!(over.text().await.unwrap().contains("reserved_concurrency"));
    for task in busy.into_iter().chain(vip) {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(server.get("/shared/").await.0, 200);
}

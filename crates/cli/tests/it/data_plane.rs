//! Function traffic: routing, failures and their status codes, concurrency,
//! outbound HTTP policy.

use std::time::{Duration, Instant};

use crate::harness::{Server, guests};

#[tokio::test(flavor = "multi_thread")]
async fn trap_gets_500_and_the_next_request_succeeds() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let (status, body) = server.get("/tb/trap").await;
    assert_eq!(status, 500);
    assert!(
        body.contains("unreachable"),
        "the body names the trap: {body}"
    );
    assert!(
        !body.contains("/root") && !body.contains(".rs"),
        "no host internals: {body}"
    );
    let (status, body) = server.get("/tb/").await;
    assert_eq!((status, body.as_str()), (200, "testbed ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_function_is_404() {
    let server = Server::start();
    let (status, body) = server.get("/nope/anything").await;
    assert_eq!(status, 404);
    assert!(body.contains("nope"), "{body}");
    let response = server
        .http
        .get(format!("{}/nope", server.url))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_invocations_all_succeed() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = server.http.clone();
        // Each request sleeps so all 200 are in flight together.
        let url = format!("{}/tb/sleep?ms=300&i={i}", server.url);
        tasks.push(tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 300"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_gets_504_while_other_functions_answer() {
    let server = Server::start();
    server.deploy("spin", &guests().testbed, &["--timeout-ms", "2000"]);
    server.deploy("hello", &guests().hello, &[]);
    let started = Instant::now();
    let spinning = {
        let http = server.http.clone();
        let url = format!("{}/spin/spin", server.url);
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    // Two loops at once on a 2-core machine, and hello still answers quickly.
    let spinning2 = {
        let http = server.http.clone();
        let url = format!("{}/spin/spin", server.url);
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let asked = Instant::now();
        let (status, _) = server.get("/hello/").await;
        assert_eq!(status, 200);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "hello took {:?}",
            asked.elapsed()
        );
    }
    let (status, body) = spinning.await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_millis(3000),
        "took {took:?}"
    );
    assert_eq!(spinning2.await.unwrap(), 504);
    // A guest waiting on the host (not computing) is stopped too…
    let (status, _) = server.get("/spin/sleep?ms=10000").await;
    assert_eq!(status, 504);
    // …and so is one that loops through host calls (the clock, every turn).
    let started = Instant::now();
    let (status, body) = server.get("/spin/busy").await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_millis(3000));
    let (status, body) = server.get("/spin/busy?ms=50").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_denied_unless_allowed() {
    let server = Server::start();
    server.deploy("closed", &guests().testbed, &[]);
    let api_host = server.api.trim_start_matches("http://").to_string();
    let target = format!("/closed/fetch?url=http://{api_host}/healthz");
    let (status, body) = server.get(&target).await;
    assert_eq!(status, 200);
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // `*` means any public host: not this machine.
    server.deploy("star", &guests().testbed, &["--allow-host", "*"]);
    let (_, body) = server.get(&target.replace("/closed/", "/star/")).await;
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // Only an explicit grant by an admin reaches this machine.
    server.deploy(
        "open",
        &guests().testbed,
        &["--allow-internal-host", "127.0.0.1"],
    );
    let (status, body) = server.get(&target.replace("/closed/", "/open/")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "status 200");
}

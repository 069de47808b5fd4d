//! Restarts and shutdown.

use std::time::Duration;

use crate::harness::{Server, guests};

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_functions_without_recompiling() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("hello", &guests().hello, &[]);
    server.deploy("tb", &guests().testbed, &[]);
    assert_eq!(server.metric("gust_compilations_total").await, 2);
    assert_eq!(server.stop(), Some(0));

    let server = Server::start_in(dir.path(), &[]);
    let (status, body) = server.get("/hello/").await;
    assert_eq!((status, body.as_str()), (200, "Hello from Gust!\n"));
    let (status, _) = server.get("/tb/").await;
    assert_eq!(status, 200);
    assert_eq!(server.metric("gust_compilations_total").await, 0);
    assert_eq!(server.metric("gust_artifact_loads_total").await, 2);
    let listed = server.gust_json(&["ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_slow_requests_finish() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let http = server.http.clone();
        let url = format!("{}/tb/sleep?ms=1500", server.url);
        tasks.push(tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let url = server.url.clone();
    let exit = tokio::task::spawn_blocking(move || server.stop());
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 1500"));
    }
    assert_eq!(exit.await.unwrap(), Some(0));
    // Once stopped, nothing listens.
    assert!(reqwest::get(format!("{url}/tb/")).await.is_err());
}

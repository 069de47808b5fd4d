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

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_event_attempts_finish_and_delivers_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("tb", &guests().testbed, &["--concurrency", "4"]);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, id) = server.submit("/tb/sleep?ms=1500", &[], Vec::new()).await;
        assert_eq!(status, 202, "{id}");
        ids.push(id);
    }
    // All four running, then the stop.
    let running = Server::eventually(Duration::from_secs(10), || async {
        let mut n = 0;
        for id in &ids {
            let record = server.api_json(&format!("/v1/invocations/{id}")).await;
            n += usize::from(record["state"] == "running");
        }
        (n == ids.len()).then_some(())
    })
    .await;
    assert!(running.is_some(), "the four attempts never ran together");
    let exit = tokio::task::spawn_blocking(move || server.stop());
    assert_eq!(exit.await.unwrap(), Some(0));
    // After a restart: each succeeded in its one attempt, none aborted,
    // and none runs again.
    let server = Server::start_in(dir.path(), &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = server.gust(&["usage", "--export", "jsonl", "--from", "0"]);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["function"] == "tb" && r["trigger"] == "event")
        .collect();
    for id in &ids {
        let attempts: Vec<(u64, &str)> = records
            .iter()
            .filter(|r| r["invocation_id"] == id.as_str())
            .map(|r| {
                (
                    r["attempt"].as_u64().unwrap(),
                    r["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(attempts, vec![(1, "success")], "{id}: {records:?}");
        let record = server.api_json(&format!("/v1/invocations/{id}")).await;
        assert_eq!(record["state"], "succeeded", "{record}");
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_data_directory_from_a_newer_gust_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Server::start_in(dir.path(), &[]).stop(), Some(0));
    // What a later Gust would leave: the same file, a higher schema version.
    let db_path = dir.path().join("gust.redb");
    let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    {
        let db = redb::Database::open(&db_path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(meta)
            .unwrap()
            .insert("schema.version", 999)
            .unwrap();
        txn.commit().unwrap();
    }
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("written by a newer Gust (schema 999")
            && stderr.contains("upgrade gust, or start with another --data-dir"),
        "{stderr}"
    );
    // Nothing was migrated or stamped over it.
    let db = redb::Database::open(&db_path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let version = txn.open_table(meta).unwrap().get("schema.version").unwrap();
    assert_eq!(version.map(|v| v.value()), Some(999));
}

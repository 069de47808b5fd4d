//! Retention: what is past its age goes, in the background; what is
//! recent, and every version an alias may serve, stays.

use std::time::Duration;

use crate::harness::{Server, guests};

/// Ages of seconds, passes twice a second: what is made after the old
/// ones passed their age is checked well within its own. Usage records
/// are asked to go after 6 s but stay: never within this month or the
/// last (budgets and invoices are rebuilt from them).
const FAST: &[&str] = &[
    "--retain-statuses",
    "15s",
    "--retain-dead-letters",
    "15s",
    "--retain-usage",
    "6s",
    "--retain-versions",
    "1",
    "--retention-every",
    "500ms",
];

async fn usage_records(server: &Server) -> Vec<serde_json::Value> {
    let text = server
        .http
        .get(format!(
            "{}/v1/usage/records?format=jsonl&from_ms=0",
            server.api
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn status(server: &Server, id: &str) -> u16 {
    server
        .http
        .get(format!("{}/v1/invocations/{id}", server.api))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn dead_letters(server: &Server) -> Vec<String> {
    server
        .gust_json(&["dlq", "tb"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["invocation_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_past_their_age_go_recent_ones_stay_and_served_versions_keep_their_components() {
    let server = Server::start_with(FAST);
    server.deploy(
        "tb",
        &guests().testbed,
        &["--max-attempts", "1", "--backoff-ms", "100"],
    );
    // The old ones: a finished invocation, a dead letter, a request's usage.
    let (_, old_ok) = server.submit("/tb/", &[], Vec::new()).await;
    let (_, old_dead) = server.submit("/tb/trap", &[], Vec::new()).await;
    server.wait_for_state(&old_ok, "succeeded").await;
    server.wait_for_state(&old_dead, "dead_lettered").await;
    assert_eq!(server.get("/tb/").await.0, 200);
    // Versions: hello (v1), echo (v2), then the testbed (v3): `live`
    // serves v3 and may go back to v2; v1 is past the one kept and nothing
    // refers to it.
    server.deploy("f", &guests().hello, &[]);
    server.deploy("f", &guests().echo, &[]);
    server.deploy("f", &guests().testbed, &[]);
    let old_before = crate::harness::now_ms();
    tokio::time::sleep(Duration::from_secs(16)).await;

    // The recent ones, made after the old ones passed their age: they stay.
    let (_, new_ok) = server.submit("/tb/", &[], Vec::new()).await;
    let (_, new_dead) = server.submit("/tb/trap", &[], Vec::new()).await;
    server.wait_for_state(&new_ok, "succeeded").await;
    server.wait_for_state(&new_dead, "dead_lettered").await;
    assert_eq!(status(&server, &new_ok).await, 200);
    assert_eq!(status(&server, &new_dead).await, 200);

    // Gone: the old status records and the old dead letter.
    Server::eventually(Duration::from_secs(8), || async {
        let gone = status(&server, &old_ok).await == 404
            && status(&server, &old_dead).await == 404
            && dead_letters(&server) == std::slice::from_ref(&new_dead);
        gone.then_some(())
    })
    .await
    .expect("old statuses and dead letters removed, the recent ones kept");
    // Kept: usage records of this month, even past the age asked.
    assert!(
        usage_records(&server)
            .await
            .iter()
            .any(|r| r["start_ms"].as_u64().unwrap() < old_before),
        "this month's usage stays"
    );

    // Versions: v1 removed with its component; v2 (rollback's) and v3 kept.
    let versions: Vec<u64> = server
        .gust_json(&["versions", "f"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    assert!(
        server
            .metric("gust_retention_pruned_total{kind=\"blobs\"}")
            .await
            >= 1
    );
    assert_eq!(
        server.artifact_files(),
        2,
        "testbed's and echo's artifacts stay"
    );
    // The one rollback may go to still runs.
    let rolled = server.gust_json(&["rollback", "f"]);
    assert_eq!(rolled["version"], 2, "{rolled}");
    let (code, body) = server.get("/f/echo-me").await;
    assert_eq!(code, 200);
    assert!(body.contains("echo-me"), "{body}");

    for kind in ["statuses", "dead_letters", "versions"] {
        let n = server
            .metric(&format!("gust_retention_pruned_total{{kind=\"{kind}\"}}"))
            .await;
        assert!(n >= 1, "{kind}: {n}");
    }
    assert_eq!(
        server
            .metric("gust_retention_pruned_total{kind=\"usage\"}")
            .await,
        0
    );
    assert!(server.metric("gust_data_dir_bytes").await > 0);
}

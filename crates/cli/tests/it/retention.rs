//! Retention: what is past its age goes, in the background; what is
//! recent, and every version an alias may serve, stays.

use std::time::Duration;

use crate::harness::{Server, guests};

/// Ages of a few seconds, passes twice a second: what is made after the
/// old ones pass their age is checked well within it.
const FAST: &[&str] = &[
    "--retain-statuses",
    "6s",
    "--retain-dead-letters",
    "6s",
    "--retain-usage",
    "6s",
    "--retain-versions",
    "1",
    "--retention-every",
    "500ms",
];

fn cwasm_files(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir().join("artifacts"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".cwasm")
        })
        .count()
}

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
    // Versions: hello (v1), echo (v2), hello again would share bytes, so
    // the third is the testbed's own: `live` serves v3 and may go back to
    // v2; v1 is past the one kept and nothing refers to it.
    server.deploy("f", &guests().hello, &[]);
    server.deploy("f", &guests().echo, &[]);
    server.deploy("f", &guests().testbed, &[]);
    let old_before = crate::harness::now_ms();
    tokio::time::sleep(Duration::from_secs(7)).await;

    // The recent ones, made after the old ones passed their age.
    let (_, new_ok) = server.submit("/tb/", &[], Vec::new()).await;
    let (_, new_dead) = server.submit("/tb/trap", &[], Vec::new()).await;
    server.wait_for_state(&new_ok, "succeeded").await;
    server.wait_for_state(&new_dead, "dead_lettered").await;
    let fresh_ms = crate::harness::now_ms();
    assert_eq!(server.get("/tb/").await.0, 200);
    assert!(
        fresh_ms - old_before < 12_000,
        "the old ones took too long to make"
    );

    // Gone: the old status records, the old dead letter, the old usage.
    let status = |id: String| {
        let server = &server;
        async move {
            server
                .http
                .get(format!("{}/v1/invocations/{id}", server.api))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    Server::eventually(Duration::from_secs(4), || async {
        (status(old_ok.clone()).await == 404 && status(old_dead.clone()).await == 404).then_some(())
    })
    .await
    .expect("old statuses removed");
    let letters: Vec<String> = server
        .gust_json(&["dlq", "tb"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["invocation_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        letters,
        std::slice::from_ref(&new_dead),
        "only the recent dead letter"
    );
    Server::eventually(Duration::from_secs(4), || async {
        let records = usage_records(&server).await;
        records
            .iter()
            .all(|r| r["start_ms"].as_u64().unwrap() >= old_before)
            .then_some(())
    })
    .await
    .expect("old usage records removed");

    // Kept: the recent ones.
    assert_eq!(status(new_ok.clone()).await, 200);
    assert_eq!(status(new_dead.clone()).await, 200);
    // (Indexed within a second of the request.)
    Server::eventually(Duration::from_secs(2), || async {
        usage_records(&server)
            .await
            .iter()
            .any(|r| r["function"] == "tb" && r["start_ms"].as_u64().unwrap() >= fresh_ms)
            .then_some(())
    })
    .await
    .expect("the recent request's usage stays");

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
        cwasm_files(&server),
        2,
        "testbed's and echo's artifacts stay"
    );
    // The one rollback may go to still runs.
    let rolled = server.gust_json(&["rollback", "f"]);
    assert_eq!(rolled["version"], 2, "{rolled}");
    let (code, body) = server.get("/f/echo-me").await;
    assert_eq!(code, 200);
    assert!(body.contains("echo-me"), "{body}");

    for kind in ["statuses", "dead_letters", "usage", "versions"] {
        let n = server
            .metric(&format!("gust_retention_pruned_total{{kind=\"{kind}\"}}"))
            .await;
        assert!(n >= 1, "{kind}: {n}");
    }
    assert!(server.metric("gust_data_dir_bytes").await > 0);
}

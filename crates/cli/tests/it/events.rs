//! Asynchronous invocations: one envelope, one delivery policy, dead
//! letters, redrive, and nothing lost to a crash.

use std::time::{Duration, Instant};

use crate::harness::{Server, guests, now_ms};

async fn wait_for_state(server: &Server, id: &str, state: &str) -> serde_json::Value {
    server.wait_for_state(id, state).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_is_accepted_then_delivered_as_a_cloudevent() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let (status, id) = server
        .submit(
            "/tb/headers",
            &[
                ("ce-type", "com.example.thing"),
                ("ce-source", "/tests"),
                ("content-type", "text/plain"),
            ],
            b"payload".to_vec(),
        )
        .await;
    assert_eq!(status, 202, "{id}");
    let record = wait_for_state(&server, &id, "succeeded").await;
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["last_status"], 200);

    // The function saw the CloudEvents binary-mode headers and Gust's own.
    let logs = Server::eventually(Duration::from_secs(10), || async {
        let entries = server.gust_json(&["logs", "tb"]);
        entries.as_array().unwrap().first().cloned()
    })
    .await
    .expect("a log entry");
    let printed = logs["stdout"].as_str().unwrap();
    for expected in [
        "ce-specversion: 1.0",
        "ce-type: com.example.thing",
        "ce-source: /tests",
        &format!("ce-id: {id}"),
        &format!("gust-invocation-id: {id}"),
        "gust-attempt: 1",
        "content-type: text/plain",
    ] {
        assert!(
            printed.contains(expected),
            "missing `{expected}` in:\n{printed}"
        );
    }
    assert!(printed.contains("ce-time: 20"), "{printed}");
    assert_eq!(logs["invocation_id"], id.as_str());

    let listed = server.gust_json(&["invocations", "tb"]);
    assert_eq!(listed[0]["invocation_id"], id.as_str());
    let one = server.gust_json(&["invocation", &id]);
    assert_eq!(one["state"], "succeeded");

    // The control API accepts events too.
    let response = server
        .http
        .post(format!(
            "{}/v1/functions/tb/invocations?path=/print",
            server.api
        ))
        .header("ce-type", "com.example.api")
        .body("from the API")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let api_id = accepted["invocation_id"].as_str().unwrap().to_string();
    assert_ne!(api_id, id);
    wait_for_state(&server, &api_id, "succeeded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_submissions_are_refused_not_dropped() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let (status, _) = server.submit("/nope/", &[], b"x".to_vec()).await;
    assert_eq!(status, 404);
    let response = server
        .http
        .post(format!("{}/v1/functions/nope/invocations", server.api))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = server
        .http
        .post(format!("{}/v1/functions/tb/invocations", server.api))
        .body(vec![0u8; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(server.submit_head("/tb/", (1 << 20) + 1).await, 413);
    // The function's own body limit applies to its events too.
    server.deploy("small", &guests().testbed, &["--max-body-bytes", "100"]);
    assert_eq!(server.submit_head("/small/", 200).await, 413);
    let listed = server.gust_json(&["invocations", "tb"]);
    assert_eq!(listed, serde_json::json!([]));
    assert_eq!(server.gust(&["invocation", "nope"]).status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_with_backoff_then_dead_lettered_and_redriven() {
    let server = Server::start();
    server.deploy(
        "flaky",
        &guests().testbed,
        &["--max-attempts", "3", "--backoff-ms", "300"],
    );
    let (status, id) = server.submit("/flaky/trap", &[], Vec::new()).await;
    assert_eq!(status, 202);
    let record = wait_for_state(&server, &id, "dead_lettered").await;
    assert_eq!(record["attempts"], 3);
    assert_eq!(record["last_status"], 500);
    assert!(
        record["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );

    // Three attempts, spaced per the policy: ≥ 150 ms (half of 300, the
    // jitter's floor), then ≥ 300 ms.
    let entries = Server::eventually(Duration::from_secs(10), || async {
        let entries = server.gust_json(&["logs", "flaky"]);
        let entries = entries.as_array().unwrap().clone();
        (entries.len() == 3).then_some(entries)
    })
    .await
    .expect("three attempts logged");
    let times: Vec<u64> = entries
        .iter()
        .map(|e| e["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times[1] - times[0] >= 150, "{times:?}");
    assert!(times[2] - times[1] >= 300, "{times:?}");
    assert!(times[2] - times[0] < 3000, "{times:?}");

    let letters = server.gust_json(&["dlq", "flaky"]);
    assert_eq!(letters[0]["invocation_id"], id.as_str());
    assert_eq!(letters[0]["reason"], "attempts_exhausted");

    // Fix the function, redrive: delivered, and the dead-letter queue is empty.
    server.deploy("flaky", &guests().hello, &[]);
    let redriven = server.gust_json(&["dlq", "flaky", "--redrive"]);
    assert_eq!(redriven["redriven"], 1);
    wait_for_state(&server, &id, "succeeded").await;
    assert_eq!(server.gust_json(&["dlq", "flaky"]), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_is_dead_lettered_at_once_and_does_not_block_others() {
    let server = Server::start();
    server.deploy(
        "tb",
        &guests().testbed,
        &["--max-attempts", "5", "--backoff-ms", "100"],
    );
    // The testbed answers 404 on unknown paths: a permanent failure.
    let (_, bad) = server.submit("/tb/no-such-path", &[], Vec::new()).await;
    let (_, poison) = server.submit("/tb/trap", &[], Vec::new()).await;
    let (_, good) = server.submit("/tb/", &[], Vec::new()).await;
    let record = wait_for_state(&server, &bad, "dead_lettered").await;
    assert_eq!(record["attempts"], 1);
    wait_for_state(&server, &good, "succeeded").await;
    let poisoned = wait_for_state(&server, &poison, "dead_lettered").await;
    assert_eq!(poisoned["attempts"], 5);
    let reasons: Vec<String> = server
        .gust_json(&["dlq", "tb"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.contains(&"permanent_failure".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"attempts_exhausted".to_string()),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_backlog_loses_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("sink", &guests().testbed, &["--concurrency", "2"]);
    const EVENTS: usize = 3000;
    let mut ids = Vec::with_capacity(EVENTS);
    let mut tasks = Vec::new();
    for chunk in 0..10 {
        let url = server.url.clone();
        let http = server.http.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EVENTS / 10 {
                let response = http
                    .post(format!("{url}/sink/sleep?ms=5&n={chunk}-{i}"))
                    .header("Gust-Invocation-Type", "Event")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let body: serde_json::Value = response.json().await.unwrap();
                ids.push(body["invocation_id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    // Every event was acknowledged; most are still queued or running.
    server.kill9();

    let server = Server::start_in(dir.path(), &[]);
    let mut lost = Vec::new();
    let mut duplicates = 0;
    let _ = Server::eventually(Duration::from_secs(120), || async {
        let records = server
            .api_json("/v1/functions/sink/invocations?limit=10000")
            .await;
        let records = records.as_array().unwrap().clone();
        let succeeded = records.iter().filter(|r| r["state"] == "succeeded").count();
        (succeeded == EVENTS).then_some(())
    })
    .await;
    let records = server
        .api_json("/v1/functions/sink/invocations?limit=10000")
        .await;
    let records = records.as_array().unwrap().clone();
    for id in &ids {
        match records.iter().find(|r| r["invocation_id"] == id.as_str()) {
            Some(r) if r["state"] == "succeeded" => {
                if r["attempts"].as_u64().unwrap_or(0) > 1 {
                    duplicates += 1;
                }
            }
            _ => lost.push(id.clone()),
        }
    }
    println!(
        "kill -9 checker: accepted {EVENTS}, lost {}, delivered more than once {duplicates}",
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} events: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_once_per_tick() {
    let server = Server::start();
    server.deploy("tick", &guests().testbed, &[]);
    let bad = server.gust(&["schedule", "add", "tick", "61 * * * * *"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("second field `61`"));
    let bad_tz = server.gust(&[
        "schedule",
        "add",
        "tick",
        "* * * * * *",
        "--tz",
        "Mars/Olympus",
    ]);
    assert_eq!(bad_tz.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_tz.stderr).contains("unknown time zone `Mars/Olympus`"));
    // A tz database name: 09:00 in New York is 13:00 or 14:00 UTC.
    let named = server.gust_json(&[
        "schedule",
        "add",
        "tick",
        "0 0 9 * * *",
        "--tz",
        "America/New_York",
        "--id",
        "ny",
    ]);
    let next_ms = named["next_ms"].as_u64().unwrap();
    let hour_utc = next_ms / 3_600_000 % 24;
    assert!(
        hour_utc == 13 || hour_utc == 14,
        "09:00 New York at {hour_utc}:00Z"
    );
    assert_eq!(next_ms % 3_600_000, 0);
    server.gust_json(&["schedule", "rm", "tick", "ny"]);

    let before_add = Instant::now();
    let added = server.gust_json(&["schedule", "add", "tick", "@every 500ms", "--id", "fast"]);
    let after_add = Instant::now();
    assert_eq!(added["id"], "fast");
    assert!(added["next_ms"].as_u64().is_some());
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let before_rm = Instant::now();
    let removed = server.gust_json(&["schedule", "rm", "tick", "fast"]);
    let after_rm = Instant::now();
    assert_eq!(removed["removed"], true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let records = server.api_json("/v1/functions/tick/invocations").await;
    let fired = records.as_array().unwrap().len();
    // Each 500 ms tick fires once: at least the ticks surely inside the
    // schedule's life, at most those that could be (the CLI calls that
    // add and remove it take their own time on a loaded machine).
    let ticks = |d: Duration| d.as_millis() as usize / 500;
    let least = ticks(before_rm - after_add).saturating_sub(1);
    let most = ticks(after_rm - before_add) + 1;
    assert!(
        (least..=most).contains(&fired) && least >= 5,
        "fired {fired} times, expected {least}..={most}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = server.api_json("/v1/functions/tick/invocations").await;
    assert_eq!(
        after.as_array().unwrap().len(),
        fired,
        "no tick after removal"
    );
    assert!(
        server
            .gust_json(&["schedule", "ls", "tick"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destinations_hear_of_successes_and_failures() {
    let server = Server::start();
    server.deploy("audit", &guests().testbed, &[]);
    server.deploy("good", &guests().hello, &["--on-success", "audit"]);
    server.deploy(
        "doomed",
        &guests().testbed,
        &["--max-attempts", "1", "--on-failure", "audit"],
    );
    let bad_destination = server.gust(&[
        "deploy",
        "x",
        guests().hello.to_str().unwrap(),
        "--on-success",
        "Not Valid",
    ]);
    assert_eq!(bad_destination.status.code(), Some(1));

    let (_, ok) = server.submit("/good/", &[], Vec::new()).await;
    let (_, doomed) = server.submit("/doomed/trap", &[], Vec::new()).await;
    wait_for_state(&server, &ok, "succeeded").await;
    wait_for_state(&server, &doomed, "dead_lettered").await;
    let told = Server::eventually(Duration::from_secs(10), || async {
        let records = server.api_json("/v1/functions/audit/invocations").await;
        let records = records.as_array().unwrap().clone();
        (records.len() == 2 && records.iter().all(|r| r["state"] == "succeeded")).then_some(records)
    })
    .await;
    assert!(told.is_some(), "the destination got one event per outcome");
}

/// Tick times (`ce-id: <schedule>@<ms>`) seen in a function's logs.
fn ticks_in_logs(server: &Server, function: &str, schedule: &str) -> Vec<u64> {
    let out = server.gust(&["logs", function, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let needle = format!("ce-id: {schedule}@");
    let mut ticks: Vec<u64> = text
        .match_indices(&needle)
        .filter_map(|(i, _)| {
            let digits: String = text[i + needle.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect();
    ticks.sort_unstable();
    ticks.dedup();
    ticks
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_ticks_are_caught_up_to_the_limit_after_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    server.deploy("ticker", &guests().testbed, &[]);
    server.gust_json(&[
        "schedule",
        "add",
        "ticker",
        "@every 1s",
        "--path",
        "/headers",
        "--catch-up",
        "2",
        "--id",
        "beat",
    ]);
    Server::eventually(Duration::from_secs(10), || async {
        (!ticks_in_logs(&server, "ticker", "beat").is_empty()).then_some(())
    })
    .await
    .expect("the schedule fires");
    assert_eq!(server.stop(), Some(0));
    let stopped = now_ms();
    // Down for 3.5 s: at least three ticks are missed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let restarted = now_ms();
    let server = Server::start_in(dir.path(), &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ticks = ticks_in_logs(&server, "ticker", "beat");
    let during_downtime: Vec<u64> = ticks
        .iter()
        .copied()
        .filter(|t| *t > stopped && *t < restarted)
        .collect();
    assert!(
        (1..=2).contains(&during_downtime.len()),
        "the last missed ticks, two at most, were fired: {during_downtime:?} (all: {ticks:?})"
    );
    assert!(
        during_downtime.iter().all(|t| *t > restarted - 2_500),
        "only the latest missed ticks: {during_downtime:?}"
    );
    let schedules = server.gust_json(&["schedule", "ls", "ticker"]);
    assert_eq!(schedules[0]["catch_up"], 2);
    assert_eq!(schedules[0]["path"], "/headers");
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_and_triggers_list_across_a_tenants_functions_and_no_further() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    let (acme, globex) = server.acme_and_globex();
    for name in ["alpha", "beta"] {
        server.gust_json_as(&acme, &["deploy", name, testbed]);
        server.gust_json_as(
            &acme,
            &["schedule", "add", name, "@every 1h", "--id", "hourly"],
        );
        server.gust_json_as(
            &acme,
            &[
                "trigger", "add", name, "--bucket", "data", "--id", "on-data",
            ],
        );
    }
    server.gust_json_as(
        &acme,
        &["schedule", "add", "beta", "@every 2h", "--id", "slow"],
    );
    server.gust_json_as(&globex, &["deploy", "gamma", testbed]);

    // Without a name: every function's, each naming its function.
    let pairs = |list: serde_json::Value| -> Vec<(String, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["function"].as_str().unwrap().to_string(),
                    s["id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let schedules = pairs(server.gust_json_as(&acme, &["schedule", "ls"]));
    assert_eq!(
        schedules,
        [("alpha", "hourly"), ("beta", "hourly"), ("beta", "slow")]
            .map(|(f, id)| (f.to_string(), id.to_string()))
    );
    let triggers = pairs(server.gust_json_as(&acme, &["trigger", "ls"]));
    assert_eq!(
        triggers,
        [("alpha", "on-data"), ("beta", "on-data")].map(|(f, id)| (f.to_string(), id.to_string()))
    );
    // With a name, as before: that function's only.
    assert_eq!(
        pairs(server.gust_json_as(&acme, &["schedule", "ls", "alpha"])).len(),
        1
    );

    // The table has the function in a column of its own.
    let table = server.gust_as(&acme, &["schedule", "ls"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("FUNCTION"), "{text}");
    assert!(
        lines.all(|l| l.starts_with("alpha") || l.starts_with("beta")),
        "{text}"
    );

    // Another tenant sees none of them, through the CLI or the API.
    for args in [["schedule", "ls"], ["trigger", "ls"]] {
        let list = server.gust_json_as(&globex, &args);
        assert_eq!(list, serde_json::json!([]), "{args:?}");
    }
    let client = crate::harness::client_with_token(&globex);
    for path in ["/v1/schedules", "/v1/triggers"] {
        let url = format!("{}{path}", server.api);
        let body: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body, serde_json::json!([]), "{path}");
    }
}

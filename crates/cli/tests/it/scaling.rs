//! Scale to zero, pre-warming and provisioned concurrency, observed from
//! outside: `gust scale`, `/metrics`, and requests that keep succeeding.

use std::time::Duration;

use crate::harness::{Server, guests};

/// `gust scale NAME --json`.
fn scale(server: &Server, name: &str) -> serde_json::Value {
    server.gust_json(&["scale", name])
}

fn actions(status: &serde_json::Value) -> Vec<String> {
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_function_is_scaled_to_zero_and_comes_back_on_its_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let fast = ["--scale-tick-ms", "100"];
    let server = Server::start_in(dir.path(), &fast);
    server.deploy("idle", &guests().testbed, &["--keep-alive", "1s"]);
    server.deploy(
        "kept",
        &guests().testbed,
        &["--keep-alive", "0ms", "--provisioned", "1"],
    );
    // The default, learned, keeps a function with no history 10 minutes.
    server.deploy("learner", &guests().testbed, &[]);
    for name in ["idle", "kept", "learner"] {
        assert_eq!(server.get(&format!("/{name}/")).await.0, 200);
    }

    let unloaded = Server::eventually(Duration::from_secs(10), || async {
        let s = scale(&server, "idle");
        (s["warm"] == false).then_some(s)
    })
    .await
    .expect("`idle` was never scaled to zero");
    assert_eq!(unloaded["desired"], 0);
    assert_eq!(unloaded["reason"], "idle");
    assert!(
        actions(&unloaded).contains(&"unloaded".to_string()),
        "{unloaded}"
    );
    assert!(
        server
            .metric("gust_scale_actions_total{action=\"unload\"}")
            .await
            >= 1
    );

    // Meanwhile the provisioned and the learning ones stayed warm.
    let kept = scale(&server, "kept");
    assert_eq!(
        (kept["warm"].as_bool(), kept["reason"].as_str()),
        (Some(true), Some("provisioned")),
        "{kept}"
    );
    assert_eq!(kept["desired"], 1);
    let learner = scale(&server, "learner");
    assert_eq!(learner["warm"], true, "{learner}");
    assert_eq!(learner["basis"], "too_little_history");
    assert_eq!(learner["keep_ms"], 600_000);
    assert_eq!(server.metric("gust_functions_warm").await, 2);

    // The next request loads it again and succeeds.
    let cold_before = server.metric("gust_request_cold_starts_total").await;
    let (status, body) = server.get("/idle/").await;
    assert_eq!((status, body.as_str()), (200, "testbed ok"));
    assert_eq!(
        server.metric("gust_request_cold_starts_total").await,
        cold_before + 1
    );
    let back = scale(&server, "idle");
    assert!(actions(&back).contains(&"cold_start".to_string()), "{back}");

    // The text form names the state and the policy.
    let text = server.gust(&["scale", "kept"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("warm, desired 1 (provisioned)"), "{text}");
    assert!(text.contains("provisioned: 1"), "{text}");

    // After a restart nothing is loaded but what is provisioned.
    drop(server);
    let server = Server::start_in(dir.path(), &fast);
    let warm = Server::eventually(Duration::from_secs(10), || async {
        let s = scale(&server, "kept");
        (s["warm"] == true).then_some(s)
    })
    .await
    .expect("the provisioned function was not pre-warmed after a restart");
    assert!(actions(&warm).contains(&"pre_warmed".to_string()), "{warm}");
    assert_eq!(scale(&server, "idle")["warm"], false);
    assert_eq!(server.get("/idle/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_settings_are_checked_at_deploy() {
    let server = Server::start();
    for (flag, value) in [
        ("--keep-alive", "soon"),
        ("--provisioned", "1@someday 09:00-10:00"),
    ] {
        let out = server.gust(&[
            "deploy",
            "bad",
            guests().testbed.to_str().unwrap(),
            flag,
            value,
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(value), "{err}");
    }
    // More provisioned than the function may ever run: refused by the server.
    let out = server.gust(&[
        "deploy",
        "bad",
        guests().testbed.to_str().unwrap(),
        "--max-concurrency",
        "1",
        "--provisioned",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("provisioned"));
    let missing = server.gust(&["scale", "nothing"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("function `nothing` does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

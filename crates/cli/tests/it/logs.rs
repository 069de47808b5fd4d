//! Log search: `gust logs` with a time window, text, an invocation and a
//! status class, over the real binary and API.

use std::time::Duration;

use crate::harness::{Server, guests};

/// `gust logs ARGS… --json`: the entries' invocation ids, oldest first.
fn ids(server: &Server, args: &[&str]) -> Vec<String> {
    let mut all = vec!["logs", "tb"];
    all.extend_from_slice(args);
    server
        .gust_json(&all)
        .as_array()
        .unwrap_or_else(|| panic!("gust logs {args:?} printed no array"))
        .iter()
        .map(|e| e["invocation_id"].as_str().unwrap().to_string())
        .collect()
}

async fn call(server: &Server, path: &str, header: Option<(&str, &str)>) -> String {
    let mut request = server.http.get(format!("{}/tb{path}", server.url));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_searched_by_time_text_invocation_and_status() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--public"]);
    let printed = call(&server, "/print", None).await;
    // A quiet success leaves no entry; a quiet server error does.
    call(&server, "/status?code=404", None).await;
    let unavailable = call(&server, "/status?code=503", None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = now_ms();
    let trapped = call(&server, "/trap", None).await;
    let needle = call(&server, "/headers", Some(("x-search", "findme-7d3"))).await;

    let all = Server::eventually(Duration::from_secs(10), || async {
        let all = ids(&server, &[]);
        (all.len() >= 4).then_some(all)
    })
    .await
    .expect("four log entries");
    assert_eq!(
        all,
        [
            printed.as_str(),
            unavailable.as_str(),
            trapped.as_str(),
            needle.as_str()
        ]
    );

    assert_eq!(ids(&server, &["--grep", "findme-7d3"]), [needle.as_str()]);
    assert_eq!(
        ids(&server, &["--grep", "FINDME-7D3"]),
        Vec::<String>::new()
    );
    // The text of a failure is searched too.
    assert_eq!(ids(&server, &["--grep", "unreachable"]), [trapped.as_str()]);
    assert_eq!(
        ids(&server, &["--status", "5xx"]),
        [unavailable.as_str(), trapped.as_str()]
    );
    assert_eq!(ids(&server, &["--status", "503"]), [unavailable.as_str()]);
    assert_eq!(
        ids(&server, &["--status", "2xx"]),
        [printed.as_str(), needle.as_str()]
    );
    assert_eq!(
        ids(&server, &["--invocation", &trapped]),
        [trapped.as_str()]
    );
    let middle = middle.to_string();
    assert_eq!(
        ids(&server, &["--since", &middle]),
        [trapped.as_str(), needle.as_str()]
    );
    assert_eq!(
        ids(&server, &["--until", &middle]),
        [printed.as_str(), unavailable.as_str()]
    );
    assert_eq!(
        ids(&server, &["--since", &middle, "--status", "5xx"]),
        [trapped.as_str()]
    );
    assert_eq!(ids(&server, &["--since", "1h"]).len(), 4);
    assert_eq!(
        ids(&server, &["--limit", "2"]),
        [printed.as_str(), unavailable.as_str()]
    );

    // Bad filters are refused with the reason, by the CLI and the API.
    let out = server.gust(&["logs", "tb", "--status", "7xx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a status"), "{err}");
    let out = server.gust(&["logs", "tb", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a time"));
    for query in [
        "until_ms=5&since_ms=10".to_string(),
        format!("grep={}", "x".repeat(2000)),
        "status=abc".to_string(),
    ] {
        let response = server
            .http
            .get(format!("{}/v1/functions/tb/logs?{query}", server.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
    }

    // Another tenant's token finds nothing of this function.
    server.gust_json(&["tenant", "create", "globex"]);
    let other = server.token_for("globex", "owner", &[]);
    let out = server.gust_as(&other, &["logs", "tb", "--grep", "findme"]);
    assert!(!out.status.success());

    // --follow with a filter shows only what matches.
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["logs", "tb", "--follow", "--grep", "later-9f1", "--json"])
        .env("GUST_API", &server.api)
        .env("GUST_TOKEN", &server.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .next()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(&server, "/print", None).await;
    let later = call(&server, "/headers", Some(("x-search", "later-9f1"))).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follower.kill().unwrap();
    let _ = follower.wait();
    let line = reader.join().unwrap().expect("--follow printed the match");
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["invocation_id"], later.as_str());
    assert_eq!(entry["status"], 200);
}

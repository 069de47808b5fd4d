//! Continuous deployment through the CLI against the real server: aliases
//! and their URLs, rollback, weighted and sticky splits, canaries judged
//! and ended by themselves.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{Server, guests};

/// Sends `n` requests to `path` (`headers` on each), 16 at a time;
/// returns how many each version answered, with each version's statuses.
async fn spread(
    server: &Server,
    paths: &[&str],
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, Vec<u16>> {
    let mut tasks = Vec::new();
    let per = n / 16;
    for worker in 0..16 {
        let http = server.http.clone();
        let urls: Vec<String> = paths.iter().map(|p| format!("{}{p}", server.url)).collect();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(String, u16)> = Vec::new();
            for i in 0..per {
                let mut request = http.get(&urls[(worker + i) % urls.len()]);
                for (k, v) in &headers {
                    request = request.header(k, v);
                }
                let response = request.send().await.unwrap();
                let version = response
                    .headers()
                    .get("gust-version")
                    .map_or("none".into(), |v| v.to_str().unwrap().to_string());
                seen.push((version, response.status().as_u16()));
            }
            seen
        }));
    }
    let mut by_version: HashMap<String, Vec<u16>> = HashMap::new();
    for task in tasks {
        for (version, status) in task.await.unwrap() {
            by_version.entry(version).or_default().push(status);
        }
    }
    by_version
}

fn count(spread: &HashMap<String, Vec<u16>>, version: &str) -> usize {
    spread.get(version).map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_have_their_own_urls_and_rollback_is_instant() {
    let server = Server::start();
    let g = guests();
    // Version 1 says hello, version 2 is the testbed: easy to tell apart.
    server.deploy("app", &g.hello, &[]);
    let v2 = server.deploy("app", &g.testbed, &[]);
    assert_eq!(v2["version"], 2);
    assert_eq!(server.get("/app/").await, (200, "testbed ok".into()));

    // A new alias gets its own URL; `live` stays.
    let staging = server.gust_json(&["alias", "set", "app", "staging", "1"]);
    assert_eq!(staging["version"], 1);
    assert!(staging["url"].as_str().unwrap().ends_with("/app:staging"));
    let (status, body) = server.get("/app:staging/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("Hello"), "{body}");
    assert_eq!(server.get("/app/").await.1, "testbed ok");
    let (status, body) = server.get("/app:nope/").await;
    assert_eq!(status, 404);
    assert!(body.contains("no alias `nope`"), "{body}");

    // A deploy to an alias leaves `live` where it is.
    let v3 = server.deploy("app", &g.hello, &["--alias", "staging"]);
    assert_eq!(v3["version"], 3);
    assert!(v3["url"].as_str().unwrap().ends_with("/app:staging"));
    assert_eq!(server.get("/app/").await.1, "testbed ok");
    let aliases = server.gust_json(&["alias", "ls", "app"]);
    let staging = aliases
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "staging")
        .unwrap();
    assert_eq!(
        (staging["version"].as_u64(), staging["previous"].as_u64()),
        (Some(3), Some(1))
    );

    // `live` moves by hand, and back: the next request sees the change.
    server.gust_json(&["alias", "set", "app", "live", "1"]);
    assert!(server.get("/app/").await.1.starts_with("Hello"));
    let back = server.gust_json(&["rollback", "app"]);
    assert_eq!(back["version"], 2);
    assert_eq!(server.get("/app/").await.1, "testbed ok");
    let ls = server.gust_json(&["ls"]);
    assert_eq!(ls[0]["version"], 2);

    // What cannot be done is refused with a reason.
    let out = server.gust(&["alias", "rm", "app", "live"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be removed"));
    let out = server.gust(&["alias", "set", "app", "staging", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version 99"));
    let out = server.gust(&["rollback", "app", "--alias", "staging"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.gust(&["alias", "rm", "app", "staging"]);
    assert!(out.status.success());
    assert_eq!(server.get("/app:staging/").await.0, 404);
    // Events go to live only.
    server.gust_json(&["alias", "set", "app", "beta", "1"]);
    let response = server
        .http
        .post(format!("{}/app:beta/", server.url))
        .header("gust-invocation-type", "event")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // Invoking through an alias from the CLI.
    let out = server.gust(&["invoke", "app:live"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "testbed ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_follows_its_weights_and_sticks_to_a_client() {
    let server = Server::start();
    let g = guests();
    server.deploy("app", &g.hello, &[]);
    server.deploy("app", &g.hello, &["--alias", "next"]);
    let split = server.gust_json(&["alias", "set", "app", "live", "1", "--split", "2:20%"]);
    assert_eq!(split["split"]["version"], 2);

    let seen = spread(&server, &["/app/"], 3200, &[]).await;
    let (one, two) = (count(&seen, "1"), count(&seen, "2"));
    assert_eq!(one + two, 3200, "{seen:?}");
    // 20% of 3200 is 640, with a standard deviation of 22.6: ±5 of them.
    assert!((527..=753).contains(&two), "version 2 took {two} of 3200");
    assert!(seen.values().flatten().all(|s| *s == 200));

    // A client that names itself lands on one side, always.
    for client in ["alice", "bob", "carol", "dave"] {
        let seen = spread(&server, &["/app/"], 64, &[("gust-client", client)]).await;
        assert_eq!(seen.len(), 1, "{client}: {seen:?}");
        let cookie = format!("theme=dark; gust-client={client}");
        let by_cookie = spread(&server, &["/app/"], 32, &[("cookie", &cookie)]).await;
        assert_eq!(
            by_cookie.keys().collect::<Vec<_>>(),
            seen.keys().collect::<Vec<_>>(),
            "{client}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_canary_is_rolled_back_by_itself_while_the_stable_version_serves() {
    let server = Server::start();
    let g = guests();
    server.deploy("app", &g.hello, &[]);
    // The canary traps on `/trap` (half the requests below); hello never fails.
    let canary = server.deploy("app", &g.testbed, &["--canary", "50%,10m"]);
    assert_eq!(canary["version"], 2);
    let aliases = server.gust_json(&["alias", "ls", "app"]);
    assert_eq!(aliases[0]["canary"]["version"], 2);

    let seen = spread(&server, &["/app/", "/app/trap"], 320, &[]).await;
    assert!(
        seen["1"].iter().all(|s| *s == 200),
        "the stable version failed: {seen:?}"
    );
    // Rolled back long before its 10-minute window.
    let function = Server::eventually(Duration::from_secs(10), || async {
        let f = server.api_json("/v1/functions/app").await;
        let judged = f["canaries"].as_array().is_some_and(|c| !c.is_empty());
        judged.then_some(f)
    })
    .await
    .expect("the canary was never judged");
    let report = &function["canaries"][0];
    assert_eq!(report["outcome"], "rolled_back", "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("error rate"),
        "{report}"
    );
    assert_eq!(function["version"], 1);
    assert!(function["aliases"][0].get("split").is_none());
    // Every request now goes to the stable version.
    let after = spread(&server, &["/app/", "/app/trap"], 64, &[]).await;
    assert_eq!(count(&after, "1"), 64, "{after:?}");
    let text = server.gust(&["alias", "ls", "app"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("version 2 rolled back"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_is_promoted_at_the_end_of_its_window() {
    let server = Server::start();
    let g = guests();
    server.deploy("app", &g.hello, &[]);
    server.deploy("app", &g.hello, &["--canary", "50%,3s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut seen = HashMap::new();
    while std::time::Instant::now() < deadline {
        for (version, statuses) in spread(&server, &["/app/"], 64, &[]).await {
            seen.entry(version)
                .or_insert_with(Vec::new)
                .extend(statuses);
        }
    }
    assert!(count(&seen, "2") >= 20, "{seen:?}");
    let function = Server::eventually(Duration::from_secs(10), || async {
        let f = server.api_json("/v1/functions/app").await;
        let judged = f["canaries"].as_array().is_some_and(|c| !c.is_empty());
        judged.then_some(f)
    })
    .await
    .expect("the canary was never judged");
    assert_eq!(function["canaries"][0]["outcome"], "promoted", "{function}");
    assert_eq!(function["version"], 2);
    assert_eq!(function["aliases"][0]["previous"], 1);
    let after = spread(&server, &["/app/"], 32, &[]).await;
    assert_eq!(count(&after, "2"), 32);
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_reach_the_guest_and_secrets_are_never_shown() {
    let server = Server::start();
    let g = guests();
    server.deploy("app", &g.testbed, &[]);
    server.gust_json(&["config", "set", "app", "GREETING=hi", "MODE=prod"]);
    assert_eq!(
        server.get("/app/env?name=GREETING").await,
        (200, "env=hi config=hi count=2".into())
    );

    // A secret: sealed at rest, seen by the guest, shown by no listing.
    let secret = "s3cr3t-value-42";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["secret", "set", "app", "DB_PASSWORD"])
        .env("GUST_API", &server.api)
        .env("GUST_TOKEN", &server.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    assert_eq!(
        server.get("/app/env?name=DB_PASSWORD").await.1,
        format!("env={secret} config={secret} count=3")
    );
    for args in [
        vec!["config", "ls", "app"],
        vec!["secret", "ls", "app"],
        vec!["config", "ls", "app", "--json"],
        vec!["ls", "--json"],
        vec!["alias", "ls", "app", "--json"],
        vec!["logs", "app"],
        vec!["audit", "--json"],
    ] {
        let out = server.gust(&args);
        assert!(out.status.success(), "{args:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "{args:?} shows the secret: {all}");
    }
    for args in [
        vec!["secret", "get", "app", "DB_PASSWORD"],
        vec!["config", "get", "app", "DB_PASSWORD"],
        vec!["config", "get", "app", "DB_PASSWORD", "--json"],
    ] {
        let out = server.gust(&args);
        assert!(out.status.success(), "{args:?}");
        let all = String::from_utf8_lossy(&out.stdout);
        assert!(
            !all.contains(secret) && all.contains("secret"),
            "{args:?}: {all}"
        );
    }
    let out = server.gust(&["config", "get", "app", "GREETING"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(
        server.gust(&["config", "get", "app", "NOPE"]).status.code(),
        Some(1)
    );
    let listed = server.gust_json(&["secret", "ls", "app"]);
    assert_eq!(listed[0]["name"], "DB_PASSWORD");
    assert!(listed[0].get("value").is_none());
    // Not in the data directory in the clear either.
    let data = server.data_dir();
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "{} holds the secret in the clear", path.display());
            }
        }
    }

    // Rotation: the next request sees the new value, with no new version.
    let new_secret = "rotated-value-43";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), new_secret).unwrap();
    let out = server.gust(&[
        "secret",
        "set",
        "app",
        "DB_PASSWORD",
        "--value-file",
        file.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(
        server
            .get("/app/env?name=DB_PASSWORD")
            .await
            .1
            .starts_with(&format!("env={new_secret} "))
    );
    assert_eq!(
        server
            .gust_json(&["versions", "app"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // An alias's own variables override the function's, for it alone.
    server.gust_json(&["alias", "set", "app", "staging", "1"]);
    server.gust_json(&["config", "set", "app", "GREETING=hej", "--alias", "staging"]);
    assert!(
        server
            .get("/app:staging/env?name=GREETING")
            .await
            .1
            .starts_with("env=hej config=hej")
    );
    assert!(
        server
            .get("/app/env?name=GREETING")
            .await
            .1
            .starts_with("env=hi config=hi")
    );
    server.gust_json(&["config", "rm", "app", "MODE"]);
    assert_eq!(
        server.get("/app/env?name=MODE").await.1,
        "env=- config=- count=2"
    );

    // Bad names are refused.
    let out = server.gust(&["config", "set", "app", "1BAD=x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = server.gust(&["config", "set", "app", "A=x", "--alias", "nope"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn claimed_hosts_and_prefixes_reach_their_function_and_conflicts_are_refused() {
    let server = Server::start();
    let g = guests();
    server.deploy("api", &g.testbed, &["--route", "api.example.test/v1"]);
    server.deploy("site", &g.hello, &["--route", "www.example.test"]);
    let get = |host: &'static str, path: &'static str| {
        let http = server.http.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let response = http.get(url).header("host", host).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The function sees the path after the prefix.
    assert_eq!(
        get("api.example.test", "/v1").await,
        (200, "testbed ok".into())
    );
    let (status, body) = get("API.example.test:8080", "/v1/env?name=X").await;
    assert_eq!((status, body.as_str()), (200, "env=- config=- count=0"));
    assert_eq!(get("api.example.test", "/v2").await.0, 404);
    assert!(
        get("www.example.test", "/anything")
            .await
            .1
            .starts_with("Hello")
    );
    // Names still work on any host.
    assert_eq!(get("localhost", "/api/").await, (200, "testbed ok".into()));

    // A taken place is refused at deploy, naming its holder; nothing moves.
    let out = server.gust(&[
        "deploy",
        "thief",
        g.hello.to_str().unwrap(),
        "--route",
        "api.example.test/v1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("claimed by function `api`"), "{err}");
    assert!(
        server
            .gust_json(&["ls"])
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != "thief")
    );
    // Another tenant learns only that it is taken.
    server.gust_json(&["tenant", "create", "globex"]);
    let other = server.token_for("globex", "owner", &[]);
    let out = server.gust_as(
        &other,
        &[
            "deploy",
            "x",
            g.hello.to_str().unwrap(),
            "--route",
            "www.example.test",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another tenant") && !err.contains("site"),
        "{err}"
    );

    // Addresses, localhost and the data plane's own host are no one's; a
    // path alone is the default tenant's namespace.
    server.gust_json_as(&other, &["deploy", "x", g.hello.to_str().unwrap()]);
    for taken in ["127.0.0.1", "localhost"] {
        let out = server.gust_as(&other, &["route", "add", "x", taken]);
        assert_eq!(out.status.code(), Some(2), "{taken}");
        let response = server
            .http
            .put(format!("{}/v1/functions/api/routes", server.api))
            .json(&[taken])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{taken}");
    }
    let out = server.gust_as(&other, &["route", "add", "x", "/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace"));

    // A path claim, for an alias; a function's own name wins over it.
    server.gust_json(&["alias", "set", "api", "beta", "1"]);
    server.gust_json(&["route", "add", "api", "/shop:beta"]);
    assert_eq!(get("localhost", "/shop").await, (200, "testbed ok".into()));
    assert_eq!(get("localhost", "/shopping").await.0, 404);
    let routes = server.gust_json(&["route", "ls", "api"]);
    assert_eq!(routes.as_array().unwrap().len(), 2);
    // Giving a claim up frees it for others.
    server.gust_json(&["route", "rm", "api", "api.example.test/v1"]);
    assert_eq!(get("api.example.test", "/v1").await.0, 404);
    server.deploy("thief", &g.hello, &["--route", "api.example.test/v1"]);
    assert!(get("api.example.test", "/v1").await.1.starts_with("Hello"));
    // Removing a function frees its claims.
    assert!(server.gust(&["rm", "site"]).status.success());
    server.deploy("site2", &g.hello, &["--route", "www.example.test"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_call_each_other_in_process_and_both_are_metered() {
    let server = Server::start();
    let g = guests();
    server.deploy("front", &g.testbed, &[]);
    server.deploy("back", &g.testbed, &[]);
    server.gust_json(&["config", "set", "back", "WHO=back"]);
    server.gust_json(&["alias", "set", "back", "beta", "1"]);
    server.gust_json(&["config", "set", "back", "WHO=beta", "--alias", "beta"]);

    // No allow-list entry is needed for gust.internal; the callee sees the rest of the path.
    let (status, body) = server
        .get("/front/call?url=http://gust.internal/back/env?name=WHO")
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "status 200: env=back config=back count=1")
    );
    let (_, body) = server
        .get("/front/call?url=http://gust.internal/back:beta/env?name=WHO")
        .await;
    assert_eq!(body, "status 200: env=beta config=beta count=1");
    // A missing function, and a trap, are HTTP answers to the caller.
    let (_, body) = server
        .get("/front/call?url=http://gust.internal/nobody/")
        .await;
    assert!(body.starts_with("status 404: "), "{body}");
    let (_, body) = server
        .get("/front/call?url=http://gust.internal/back/trap")
        .await;
    assert!(body.starts_with("status 500: "), "{body}");
    // A function calling itself forever is stopped.
    let (status, body) = server
        .get("/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call")
        .await;
    assert_eq!(status, 200, "{body}");
    let loop_url = "/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/call?url=http://gust.internal/front/";
    let (_, body) = server.get(loop_url).await;
    assert!(body.contains("status 508"), "{body}");
    // Another tenant's function cannot be reached.
    server.gust_json(&["tenant", "create", "globex"]);
    let other = server.token_for("globex", "owner", &[]);
    server.gust_json_as(
        &other,
        &["deploy", "caller", g.testbed.to_str().unwrap(), "--public"],
    );
    let (_, body) = server
        .get("/@globex/caller/call?url=http://gust.internal/back/")
        .await;
    assert!(body.starts_with("status 404: "), "{body}");

    // Both sides are metered: the callee with trigger `call`, the caller
    // with an outbound request.
    let records = Server::eventually(Duration::from_secs(10), || async {
        let out = server.gust(&["usage", "--export", "jsonl", "--from", "0"]);
        let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls = records.iter().filter(|x| x["trigger"] == "call").count();
        (calls >= 4).then_some(records)
    })
    .await
    .unwrap_or_else(|| {
        let out = server.gust(&["usage", "--export", "jsonl", "--from", "0"]);
        panic!(
            "the calls were never metered: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let back = records
        .iter()
        .find(|r| r["function"] == "back" && r["trigger"] == "call")
        .unwrap();
    assert_eq!(back["outcome"], "success", "{back}");
    let front = records
        .iter()
        .find(|r| r["function"] == "front" && r["trigger"] == "http" && r["outbound_requests"] == 1)
        .expect("the caller's record counts its call");
    assert_eq!(front["outcome"], "success", "{front}");
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_live_checks_the_reservation_it_brings() {
    // 100 instances, 10 always shared: 90 may be reserved.
    let server = Server::start_with(&["--max-in-flight", "100"]);
    let g = guests();
    let hello = g.hello.to_str().unwrap();
    server.deploy("a", &g.hello, &["--reserved-concurrency", "50"]);
    server.deploy(
        "a",
        &g.hello,
        &["--reserved-concurrency", "80", "--alias", "staging"],
    );
    server.deploy("b", &g.hello, &["--reserved-concurrency", "30"]);
    // Version 2 on live would reserve 80 beside b's 30: refused, live unchanged.
    let out = server.gust(&["alias", "set", "a", "live", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reserved_concurrency"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.gust_json(&["ls"])[0]["version"], 1);
    // It fits once b gives its reservation up.
    server.gust_json(&["deploy", "b", hello]);
    server.gust_json(&["alias", "set", "a", "live", "2"]);
    let out = server.gust(&["versions", "a"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("live") && table.contains("staging"),
        "{table}"
    );
}

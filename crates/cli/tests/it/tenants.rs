//! Tenants, tokens and roles: nothing of one tenant is visible to or
//! reachable by another, through the API, the CLI, the data plane or the
//! key-value store; roles are enforced; revoked and expired tokens stop
//! working; quotas answer 429 naming the quota.

use std::time::Duration;

use crate::harness::{Server, client_with_token, guests};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn call(token: &str, url: &str) -> (u16, String) {
    let response = client_with_token(token).get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_see_or_reach_each_other() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    let (acme, globex) = server.acme_and_globex();

    // The same name in two tenants is two functions.
    let acme_fn = server.gust_json_as(&acme, &["deploy", "shared", testbed]);
    server.gust_json_as(&globex, &["deploy", "shared", testbed]);
    server.gust_json_as(&acme, &["deploy", "secret", testbed]);
    let acme_url = acme_fn["url"].as_str().unwrap().to_string();
    assert!(acme_url.ends_with("/@acme/shared"), "{acme_url}");

    let names = |token: &str| -> Vec<String> {
        let list = server.gust_json_as(token, &["ls"]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&acme), ["secret", "shared"]);
    assert_eq!(names(&globex), ["shared"]);

    // Through the CLI and the API: acme's function does not exist for globex.
    for args in [
        vec!["versions", "secret"],
        vec!["logs", "secret"],
        vec!["dlq", "secret"],
        vec!["invocations", "secret"],
        vec!["schedule", "ls", "secret"],
        vec!["trigger", "ls", "secret"],
        vec!["rm", "secret"],
    ] {
        let out = server.gust_as(&globex, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("does not exist") || stderr(&out).contains("no function"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = server.gust_as(&globex, &["ls", "--tenant", "acme"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("belongs to tenant `globex`"),
        "{}",
        stderr(&out)
    );
    // Tenants and tokens of others are not theirs to list.
    assert!(!server.gust_as(&globex, &["tenant", "ls"]).status.success());
    let globex_tokens = server.gust_json_as(&globex, &["token", "ls"]);
    assert!(
        globex_tokens
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["tenant"] == "globex")
    );

    // Data plane: a private function answers its own tenant only; another
    // tenant's token cannot even tell it exists.
    let secret = format!("{}/@acme/secret/", server.url);
    assert_eq!(call(&acme, &secret).await, (200, "testbed ok".into()));
    assert_eq!(call(&globex, &secret).await.0, 404);
    // Without a token it looks exactly like a function that does not exist.
    let (status, text) = call("", &secret).await;
    let (missing_status, missing_text) = call("", &format!("{}/@acme/nothing/", server.url)).await;
    assert_eq!(
        (status, &text),
        (404, &missing_text.replace("nothing", "secret"))
    );
    assert_eq!(missing_status, 404);
    // The token never reaches the guest.
    let (status, _) = call(&acme, &format!("{}/@acme/secret/headers", server.url)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = server.gust_json_as(&acme, &["logs", "secret"]).to_string();
    assert!(
        logs.contains("accept:") && !logs.contains("authorization"),
        "{logs}"
    );

    // Key-value data: acme's write is not in globex's bucket of the same name.
    let set = client_with_token(&acme)
        .post(format!("{}/@acme/shared/kv/set?bucket=b&key=k", server.url))
        .body("acme's")
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let (status, _) = call(
        &globex,
        &format!("{}/@globex/shared/kv/get?bucket=b&key=k", server.url),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        !server
            .gust_as(&globex, &["kv", "get", "k", "--bucket", "b"])
            .status
            .success()
    );
    let out = server.gust_as(&acme, &["kv", "get", "k", "--bucket", "b"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "acme's");

    // Events: an invocation id of acme's is unknown to globex.
    let submitted = client_with_token(&acme)
        .post(format!("{}/@acme/shared/", server.url))
        .header("Gust-Invocation-Type", "Event")
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let id = submitted.json::<serde_json::Value>().await.unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(server.gust_as(&acme, &["invocation", &id]).status.success());
    assert!(
        !server
            .gust_as(&globex, &["invocation", &id])
            .status
            .success()
    );

    // A public function needs no token.
    server.gust_json_as(&acme, &["deploy", "open", testbed, "--public"]);
    assert_eq!(
        call("", &format!("{}/@acme/open/", server.url)).await.0,
        200
    );

    // The audit log: acme's changes, by acme's token; none of them in globex's.
    let audit = server.gust_json_as(&acme, &["audit"]);
    let entries = audit.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "/v1/functions/secret/versions" && e["status"] == 201)
    );
    assert!(
        entries
            .iter()
            .all(|e| e["token"].as_str().unwrap().len() == 12)
    );
    let acme_token_id = &acme[5..17];
    let theirs = server.gust_json_as(&globex, &["audit"]);
    let theirs = theirs.as_array().unwrap();
    assert!(theirs.iter().all(|e| e["token"] != acme_token_id));
    // globex's own failed attempt on acme's function is in globex's log.
    assert!(
        theirs
            .iter()
            .any(|e| e["path"] == "/v1/functions/secret" && e["status"] == 404)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_are_enforced_and_revoked_or_expired_tokens_stop_working() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    server.gust_json(&["tenant", "create", "acme"]);
    let owner = server.token_for("acme", "owner", &[]);
    let deployer = server.token_for("acme", "deployer", &[]);
    let viewer = server.token_for("acme", "viewer", &[]);
    let invoker = server.token_for("acme", "invoker", &[]);
    server.gust_json_as(&deployer, &["deploy", "fn", testbed]);
    let url = format!("{}/@acme/fn/", server.url);

    // Viewer: reads, cannot change or invoke.
    assert_eq!(
        server
            .gust_json_as(&viewer, &["ls"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let out = server.gust_as(&viewer, &["deploy", "fn", testbed]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a `viewer` token cannot do this"),
        "{}",
        stderr(&out)
    );
    assert_eq!(call(&viewer, &url).await.0, 403);
    // Invoker: invokes, nothing else.
    assert_eq!(call(&invoker, &url).await.0, 200);
    assert!(!server.gust_as(&invoker, &["ls"]).status.success());
    // Deployer: cannot manage tokens or read the audit log.
    assert!(
        !server
            .gust_as(&deployer, &["token", "create", "--role", "viewer"])
            .status
            .success()
    );
    assert!(!server.gust_as(&deployer, &["audit"]).status.success());
    // Owner: manages its tenant's tokens but cannot mint an admin or make tenants.
    assert!(
        !server
            .gust_as(&owner, &["token", "create", "--role", "admin"])
            .status
            .success()
    );
    assert!(
        !server
            .gust_as(&owner, &["tenant", "create", "evil"])
            .status
            .success()
    );
    // Metrics name every tenant's functions: admins only.
    let metrics = client_with_token(&owner)
        .get(format!("{}/metrics", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 403);
    let metrics = server
        .http
        .get(format!("{}/metrics", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    // No token, a bad one: 401 that says what to do.
    let out = server.gust_as("", &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("GUST_TOKEN"), "{}", stderr(&out));
    assert!(stderr(&server.gust_as("gust_nope", &["ls"])).contains("not a Gust token"));

    // Revoked: stops at once, on both planes.
    let listed = server.gust_json_as(&owner, &["token", "ls"]);
    let invoker_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "invoker")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        listed.to_string().find(&invoker).is_none(),
        "listings never show a token"
    );
    server.gust_json_as(&owner, &["token", "revoke", &invoker_id]);
    let (status, text) = call(&invoker, &url).await;
    assert_eq!(status, 404);
    assert!(text.contains("no token of its tenant"), "{text}");

    // Expired: works until its time, then not.
    let brief = server.token_for("acme", "viewer", &["--expires-in", "1s"]);
    assert!(server.gust_as(&brief, &["ls"]).status.success());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = server.gust_as(&brief, &["ls"]);
    assert!(stderr(&out).contains("has expired"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_answer_429_naming_the_quota() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    server.gust_json(&["tenant", "create", "acme"]);
    let owner = server.token_for("acme", "owner", &[]);
    let set_quotas = |quotas: serde_json::Value| {
        let http = server.http.clone();
        let url = format!("{}/v1/tenants/acme/quotas", server.api);
        async move {
            let response = http.put(url).json(&quotas).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    set_quotas(
        serde_json::json!({"functions": 2, "versions": 2, "concurrency": 1000,
        "invocations_per_second": 5, "burst": 5}),
    )
    .await;

    server.gust_json_as(&owner, &["deploy", "one", testbed]);
    server.gust_json_as(&owner, &["deploy", "two", testbed]);
    let out = server.gust_as(&owner, &["deploy", "three", testbed]);
    assert!(
        stderr(&out).contains("quota `functions`"),
        "{}",
        stderr(&out)
    );
    server.gust_json_as(&owner, &["deploy", "one", testbed]);
    let out = server.gust_as(&owner, &["deploy", "one", testbed]);
    assert!(
        stderr(&out).contains("quota `versions`"),
        "{}",
        stderr(&out)
    );

    // Rate: a burst of 5, then 429 with Retry-After; other tenants unaffected.
    let url = format!("{}/@acme/one/", server.url);
    let http = client_with_token(&owner);
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..12 {
        let response = http.get(&url).send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 && refused.is_none() {
            let retry = response.headers().get("retry-after").cloned();
            refused = Some((retry, response.text().await.unwrap()));
        }
    }
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    let (retry, text) = refused.expect("some requests were over the rate");
    assert!(retry.is_some());
    assert!(text.contains("quota `invocations_per_second`"), "{text}");
    server.deploy("other", &guests().testbed, &[]);
    assert_eq!(server.get("/other/").await.0, 200);

    // Concurrency: one at a time.
    set_quotas(
        serde_json::json!({"functions": 2, "versions": 2, "concurrency": 1,
        "invocations_per_second": 1000, "burst": 1000}),
    )
    .await;
    let slow = format!("{}/@acme/two/sleep?ms=1000", server.url);
    let first = tokio::spawn({
        let (http, slow) = (http.clone(), slow.clone());
        async move { http.get(slow).send().await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = http.get(&slow).send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.text().await.unwrap().contains("quota `concurrency`"));
    assert_eq!(first.await.unwrap(), 200);

    // Event backlog: three waiting events, then 429 until some are delivered.
    set_quotas(
        serde_json::json!({"functions": 2, "versions": 2, "concurrency": 1000,
        "invocations_per_second": 1000, "burst": 1000, "event_backlog": 3}),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = http
            .post(format!("{}/@acme/two/sleep?ms=1500", server.url))
            .header("Gust-Invocation-Type", "Event")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(
                response
                    .text()
                    .await
                    .unwrap()
                    .contains("quota `event_backlog`")
            );
        }
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_is_open_and_only_on_loopback() {
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args([
            "up",
            "--dev",
            "--listen",
            "0.0.0.0:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("must be loopback"),
        "{}",
        stderr(&refused)
    );

    let server = Server::start_with(&["--dev"]);
    assert!(server.token.is_empty(), "dev mode mints no token");
    server.deploy("tb", &guests().testbed, &[]);
    assert_eq!(call("", &format!("{}/tb/", server.url)).await.0, 200);
    assert!(server.gust_as("", &["ls"]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_and_key_quotas_answer_429_and_lose_nothing() {
    let server = Server::start();
    let testbed = &guests().testbed;
    let size = std::fs::metadata(testbed).unwrap().len();
    server.gust_json(&["tenant", "create", "acme"]);
    let owner = server.token_for("acme", "owner", &[]);
    server.gust_json_as(&owner, &["deploy", "one", testbed.to_str().unwrap()]);
    // Room for the component, three keys and about 1.5 KB of data.
    let response = server
        .http
        .put(format!("{}/v1/tenants/acme/quotas", server.api))
        .json(&serde_json::json!({"kv_keys": 3, "storage_bytes": size + 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let http = client_with_token(&owner);
    let put = |key: &str, len: usize| {
        let request = http
            .put(format!("{}/v1/kv/b/keys/{key}", server.api))
            .body(vec![b'v'; len]);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    };
    for key in ["k1", "k2", "k3"] {
        assert_eq!(put(key, 10).await.0, 200, "{key}");
    }
    let (status, body) = put("k4", 10).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("quota `kv_keys`"), "{body}");
    // Overwriting an existing key adds no key.
    assert_eq!(put("k1", 20).await.0, 200);

    // A guest hits the same quota through wasi:keyvalue.
    let guest = |path: &str, body: Vec<u8>| {
        let request = http
            .post(format!("{}/@acme/one/kv/{path}", server.url))
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = guest("set?bucket=g&key=new", b"x".to_vec()).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota `kv_keys`"), "{body}");
    let (status, body) = guest("set?bucket=b&key=k2", vec![b'y'; 2000]).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota `storage_bytes`"), "{body}");

    // Bytes through the API; nothing refused was written.
    let (status, body) = put("k3", 2000).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("quota `storage_bytes`"), "{body}");
    let stored = http
        .get(format!("{}/v1/kv/b/keys/k3", server.api))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored.len(), 10, "the refused write changed nothing");

    // A second version does not fit next to the first.
    let out = server.gust_as(&owner, &["deploy", "one", testbed.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("quota `storage_bytes`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1));

    // Cleaning up is always allowed, and frees room.
    let response = http
        .delete(format!("{}/v1/kv/b/keys/k2", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(put("k4", 10).await.0, 200);

    // Other tenants are not held to acme's quotas.
    let response = server
        .http
        .put(format!("{}/v1/kv/b/keys/k5", server.api))
        .body(vec![b'v'; 4000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// An event waiting for its first attempt has no status record yet: its
/// queue entry answers for it, and only to its own tenant, even where
/// another tenant has a function of the same name.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_event_is_seen_by_its_tenant_alone() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    let (acme, globex) = server.acme_and_globex();
    server.gust_json_as(&acme, &["deploy", "shared", testbed, "--concurrency", "1"]);
    server.gust_json_as(&globex, &["deploy", "shared", testbed]);
    let mut ids = Vec::new();
    for i in 0..2 {
        let (status, id) = server
            .submit_as(
                &acme,
                &format!("/@acme/shared/sleep?ms=1500&n={i}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(status, 202);
        ids.push(id);
    }
    // The second waits behind the first (one at a time): queued.
    let (mine, theirs) = (client_with_token(&acme), client_with_token(&globex));
    let status = |http: reqwest::Client, id: String| {
        let url = format!("{}/v1/invocations/{id}", server.api);
        async move {
            let response = http.get(url).send().await.unwrap();
            let code = response.status().as_u16();
            (
                code,
                response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default(),
            )
        }
    };
    let (code, record) = status(mine.clone(), ids[1].clone()).await;
    assert_eq!(code, 200, "{record}");
    assert!(
        record["state"] == "queued" || record["state"] == "running",
        "{record}"
    );
    for id in &ids {
        let (code, record) = status(theirs.clone(), id.clone()).await;
        assert_eq!(code, 404, "globex sees acme's {id}: {record}");
    }
    let listed = server.gust_json_as(&globex, &["invocations", "shared"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let listed = server.gust_json_as(&acme, &["invocations", "shared"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    server.wait_for_state_as(&acme, &ids[1], "succeeded").await;
}

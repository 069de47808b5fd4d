//! The control API and the CLI: deploy, list, versions, invoke, logs, rm,
//! and the refusals of bad uploads.

use crate::harness::{Server, guests};

#[tokio::test(flavor = "multi_thread")]
async fn deploy_invoke_redeploy_and_remove() {
    let server = Server::start();
    let g = guests();

    let v1 = server.deploy("hello", &g.hello, &[]);
    assert_eq!(v1["version"], 1);
    let url = v1["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("{}/hello", server.url));

    let response = server.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!request_id.is_empty());
    assert_eq!(response.text().await.unwrap(), "Hello from Gust!\n");

    // A redeploy makes version 2 and changes the answer.
    let v2 = server.deploy("hello", &g.echo, &[]);
    assert_eq!(v2["version"], 2);
    let (status, body) = server.get("/hello/items?id=3").await;
    assert_eq!(status, 200);
    assert!(body.contains("path: /items?id=3"), "{body}");

    // The replaced component leaves memory once nothing routes to it.
    let mut loaded = 0;
    for _ in 0..50 {
        loaded = server.metric("gust_components_loaded").await;
        if loaded == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(loaded, 1);

    let versions = server.gust_json(&["versions", "hello"]);
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);

    let listed = server.gust_json(&["ls"]);
    let hello = &listed.as_array().unwrap()[0];
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["version"], 2);
    assert_eq!(hello["url"], url.as_str());

    let invoked = server.gust_json(&["invoke", "hello", "--path", "/x", "--data", "12345"]);
    assert_eq!(invoked["status"], 200);
    let body = invoked["body"].as_str().unwrap();
    assert!(body.contains("method: POST"), "{body}");
    assert!(body.contains("path: /x"), "{body}");
    assert!(body.contains("body-size: 5"), "{body}");
    assert!(!invoked["invocation_id"].as_str().unwrap().is_empty());

    let removed = server.gust_json(&["rm", "hello"]);
    assert_eq!(removed["removed"], true);
    let (status, _) = server.get("/hello/").await;
    assert_eq!(status, 404);
    assert_eq!(server.gust_json(&["ls"]), serde_json::json!([]));
    let again = server.gust(&["rm", "hello"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_output_per_invocation() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    // Before any: a word on stderr, and `--json` stays a clean array.
    let none = server.gust(&["logs", "tb"]);
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&none.stderr),
        "no log entries yet for tb\n"
    );
    assert_eq!(server.gust_json(&["logs", "tb"]), serde_json::json!([]));

    let response = server
        .http
        .get(format!("{}/tb/print", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    // Logs are written off the request path; wait for them.
    let mut entries = Vec::new();
    for _ in 0..50 {
        entries = server
            .gust_json(&["logs", "tb"])
            .as_array()
            .unwrap()
            .clone();
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let entry = entries
        .iter()
        .find(|e| e["invocation_id"] == id.as_str())
        .expect("an entry for the invocation");
    assert_eq!(entry["stdout"], "hello from stdout\n");
    assert_eq!(entry["stderr"], "hello from stderr\n");
    assert_eq!(entry["outcome"]["kind"], "completed");

    let text = server.gust(&["logs", "tb"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("{id} v1 stdout: hello from stdout")),
        "{text}"
    );

    // `--follow` prints entries as they arrive.
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["logs", "tb", "--follow"])
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
            .find(|l| l.contains("wasm trap"))
    });
    let (status, _) = server.get("/tb/trap").await;
    assert_eq!(status, 500);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    follower.kill().unwrap();
    let _ = follower.wait();
    assert!(reader.join().unwrap().is_some(), "--follow showed the trap");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_uploads_get_400_with_a_reason() {
    let server = Server::start_with(&["--max-upload-bytes", "200000"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let cases = [
        (
            write("text.wasm", b"this is not wasm at all"),
            "not a WebAssembly binary",
        ),
        (
            write("core.wasm", &wat::parse_str("(module)").unwrap()),
            "core WebAssembly module, not a component",
        ),
        (
            write("empty.wasm", &wat::parse_str("(component)").unwrap()),
            "does not export `wasi:http/incoming-handler",
        ),
        (
            write(
                "import.wasm",
                &wat::parse_str(r#"(component (import "acme:nope/thing@1.0.0" (instance (export "f" (func)))))"#)
                    .unwrap(),
            ),
            "imports something Gust does not provide",
        ),
        (
            write("big.wasm", &vec![0u8; 300_000]),
            "larger than the upload cap",
        ),
        (
            write("broken.wasm", b"\0asm\x0d\0\x01\0garbage"),
            "not valid",
        ),
        (
            // A component cut off in the middle of its first core module.
            write("truncated.wasm", &{
                let whole = std::fs::read(&guests().hello).unwrap();
                whole[..whole.len() / 3].to_vec()
            }),
            "not valid",
        ),
        (
            // A core module section claiming 2^32-1 types in a few bytes.
            write("counts.wasm", &{
                let types = [0x01, 0x05, 0xff, 0xff, 0xff, 0xff, 0x0f];
                let module = [b"\0asm\x01\0\0\0".as_slice(), &types].concat();
                let header = [b"\0asm\x0d\0\x01\0".as_slice(), &[0x01, module.len() as u8]];
                [header.concat(), module].concat()
            }),
            "not valid",
        ),
    ];
    for (path, reason) in &cases {
        let response = server
            .http
            .post(format!("{}/v1/functions/bad/versions", server.api))
            .header("content-type", "application/wasm")
            .body(std::fs::read(path).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{}", path.display());
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{}: {message}", path.display());

        // The CLI says the same, on stderr, with exit code 1.
        let out = server.gust(&["deploy", "bad", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(reason));
    }
    // Without its content type an upload is refused: a web page cannot
    // deploy through a simple cross-site POST.
    let response = server
        .http
        .post(format!("{}/v1/functions/bad/versions", server.api))
        .header("content-type", "text/plain")
        .body(std::fs::read(&guests().hello).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // An upload far over the cap still gets its answer, not a reset.
    let big = write("huge.wasm", &vec![0u8; 8 << 20]);
    let out = server.gust(&["deploy", "bad", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than the upload cap"));

    // Nothing was created by the refused uploads.
    assert_eq!(server.gust_json(&["ls"]), serde_json::json!([]));

    let bad_name = server.gust(&["deploy", "Bad_Name", guests().hello.to_str().unwrap()]);
    assert_eq!(bad_name.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("not a valid name"));
    let bad_limit = server.gust(&[
        "deploy",
        "x",
        guests().hello.to_str().unwrap(),
        "--timeout-ms",
        "0",
    ]);
    assert_eq!(bad_limit.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_limit.stderr).contains("timeout_ms"));
    // Bad usage exits 2.
    assert_eq!(server.gust(&["deploy"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_metrics_and_separate_listeners() {
    let server = Server::start();
    let doc: serde_json::Value = server
        .http
        .get(format!("{}/v1/openapi.json", server.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/functions",
        "/v1/functions/{name}/versions",
        "/v1/functions/{name}/logs",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(server.metric("gust_requests_total").await == 0);
    // The control API is not served on the data plane.
    let (status, _) = server.get("/v1/functions").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/").await;
    assert_eq!(status, 404);
    assert_eq!(server.metric("gust_requests_total").await, 2);
}

//! The control API against a hostile or careless caller (issue 23): the
//! last admin token is never revoked, free text is bounded, event
//! destinations name deployed functions, and the `Bearer` scheme is read
//! without regard to case on both listeners.

use serde_json::{Value, json};

use crate::harness::{Server, client_with_token, guests};

/// (status, parsed body) of a control-API request with the admin token.
async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("control API request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_admin_token_is_not_revoked() {
    let server = Server::start();
    let tokens = server.api_json("/v1/tokens").await;
    let admins: Vec<String> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(admins.len(), 1, "{tokens}");
    let first = &admins[0];

    // Alone, it is refused with a 409 that says why and what to do.
    let (status, body) = send(
        server
            .http
            .delete(format!("{}/v1/tokens/{first}", server.api)),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let text = message(&body);
    assert!(
        text.contains("last admin token") && text.contains("gust token create --role admin"),
        "{text}"
    );
    // The CLI says so too, and fails.
    let out = server.gust(&["token", "revoke", first]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("last admin token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It still works.
    let (status, _) = send(server.http.get(format!("{}/v1/tenants", server.api))).await;
    assert_eq!(status, 200);

    // An admin token that expires does not count: it would lock everyone
    // out later instead of now.
    let expiring = server.gust_json(&["token", "create", "--role", "admin", "--expires-in", "1d"]);
    let (status, _) = send(
        server
            .http
            .delete(format!("{}/v1/tokens/{first}", server.api)),
    )
    .await;
    assert_eq!(status, 409);

    // With a second lasting admin token, the first may go; then the second
    // is the last.
    let second = server.gust_json(&["token", "create", "--role", "admin"]);
    let second_http = client_with_token(second["token"].as_str().unwrap());
    let (status, body) =
        send(second_http.delete(format!("{}/v1/tokens/{first}", server.api))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(second_http.delete(format!(
        "{}/v1/tokens/{}",
        server.api,
        second["id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = send(second_http.delete(format!(
        "{}/v1/tokens/{}",
        server.api,
        expiring["id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = send(second_http.get(format!("{}/v1/tenants", server.api))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn free_text_fields_are_bounded() {
    let server = Server::start();
    server.deploy("hello", &guests().hello, &[]);
    let api = &server.api;
    let long = |n: usize| "x".repeat(n);

    // (request, the field the answer names, the limit it states)
    let cases = [
        (
            server
                .http
                .post(format!("{api}/v1/tokens"))
                .json(&json!({"role": "viewer", "description": long(100_000)})),
            "description",
            "256",
        ),
        (
            server
                .http
                .post(format!("{api}/v1/functions/hello/schedules"))
                .json(&json!({"expr": "@every 1h", "path": format!("/{}", long(5000))})),
            "path",
            "1024",
        ),
        (
            server
                .http
                .post(format!("{api}/v1/functions/hello/schedules"))
                .json(&json!({"expr": "@every 1h", "tz": long(1000)})),
            "tz",
            "64",
        ),
        (
            server
                .http
                .post(format!("{api}/v1/functions/hello/triggers"))
                .json(&json!({"bucket": "b", "prefix": long(5000)})),
            "prefix",
            "1024",
        ),
        (
            server
                .http
                .post(format!("{api}/v1/functions/hello/triggers"))
                .json(&json!({"bucket": "b", "path": long(5000)})),
            "path",
            "1024",
        ),
        (
            server
                .http
                .put(format!("{api}/v1/tenants/default/plan"))
                .json(&json!({
                    "id": long(1000),
                    "per_million_requests": 0,
                    "per_million_gb_seconds": 0,
                    "per_million_cpu_ms": 0,
                    "free_requests": 0,
                    "free_gb_seconds": 0
                })),
            "id",
            "64",
        ),
        (
            server
                .http
                .post(format!(
                    "{api}/v1/functions/hello/invocations?path=/{}",
                    long(2000)
                ))
                .body("x"),
            "path",
            "1024",
        ),
    ];
    for (request, field, limit) in cases {
        let (status, body) = send(request).await;
        assert_eq!(status, 400, "{field}: {body}");
        let text = message(&body);
        assert!(
            text.contains(&format!("`{field}`")) && text.contains(limit),
            "{field}: {text}"
        );
    }

    // A deploy's text parameters too, before the upload is read.
    let (status, body) = send(
        server
            .http
            .post(format!(
                "{api}/v1/functions/hello/versions?keep_alive={}",
                long(500)
            ))
            .header("content-type", "application/wasm")
            .body(std::fs::read(&guests().hello).unwrap()),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("`keep_alive`"), "{body}");
    let (status, body) = send(
        server
            .http
            .post(format!(
                "{api}/v1/functions/hello/versions?allow_internal_hosts={}",
                long(9000)
            ))
            .header("content-type", "application/wasm")
            .body(std::fs::read(&guests().hello).unwrap()),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let text = message(&body);
    assert!(
        text.contains("`allow_internal_hosts`") && text.contains("8192"),
        "{text}"
    );

    // Nothing refused was stored; values within the limits still work.
    let tokens = server.api_json("/v1/tokens").await;
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["description"].as_str().unwrap().len() <= 256),
        "{tokens}"
    );
    let (status, body) = send(
        server
            .http
            .post(format!("{api}/v1/tokens"))
            .json(&json!({"role": "viewer", "description": long(256)})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_destinations_must_be_deployed_functions_of_the_tenant() {
    let server = Server::start();
    let g = guests();
    let api = &server.api;
    let deploy = |name: &str, query: &str| {
        server
            .http
            .post(format!("{api}/v1/functions/{name}/versions?{query}"))
            .header("content-type", "application/wasm")
            .body(std::fs::read(&g.hello).unwrap())
    };

    // No such function.
    let (status, body) = send(deploy("source", "on_success=ghost")).await;
    assert_eq!(status, 404, "{body}");
    let text = message(&body);
    assert!(
        text.contains("`on_success`") && text.contains("`ghost`"),
        "{text}"
    );
    let (status, body) = send(deploy("source", "on_failure=ghost")).await;
    assert_eq!(status, 404, "{body}");
    assert!(message(&body).contains("`on_failure`"), "{body}");
    // Through the CLI: it fails, naming the flag's function.
    let out = server.gust(&[
        "deploy",
        "source",
        g.hello.to_str().unwrap(),
        "--on-failure",
        "ghost",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ghost"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A function created but never deployed serves nothing.
    let (status, _) = send(
        server
            .http
            .post(format!("{api}/v1/functions"))
            .json(&json!({"name": "empty"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = send(deploy("source", "on_success=empty")).await;
    assert_eq!(status, 404, "{body}");

    // Another tenant's function is not the caller's.
    server.gust_json(&["tenant", "create", "globex"]);
    let globex = server.token_for("globex", "owner", &[]);
    server.gust_json_as(&globex, &["deploy", "theirs", g.hello.to_str().unwrap()]);
    let (status, body) = send(deploy("source", "on_success=theirs")).await;
    assert_eq!(status, 404, "{body}");
    assert!(!message(&body).contains("globex"), "{body}");

    // Nothing was deployed by the refused attempts.
    let (status, _) = send(server.http.get(format!("{api}/v1/functions/source"))).await;
    assert_eq!(status, 404);

    // A deployed function of its own tenant is a destination.
    server.deploy("audit", &g.hello, &[]);
    let (status, body) = send(deploy("source", "on_success=audit&on_failure=audit")).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_read_without_regard_to_case() {
    let server = Server::start();
    // Private (the default), so the data plane checks the token.
    server.deploy("hello", &guests().hello, &[]);
    let anonymous = client_with_token("");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {}", server.token);
        let response = anonymous
            .get(format!("{}/v1/tenant", server.api))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "control API, {scheme}");
        let response = anonymous
            .get(format!("{}/hello/", server.url))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "data plane, {scheme}");
    }
    // Another scheme, or none, is still refused.
    for value in [format!("Basic {}", server.token), server.token.clone()] {
        let response = anonymous
            .get(format!("{}/v1/tenant", server.api))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{value}");
        let response = anonymous
            .get(format!("{}/hello/", server.url))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(response.status().as_u16(), 401 | 404),
            "{value}: {}",
            response.status()
        );
    }
}

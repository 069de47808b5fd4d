//! A guest never reaches this machine or a private network through its
//! outbound requests, whatever its allow-list says or its names resolve
//! to; only an admin can grant an internal host. And an invocation (and a
//! tenant) has only so many outbound requests open at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::harness::{Server, client_with_token, guests};

/// The port of the server's control API.
fn api_port(server: &Server) -> String {
    server.api.rsplit(':').next().unwrap().to_string()
}

/// A name of this machine from /etc/hosts that is not `localhost` (it
/// resolves to loopback without DNS), if there is one.
fn loopback_name() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts.lines().find_map(|line| {
        let mut fields = line.split('#').next()?.split_whitespace();
        let address = fields.next()?;
        if !(address.starts_with("127.") || address == "::1") {
            return None;
        }
        fields
            .find(|n| !n.contains("localhost"))
            .map(str::to_string)
    })
}

/// A server on `127.0.0.2` that answers every request after `delay`,
/// with `answer` (a whole HTTP response), counting connections open at
/// once (the most seen).
async fn local_server(delay: Duration, answer: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            seen.fetch_max(now, Ordering::SeqCst);
            let open = open.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, most)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_hosts_are_refused_at_deploy_and_only_an_admin_may_grant_one() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    // Through the CLI: a 400 that says what to do instead.
    for host in [
        "127.0.0.1",
        "localhost",
        "*.localhost",
        "0x7f000001",
        "10.0.0.1",
    ] {
        let out = server.gust(&["deploy", "tb", testbed, "--allow-host", host]);
        assert!(!out.status.success(), "{host} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains("internal address") && err.contains("--allow-internal-host"),
            "{host}: {err}"
        );
    }
    // Through the API: the status codes.
    let wasm = std::fs::read(&guests().testbed).unwrap();
    let deploy = |token: &str, query: &str| {
        let http = client_with_token(token);
        let url = format!("{}/v1/functions/tb/versions?{query}", server.api);
        let wasm = wasm.clone();
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/wasm")
                .body(wasm)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = deploy(&server.token, "allowed_hosts=127.0.0.1").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--allow-internal-host"), "{body}");

    // A deployer (even of its own tenant) cannot grant an internal host.
    let deployer = server.token_for("default", "deployer", &[]);
    let owner = server.token_for("default", "owner", &[]);
    for token in [&deployer, &owner] {
        let (status, body) = deploy(token, "allow_internal_hosts=127.0.0.1").await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("admin"), "{body}");
    }
    let out = server.gust_as(
        &deployer,
        &[
            "deploy",
            "tb",
            testbed,
            "--allow-internal-host",
            "127.0.0.1",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));

    // An admin can, and the function then reaches it (the control API
    // here: the grant is that wide, which is why only an admin gives it).
    let target = format!(
        "/tb/fetch?url=http://127.0.0.1:{}/healthz",
        api_port(&server)
    );
    let info = server.deploy(
        "tb",
        &guests().testbed,
        &["--allow-internal-host", "127.0.0.1"],
    );
    assert_eq!(info["limits"]["allow_internal_hosts"][0], "127.0.0.1");
    assert_eq!(server.get(&target).await, (200, "status 200".to_string()));
    // A later deploy by a deployer does not carry the grant over.
    server.gust_json_as(&deployer, &["deploy", "tb", testbed, "--allow-host", "*"]);
    let (_, body) = server.get(&target).await;
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_allowed_everything_cannot_reach_this_machine_in_any_form() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--allow-host", "*"]);
    let port = api_port(&server);
    let mut hosts: Vec<String> = [
        "127.0.0.1",
        "127.0.0.1.",
        "localhost",
        "localhost.",
        "LocalHost",
        "api.localhost",
        "[::1]",
        "0x7f000001",
        "0X7F.0.0.1",
        "2130706433",
        "127.1",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "0.0.0.0",
        "[::]",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let name = loopback_name();
    hosts.extend(name.clone());
    for host in &hosts {
        let (status, body) = server
            .get(&format!("/tb/fetch?url=http://{host}:{port}/healthz"))
            .await;
        assert_eq!(status, 200);
        assert!(body.contains("HttpRequestDenied"), "{host}: {body}");
    }
    // An absolute name (`vm.`) is not in /etc/hosts for the resolver, but
    // whatever it resolves to, it does not reach the API.
    if let Some(name) = name {
        let (_, body) = server
            .get(&format!("/tb/fetch?url=http://{name}.:{port}/healthz"))
            .await;
        assert!(body.starts_with("error"), "{name}.: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_name_that_resolves_to_this_machine_is_refused() {
    let Some(name) = loopback_name() else {
        eprintln!("no name of this machine in /etc/hosts: skipped");
        return;
    };
    let server = Server::start();
    // Listed by name (not only by `*`), it is still refused: what it
    // resolves to is checked for every request.
    server.deploy("tb", &guests().testbed, &["--allow-host", &name]);
    let (_, body) = server
        .get(&format!(
            "/tb/fetch?url=http://{name}:{}/healthz",
            api_port(&server)
        ))
        .await;
    assert!(body.contains("HttpRequestDenied"), "{name}: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_this_machine_is_refused_at_its_hop() {
    let server = Server::start();
    let api = format!("http://127.0.0.1:{}/healthz", api_port(&server));
    let (port, _) = local_server(
        Duration::ZERO,
        format!("HTTP/1.1 302 Found\r\nlocation: {api}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    )
    .await;
    // The redirecting server is granted (127.0.0.2 only); the hop it
    // sends the guest to is not.
    server.deploy(
        "tb",
        &guests().testbed,
        &["--allow-host", "*", "--allow-internal-host", "127.0.0.2"],
    );
    let (status, body) = server
        .get(&format!("/tb/follow?url=http://127.0.0.2:{port}/&hops=3"))
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert!(lines[0].ends_with("-> status 302"), "{body}");
    assert!(
        lines[1].starts_with(&api) && lines[1].contains("HttpRequestDenied"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_requests_open_at_once_are_capped_per_invocation_and_per_tenant() {
    let server = Server::start();
    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_string();
    let (port, most) = local_server(Duration::from_millis(3000), answer).await;
    server.deploy(
        "tb",
        &guests().testbed,
        &["--allow-internal-host", "127.0.0.2"],
    );
    let fanout = format!("/tb/fanout?url=http://127.0.0.2:{port}/&n=");

    // One invocation: 32 open at once, the rest told the limit is reached.
    let (status, body) = server.get(&format!("{fanout}40")).await;
    assert_eq!((status, body.as_str()), (200, "ok=32 limit=8 other=0"));
    assert!(most.load(Ordering::SeqCst) <= 32, "{most:?}");

    // Nine invocations of the tenant at once: 256 open at most between them.
    let calls: Vec<_> = (0..9)
        .map(|_| {
            let url = format!("{}{fanout}32", server.url);
            let http = server.http.clone();
            tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    let (mut ok, mut limit) = (0, 0);
    for call in calls {
        let body = call.await.unwrap();
        let counts: Vec<u32> = body
            .split(' ')
            .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
            .collect();
        assert_eq!(counts.len(), 3, "{body}");
        assert_eq!(counts[2], 0, "{body}");
        ok += counts[0];
        limit += counts[1];
    }
    assert_eq!((ok, limit), (256, 32));
    assert!(most.load(Ordering::SeqCst) <= 256, "{most:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_internal_host_is_matched_in_any_case_and_never_looked_up() {
    let server = Server::start();
    server.deploy("back", &guests().testbed, &[]);
    // Allowed everything: an uppercase or absolute `gust.internal` must
    // still be the in-process host, not a name sent to DNS.
    server.deploy("front", &guests().testbed, &["--allow-host", "*"]);
    for host in [
        "gust.internal",
        "GUST.INTERNAL",
        "Gust.Internal.",
        "gust.internal.",
    ] {
        let (status, body) = server
            .get(&format!("/front/call?url=http://{host}/back/"))
            .await;
        assert_eq!(
            (status, body.as_str()),
            (200, "status 200: testbed ok"),
            "{host}"
        );
    }
}

//! A hostile tenant against the others: what one tenant claims, calls or
//! floods must not reach, reveal or starve another tenant's functions.

use crate::harness::{Server, client_with_token, guests};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn get_on(server: &Server, token: &str, host: &str, path: &str) -> (u16, String) {
    let response = client_with_token(token)
        .get(format!("{}{path}", server.url))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_claim_paths_on_a_host_another_tenant_holds() {
    let server = Server::start();
    let g = guests();
    let hello = g.hello.to_str().unwrap();
    let testbed = g.testbed.to_str().unwrap();
    for tenant in ["shopco", "mallory"] {
        server.gust_json(&["tenant", "create", tenant]);
    }
    let shopco = server.token_for("shopco", "owner", &[]);
    let mallory = server.token_for("mallory", "owner", &[]);
    server.gust_json_as(
        &shopco,
        &[
            "deploy",
            "shop",
            hello,
            "--public",
            "--route",
            "shop.example.test",
        ],
    );
    server.gust_json_as(
        &shopco,
        &[
            "deploy",
            "api",
            hello,
            "--public",
            "--route",
            "api.example.test/v1",
        ],
    );
    server.gust_json_as(&mallory, &["deploy", "thief", testbed, "--public"]);

    // Every nesting under another tenant's host is refused, naming no one.
    for claim in [
        "shop.example.test/cart",
        "shop.example.test/cart/items",
        "SHOP.example.test/x",
        "api.example.test",
        "api.example.test/v1/admin",
        "api.example.test/v2",
    ] {
        let out = server.gust_as(&mallory, &["route", "add", "thief", claim]);
        assert_eq!(out.status.code(), Some(1), "{claim}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("another tenant") && !err.contains("shop`") && !err.contains("shopco"),
            "{claim}: {err}"
        );
        let response = client_with_token(&mallory)
            .put(format!("{}/v1/functions/thief/routes", server.api))
            .json(&[claim])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 409, "{claim}");
    }
    // Not at deploy either.
    let out = server.gust_as(
        &mallory,
        &[
            "deploy",
            "thief2",
            hello,
            "--route",
            "shop.example.test/cart",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // The holder itself nests freely.
    server.gust_json_as(
        &shopco,
        &[
            "deploy",
            "cart",
            hello,
            "--public",
            "--route",
            "shop.example.test/cart",
        ],
    );

    // A claimed host serves its holder's claims and nothing else: another
    // tenant's function, named in the path, is not served on that origin.
    let (status, _) = get_on(&server, "", "shop.example.test", "/@mallory/thief/headers").await;
    assert!(
        status == 200,
        "the holder's root claim serves every path: {status}"
    );
    let (status, body) = get_on(&server, "", "api.example.test", "/@mallory/thief/headers").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get_on(&server, "", "api.example.test", "/v1").await;
    assert_eq!(status, 200);
    // Elsewhere, names still work.
    let (status, _) = get_on(&server, "", "localhost", "/@mallory/thief/").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_the_internal_host_and_odd_prefixes_cannot_be_claimed() {
    let server = Server::start();
    let hello = guests().hello.to_str().unwrap();
    server.gust_json(&["deploy", "x", hello]);
    for bad in [
        "0x7f000001",
        "0x7F000001/a",
        "127.1",
        "2130706433",
        "gust.internal",
        "GUST.INTERNAL",
        "Gust.Internal/x",
        "api.gust.internal",
        "a.localhost",
        "/a/../b",
        "/a/./b",
        "/..",
        "/a%2fb",
        "/a%2Fb",
        "/a\\b",
    ] {
        let response = server
            .http
            .put(format!("{}/v1/functions/x/routes", server.api))
            .json(&[bad])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{bad}");
        let out = server.gust(&["route", "add", "x", bad]);
        assert_ne!(out.status.code(), Some(0), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_function_and_its_aliases_look_like_nothing_to_other_callers() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    let (acme, globex) = server.acme_and_globex();
    server.gust_json_as(&acme, &["deploy", "secret", testbed]);
    let url = |path: &str| format!("{}/@acme/{path}", server.url);
    let fetch = |token: String, url: String| async move {
        let response = client_with_token(&token).get(url).send().await.unwrap();
        let status = response.status().as_u16();
        let has_challenge = response.headers().contains_key("www-authenticate");
        (status, has_challenge, response.text().await.unwrap())
    };
    let missing = fetch(String::new(), url("nothing/")).await;
    for token in ["", "gust_nope", globex.as_str()] {
        for (path, same_as) in [("secret/", "nothing/"), ("secret:beta/", "nothing:beta/")] {
            let seen = fetch(token.to_string(), url(path)).await;
            let expected = fetch(token.to_string(), url(same_as)).await;
            assert_eq!(seen.0, 404, "{token:?} {path}");
            assert_eq!(
                (seen.0, seen.1, seen.2.replace("secret", "X")),
                (expected.0, expected.1, expected.2.replace("nothing", "X")),
                "{token:?} {path}"
            );
        }
    }
    assert_eq!(missing.0, 404);
    // Its own tenant still learns about a missing alias.
    let (status, _, body) = fetch(acme.clone(), url("secret:beta/")).await;
    assert_eq!(status, 404);
    assert!(body.contains("no alias"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_stay_with_the_function_on_the_shared_origin_and_tenants_get_origins_of_their_own()
{
    let server = Server::start_with(&["--tenant-domain", "tenants.test"]);
    let testbed = guests().testbed.to_str().unwrap();
    server.gust_json(&["tenant", "create", "acme"]);
    let acme = server.token_for("acme", "owner", &[]);
    server.gust_json_as(&acme, &["deploy", "app", testbed, "--public"]);
    server.gust_json(&["deploy", "site", testbed, "--public"]);
    let set_cookie = |host: &'static str, path: String| {
        let http = server.http.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let response = http.get(url).header("host", host).send().await.unwrap();
            let status = response.status().as_u16();
            let mut cookies: Vec<String> = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            // Origin-wide headers, listed after the cookies when present.
            for name in ["service-worker-allowed", "clear-site-data"] {
                if response.headers().contains_key(name) {
                    cookies.push(name.to_string());
                }
            }
            (status, cookies)
        }
    };
    // The shared origin: no Domain, and a Path under the function's own.
    let (status, cookies) = set_cookie(
        "localhost",
        "/@acme/app/cookie?value=sid=1!Path=/!Domain=localhost!HttpOnly".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cookies, ["sid=1; HttpOnly; Path=/@acme/app"]);
    let (_, cookies) = set_cookie("localhost", "/site/cookie?value=a=b".into()).await;
    assert_eq!(cookies, ["a=b; Path=/site"]);
    let (_, cookies) =
        set_cookie("localhost", "/site/cookie?value=a=b!Path=/site/cart".into()).await;
    assert_eq!(
        cookies,
        ["a=b;Path=/site/cart"],
        "within its own path: as set"
    );

    // A tenant's own origin: its functions by name, nobody else's.
    let (status, cookies) = set_cookie(
        "acme.tenants.test",
        "/app/cookie?value=sid=2!Path=/!Domain=tenants.test".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        cookies,
        ["sid=2; Path=/", "service-worker-allowed", "clear-site-data"],
        "the tenant's own origin: only the parent domain is taken away"
    );
    let (status, _) = set_cookie("ACME.tenants.test:8080", "/app/".into()).await;
    assert_eq!(status, 200);
    for (host, path) in [
        ("acme.tenants.test", "/site/"),
        ("acme.tenants.test", "/@default/site/"),
        ("default.tenants.test", "/app/"),
        ("x.acme.tenants.test", "/app/"),
    ] {
        let (status, _) = set_cookie(host, path.into()).await;
        assert_eq!(status, 404, "{host}{path}");
    }
    // No function may claim a host under the tenant domain.
    for claim in ["acme.tenants.test", "tenants.test/x", "a.b.tenants.test"] {
        let out = server.gust_as(&acme, &["route", "add", "app", claim]);
        assert_ne!(out.status.code(), Some(0), "{claim}");
        assert!(stderr(&out).contains("tenant domain"), "{}", stderr(&out));
    }
    // A claimed host is its tenant's, but not its parent domain.
    server.gust_json_as(&acme, &["route", "add", "app", "shop.acme.example"]);
    let (status, cookies) = set_cookie(
        "shop.acme.example",
        "/cookie?value=s=1!Domain=acme.example!Path=/".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        cookies,
        ["s=1; Path=/", "service-worker-allowed", "clear-site-data"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_flooding_the_node_leaves_room_for_the_others() {
    let server = Server::start_with(&["--max-in-flight", "40"]);
    let testbed = guests().testbed.to_str().unwrap();
    for tenant in ["flood", "quiet"] {
        server.gust_json(&["tenant", "create", tenant]);
    }
    let flood = server.token_for("flood", "owner", &[]);
    let quiet = server.token_for("quiet", "owner", &[]);
    server.gust_json_as(&flood, &["deploy", "slow", testbed, "--public"]);
    server.gust_json_as(&quiet, &["deploy", "fast", testbed, "--public"]);
    // 80 slow requests at once: twice what the node runs.
    let mut flooders = Vec::new();
    for _ in 0..80 {
        let http = server.http.clone();
        let url = format!("{}/@flood/slow/sleep?ms=4000", server.url);
        flooders.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // The other tenant is served, every time, while the flood runs.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, _) = get_on(&server, "", "localhost", "/@quiet/fast/").await;
        statuses.push(status);
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let flooded: Vec<u16> = futures_join(flooders).await;
    let served = flooded.iter().filter(|s| **s == 200).count();
    let refused = flooded.iter().filter(|s| **s == 503).count();
    assert_eq!(served + refused, 80, "{flooded:?}");
    assert!(
        (30..40).contains(&served),
        "a flooder holds at most 7/8: {served}"
    );
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn running_instances_are_admitted_against_the_nodes_memory_and_the_tenants_quota() {
    let server = Server::start_with(&["--memory-budget-mb", "1200"]);
    let testbed = guests().testbed.to_str().unwrap();
    // 1024 MiB reserves 896 + 8 (beyond the default limit, in full).
    server.gust_json(&["deploy", "big", testbed, "--public", "--memory-mb", "1024"]);
    let first = {
        let http = server.http.clone();
        let url = format!("{}/big/sleep?ms=2000", server.url);
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let response = server
        .http
        .get(format!("{}/big/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let text = response.text().await.unwrap();
    assert!(text.contains("memory"), "{text}");
    // Functions within the default limit are counted by the node's slots.
    server.gust_json(&["deploy", "small", testbed, "--public"]);
    assert_eq!(server.get("/small/").await.0, 200);
    assert_eq!(first.await.unwrap(), 200);
    // Once it ends, the memory is free again.
    assert_eq!(server.get("/big/").await.0, 200);

    // A tenant's functions may not ask for more memory than its quota.
    server.gust_json(&["tenant", "create", "acme"]);
    let acme = server.token_for("acme", "owner", &[]);
    let out = server.gust_as(&acme, &["deploy", "huge", testbed, "--memory-mb", "4096"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("function_memory_bytes"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_functions_component_and_artifact_leave_the_disk_once_nothing_uses_them() {
    let server = Server::start();
    let hello = guests().hello.to_str().unwrap();
    let count = || server.artifact_files();
    let before = count();
    let a = server.gust_json(&["deploy", "a", hello]);
    server.gust_json(&["deploy", "b", hello]);
    assert_eq!(count(), before + 1, "one artifact for the same bytes");
    assert!(server.gust(&["rm", "a"]).status.success());
    assert_eq!(count(), before + 1, "b still runs it");
    assert_eq!(server.get("/b/").await.0, 200);
    assert!(server.gust(&["rm", "b"]).status.success());
    assert_eq!(count(), before, "{a}");
    // Deployed again, it is compiled and served again.
    server.gust_json(&["deploy", "c", hello]);
    assert_eq!(server.get("/c/").await.0, 200);
    assert_eq!(count(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_revisions_say_nothing_of_other_tenants_writes() {
    let server = Server::start();
    let (acme, globex) = server.acme_and_globex();
    let put = |token: &str, key: &str| {
        let http = client_with_token(token);
        let url = format!("{}/v1/kv/b/keys/{key}", server.api);
        async move {
            let response = http.put(url).body("v").send().await.unwrap();
            assert_eq!(response.status(), 200);
            let written: serde_json::Value = response.json().await.unwrap();
            written["revision"].as_u64().unwrap()
        }
    };
    let first = put(&acme, "k").await;
    for i in 0..10 {
        put(&globex, &format!("k{i}")).await;
    }
    assert_eq!(put(&acme, "k").await, first + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_abandoned_while_it_waits_for_a_place_is_recorded_and_not_charged() {
    let server = Server::start();
    server.deploy(
        "one",
        &guests().testbed,
        &["--max-concurrency", "1", "--queue-wait-ms", "5000"],
    );
    let first = {
        let http = server.http.clone();
        let url = format!("{}/one/sleep?ms=1500", server.url);
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Waits for the one place, and gives up before it frees.
    let gone = server
        .http
        .get(format!("{}/one/", server.url))
        .timeout(std::time::Duration::from_millis(400))
        .send()
        .await;
    assert!(gone.is_err());
    assert_eq!(first.await.unwrap(), 200);
    let records = crate::abandoned::records(&server, 2).await;
    let mut outcomes: Vec<(String, u64, u64)> = records
        .values()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
                r["billed_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes.len(), 2, "{records:#?}");
    assert_eq!(
        outcomes[0],
        ("rejected".to_string(), 499, 0),
        "{records:#?}"
    );
    assert_eq!(outcomes[1].0, "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_origins_names_and_the_nodes_slots_cannot_be_hoarded() {
    let server = Server::start_with(&["--public-host", "gust.example.test"]);
    let testbed = guests().testbed.to_str().unwrap();
    server.gust_json(&["tenant", "create", "acme"]);
    let acme = server.token_for("acme", "owner", &[]);
    // The shared origin's public name is no one's, with any prefix.
    server.gust_json_as(&acme, &["deploy", "app", testbed]);
    for claim in ["gust.example.test", "GUST.example.test/x"] {
        let out = server.gust_as(&acme, &["route", "add", "app", claim]);
        assert_ne!(out.status.code(), Some(0), "{claim}");
        assert!(stderr(&out).contains("own host"), "{}", stderr(&out));
    }
    // Reservations are slots no one else may use: a tenant quota bounds them.
    let out = server.gust_as(
        &acme,
        &["deploy", "hog", testbed, "--reserved-concurrency", "300"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("quota `reserved_concurrency`"),
        "{}",
        stderr(&out)
    );
    server.gust_json_as(
        &acme,
        &["deploy", "fits", testbed, "--reserved-concurrency", "200"],
    );
    let out = server.gust_as(
        &acme,
        &["deploy", "more", testbed, "--reserved-concurrency", "100"],
    );
    assert_eq!(out.status.code(), Some(1), "250 in all");
}

/// The dashboard's session cookie is the node's: browsers scope cookies by
/// host, not port, so the data plane on the same host would otherwise
/// hand it to a guest (a deployer stealing an admin's session) or let a
/// guest plant one (fixing a victim's session).
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_never_receives_nor_sets_the_dashboards_session_cookie() {
    let server = Server::start();
    // A function named `ui` on the data plane: `/ui/…`, as the dashboard.
    server.deploy("ui", &guests().echo, &["--public"]);
    server.deploy("tb", &guests().testbed, &["--public"]);
    let response = server
        .http
        .get(format!("{}/ui/", server.url))
        .header(
            "cookie",
            "theme=dark; gust_session=stolen-id; __Host-gust_session=x",
        )
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.contains("theme=dark"), "{body}");
    assert!(
        !body.contains("stolen-id") && !body.contains("__Host-gust_session"),
        "{body}"
    );
    for planted in [
        "gust_session=fixed!Path=/ui",
        "__Host-gust_session=fixed!Path=/",
    ] {
        let response = server
            .http
            .get(format!("{}/tb/cookie?value={planted}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response
                .headers()
                .get_all("set-cookie")
                .iter()
                .next()
                .is_none(),
            "{planted}: {:?}",
            response.headers()
        );
    }
}

//! Applications: three functions deployed from one `gust.toml`, changed,
//! rolled back, split and promoted together while clients hammer them;
//! no answer ever mixes two releases, even for requests in flight while a
//! release lands (each calls through all three with pauses between). And
//! another tenant can neither see nor move the application.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{Server, guests};

/// The testbed with a custom section naming `release` appended: a valid
/// component with a digest of its own, so each release deploys new
/// versions.
fn component(release: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(&guests().testbed).unwrap();
    let name = b"gust-test-release";
    let payload = release.to_le_bytes();
    let content = 1 + name.len() + payload.len();
    assert!(content < 128);
    bytes.push(0);
    bytes.push(content as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

/// Writes the application `shop` (functions a, b, c, each in its own
/// folder, built by copying a component in place) for `release`.
pub(crate) fn write_app(dir: &Path, release: u32) {
    write_app_of(dir, release, &["a", "b", "c"]);
}

/// [`write_app`] with these functions only; each also has a variable of
/// its own, `OWN = "o<release>"`.
fn write_app_of(dir: &Path, release: u32, functions: &[&str]) {
    let mut toml = format!(
        "[app]\nname = \"shop\"\n\n[env]\nRELEASE = \"{release}\"\n\n[secrets]\nSHARED = \"s3cret-{release}\"\n"
    );
    for name in functions {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("fn.wasm"), component(release)).unwrap();
        toml.push_str(&format!(
            "\n[[functions]]\nname = \"{name}\"\nlang = \"rust\"\npublic = true\n[functions.build]\ncommand = \"true\"\nwasm = \"fn.wasm\"\n[functions.env]\nOWN = \"o{release}\"\n"
        ));
    }
    std::fs::write(dir.join("gust.toml"), toml).unwrap();
}

#[derive(Default)]
struct Seen {
    answers: std::collections::BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Clients calling `a` (which calls `b`, which calls `c`) until `stop`.
fn hammer(server: &Server, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..4)
        .map(|client| {
            let (http, url, stop) = (server.http.clone(), server.url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Seen::default();
                while !stop.load(Ordering::Relaxed) {
                    let answer = http
                        .get(format!("{url}/a/chain?name=RELEASE&next=b,c&sleep_ms=15"))
                        .header("gust-client", format!("client-{client}"))
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == 200 => {
                            *seen.answers.entry(r.text().await.unwrap()).or_default() += 1;
                        }
                        Ok(r) => seen.failures.push(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap()
                        )),
                        Err(e) => seen.failures.push(e.to_string()),
                    }
                }
                seen
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_moves_together_and_no_answer_mixes_two_releases() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().to_str().unwrap();
    write_app(dir.path(), 1);
    let released = server.gust_json(&["deploy", "--project", project]);
    assert_eq!(released["version"], 1, "{released}");
    assert_eq!(released["app"]["functions"]["c"], 1, "{released}");
    assert_eq!(
        server.get("/a/chain?name=RELEASE&next=b,c").await,
        (200, "1 1 1".into())
    );
    // A shared secret reaches every function and is never shown.
    assert_eq!(
        server.get("/a/chain?name=SHARED&next=b,c").await,
        (200, "s3cret-1 s3cret-1 s3cret-1".into())
    );
    let shown = server.api_json("/v1/apps/shop").await;
    assert!(!shown.to_string().contains("s3cret"), "{shown}");
    assert_eq!(
        shown["versions"][0]["vars"],
        serde_json::json!(["RELEASE", "SHARED"])
    );

    let stop = Arc::new(AtomicBool::new(false));
    let clients = hammer(&server, stop.clone());
    let pause = || tokio::time::sleep(Duration::from_millis(400));
    pause().await;
    // Release 2: every function and the shared variable change at once.
    write_app(dir.path(), 2);
    let released = server.gust_json(&["deploy", "--project", project]);
    assert_eq!(released["version"], 2, "{released}");
    pause().await;
    assert_eq!(
        server.get("/b/chain?name=RELEASE&next=c").await,
        (200, "2 2".into())
    );
    // Back to release 1, all together.
    let rolled = server.gust_json(&["app", "rollback", "shop"]);
    // A release is a snapshot: each function's own variables went back too.
    assert_eq!(
        server.get("/a/chain?name=OWN&next=b,c").await,
        (200, "o1 o1 o1".into())
    );
    assert_eq!(
        (rolled["live"].as_u64(), rolled["functions"]["a"].as_u64()),
        (Some(1), Some(1))
    );
    pause().await;
    // Release 3 as a canary for half the clients, then promoted.
    write_app(dir.path(), 3);
    let released = server.gust_json(&["deploy", "--project", project, "--canary", "50%"]);
    assert_eq!(released["app"]["split"]["version"], 3, "{released}");
    assert_eq!(released["app"]["live"], 1, "{released}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let promoted = server.gust_json(&["app", "promote", "shop"]);
    assert_eq!(promoted["live"], 3, "{promoted}");
    pause().await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Seen::default();
    for client in clients {
        let seen = client.await.unwrap();
        for (answer, n) in seen.answers {
            *all.answers.entry(answer).or_default() += n;
        }
        all.failures.extend(seen.failures);
    }
    assert!(
        all.failures.is_empty(),
        "requests failed during the moves: {:?}",
        all.failures
    );
    for answer in all.answers.keys() {
        let parts: Vec<&str> = answer.split(' ').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| *p == parts[0]),
            "an answer mixes releases: {answer:?} (all: {:?})",
            all.answers
        );
    }
    for release in ["1 1 1", "2 2 2", "3 3 3"] {
        assert!(
            all.answers.contains_key(release),
            "{release} never answered: {:?}",
            all.answers
        );
    }

    // Its history, listed; a version it never had is refused.
    let versions = server.gust_json(&["app", "versions", "shop"]);
    let states: Vec<(u64, String)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (3, "live".into()),
            (2, String::new()),
            (1, "previous".into())
        ]
    );
    let missing = server.gust(&["app", "rollback", "shop", "--to", "9"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no version 9"));

    // Usage grouped by application: every call of all three is the
    // application's (each member's attempts are metered on their own).
    let answered: u64 = all.answers.values().sum();
    let usage = Server::eventually(Duration::from_secs(10), || async {
        let report = server.gust_json(&["usage", "--by", "app"]);
        let shop = report["groups"]
            .as_array()?
            .iter()
            .find(|g| g["key"] == "shop")?
            .clone();
        (shop["invocations"].as_u64()? >= 3 * answered).then_some(report)
    })
    .await
    .expect("usage by application");
    assert_eq!(usage["groups"].as_array().unwrap().len(), 1, "{usage}");
    let members = server.gust_json(&["usage", "--app", "shop", "--by", "function"]);
    let keys: Vec<&str> = members["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b", "c"], "{members}");

    // A function of the live release cannot be removed on its own; one
    // the file no longer names stops being served, and can then go.
    let refused = server.gust(&["rm", "c"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("live release"));
    write_app_of(dir.path(), 4, &["a", "b"]);
    let out = server.gust(&["deploy", "--project", project]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("c of application shop no longer in"));
    assert_eq!(
        server.get("/a/chain?name=RELEASE&next=b").await,
        (200, "4 4".into())
    );
    assert_eq!(server.get("/c/").await.0, 404);
    // Removing the application removes its functions.
    let removed = server.gust_json(&["app", "rm", "shop"]);
    assert_eq!(
        removed["functions"].as_array().unwrap().len(),
        3,
        "{removed}"
    );
    assert_eq!(server.get("/b/").await.0, 404);
    assert_eq!(server.get("/a/").await.0, 404);
    assert_eq!(server.gust_json(&["ls"]).as_array().unwrap().len(), 0);
    assert_eq!(
        server.gust_json(&["app", "ls"]).as_array().unwrap().len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenant_neither_sees_nor_moves_an_application_and_members_stay_in_one() {
    let mut server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), 1);
    server.gust_json(&["deploy", "--project", dir.path().to_str().unwrap()]);
    let testbed = guests().testbed.to_str().unwrap();
    // A function of the application cannot be taken into another one.
    let taken = server.gust(&["deploy", "a", testbed, "--app", "other"]);
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("belongs to application `shop`"));
    let taken = server.gust(&["app", "release", "other", "b=1"]);
    assert!(String::from_utf8_lossy(&taken.stderr).contains("belongs to application `shop`"));
    assert_eq!(
        server.gust_json(&["app", "ls"]).as_array().unwrap().len(),
        1
    );
    // A release by hand keeps the shared variables and secrets.
    let by_hand = server.gust_json(&["app", "release", "shop", "a=1", "b=1", "c=1"]);
    assert_eq!(by_hand["version"], 2, "{by_hand}");
    assert_eq!(
        server.get("/a/chain?name=SHARED&next=b,c").await,
        (200, "s3cret-1 s3cret-1 s3cret-1".into())
    );
    // Bad releases are refused whole with 400 and a reason.
    let too_many: serde_json::Map<String, serde_json::Value> = (0..65)
        .map(|i| (format!("f{i}"), serde_json::json!(1)))
        .collect();
    for (body, says) in [
        (serde_json::json!({"functions": {}}), "name the functions"),
        (serde_json::json!({"functions": too_many}), "at most 64"),
        (
            serde_json::json!({"functions": {"a": 1}, "canary_percent": 0}),
            "above 0%",
        ),
        (
            serde_json::json!({"functions": {"a": 1}, "canary_percent": 10, "canary_window_ms": 10}),
            "between 1s and 24h",
        ),
        (
            serde_json::json!({"functions": {"a": 1}, "canary_window_ms": 5000}),
            "goes with `canary_percent`",
        ),
    ] {
        let answer = server
            .http
            .post(format!("{}/v1/apps/shop/releases", server.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    // Every change is in the tenant's audit log.
    let audit = server.gust_json(&["audit"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/v1/apps/shop/releases" && e["status"] == 201),
        "{audit}"
    );

    server.gust_json(&["tenant", "create", "mallory"]);
    let mallory = server.token_for("mallory", "owner", &[]);
    server.use_token(&mallory);
    assert_eq!(
        server.gust_json(&["app", "ls"]).as_array().unwrap().len(),
        0
    );
    for attempt in [
        vec!["app", "versions", "shop"],
        vec!["app", "rollback", "shop"],
        vec!["app", "promote", "shop"],
        vec!["app", "rm", "shop"],
        vec!["app", "release", "shop", "a=1"],
    ] {
        let out = server.gust(&attempt);
        assert!(
            !out.status.success(),
            "{attempt:?} succeeded for another tenant"
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("does not exist"), "{attempt:?}: {said}");
    }
    // Mallory's own application of the same name is hers alone.
    server.deploy("a", &guests().testbed, &["--app", "shop", "--public"]);
    let hers = server.gust_json(&["app", "release", "shop", "a=1"]);
    assert_eq!(hers["app"]["functions"]["a"], 1, "{hers}");
    assert_eq!(
        server.get("/@mallory/a/chain?name=RELEASE").await,
        (200, "-".into()),
        "her release shares nothing of the other tenant's"
    );
    assert_eq!(server.get("/a/chain?name=RELEASE").await, (200, "1".into()));
}

/// Clients calling the chain without a sticky key (each request draws its
/// side of a split), answers that fail where RELEASE is `fail`, until `stop`.
fn steady_load(server: &Server, fail: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let (http, url) = (server.http.clone(), server.url.clone());
    tokio::spawn(async move {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let _ = http
                .get(format!("{url}/a/chain?name=RELEASE&next=b,c&fail={fail}"))
                .send()
                .await;
            sent += 1;
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_release_is_judged_on_all_its_functions_and_rolled_back_or_promoted() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().to_str().unwrap();
    write_app(dir.path(), 1);
    server.gust_json(&["deploy", "--project", project]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&server, 2, stop.clone());

    // Release 2 fails (its `c` answers 500 under this load): rolled back
    // by itself long before its window ends.
    write_app(dir.path(), 2);
    let canary = server.gust_json(&["deploy", "--project", project, "--canary", "50%,5m"]);
    assert_eq!(canary["app"]["split"]["version"], 2, "{canary}");
    assert!(canary["app"]["canary_ends_at_ms"].is_u64(), "{canary}");
    let ended = Server::eventually(Duration::from_secs(20), || async {
        let app = server.api_json("/v1/apps/shop").await;
        app["split"].is_null().then_some(app)
    })
    .await
    .expect("the failing canary release ends");
    assert_eq!(ended["live"], 1, "{ended}");
    assert_eq!(ended["canaries"][0]["version"], 2, "{ended}");
    assert_eq!(ended["canaries"][0]["outcome"], "rolled_back", "{ended}");

    // Release 3 is as good as release 1: promoted when its window ends.
    write_app(dir.path(), 3);
    server.gust_json(&["deploy", "--project", project, "--canary", "50%,2s"]);
    let promoted = Server::eventually(Duration::from_secs(20), || async {
        let app = server.api_json("/v1/apps/shop").await;
        (app["live"] == 3).then_some(app)
    })
    .await
    .expect("the healthy canary release is promoted");
    assert_eq!(promoted["canaries"][1]["outcome"], "promoted", "{promoted}");
    assert_eq!(promoted["previous"], 1, "{promoted}");
    stop.store(true, Ordering::Relaxed);
    assert!(load.await.unwrap() > 20);
    assert_eq!(
        server.get("/a/chain?name=RELEASE&next=b,c").await,
        (200, "3 3 3".into())
    );
}

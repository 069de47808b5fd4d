//! Projects through the CLI against the real server: `gust new` from the
//! Rust template, `gust build`, `gust deploy` in the project folder (with
//! the manifest's limits, schedules and triggers), refused manifests, and
//! `gust dev` redeploying on a change.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::Server;

fn gust_in(server: &Server, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(args)
        .current_dir(dir)
        .env("GUST_API", &server.api)
        .env("GUST_TOKEN", &server.token)
        .env_remove("GUST_TENANT")
        .output()
        .expect("run gust")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_rust_project_builds_deploys_and_follows_its_manifest() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = gust_in(&server, tmp.path(), &["new", "greeter"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("greeter");
    assert!(project.join("gust.toml").exists());
    // Creating over it is refused.
    let out = gust_in(&server, tmp.path(), &["new", "greeter"]);
    assert_eq!(out.status.code(), Some(1));

    let out = gust_in(&server, &project, &["build", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(Path::new(built["wasm"].as_str().unwrap()).exists());

    // Schedules and limits from the manifest.
    let manifest = std::fs::read_to_string(project.join("gust.toml")).unwrap();
    let manifest = manifest.replace(
        "# [[schedules]]\n# expr = \"@every 1m\"\n# path = \"/tick\"",
        "[[schedules]]\nexpr = \"@every 1h\"\npath = \"/tick\"\n\n[[schedules]]\nexpr = \"@every 2h\"\nid = \"nightly\"",
    );
    std::fs::write(project.join("gust.toml"), &manifest).unwrap();
    let out = gust_in(&server, &project, &["deploy", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(version["name"], "greeter");
    assert_eq!(version["limits"]["memory_bytes"], 64 << 20);
    // Public, as the template says: no token needed.
    let body = reqwest::get(format!("{}/greeter/hi", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("from greeter") && body.contains("/hi"),
        "{body}"
    );
    let schedules = server.gust_json(&["schedule", "ls", "greeter"]);
    let mut ids: Vec<&str> = schedules
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["nightly", "toml-1"]);

    // A schedule added by hand stays; one gone from the manifest goes.
    server.gust_json(&["schedule", "add", "greeter", "@every 3h", "--id", "by-hand"]);
    let fewer = manifest.replace(
        "[[schedules]]\nexpr = \"@every 1h\"\npath = \"/tick\"\n\n",
        "",
    );
    std::fs::write(project.join("gust.toml"), &fewer).unwrap();
    let out = gust_in(&server, &project, &["deploy", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let schedules = server.gust_json(&["schedule", "ls", "greeter"]);
    let mut ids: Vec<&str> = schedules
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["by-hand", "nightly"]);

    // An unknown key is refused, named, and nothing is deployed.
    std::fs::write(
        project.join("gust.toml"),
        format!("{fewer}\n[limits2]\nmemory_mb = 1\n"),
    )
    .unwrap();
    let out = gust_in(&server, &project, &["deploy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("`limits2`"), "{}", text(&out));
    let versions = server.gust_json(&["versions", "greeter"]);
    assert_eq!(versions.as_array().unwrap().len(), 2);
    // [env] never overwrites a secret with a plain value.
    std::fs::write(project.join("gust.toml"), &fewer).unwrap();
    let mut secret = Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["secret", "set", "greeter", "GREETING"])
        .env("GUST_API", &server.api)
        .env("GUST_TOKEN", &server.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    secret
        .stdin
        .take()
        .unwrap()
        .write_all(b"sealed-greeting")
        .unwrap();
    assert!(secret.wait().unwrap().success());
    let out = gust_in(&server, &project, &["deploy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("would replace a secret"),
        "{}",
        text(&out)
    );
    assert!(
        server
            .gust(&["secret", "rm", "greeter", "GREETING"])
            .status
            .success()
    );
    // A build that fails says so, with the compiler's words.
    std::fs::write(project.join("gust.toml"), &fewer).unwrap();
    std::fs::write(project.join("src/lib.rs"), "this is not rust").unwrap();
    let out = gust_in(&server, &project, &["deploy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("the build"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn gust_dev_redeploys_on_every_change() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = gust_in(&server, tmp.path(), &["new", "live-edit"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("live-edit");
    let mut dev = Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["dev", "--poll-ms", "100"])
        .current_dir(&project)
        .env("GUST_API", &server.api)
        .env("GUST_TOKEN", &server.token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("{}/live-edit/", server.url);
    let answer = |wanted: &'static str| {
        let url = url.clone();
        async move {
            let response = reqwest::get(&url).await.ok()?;
            let body = response.text().await.ok()?;
            body.contains(wanted).then_some(body)
        }
    };
    let first =
        Server::eventually(Duration::from_secs(120), || answer("Hello from live-edit")).await;
    assert!(first.is_some(), "gust dev never deployed the project");
    let source = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    std::fs::write(
        project.join("src/lib.rs"),
        source.replace("You asked for", "Edited, you asked for"),
    )
    .unwrap();
    let second = Server::eventually(Duration::from_secs(120), || answer("Edited")).await;
    let _ = dev.kill();
    let _ = dev.wait();
    assert!(second.is_some(), "gust dev did not redeploy the change");
    let versions = server.gust_json(&["versions", "live-edit"]);
    assert_eq!(versions.as_array().unwrap().len(), 2);
}

/// Whether `tool` is on PATH. In CI a missing one fails the test; on a
/// developer's machine the test is skipped, saying so.
fn have(tool: &str, install: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs {tool}: {install}"
        );
        eprintln!("SKIPPED: {tool} is not installed ({install})");
    }
    found
}

/// `gust new NAME --lang LANG`, then `gust deploy` in it; returns the
/// function's answer to `/hi?x=1`.
async fn new_and_deploy(server: &Server, lang: &str, name: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = gust_in(server, tmp.path(), &["new", name, "--lang", lang]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join(name);
    assert!(project.join("wit/deps/http.wit").exists());
    let out = gust_in(server, &project, &["deploy", "--json"]);
    assert!(out.status.success(), "{lang}: {}", text(&out));
    let body = reqwest::get(format!("{}/{name}/hi?x=1", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Its variable, changed without a redeploy.
    server.gust_json(&["config", "set", name, "GREETING=Hej"]);
    let again = reqwest::get(format!("{}/{name}/", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.starts_with("Hej from"), "{lang}: {again}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_template_builds_and_serves() {
    if !have("npm", "Node.js 20 or newer, with npm") {
        return;
    }
    let server = Server::start();
    let body = new_and_deploy(&server, "js", "hello-js").await;
    assert_eq!(body, "Hello from hello-js! You asked for /hi?x=1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_template_builds_and_serves() {
    if !have("componentize-py", "pip install componentize-py==0.25.1") {
        return;
    }
    let server = Server::start();
    let body = new_and_deploy(&server, "python", "hello-py").await;
    assert_eq!(body, "Hello from hello-py! You asked for /hi?x=1\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_application_template_releases_two_functions_that_call_each_other() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = gust_in(&server, tmp.path(), &["new", "shop", "--template", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("shop");
    let out = gust_in(&server, &project, &["deploy", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let released: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(released["version"], 1, "{released}");
    assert_eq!(released["app"]["functions"]["shop-back"], 1, "{released}");
    let body = reqwest::get(format!("{}/shop-front/hi", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body,
        "Hello from shop-front; Hello from shop-back, asked for /hi\n"
    );
    // The inner function is private: reached through the front only.
    let inner = reqwest::get(format!("{}/shop-back/", server.url))
        .await
        .unwrap();
    assert_eq!(inner.status(), 404);
    // The shared variable changes with the next release, for both.
    let manifest = std::fs::read_to_string(project.join("gust.toml")).unwrap();
    std::fs::write(
        project.join("gust.toml"),
        manifest.replace("GREETING = \"Hello\"", "GREETING = \"Hi\""),
    )
    .unwrap();
    let out = gust_in(&server, &project, &["deploy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("released shop version 2 live"),
        "{}",
        text(&out)
    );
    let body = reqwest::get(format!("{}/shop-front/", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "Hi from shop-front; Hi from shop-back, asked for /\n");
}

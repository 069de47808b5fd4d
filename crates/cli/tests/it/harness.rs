//! Starts the real `gust` binary on free ports with its own data directory,
//! and builds the guest components once per test run.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Guests {
    pub hello: PathBuf,
    pub echo: PathBuf,
    pub testbed: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles `examples/` to `wasm32-wasip2` (once per test binary).
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = repo_root();
        install_wasm_target(&root);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("examples/Cargo.toml"))
            // Its own target directory, whatever CARGO_TARGET_DIR says.
            .arg("--target-dir")
            .arg(root.join("examples/target"))
            .status()
            .expect("run cargo to build the guests");
        assert!(
            status.success(),
            "building the guests failed; is the target installed? `rustup target add wasm32-wasip2`"
        );
        let dir = root.join("examples/target/wasm32-wasip2/release");
        Guests {
            hello: dir.join("hello.wasm"),
            echo: dir.join("echo.wasm"),
            testbed: dir.join("testbed.wasm"),
        }
    })
}

/// Adds the `wasm32-wasip2` target to the toolchain `rust-toolchain.toml`
/// names when it is missing, so that a fresh machine needs only the
/// README's two commands (rustup installs a missing toolchain with its
/// targets, but not a target missing from an installed toolchain).
fn install_wasm_target(root: &Path) {
    let libdir = Command::new("rustc")
        .current_dir(root)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output();
    let installed = libdir.is_ok_and(|out| {
        out.status.success() && Path::new(String::from_utf8_lossy(&out.stdout).trim()).is_dir()
    });
    if installed {
        return;
    }
    eprintln!("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    let added = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    if !added.is_ok_and(|s| s.success()) {
        eprintln!("could not add the target; run `rustup target add wasm32-wasip2` by hand");
    }
}

/// A running `gust up`.
pub struct Server {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    /// Data plane base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Control API base URL.
    pub api: String,
    /// The admin token `gust up` printed on the first start of its data
    /// directory (kept there for restarts); sent by `http` and `gust`.
    pub token: String,
    pub http: reqwest::Client,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_in(tmp.path(), extra);
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_in_env(tmp.path(), extra, env);
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `data_dir` (which outlives it, for restart tests).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_in_env(data_dir, extra, &[])
    }

    fn start_in_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .expect("server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gust"))
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start gust up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut api, mut token) = (None, None, None);
        let token_file = data_dir.join("admin-token");
        let mut data_line = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The token line, when there is one, comes after the data line.
        while url.is_none() || api.is_none() || !data_line {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                panic!("gust up did not print its addresses in time; its log:\n{log}")
            });
            if let Some(u) = line.strip_prefix("gust: functions on ") {
                url = Some(u.to_string());
            } else if let Some(a) = line.strip_prefix("gust: control API on ") {
                api = Some(a.to_string());
            } else if line.starts_with("gust: data in ") {
                data_line = true;
            }
        }
        // A cluster node prints its node line first.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(t) = line.strip_prefix("gust: admin token (shown once, keep it): ") {
                token = Some(t.to_string());
                std::fs::write(&token_file, t).expect("keep the admin token");
                break;
            }
        }
        let token = token
            .or_else(|| std::fs::read_to_string(&token_file).ok())
            .unwrap_or_default();
        Self {
            child: Some(child),
            _tmp: None,
            data_dir: data_dir.to_path_buf(),
            url: url.unwrap_or_default(),
            api: api.unwrap_or_default(),
            http: client_with_token(&token),
            token,
        }
    }

    /// Uses `token` (another node's admin token, say) from now on.
    pub fn use_token(&mut self, token: &str) {
        self.token = token.to_string();
        self.http = client_with_token(token);
    }

    /// Where the server keeps its data.
    /// Compiled artifacts in the data directory.
    pub fn artifact_files(&self) -> usize {
        std::fs::read_dir(self.data_dir().join("artifacts"))
            .expect("the artifacts directory")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            })
            .count()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the process; returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "gust did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (no drain, no flush) and waits for it.
    pub fn kill9(mut self) {
        self.signal("KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Polls `check` every 50 ms until it returns `Some`, for up to `limit`.
    pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = check().await {
                return Some(value);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET` on the control API, parsed as JSON.
    pub async fn api_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .expect("control API request")
            .json()
            .await
            .expect("control API JSON")
    }

    /// Waits (up to 20 s) until asynchronous invocation `id` is in `state`; returns its record.
    pub async fn wait_for_state(&self, id: &str, state: &str) -> serde_json::Value {
        self.wait_for_state_as(&self.token, id, state).await
    }

    /// `wait_for_state` for an invocation of `token`'s tenant.
    pub async fn wait_for_state_as(&self, token: &str, id: &str, state: &str) -> serde_json::Value {
        let http = client_with_token(token);
        Self::eventually(Duration::from_secs(30), || async {
            let record: serde_json::Value = http
                .get(format!("{}/v1/invocations/{id}", self.api))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (record["state"] == state).then_some(record)
        })
        .await
        .unwrap_or_else(|| panic!("{id} never reached {state}"))
    }

    /// Sends an asynchronous invocation; returns (status, invocation id).
    pub async fn submit(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        self.submit_as(&self.token, path, headers, body).await
    }

    /// `submit` with `token` (a function of its tenant: `/@tenant/name/…`).
    pub async fn submit_as(
        &self,
        token: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut request = client_with_token(token)
            .post(format!("{}{path}", self.url))
            .header("Gust-Invocation-Type", "Event")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("submit");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let id = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["invocation_id"].as_str().map(str::to_string))
            .unwrap_or(text);
        (status, id)
    }

    /// Sends only the head of an asynchronous invocation declaring a body of
    /// `length` bytes, with `Expect: 100-continue`, and returns the status
    /// the server answers before any body is sent.
    pub async fn submit_head(&self, path: &str, length: usize) -> u16 {
        use std::io::{Read as _, Write as _};
        let addr = self.url.trim_start_matches("http://").to_string();
        let path = path.to_string();
        let token = self.token.clone();
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nGust-Invocation-Type: Event\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).expect("write");
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
        })
        .await
        .expect("submit_head")
    }

    /// Runs a client command against this server.
    pub fn gust(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gust"))
            .args(args)
            .env("GUST_API", &self.api)
            .env("GUST_TOKEN", &self.token)
            .env_remove("GUST_TENANT")
            .output()
            .expect("run gust")
    }

    /// Runs a client command with another token (empty: none).
    pub fn gust_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gust"))
            .args(args)
            .env("GUST_API", &self.api)
            .env("GUST_TOKEN", token)
            .env_remove("GUST_TENANT")
            .output()
            .expect("run gust")
    }

    /// `gust_as(token, args + --json)`, asserting success, parsed.
    pub fn gust_json_as(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.gust_as(token, &all);
        assert!(
            out.status.success(),
            "gust {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// Creates the tenants `acme` and `globex` with the admin token;
    /// returns an owner's token of each.
    pub fn acme_and_globex(&self) -> (String, String) {
        for tenant in ["acme", "globex"] {
            self.gust_json(&["tenant", "create", tenant]);
        }
        (
            self.token_for("acme", "owner", &[]),
            self.token_for("globex", "owner", &[]),
        )
    }

    /// Creates a token of `role` in `tenant` with the admin token.
    pub fn token_for(&self, tenant: &str, role: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--role", role, "--tenant", tenant];
        args.extend_from_slice(extra);
        let info = self.gust_json(&args);
        info["token"].as_str().expect("a token").to_string()
    }

    /// `gust ... --json`, asserting success, parsed.
    pub fn gust_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.gust(&all);
        assert!(
            out.status.success(),
            "gust {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gust {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Deploys `wasm` as `name` through the CLI and returns the version info.
    pub fn deploy(&self, name: &str, wasm: &Path, extra: &[&str]) -> serde_json::Value {
        let wasm = wasm.to_str().expect("utf-8 path");
        let mut args = vec!["deploy", name, wasm];
        args.extend_from_slice(extra);
        self.gust_json(&args)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Prices the default tenant's invocations at 1,000 micro-units a
    /// request from now on (plan `pricey`, nothing free).
    pub async fn price_each_request(&self) {
        let response = self
            .http
            .put(format!("{}/v1/tenants/default/plan", self.api))
            .json(
                &serde_json::json!({"id": "pricey", "per_million_requests": 1_000_000_000u64,
                "per_million_gb_seconds": 0, "free_requests": 0, "free_gb_seconds": 0}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP client that sends `token` (if any) on every request.
/// The wall clock, Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn client_with_token(token: &str) -> reqwest::Client {
    // reqwest is built without a TLS provider of its own (as in `gust`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        && !token.is_empty()
    {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

//! The client commands: each is one or two calls to the control API (or,
//! for `invoke`, the data plane), printed for people or as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use gust_api::{
    DeadLetterInfo, ErrorBody, FunctionInfo, LogEntry, LogPage, Redriven, ScheduleInfo, VersionInfo,
};
use gust_core::InvocationRecord;
use gust_core::Outcome;
use gust_core::scaling::{KeepAlive, Provisioned};
use serde::de::DeserializeOwned;

use crate::output;

#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// Control API address.
    #[arg(
        long,
        env = "GUST_API",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    api: String,
    /// Act on this tenant (admins: any; others: their token's own).
    #[arg(long, env = "GUST_TENANT", global = true)]
    tenant: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Args, Clone)]
#[command(after_help = "Examples:
  gust deploy                                     the project here (gust.toml): build, deploy
  gust deploy hello hello.wasm
  gust deploy api api.wasm --memory-mb 256 --timeout-ms 5000 --allow-host api.github.com
  gust deploy site site.wasm --public
  gust deploy api api.wasm --keep-alive 5m --provisioned 1
  gust deploy api api.wasm --alias staging        live stays where it is
  gust deploy api api.wasm --canary 10%,5m        10% of live for 5 minutes, then judged
  gust deploy api api.wasm --route api.example.com --route /shop")]
pub struct DeployArgs {
    /// Function name: lowercase letters, digits and `-` (in a project:
    /// `gust.toml`'s, unless given).
    pub(crate) name: Option<String>,
    /// The component (`.wasm`) to deploy. Without it, the project in
    /// `--project` (its `gust.toml`) is built and deployed.
    pub(crate) file: Option<PathBuf>,
    /// The project folder, when no FILE is given.
    #[arg(long, default_value = ".")]
    pub(crate) project: PathBuf,
    /// Memory limit in MiB (default 128).
    #[arg(long)]
    pub(crate) memory_mb: Option<u64>,
    /// Wall-clock timeout in milliseconds (default 30000).
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// Largest request body in bytes (default 6 MiB).
    #[arg(long)]
    pub(crate) max_body_bytes: Option<u64>,
    /// Output kept per invocation in bytes (default 64 KiB).
    #[arg(long)]
    pub(crate) max_output_bytes: Option<u64>,
    /// A host the function may call (repeat for more; `*.example.com` for
    /// subdomains, `*` for any public host). Never this machine or a private
    /// network, whatever the name resolves to: see --allow-internal-host.
    #[arg(long = "allow-host")]
    pub(crate) allow_hosts: Vec<String>,
    /// RISKY, admin only: let the function call this internal host (an IP
    /// address or exact name of this machine or a private network, every
    /// port of it; e.g. a database). It can then reach whatever listens
    /// there, the control API included if it is on that address.
    #[arg(long = "allow-internal-host", value_name = "HOST")]
    pub(crate) allow_internal_hosts: Vec<String>,
    /// What the function may cost per calendar month, in micro-units of the
    /// tenant's price plan; past it, its invocations get 429 until the month ends.
    #[arg(long)]
    pub(crate) monthly_budget_micros: Option<u64>,
    /// Instances of the function running at once, at most; more requests
    /// wait (see --queue-depth, --queue-wait-ms), then get 429.
    #[arg(long)]
    pub(crate) max_concurrency: Option<u32>,
    /// Instances of the node set aside for this function alone: other
    /// functions cannot take them, and it runs on them only (so at most
    /// this many at once). A tenth of the node always stays shared.
    #[arg(long)]
    pub(crate) reserved_concurrency: Option<u32>,
    /// Requests that may wait for a free instance (default 64).
    #[arg(long)]
    pub(crate) queue_depth: Option<u32>,
    /// How long a request may wait for a free instance, in ms (default 1000).
    #[arg(long)]
    pub(crate) queue_wait_ms: Option<u64>,
    /// When the idle function leaves memory: `learned` (the default: from
    /// its own idle times) or a duration (`30s`, `10m`; `0ms`: at once).
    #[arg(long, value_parser = |s: &str| s.parse::<KeepAlive>())]
    pub(crate) keep_alive: Option<KeepAlive>,
    /// Instances kept warm whatever the traffic: `2`, or
    /// `'2@mon-fri 09:00-17:00'` (UTC) for those hours only.
    #[arg(long, value_parser = |s: &str| s.parse::<Provisioned>())]
    pub(crate) provisioned: Option<Provisioned>,
    /// Anyone with the URL may call it (a new function is private: callers need a token).
    #[arg(long, conflicts_with = "private")]
    pub(crate) public: bool,
    /// Callers need a token of the tenant that may invoke (the default).
    #[arg(long)]
    pub(crate) private: bool,
    /// Events: attempts in all, the first included (default 3).
    #[arg(long)]
    pub(crate) max_attempts: Option<u32>,
    /// Events: delay before the first retry in ms, doubled after (default 1000).
    #[arg(long)]
    pub(crate) backoff_ms: Option<u64>,
    /// Events: longest delay between attempts in ms (default 60000).
    #[arg(long)]
    pub(crate) max_backoff_ms: Option<u64>,
    /// Events: give up on an event this old, in ms (default 6 hours).
    #[arg(long)]
    pub(crate) max_event_age_ms: Option<u64>,
    /// Events: attempts running at once (default 16).
    #[arg(long)]
    pub(crate) concurrency: Option<u32>,
    /// Events: a function to tell of every delivered event.
    #[arg(long)]
    pub(crate) on_success: Option<String>,
    /// Events: a function to tell of every dead-lettered event.
    #[arg(long)]
    pub(crate) on_failure: Option<String>,
    /// The alias the new version takes over (default `live`, the
    /// function's URL); `--alias staging` leaves `live` where it is.
    #[arg(long, conflicts_with = "canary")]
    pub(crate) alias: Option<String>,
    /// A host name and/or path prefix it claims (repeat for more), such
    /// as `api.example.com`, `api.example.com/v1` or `/shop`, with
    /// `:alias` after to serve an alias; replaces those it has. A place
    /// another function holds fails the deploy.
    #[arg(long = "route", value_parser = |s: &str| s.parse::<gust_core::route::RouteClaim>().map(|_| s.to_string()))]
    pub(crate) routes: Vec<String>,
    /// Deploy as a canary: `10%,5m` sends it 10% of `live`'s traffic for
    /// 5 minutes, then promotes it, or rolls it back by itself as soon as
    /// its error rate or p99 latency is worse than the stable version's.
    #[arg(long, value_parser = |s: &str| s.parse::<gust_core::deploy::CanarySpec>().map(|_| s.to_string()))]
    pub(crate) canary: Option<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust invocations hello
  gust invocations hello --json")]
pub struct InvocationsArgs {
    /// Function name.
    name: String,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust invocation 1a21a69922a000000001")]
pub struct InvocationArgs {
    /// Invocation id (from the 202 answer or `x-request-id`).
    id: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust dlq hello                  list hello's dead letters
  gust dlq hello --redrive        queue them all again
  gust dlq hello --redrive ID     queue one again")]
pub struct DlqArgs {
    /// Function name.
    name: String,
    /// Queue dead letters again: all, or the one with this invocation id.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    redrive: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust ls
  gust ls --json")]
pub struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct NameArgs {
    /// Function name.
    name: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust invoke hello
  gust invoke echo --path /items?id=3 --data '{\"x\":1}' -H 'content-type: application/json'
  gust invoke echo --data @payload.bin
  gust invoke hello --verbose            the metered figures too
  gust invoke hello:staging              through an alias")]
pub struct InvokeArgs {
    /// Function name, or `NAME:ALIAS`.
    name: String,
    /// Path (and query) the function sees.
    #[arg(long, default_value = "/")]
    path: String,
    /// Request body; `@FILE` reads it from a file. Implies POST.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// HTTP method (default GET, or POST with --data).
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Also show the invocation's usage record (on stderr; in `usage` with --json).
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust logs hello
  gust logs hello --follow")]
pub struct LogsArgs {
    /// Function name.
    name: String,
    /// Keep waiting for new entries.
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    tenant: Option<String>,
}

impl Api {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        // A server with a certificate of its own (self-signed, a private CA).
        if let Some(path) = std::env::var_os("GUST_CA_CERT").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read GUST_CA_CERT {}", path.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("GUST_CA_CERT {} is not a PEM certificate", path.display())
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build()?;
        Ok(Self {
            base: args.api.trim_end_matches('/').to_string(),
            http,
            token: std::env::var("GUST_TOKEN").ok().filter(|t| !t.is_empty()),
            tenant: args.tenant.clone(),
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        let builder = match &self.tenant {
            Some(tenant) => builder.header("gust-tenant", tenant),
            None => builder,
        };
        self.authorize(builder)
    }

    /// Adds the token, if there is one (also for calls to private functions).
    pub fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a request; an error answer becomes an error naming its message.
    pub async fn send_raw(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::header::HeaderMap, bytes::Bytes)> {
        let response = builder.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => bail!("{}", body.error.message),
                Err(_) => bail!(
                    "the control API answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        Ok((headers, bytes))
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let (_, bytes) = self.send_raw(builder).await?;
        if bytes.is_empty() {
            // 204: decode `null`.
            return Ok(serde_json::from_slice(b"null")?);
        }
        serde_json::from_slice(&bytes)
            .context("the control API sent an answer this client cannot read")
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        // The root cause says what went wrong (refused, a certificate…).
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        if cause.to_string().contains("certificate") || cause.to_string().contains("Certificate") {
            anyhow::anyhow!(
                "cannot reach the control API at {}: {cause}; if the server uses a certificate of its own, point GUST_CA_CERT at it (PEM)",
                self.base
            )
        } else if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the control API at {} ({cause}); start it with `gust up` or set GUST_API / --api",
                self.base
            )
        } else {
            anyhow::anyhow!(
                "the request to the control API at {} failed: {e}",
                self.base
            )
        }
    }
}

/// A listing command: GETs `path` and prints the items as JSON or as a
/// table with one row per item.
pub(crate) async fn print_list<T>(
    api_args: &ApiArgs,
    path: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode>
where
    T: DeserializeOwned + serde::Serialize,
{
    let api = Api::new(api_args)?;
    let items: Vec<T> = api.send(api.request(reqwest::Method::GET, path)).await?;
    if api_args.json {
        output::print_json(&items)?;
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        output::table(header, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A removal command: DELETEs `path` and reports the `kind` `id` removed.
pub(crate) async fn print_removal(
    api_args: &ApiArgs,
    path: &str,
    kind: &str,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(api_args)?;
    let () = api.send(api.request(reqwest::Method::DELETE, path)).await?;
    if api_args.json {
        output::print_json(&serde_json::json!({ "id": id, "removed": true }))?;
    } else {
        println!("removed {kind} {id}");
    }
    Ok(ExitCode::SUCCESS)
}

impl DeployArgs {
    /// What `gust deploy --project DIR` would be given, with `api`.
    pub(crate) fn for_project(project: PathBuf, api: ApiArgs) -> Self {
        #[derive(clap::Parser)]
        struct Deploy {
            #[command(flatten)]
            args: DeployArgs,
        }
        let mut deploy = <Deploy as clap::Parser>::parse_from(["deploy"]).args;
        deploy.project = project;
        deploy.api = api;
        deploy
    }
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    deploy_version(args).await?;
    Ok(ExitCode::SUCCESS)
}

/// Deploys a component, or (without FILE) builds and deploys the project
/// in `--project`, then brings its schedules and triggers in line with
/// its `gust.toml`.
pub(crate) async fn deploy_version(mut args: DeployArgs) -> anyhow::Result<VersionInfo> {
    let project = match &args.file {
        Some(_) => None,
        None => {
            let project = crate::project::Project::load(&args.project)?;
            project.fill_in(&mut args);
            args.file = Some(project.build(args.api.json).await?);
            Some(project)
        }
    };
    let name = args
        .name
        .clone()
        .context("name the function: `gust deploy NAME FILE.wasm`")?;
    let file = args.file.clone().context("no component to deploy")?;
    let api = Api::new(&args.api)?;
    // A project's variables are in place before its new version serves.
    let mut env_applied = true;
    if let Some(project) = &project {
        env_applied = project
            .apply_env(&api, &name, args.alias.as_deref())
            .await?;
    }
    let bytes = tokio::fs::read(&file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if !args.allow_hosts.is_empty() {
        query.push(("allowed_hosts", args.allow_hosts.join(",")));
    }
    if !args.allow_internal_hosts.is_empty() {
        query.push(("allow_internal_hosts", args.allow_internal_hosts.join(",")));
    }
    let numbers = [
        ("memory_bytes", args.memory_mb.map(|mb| mb << 20)),
        ("timeout_ms", args.timeout_ms),
        ("max_body_bytes", args.max_body_bytes),
        ("max_output_bytes", args.max_output_bytes),
        ("monthly_budget_micros", args.monthly_budget_micros),
        ("max_concurrency", args.max_concurrency.map(u64::from)),
        (
            "reserved_concurrency",
            args.reserved_concurrency.map(u64::from),
        ),
        ("queue_depth", args.queue_depth.map(u64::from)),
        ("queue_wait_ms", args.queue_wait_ms),
        ("max_attempts", args.max_attempts.map(u64::from)),
        ("initial_backoff_ms", args.backoff_ms),
        ("max_backoff_ms", args.max_backoff_ms),
        ("max_age_ms", args.max_event_age_ms),
        ("concurrency", args.concurrency.map(u64::from)),
    ];
    for (key, value) in numbers {
        if let Some(value) = value {
            query.push((key, value.to_string()));
        }
    }
    if let Some(policy) = args.keep_alive {
        query.push(("keep_alive", policy.to_string()));
    }
    if let Some(provisioned) = args.provisioned {
        query.push(("provisioned", provisioned.to_string()));
    }
    if let Some(target) = &args.on_success {
        query.push(("on_success", target.clone()));
    }
    if let Some(target) = &args.on_failure {
        query.push(("on_failure", target.clone()));
    }
    if args.public || args.private {
        query.push(("public", args.public.to_string()));
    }
    if let Some(alias) = &args.alias {
        query.push(("alias", alias.clone()));
    }
    if let Some(canary) = &args.canary {
        query.push(("canary", canary.clone()));
    }
    if !args.routes.is_empty() {
        query.push(("routes", args.routes.join(",")));
    }
    let path = format!("/v1/functions/{name}/versions");
    let progress = (!args.api.json).then(|| {
        output::Progress::start(format!(
            "uploading and compiling {} ({:.1} MB)",
            file.display(),
            bytes.len() as f64 / 1e6
        ))
    });
    let version: VersionInfo = api
        .send(
            api.request(reqwest::Method::POST, &path)
                .query(&query)
                .header("content-type", "application/wasm")
                .body(bytes),
        )
        .await?;
    drop(progress);
    if args.api.json {
        output::print_json(&version)?;
    } else {
        println!(
            "deployed {} version {} ({} bytes, ready in {} ms)",
            version.name,
            version.version,
            version.size_bytes,
            version.prepare_ms.unwrap_or(0)
        );
        match version.activated.as_deref() {
            Some(gust_core::deploy::LIVE) | None => {}
            Some(activated) => println!("{activated}"),
        }
        println!("{}", version.url);
    }
    if let Some(project) = project {
        if !env_applied {
            project
                .apply_env(&api, &name, args.alias.as_deref())
                .await?;
        }
        project.reconcile(&api, &name, args.api.json).await?;
    }
    Ok(version)
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let functions: Vec<FunctionInfo> = api
        .send(api.request(reqwest::Method::GET, "/v1/functions"))
        .await?;
    if args.api.json {
        output::print_json(&functions)?;
    } else if functions.is_empty() {
        println!("no functions yet: deploy one with `gust deploy NAME FILE.wasm`");
    } else {
        let rows: Vec<Vec<String>> = functions
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.version.map_or("-".to_string(), |v| v.to_string()),
                    f.url.clone(),
                ]
            })
            .collect();
        output::table(&["NAME", "VERSION", "URL"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn versions(args: NameArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let versions: Vec<VersionInfo> = api
        .send(api.request(
            reqwest::Method::GET,
            &format!("/v1/functions/{}/versions", args.name),
        ))
        .await?;
    if args.api.json {
        output::print_json(&versions)?;
    } else {
        let function: FunctionInfo = api
            .send(api.request(
                reqwest::Method::GET,
                &format!("/v1/functions/{}", args.name),
            ))
            .await?;
        // Which aliases send it traffic: `live`, `staging`, `live (10%)`.
        let serving = |version: u64| {
            let mut names = Vec::new();
            for alias in &function.aliases {
                let share = alias.split.as_ref().map_or(0.0, |s| s.percent);
                if alias.version == version {
                    names.push(if share > 0.0 {
                        format!("{} ({}%)", alias.name, 100.0 - share)
                    } else {
                        alias.name.clone()
                    });
                }
                if let Some(split) = alias.split.as_ref().filter(|s| s.version == version) {
                    names.push(format!("{} ({}%)", alias.name, split.percent));
                }
            }
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            }
        };
        let rows: Vec<Vec<String>> = versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    serving(v.version),
                    output::timestamp(v.created_at_ms),
                    v.size_bytes.to_string(),
                    v.digest.chars().take(19).collect(),
                ]
            })
            .collect();
        output::table(&["VERSION", "ALIASES", "CREATED", "BYTES", "DIGEST"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let (name, alias) = gust_core::deploy::split_qualifier(&args.name);
    let mut function: FunctionInfo = api
        .send(api.request(reqwest::Method::GET, &format!("/v1/functions/{name}")))
        .await?;
    if alias != gust_core::deploy::LIVE {
        function.url = function
            .aliases
            .iter()
            .find(|a| a.name == alias)
            .map(|a| a.url.clone())
            .with_context(|| {
                format!("`{name}` has no alias `{alias}` (see `gust alias ls {name}`)")
            })?;
    }
    let body = match &args.data {
        Some(data) => match data.strip_prefix('@') {
            Some(file) => Some(
                tokio::fs::read(file)
                    .await
                    .with_context(|| format!("cannot read {file}"))?,
            ),
            None => Some(data.clone().into_bytes()),
        },
        None => None,
    };
    let method = match &args.method {
        Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("`{m}` is not an HTTP method"))?,
        None if body.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let mut request = api
        .http
        .request(method, format!("{}{}", function.url, path));
    if !function.public {
        request = api.authorize(request);
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header `{header}` is not of the form `name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the function at {}", function.url))?;
    let status = response.status();
    let invocation_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let headers: serde_json::Map<String, serde_json::Value> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let bytes = response.bytes().await?;
    let usage = if args.verbose {
        crate::usage::record_of(&api, name, &invocation_id, started_ms).await?
    } else {
        None
    };
    if args.api.json {
        output::print_json(&serde_json::json!({
            "status": status.as_u16(),
            "invocation_id": invocation_id,
            "headers": headers,
            "body": String::from_utf8_lossy(&bytes),
            "usage": usage,
        }))?;
    } else {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        stdout.write_all(&bytes)?;
        stdout.flush()?;
        if !status.is_success() {
            output::error(&format!(
                "{} answered {status} (invocation {invocation_id})",
                args.name
            ));
        }
        if args.verbose {
            eprintln!("{}", crate::usage::describe(&invocation_id, usage.as_ref()));
        }
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut after = 0;
    // Without --follow, --json prints one array; with it, one object per line.
    let mut collected = Vec::new();
    loop {
        let wait_ms = if args.follow { "10000" } else { "0" };
        let page: LogPage = api
            .send(
                api.request(
                    reqwest::Method::GET,
                    &format!("/v1/functions/{}/logs", args.name),
                )
                .query(&[
                    ("after", after.to_string().as_str()),
                    ("limit", "1000"),
                    ("wait_ms", wait_ms),
                ]),
            )
            .await?;
        let caught_up = page.entries.is_empty() || page.next == after;
        after = page.next;
        for entry in page.entries {
            if args.api.json && !args.follow {
                collected.push(entry);
            } else {
                print_log(&entry, args.api.json)?;
            }
        }
        if caught_up && !args.follow {
            break;
        }
    }
    if args.api.json && !args.follow {
        output::print_json(&collected)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_log(entry: &LogEntry, json: bool) -> anyhow::Result<()> {
    if json {
        // One JSON object per line, so `--follow --json` can be piped.
        println!("{}", serde_json::to_string(entry)?);
        return Ok(());
    }
    let r = &entry.record;
    let prefix = format!(
        "{} {} v{}",
        output::timestamp(r.time_ms),
        r.invocation_id,
        r.version
    );
    for line in r.stdout.lines() {
        println!("{prefix} stdout: {}", output::sanitize(line));
    }
    for line in r.stderr.lines() {
        println!("{prefix} stderr: {}", output::sanitize(line));
    }
    if r.truncated {
        println!("{prefix} (output past the function's limit was dropped)");
    }
    match &r.outcome {
        Outcome::Completed => {}
        Outcome::TimedOut => println!("{prefix} timed out after {} ms", r.duration_us / 1000),
        Outcome::Trapped { message } | Outcome::Failed { message } => {
            println!("{prefix} {}", output::sanitize(message))
        }
        Outcome::Cancelled => println!(
            "{prefix} cancelled after {} ms: the client went away",
            r.duration_us / 1000
        ),
    }
    Ok(())
}

pub async fn remove(args: NameArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let () = api
        .send(api.request(
            reqwest::Method::DELETE,
            &format!("/v1/functions/{}", args.name),
        ))
        .await?;
    if args.api.json {
        output::print_json(&serde_json::json!({ "name": args.name, "removed": true }))?;
    } else {
        println!("removed {}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn invocations(args: InvocationsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let records: Vec<InvocationRecord> = api
        .send(
            api.request(
                reqwest::Method::GET,
                &format!("/v1/functions/{}/invocations", args.name),
            )
            .query(&[("limit", args.limit.to_string())]),
        )
        .await?;
    if args.api.json {
        output::print_json(&records)?;
    } else if records.is_empty() {
        println!("no asynchronous invocations yet: send one with `Gust-Invocation-Type: Event`");
    } else {
        let rows: Vec<Vec<String>> = records.iter().map(invocation_row).collect();
        output::table(
            &["INVOCATION", "STATE", "ATTEMPTS", "ACCEPTED", "LAST STATUS"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn invocation_row(r: &InvocationRecord) -> Vec<String> {
    vec![
        r.invocation_id.clone(),
        serde_json::to_value(&r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        r.attempts.to_string(),
        output::timestamp(r.accepted_ms),
        r.last_status.map_or("-".to_string(), |s| s.to_string()),
    ]
}

pub async fn invocation(args: InvocationArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let record: InvocationRecord = api
        .send(api.request(
            reqwest::Method::GET,
            &format!("/v1/invocations/{}", args.id),
        ))
        .await?;
    if args.api.json {
        output::print_json(&record)?;
    } else {
        output::table(
            &["INVOCATION", "STATE", "ATTEMPTS", "ACCEPTED", "LAST STATUS"],
            &[invocation_row(&record)],
        );
        if let Some(error) = &record.last_error {
            println!("last error: {error}");
        }
        if let Some(at) = record.retry_at_ms {
            println!("next attempt at {}", output::timestamp(at));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    if let Some(id) = &args.redrive {
        let path = if id.is_empty() {
            format!("/v1/functions/{}/dead-letters/redrive", args.name)
        } else {
            format!("/v1/functions/{}/dead-letters/{id}/redrive", args.name)
        };
        let done: Redriven = api.send(api.request(reqwest::Method::POST, &path)).await?;
        if args.api.json {
            output::print_json(&done)?;
        } else {
            println!("queued {} dead letter(s) again", done.redriven);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let letters: Vec<DeadLetterInfo> = api
        .send(api.request(
            reqwest::Method::GET,
            &format!("/v1/functions/{}/dead-letters", args.name),
        ))
        .await?;
    if args.api.json {
        output::print_json(&letters)?;
    } else if letters.is_empty() {
        println!("no dead letters");
    } else {
        let rows: Vec<Vec<String>> = letters
            .iter()
            .map(|l| {
                vec![
                    l.invocation_id.clone(),
                    format!("{:?}", l.reason),
                    l.attempts.to_string(),
                    l.last_status.map_or("-".to_string(), |s| s.to_string()),
                    l.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::table(
            &[
                "INVOCATION",
                "REASON",
                "ATTEMPTS",
                "LAST STATUS",
                "LAST ERROR",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust schedule add hello '*/5 * * * * *'          every 5 seconds
  gust schedule add report '0 30 9 * * 1-5' --tz Europe/Paris --id weekday-report
  gust schedule add backup '0 0 3 * * *' --tz +02:00 --catch-up 1      run a missed 03:00 at start-up
  gust schedule add ping '@every 1m'
  gust schedule ls hello
  gust schedule rm hello weekday-report")]
pub struct ScheduleArgs {
    #[command(subcommand)]
    action: ScheduleAction,
}

#[derive(clap::Subcommand)]
enum ScheduleAction {
    /// Fire a function on a cron expression (with seconds) or an interval.
    Add {
        /// Function name.
        name: String,
        /// `sec min hour day month weekday`, five-field cron, or `@every 30s`.
        expr: String,
        /// `UTC` (default), a fixed offset such as `+02:00`, or a tz database name such as `Europe/Paris`.
        #[arg(long)]
        tz: Option<String>,
        /// A name for the schedule (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// After downtime, fire up to this many missed ticks (default 0: skip them).
        #[arg(long)]
        catch_up: Option<u32>,
        /// Request path the function sees (default `/`).
        #[arg(long)]
        path: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a function's schedules.
    Ls {
        /// Function name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a schedule.
    Rm {
        /// Function name.
        name: String,
        /// Schedule id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn schedule(args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        ScheduleAction::Add {
            name,
            expr,
            tz,
            id,
            catch_up,
            path,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let body = serde_json::json!({
                "expr": expr, "tz": tz, "id": id, "catch_up": catch_up, "path": path
            });
            let info: ScheduleInfo = api
                .send(
                    api.request(
                        reqwest::Method::POST,
                        &format!("/v1/functions/{name}/schedules"),
                    )
                    .header("content-type", "application/json")
                    .body(body.to_string()),
                )
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!(
                    "schedule {} fires {name} on `{}` ({}); next at {}",
                    info.id,
                    info.expr,
                    info.tz,
                    info.next_ms.map_or("-".to_string(), output::timestamp)
                );
            }
        }
        ScheduleAction::Ls {
            name,
            api: api_args,
        } => {
            let path = format!("/v1/functions/{name}/schedules");
            return print_list(
                &api_args,
                &path,
                &["ID", "SCHEDULE", "TZ", "NEXT"],
                |s: &ScheduleInfo| {
                    vec![
                        s.id.clone(),
                        s.expr.clone(),
                        s.tz.clone(),
                        s.next_ms.map_or("-".to_string(), output::timestamp),
                    ]
                },
            )
            .await;
        }
        ScheduleAction::Rm {
            name,
            id,
            api: api_args,
        } => {
            let path = format!("/v1/functions/{name}/schedules/{id}");
            return print_removal(&api_args, &path, "schedule", &id).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

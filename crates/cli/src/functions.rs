//! `gust deploy`, `gust ls`, `gust versions` and `gust rm`: functions
//! and their versions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use gust_api::{FunctionInfo, VersionInfo};
use gust_core::scaling::{KeepAlive, Provisioned};

use crate::http::{Api, ApiArgs};
use crate::output;

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
    /// Wall-clock timeout in milliseconds (default 30000): until a
    /// request's response head, an event's whole run.
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// A streaming response (server-sent events, a long download) is cut
    /// when nothing of it went out for this many ms (default 30000).
    #[arg(long)]
    pub(crate) stream_idle_ms: Option<u64>,
    /// A streaming response is cut this many ms after its head (default
    /// 900000: 15 minutes).
    #[arg(long)]
    pub(crate) stream_max_ms: Option<u64>,
    /// Accept WebSocket upgrades on the function's URLs: Gust holds each
    /// connection and runs the function for its connect, every message
    /// and its close.
    #[arg(long)]
    pub(crate) websocket: bool,
    /// WebSocket connections held at once on a node (default 1000).
    #[arg(long)]
    pub(crate) ws_max_connections: Option<u32>,
    /// Largest WebSocket message in bytes (default 65536; larger: close 1009).
    #[arg(long)]
    pub(crate) ws_max_message_bytes: Option<u64>,
    /// Close a WebSocket connection idle for this many ms (default 300000).
    #[arg(long)]
    pub(crate) ws_idle_ms: Option<u64>,
    /// Messages per second one WebSocket connection may send (default 50;
    /// faster: close 1008).
    #[arg(long)]
    pub(crate) ws_messages_per_second: Option<u32>,
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
    /// Send the invocation's trace context (`traceparent`) with outbound
    /// requests to hosts outside Gust, when the node exports traces. Off by
    /// default: a trace id tells the receiver which request it came from.
    #[arg(long)]
    pub(crate) trace_outbound: bool,
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
    /// Deploy as a member of application APP: the version is staged, and
    /// goes live with the others in a release (`gust app release`; `gust
    /// deploy` of an application's folder does both).
    #[arg(long, conflicts_with_all = ["alias", "canary"])]
    pub(crate) app: Option<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
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
    if args.file.is_none()
        && let Some(app) = crate::apps::AppProject::find(&args.project)?
    {
        return app.deploy(args).await;
    }
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
    deploy_with(args, project, false).await
}

/// Deploys `args.file` (built from `project`, if any): with `in_app`, as
/// a staged member of an application (nothing printed, its schedules,
/// triggers and sources left for after the release).
pub(crate) async fn deploy_with(
    args: DeployArgs,
    project: Option<crate::project::Project>,
    in_app: bool,
) -> anyhow::Result<VersionInfo> {
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
    if args.trace_outbound {
        query.push(("trace_outbound", "true".to_string()));
    }
    if args.websocket {
        query.push(("websocket", "true".to_string()));
    }
    let numbers = [
        ("memory_bytes", args.memory_mb.map(|mb| mb << 20)),
        ("timeout_ms", args.timeout_ms),
        ("stream_idle_ms", args.stream_idle_ms),
        ("stream_max_ms", args.stream_max_ms),
        ("ws_max_connections", args.ws_max_connections.map(u64::from)),
        ("ws_max_message_bytes", args.ws_max_message_bytes),
        ("ws_idle_ms", args.ws_idle_ms),
        (
            "ws_messages_per_second",
            args.ws_messages_per_second.map(u64::from),
        ),
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
    if let Some(app) = &args.app {
        query.push(("app", app.clone()));
    }
    let path = format!("/v1/functions/{name}/versions");
    let uploading = std::time::Instant::now();
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
    if !args.api.json {
        let took = uploading.elapsed().as_secs_f64();
        eprintln!("uploaded and compiled in {took:.1} s");
    }
    if in_app {
        if !args.api.json {
            eprintln!("staged {} version {}", version.name, version.version);
        }
        if let Some(project) = &project
            && !env_applied
        {
            project.apply_env(&api, &name, None).await?;
        }
        return Ok(version);
    }
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

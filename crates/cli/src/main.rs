//! The `gust` binary. `gust up` is the composition root: the only place that
//! picks backends (the embedded store, or NATS JetStream with `--cluster`) and wires the runtime, gateway
//! and control API together. Every other subcommand is a client of the
//! control API. Logic that a library crate could own does not live here.

mod access;
mod aliases;
mod apps;
mod cluster;
mod cluster_mode;
mod functions;
mod http;
mod invocations;
mod invoke;
mod kv;
mod listing;
mod logs;
mod otlp;
mod output;
mod project;
mod scale;
mod schedules;
mod sources;
mod telemetry;
mod ui_sessions;
mod up;
mod usage;
mod vars;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gust",
    version,
    about = "Gust: deploy WebAssembly functions and run them, on one machine or many.",
    after_help = "Examples:
  gust up                                   start the platform in ./.gust
  export GUST_TOKEN=gust_...                the admin token `gust up` printed
  gust deploy hello examples/target/wasm32-wasip2/release/hello.wasm --public
                                            the README's example, built as it says
  curl http://127.0.0.1:8080/hello/         --public: callers need no token
  gust invoke hello --path /x --data 'hi'
  gust logs hello --follow
  curl -X POST -H 'Gust-Invocation-Type: Event' -d '{}' http://127.0.0.1:8080/hello/
  gust invocations hello
  gust dlq hello --redrive
  gust kv put greeting hello && gust kv get greeting
  gust trigger add hello --bucket default
  gust usage --by function
  gust scale hello
  gust ls --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the platform: data plane, control API and embedded storage.
    Up(Box<up::UpArgs>),
    /// Create a function project from a template (Rust, JavaScript, Python).
    New(project::NewArgs),
    /// Build the project here (its gust.toml's build).
    Build(project::BuildArgs),
    /// Deploy a component as a new version of a function (created if
    /// missing); without a file, build and deploy the project here.
    Deploy(Box<functions::DeployArgs>),
    /// Build and deploy the project here, then again on every change.
    Dev(project::DevArgs),
    /// List functions.
    Ls(functions::ListArgs),
    /// List a function's versions.
    Versions(functions::NameArgs),
    /// A function's aliases (each with its own URL) and traffic splits: ls, set, rm.
    Alias(aliases::AliasArgs),
    /// Point an alias (`live` by default) back at its previous version.
    Rollback(aliases::RollbackArgs),
    /// Applications, functions released together: ls, versions, release, rollback, promote, rm.
    App(apps::AppArgs),
    /// Host names and path prefixes a function claims: ls, add, rm.
    Route(aliases::RouteArgs),
    /// A function's variables (environment and wasi:config): ls, set, rm.
    Config(vars::ConfigArgs),
    /// A function's secrets, sealed at rest and never shown: ls, set, rm.
    Secret(vars::SecretArgs),
    /// Call a function through the data plane and print its answer.
    Invoke(invoke::InvokeArgs),
    /// Show what a function's invocations printed.
    Logs(logs::LogsArgs),
    /// Remove a function with all its versions and logs.
    Rm(functions::NameArgs),
    /// List a function's asynchronous invocations (events) and their state.
    Invocations(invocations::InvocationsArgs),
    /// Show one asynchronous invocation.
    Invocation(invocations::InvocationArgs),
    /// List a function's dead letters, or redrive them.
    Dlq(invocations::DlqArgs),
    /// Fire functions on a schedule: add, ls, rm.
    Schedule(schedules::ScheduleArgs),
    /// Read and write the key-value store: put, get, ls, rm.
    Kv(kv::KvArgs),
    /// Run functions on changes in a bucket: add, ls, rm.
    Trigger(kv::TriggerArgs),
    /// Run functions on messages from brokers, databases and webhooks: add, ls, rm.
    Source(Box<sources::SourceArgs>),
    /// Tenants (admins): create, ls.
    Tenant(access::TenantArgs),
    /// API tokens of the tenant: create, ls, revoke.
    Token(access::TokenArgs),
    /// The tenant's log of control-plane changes.
    Audit(access::AuditArgs),
    /// What the tenant's invocations used and cost; exports of the ledger.
    Usage(usage::UsageArgs),
    /// A function's scaling: desired and warm instances, why, recent decisions.
    Scale(scale::ScaleArgs),
    /// The cluster: its nodes, NATS servers and streams (`status`).
    Cluster(cluster::ClusterArgs),
    /// Internal: compiles one component from stdin for `gust up`, within
    /// the given address-space and CPU-time limits.
    #[command(hide = true)]
    CompileWorker { memory_bytes: u64, cpu_seconds: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CompileWorker {
        memory_bytes,
        cpu_seconds,
    } = cli.command
    {
        // No async runtime: the worker's budget is for compiling.
        return ExitCode::from(
            u8::try_from(gust_runtime::worker_main(memory_bytes, cpu_seconds)).unwrap_or(1),
        );
    }
    // TLS for the client commands (and nothing else in the process picks one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(*args).await,
            Command::New(args) => project::new(args),
            Command::Build(args) => project::build(args).await,
            Command::Deploy(args) => functions::deploy(*args).await,
            Command::Dev(args) => project::dev(args).await,
            Command::Ls(args) => functions::list(args).await,
            Command::Versions(args) => functions::versions(args).await,
            Command::Alias(args) => aliases::alias(args).await,
            Command::Rollback(args) => aliases::rollback(args).await,
            Command::Route(args) => aliases::route(args).await,
            Command::Config(args) => vars::config(args).await,
            Command::Secret(args) => vars::secret(args).await,
            Command::Invoke(args) => invoke::invoke(args).await,
            Command::Logs(args) => logs::logs(args).await,
            Command::Rm(args) => functions::remove(args).await,
            Command::Invocations(args) => invocations::invocations(args).await,
            Command::Invocation(args) => invocations::invocation(args).await,
            Command::Dlq(args) => invocations::dlq(args).await,
            Command::Schedule(args) => schedules::schedule(args).await,
            Command::App(args) => apps::app(args).await,
            Command::Kv(args) => kv::kv(args).await,
            Command::Trigger(args) => kv::trigger(args).await,
            Command::Source(args) => sources::source(*args).await,
            Command::Tenant(args) => access::tenant(args).await,
            Command::Token(args) => access::token(args).await,
            Command::Audit(args) => access::audit(args).await,
            Command::Usage(args) => usage::usage(args).await,
            Command::Scale(args) => scale::scale(args).await,
            Command::Cluster(args) => cluster::cluster(args).await,
            Command::CompileWorker { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    // Tasks still parked (a dispatcher worker waiting for events, a
    // registry watch) hold nothing that needs flushing: do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            output::error(&format!("{e:#}"));
            if e.downcast_ref::<output::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

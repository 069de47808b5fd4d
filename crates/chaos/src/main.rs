//! `gust-chaos`: a Jepsen-style fault harness for Gust's cluster mode.
//!
//! Owns the scenarios (which fault, when), the run of each (start three
//! NATS servers and three gust nodes on loopback, deploy the test guest,
//! drive a bounded workload while the fault happens, heal, drain) and the
//! report. The workload lives in `workload`, the processes in `nodes`,
//! the checkers in `check` and `linearize`. It talks to gust only as a
//! client does (HTTP and the `gust` CLI) and to NATS only through the
//! store-nats testkit's process control: it depends on no gust library
//! but that testkit.
//!
//! ```text
//! cargo build --release -p gust -p gust-chaos
//! target/release/gust-chaos                      # every scenario, 30 s of load each
//! target/release/gust-chaos --scenarios S1,S3 --seconds 60
//! target/release/gust-chaos --short               # CI's bounded run
//! ```

mod budget;
mod check;
mod feeds;
mod linearize;
mod nodes;
mod proxy;
mod report;
mod workload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use check::Usage;
use nodes::World;
use report::Report;
use workload::{Clock, wall_ms};

/// Inject faults into a 3-node gust cluster on a 3-node NATS cluster and
/// check every acknowledged operation afterwards.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  gust-chaos --short\n  gust-chaos --scenarios S1,S2 --seconds 60 --rate 80\n  gust-chaos --json > chaos.json\n\nExit status: 0 when every checker passed, 1 when one found a violation, 2 when the harness itself failed."
)]
struct Args {
    /// Scenarios to run, comma-separated (S0..S9); all by default.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Seconds of workload in each scenario.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Events submitted per second, over all clients.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// The bounded run CI uses: 20 s of workload per scenario.
    #[arg(long)]
    short: bool,
    /// The `gust` binary (default: the one beside this program).
    #[arg(long)]
    gust: Option<PathBuf>,
    /// The `nats-server` binary (default: $GUST_NATS_SERVER, else .nats/bin/nats-server).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// The test guest (default: examples' testbed, built if missing).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Write every operation each scenario recorded to DIR
    /// (`<scenario>-events.jsonl`, `<scenario>-kv.jsonl`), for a post-mortem.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    S0,
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
    S8,
    S9,
}

const ALL: [Scenario; 10] = [
    Scenario::S0,
    Scenario::S1,
    Scenario::S2,
    Scenario::S3,
    Scenario::S4,
    Scenario::S5,
    Scenario::S6,
    Scenario::S7,
    Scenario::S8,
    Scenario::S9,
];

impl Scenario {
    fn parse(s: &str) -> anyhow::Result<Scenario> {
        ALL.iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .with_context(|| {
                format!(
                    "no scenario {s}: choose from {}",
                    ALL.map(|c| c.name()).join(", ")
                )
            })
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::S0 => "S0",
            Scenario::S1 => "S1",
            Scenario::S2 => "S2",
            Scenario::S3 => "S3",
            Scenario::S4 => "S4",
            Scenario::S5 => "S5",
            Scenario::S6 => "S6",
            Scenario::S7 => "S7",
            Scenario::S8 => "S8",
            Scenario::S9 => "S9",
        }
    }

    fn fault(self) -> &'static str {
        match self {
            Scenario::S0 => "none",
            Scenario::S1 => "kill -9 a gust node, restart after 10 s",
            Scenario::S2 => "kill -9 the events stream's NATS leader, restart; then a follower",
            Scenario::S3 => "SIGSTOP the events stream's NATS leader for 10 s",
            Scenario::S4 => "2 of 3 NATS servers down for 10 s",
            Scenario::S5 => "a gust node cut off from NATS for 10 s (TCP proxy)",
            Scenario::S6 if std::env::var("GUST_CHAOS_S6_STREAM").as_deref() == Ok("DATA") => {
                "the KV data stream's NATS leader partitioned from the other two for 10 s"
            }
            Scenario::S6 => {
                "the events stream's NATS leader partitioned from the other two for 10 s"
            }
            Scenario::S7 => "a gust node's wall clock 30 s ahead (libfaketime)",
            Scenario::S8 => "rolling restart of every NATS server, then every gust node",
            Scenario::S9 => "a NATS server's disk full for 10 s (tmpfs under its store)",
        }
    }
}

// Four workers: the proxies carrying NATS traffic run here too, and some
// process control blocks one (in `block_in_place`).
#[tokio::main(worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run_all(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gust-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_all(mut args: Args) -> anyhow::Result<bool> {
    if args.short {
        args.seconds = args.seconds.min(20);
    }
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|s| Scenario::parse(s))
            .collect::<anyhow::Result<_>>()?
    };
    let gust = match &args.gust {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .join("gust"),
    };
    if !gust.exists() {
        bail!(
            "no gust binary at {}: build it (`cargo build --release -p gust`) or pass --gust",
            gust.display()
        );
    }
    let nats = match &args.nats_server {
        Some(path) => path.clone(),
        None => gust_store_nats::testkit::binary().map_err(anyhow::Error::msg)?,
    };
    let guest = match &args.guest {
        Some(path) => path.clone(),
        None => build_testbed()?,
    };
    let mut reports = Vec::new();
    for scenario in scenarios {
        let started = Instant::now();
        eprintln!("==> {} ({})", scenario.name(), scenario.fault());
        let report = run(scenario, &args, &gust, &nats, &guest)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        eprintln!(
            "    {} in {:.0} s: {}",
            scenario.name(),
            started.elapsed().as_secs_f64(),
            if report.violations.is_empty() {
                "passed".to_string()
            } else {
                format!("FAILED: {}", report.violations.join("; "))
            }
        );
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report::json(&reports))?);
    } else {
        report::print_table(&reports);
    }
    Ok(reports.iter().all(|r| r.violations.is_empty()))
}

/// Builds `examples/testbed` for `wasm32-wasip2` (cargo skips it when it is current).
fn build_testbed() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "testbed",
        ])
        .arg("--manifest-path")
        .arg(root.join("examples/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("examples/target"))
        .status()
        .context("run cargo to build the test guest")?;
    if !status.success() {
        bail!(
            "building the test guest failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    Ok(root.join("examples/target/wasm32-wasip2/release/testbed.wasm"))
}

/// Requests per second to the budgeted function.
const BUDGET_RATE: u32 = 10;

/// One scenario, start to checkers.
async fn run(
    scenario: Scenario,
    args: &Args,
    gust: &Path,
    nats: &Path,
    guest: &Path,
) -> anyhow::Result<Report> {
    let mut world = World::start(gust, nats).await?;
    let guest_path = guest.display().to_string();
    // Events sleep 200 ms, so a node killed has attempts in flight; a
    // 2 s timeout keeps their lease (timeout + 10 s) short.
    world.gust_json(
        0,
        &[
            "deploy",
            "sink",
            &guest_path,
            "--concurrency",
            "16",
            "--timeout-ms",
            "2000",
        ],
    )?;
    world.gust_json(0, &["deploy", "ticker", &guest_path])?;
    world.gust_json(
        0,
        &[
            "schedule",
            "add",
            "ticker",
            "@every 1s",
            "--path",
            "/",
            "--id",
            "beat",
        ],
    )?;
    feeds::setup(&world, &guest_path)?;
    // Half of what its clients send: it runs out mid-run, as a fault is on.
    let budget_requests = BUDGET_RATE as u64 * args.seconds / 2;
    budget::setup(&world, &guest_path, budget_requests).await?;
    wait_served(&world, "sink").await?;
    let mut report = Report {
        scenario: scenario.name().into(),
        fault: scenario.fault().into(),
        ..Default::default()
    };
    let from_ms = wall_ms().saturating_sub(60_000);
    let clock = Clock(Instant::now());
    let mark = |clock: &Clock, what: &str| format!("{:>5.1} s {what}", clock.ms() as f64 / 1000.0);
    if scenario == Scenario::S7 {
        let skewed = blocking(|| world.skew_gust(2, "+30s"))?;
        if skewed.is_none() {
            if std::env::var("CI").as_deref() == Ok("true") {
                bail!("libfaketime is missing (apt-get install faketime)");
            }
            report
                .timeline
                .push("skipped: libfaketime is missing (apt-get install faketime)".into());
            return Ok(report);
        }
        world.wait_alive(3, Duration::from_secs(60)).await?;
        report
            .timeline
            .push(mark(&clock, "node c restarted with its clock 30 s ahead"));
    }
    if scenario == Scenario::S9 {
        let leader = world
            .stream_leader("QUEUES")
            .await
            .context("no QUEUES leader")?;
        if let Err(e) = blocking(|| world.small_disk(leader)) {
            if std::env::var("CI").as_deref() == Ok("true") {
                return Err(e);
            }
            report.timeline.push(format!("skipped: {e:#}"));
            return Ok(report);
        }
        world.wait_alive(3, Duration::from_secs(60)).await?;
        report.timeline.push(mark(
            &clock,
            &format!(
                "NATS {}'s store moved onto a 256 MB tmpfs",
                world.nats.nodes[leader].name
            ),
        ));
    }
    let until = Duration::from_secs(args.seconds) + clock.0.elapsed();
    let events = tokio::spawn(workload::submit_events(
        world.http.clone(),
        world.endpoints.clone(),
        clock,
        args.rate,
        8,
        until,
    ));
    let kv = tokio::spawn(workload::kv_clients(
        world.http.clone(),
        world.endpoints.clone(),
        clock,
        4,
        Duration::from_millis(100),
        until,
    ));
    let spend = tokio::spawn(budget::spend(
        world.http.clone(),
        world.endpoints.clone(),
        clock,
        BUDGET_RATE,
        until,
    ));
    let fault_over_ms = inject(scenario, &mut world, clock, until, &mut report.timeline).await?;
    let submits = events.await.context("the event clients")??;
    let kv_ops = kv.await.context("the KV clients")??;
    let spent = spend.await.context("the budget clients")??;
    let workload_s = until.as_secs_f64();
    if let Some(dir) = &args.record {
        record(dir, scenario, &submits, &kv_ops)?;
    }
    report
        .timeline
        .push(mark(&clock, "workload ended; healing"));
    heal(&mut world, &mut report.timeline).await?;
    report
        .timeline
        .push(mark(&clock, "healed: 3 NATS servers, 3 gust nodes"));
    // Ticks go on while the checkers wait for the drain; the schedule is
    // removed after it, so ticks near the end of the load count too.
    let accepted: HashSet<String> = submits
        .iter()
        .filter_map(|s| match &s.result {
            workload::SubmitResult::Accepted(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let usage = drain(&world, &accepted, from_ms, Duration::from_secs(120)).await?;
    report.timeline.push(mark(&clock, "drained"));
    let _ = blocking(|| world.gust_json(0, &["schedule", "rm", "ticker", "beat"]));
    if let Some(dir) = &args.record {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(std::fs::File::create(
            dir.join(format!("{}-usage.jsonl", scenario.name())),
        )?);
        for u in &usage {
            writeln!(
                out,
                "{}",
                serde_json::json!({"invocation_id": u.invocation_id, "attempt": u.attempt, "function": u.function, "trigger": u.trigger, "outcome": u.outcome, "start_ms": u.start_ms})
            )?;
        }
        world.keep_logs(dir, scenario.name())?;
    }
    let dead = dead_letters(&world, "sink").await;
    let counter = read_counter(&world).await;
    report.events = check::events(&submits, &usage, &dead, "sink", workload_s, fault_over_ms);
    report.ledger = check::ledger(&usage);
    report.budget = budget::check(budget_requests, &spent, &usage);
    // Ticks up to 5 s before the schedule's removal were due well before it.
    let ticks_until = wall_ms().saturating_sub(5_000);
    report.schedule = check::schedule(&usage, "ticker", "beat", 1000, ticks_until);
    report.strict_ticks = matches!(scenario, Scenario::S0 | Scenario::S7);
    report.strict_budget = scenario == Scenario::S0;
    report.kv = check::kv(&kv_ops, counter);
    let changes = feeds::collect(&world, &kv_ops, Duration::from_secs(60)).await;
    let dead_changes = dead_letters(&world, feeds::FUNCTION).await;
    report.feeds = feeds::check(&kv_ops, &changes, &dead_changes);
    report.timeline.push(mark(&clock, "change feed read"));
    if scenario == Scenario::S0 {
        report.deploys = Some(blocking(|| concurrent_deploys(&world, &guest_path))?);
        report.route_winners = Some(blocking(|| concurrent_route_claims(&world)));
    }
    report.violations = report::violations(&report);
    if !report.violations.is_empty() {
        for i in 0..3 {
            eprintln!(
                "--- gust node {} log tail ---\n{}",
                i,
                world.log_tail(i, 15)
            );
        }
    }
    Ok(report)
}

/// Runs the scenario's fault while the workload goes on; returns when
/// the fault is over (the workload may still run), with that time (ms
/// into the run; `None` for no fault).
async fn inject(
    scenario: Scenario,
    world: &mut World,
    clock: Clock,
    until: Duration,
    timeline: &mut Vec<String>,
) -> anyhow::Result<Option<u64>> {
    let at = |fraction: f64| until.mul_f64(fraction);
    let sleep_until = |t: Duration| async move {
        tokio::time::sleep(t.saturating_sub(clock.0.elapsed())).await;
    };
    let mut mark = |what: String| {
        timeline.push(format!("{:>5.1} s {what}", clock.ms() as f64 / 1000.0));
    };
    match scenario {
        Scenario::S0 | Scenario::S7 => return Ok(None),
        Scenario::S1 => {
            sleep_until(at(0.25)).await;
            world.kill_gust(1);
            mark("kill -9 gust node b".into());
            tokio::time::sleep(Duration::from_secs(10)).await;
            blocking(|| world.start_gust(1))?;
            mark("gust node b restarted".into());
        }
        Scenario::S2 => {
            sleep_until(at(0.2)).await;
            let leader = world
                .stream_leader("QUEUES")
                .await
                .context("no QUEUES leader")?;
            blocking(|| world.nats.signal(leader, "KILL"));
            mark(format!(
                "kill -9 NATS {} (the QUEUES leader)",
                world.nats.nodes[leader].name
            ));
            tokio::time::sleep(Duration::from_secs(5)).await;
            blocking(|| world.nats.restart(leader));
            mark(format!("NATS {} restarted", world.nats.nodes[leader].name));
            sleep_until(at(0.6)).await;
            let leader = world.stream_leader("QUEUES").await.unwrap_or(leader);
            let follower = (leader + 1) % 3;
            blocking(|| world.nats.signal(follower, "KILL"));
            mark(format!(
                "kill -9 NATS {} (a follower)",
                world.nats.nodes[follower].name
            ));
            tokio::time::sleep(Duration::from_secs(5)).await;
            blocking(|| world.nats.restart(follower));
            mark(format!(
                "NATS {} restarted",
                world.nats.nodes[follower].name
            ));
        }
        Scenario::S3 => {
            sleep_until(at(0.25)).await;
            let leader = world
                .stream_leader("QUEUES")
                .await
                .context("no QUEUES leader")?;
            blocking(|| world.nats.signal(leader, "STOP"));
            mark(format!(
                "SIGSTOP NATS {} (the QUEUES leader)",
                world.nats.nodes[leader].name
            ));
            tokio::time::sleep(Duration::from_secs(10)).await;
            blocking(|| world.nats.signal(leader, "CONT"));
            mark(format!("SIGCONT NATS {}", world.nats.nodes[leader].name));
        }
        Scenario::S4 => {
            sleep_until(at(0.15)).await;
            blocking(|| {
                world.nats.signal(0, "KILL");
                world.nats.signal(1, "KILL");
            });
            mark("kill -9 NATS n1 and n2 (no quorum)".into());
            tokio::time::sleep(Duration::from_secs(10)).await;
            blocking(|| {
                world.nats.restart(0);
                world.nats.restart(1);
            });
            mark("NATS n1 and n2 restarted".into());
        }
        Scenario::S5 => {
            sleep_until(at(0.25)).await;
            for proxy in &world.proxies {
                proxy.cut();
            }
            mark("gust node c cut off from NATS".into());
            tokio::time::sleep(Duration::from_secs(10)).await;
            for proxy in &world.proxies {
                proxy.heal();
            }
            mark("gust node c reconnected".into());
        }
        Scenario::S6 => {
            // The events stream's leader by default; `GUST_CHAOS_S6_STREAM=DATA`
            // cuts off the KV stream's instead (CHAOS.md).
            let stream = std::env::var("GUST_CHAOS_S6_STREAM").unwrap_or_else(|_| "QUEUES".into());
            sleep_until(at(0.25)).await;
            let leader = world
                .stream_leader(&stream)
                .await
                .with_context(|| format!("no {stream} leader"))?;
            world.partition_nats(leader, true);
            mark(format!(
                "NATS {} (the {stream} leader) partitioned from the others",
                world.nats.nodes[leader].name
            ));
            tokio::time::sleep(Duration::from_secs(3)).await;
            let routes = blocking(|| world.nats_routes(leader));
            mark(format!(
                "NATS {} reports {} routes during the partition",
                world.nats.nodes[leader].name,
                routes.map_or("unknown".to_string(), |r| r.to_string())
            ));
            tokio::time::sleep(Duration::from_secs(7)).await;
            world.partition_nats(leader, false);
            mark(format!(
                "partition of NATS {} healed",
                world.nats.nodes[leader].name
            ));
        }
        Scenario::S9 => {
            sleep_until(at(0.25)).await;
            // The server on the tmpfs (it led the stream when moved).
            let Some(full) = world.nats.nodes.iter().position(|n| {
                std::fs::read_to_string("/proc/mounts")
                    .is_ok_and(|m| m.contains(&n.store_dir.display().to_string()))
            }) else {
                bail!("no NATS store on a tmpfs");
            };
            let leader = world.stream_leader("QUEUES").await;
            world.fill_disk(full, true)?;
            mark(format!(
                "NATS {}'s disk full (it {} the QUEUES stream)",
                world.nats.nodes[full].name,
                if leader == Some(full) {
                    "leads"
                } else {
                    "follows on"
                }
            ));
            tokio::time::sleep(Duration::from_secs(10)).await;
            world.fill_disk(full, false)?;
            mark(format!("NATS {}'s disk freed", world.nats.nodes[full].name));
        }
        Scenario::S8 => {
            sleep_until(at(0.1)).await;
            for i in 0..3 {
                blocking(|| {
                    world.nats.signal(i, "TERM");
                    world.nats.restart(i);
                    world.nats.wait_ready(Duration::from_secs(60));
                });
                mark(format!(
                    "NATS {} restarted (SIGTERM)",
                    world.nats.nodes[i].name
                ));
            }
            for i in 0..3 {
                blocking(|| world.stop_gust(i));
                blocking(|| world.start_gust(i))?;
                world.wait_alive(3, Duration::from_secs(60)).await?;
                mark(format!(
                    "gust node {} restarted (SIGTERM)",
                    world.gust[i].name
                ));
            }
        }
    }
    Ok(Some(clock.ms()))
}

/// Writes the scenario's operations as JSON lines into `dir`.
fn record(
    dir: &Path,
    scenario: Scenario,
    submits: &[workload::Submit],
    kv_ops: &[workload::KvOp],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(
        dir.join(format!("{}-events.jsonl", scenario.name())),
    )?);
    for s in submits {
        writeln!(
            out,
            "{}",
            serde_json::json!({"node": s.node, "sent_ms": s.sent_ms, "answered_ms": s.answered_ms, "result": format!("{:?}", s.result)})
        )?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(
        dir.join(format!("{}-kv.jsonl", scenario.name())),
    )?);
    for op in kv_ops {
        writeln!(
            out,
            "{}",
            serde_json::json!({"key": op.key, "client": op.op.client, "call": format!("{:?}", op.op.call), "invoked_us": op.op.invoked, "outcome": format!("{:?}", op.op.outcome)})
        )?;
    }
    Ok(())
}

/// Runs blocking process control off the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Everything back up: NATS servers restarted or resumed, gust nodes too,
/// links healed; waits until every node sees three live nodes. A server
/// still unhealthy after 30 s is restarted (an operator's step, noted in
/// `timeline` with what its log said).
async fn heal(world: &mut World, timeline: &mut Vec<String>) -> anyhow::Result<()> {
    for proxy in &world.proxies {
        proxy.heal();
    }
    for i in 0..world.nats.nodes.len() {
        world.partition_nats(i, false);
    }
    blocking(|| {
        for i in 0..world.nats.nodes.len() {
            match world.nats.nodes[i].pid() {
                Some(_) => world.nats.signal(i, "CONT"),
                None => world.nats.restart(i),
            }
        }
    });
    let ready = blocking(|| world.nats.ready_within(Duration::from_secs(30)));
    if !ready {
        for i in 0..world.nats.nodes.len() {
            let node = &world.nats.nodes[i];
            let healthy = gust_store_nats::testkit::http_get(node.http_port, "/healthz")
                .is_some_and(|(status, _)| status == 200);
            if healthy {
                continue;
            }
            let said: Vec<String> = node
                .log()
                .lines()
                .filter(|l| l.contains("[ERR]") || l.contains("[WRN]"))
                .map(|l| l.chars().skip(33).take(160).collect())
                .collect();
            timeline.push(format!(
                "NATS {} unhealthy 30 s after the fault; restarted by hand. Its last warnings: {}",
                node.name,
                said[said.len().saturating_sub(3)..].join(" | ")
            ));
            blocking(|| {
                if world.nats.nodes[i].pid().is_some() {
                    world.nats.signal(i, "KILL");
                }
                world.nats.restart(i);
            });
        }
        blocking(|| world.nats.wait_ready(Duration::from_secs(90)));
    }
    for i in 0..3 {
        if world.gust_running(i) {
            world.signal_gust(i, "CONT");
        } else {
            blocking(|| world.start_gust(i))?;
        }
    }
    world.wait_alive(3, Duration::from_secs(90)).await
}

/// Every node serves `function` (a 200 from each).
async fn wait_served(world: &World, function: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, endpoint) in workload::live(&world.endpoints) {
        loop {
            let ok = world
                .http
                .get(format!("{}/{function}/", endpoint.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("{function} is not served at {}", endpoint.url);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Every node's usage records since `from_ms`, as node `a` exports them.
async fn usage(world: &World, from_ms: u64) -> anyhow::Result<Vec<Usage>> {
    let api = world.gust[0]
        .endpoint
        .as_ref()
        .map(|e| e.api.clone())
        .context("node a is down")?;
    // Far ahead: a node whose clock runs ahead stamps its records so.
    let to_ms = wall_ms() + 86_400_000;
    let text = world
        .http
        .get(format!(
            "{api}/v1/usage/records?format=jsonl&from_ms={from_ms}&to_ms={to_ms}"
        ))
        .timeout(Duration::from_secs(60))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text.lines().filter_map(Usage::parse).collect())
}

/// Waits until every accepted event has a successful run in the records
/// (or `within` passes), then a little longer for late duplicates.
async fn drain(
    world: &World,
    accepted: &HashSet<String>,
    from_ms: u64,
    within: Duration,
) -> anyhow::Result<Vec<Usage>> {
    let deadline = Instant::now() + within;
    loop {
        let records = usage(world, from_ms).await.unwrap_or_default();
        let done: HashSet<&str> = records
            .iter()
            .filter(|u| u.outcome == "success")
            .map(|u| u.invocation_id.as_str())
            .collect();
        if accepted.iter().all(|id| done.contains(id.as_str())) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    usage(world, from_ms).await
}

/// The ids of `function`'s dead letters.
async fn dead_letters(world: &World, function: &str) -> HashSet<String> {
    let Some(api) = world.gust[0].endpoint.as_ref().map(|e| e.api.clone()) else {
        return HashSet::new();
    };
    let Ok(response) = world
        .http
        .get(format!("{api}/v1/functions/{function}/dead-letters"))
        .send()
        .await
    else {
        return HashSet::new();
    };
    let value: serde_json::Value = response.json().await.unwrap_or_default();
    let list = value
        .as_array()
        .or_else(|| value["dead_letters"].as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(|d| d["invocation_id"].as_str().map(str::to_string))
        .collect()
}

/// The counter's value after the run, read through node `a`.
async fn read_counter(world: &World) -> Option<u64> {
    let api = world.gust[0].endpoint.as_ref()?.api.clone();
    let response = world
        .http
        .get(format!(
            "{api}/v1/kv/{}/keys/{}",
            workload::BUCKET,
            workload::COUNTER
        ))
        .send()
        .await
        .ok()?;
    match response.status().as_u16() {
        404 => Some(0),
        200 => response.text().await.ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// Three deploys of one function at once, one through each node: each
/// gets its own version, and together they are consecutive.
fn concurrent_deploys(world: &World, guest: &str) -> anyhow::Result<Vec<u64>> {
    let results: Vec<anyhow::Result<serde_json::Value>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| scope.spawn(move || world.gust_json(i, &["deploy", "racer", guest])))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a deploy panicked")))
            })
            .collect()
    });
    let mut versions = Vec::new();
    for result in results {
        versions.push(result?["version"].as_u64().context("a version")?);
    }
    versions.sort_unstable();
    Ok(versions)
}

/// Three functions claim one host at once, one through each node: exactly
/// one gets it.
fn concurrent_route_claims(world: &World) -> Vec<String> {
    let functions = ["sink", "ticker", "racer"];
    std::thread::scope(|scope| {
        let handles: Vec<_> = functions
            .iter()
            .enumerate()
            .map(|(i, f)| {
                scope.spawn(move || {
                    world
                        .gust_json(i, &["route", "add", f, "race.example.com"])
                        .is_ok()
                        .then(|| f.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    })
}

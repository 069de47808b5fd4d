//! `gust cluster status`: the nodes of the platform, the NATS servers
//! under it and its streams (`GET /v1/cluster`).

use std::process::ExitCode;

use gust_api::cluster::ClusterStatus;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Nodes (alive, last heartbeat, the registry revision each serves,
    /// warm functions, in-flight), NATS servers, stream leaders and lag.
    #[command(after_help = "Examples:
  gust cluster status
  gust cluster status --json")]
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Status(args) => status(args).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let status: ClusterStatus = api
        .send(api.request(reqwest::Method::GET, "/v1/cluster"))
        .await?;
    if args.api.json {
        output::print_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let alive = status.nodes.iter().filter(|n| n.alive).count();
    println!(
        "{} mode, answered by {}: {alive} of {} nodes alive",
        status.mode,
        status.node,
        status.nodes.len()
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                if n.alive { "alive" } else { "dead" }.into(),
                output::timestamp(n.last_heartbeat_ms),
                n.registry_revision.to_string(),
                n.warm_functions.to_string(),
                n.in_flight.to_string(),
                n.data_url.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "NODE",
            "STATE",
            "HEARTBEAT",
            "REVISION",
            "WARM",
            "IN-FLIGHT",
            "DATA PLANE",
        ],
        &rows,
    );
    if !status.servers.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = status
            .servers
            .iter()
            .map(|s| {
                vec![
                    if s.name.is_empty() {
                        "?".into()
                    } else {
                        s.name.clone()
                    },
                    s.url.clone(),
                    if s.reachable {
                        s.version.clone()
                    } else {
                        "unreachable".into()
                    },
                    if s.sync_always { "always" } else { "-" }.into(),
                ]
            })
            .collect();
        output::table(&["SERVER", "MONITOR", "VERSION", "SYNC"], &rows);
    }
    if !status.streams.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = status
            .streams
            .iter()
            .map(|s| {
                let lag: Vec<String> = s
                    .replicas
                    .iter()
                    .map(|r| {
                        format!(
                            "{}{}",
                            r.name,
                            if r.current {
                                String::new()
                            } else {
                                format!(" (behind {})", r.lag)
                            }
                        )
                    })
                    .collect();
                vec![
                    s.name.clone(),
                    s.leader.clone().unwrap_or_else(|| "NONE".into()),
                    lag.join(", "),
                    s.messages.to_string(),
                    s.consumers.to_string(),
                ]
            })
            .collect();
        output::table(
            &["STREAM", "LEADER", "FOLLOWERS", "MESSAGES", "CONSUMERS"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

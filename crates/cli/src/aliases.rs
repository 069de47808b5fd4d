//! `gust alias` (ls, set, rm), `gust rollback` and `gust route`: where a
//! function's aliases point, traffic splits, going back, and the hosts and
//! prefixes that reach it.

use std::process::ExitCode;

use anyhow::Context as _;
use gust_api::{AliasInfo, FunctionInfo, RolledBack};
use gust_core::deploy::{self, LIVE};
use gust_core::route::RouteClaim;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust alias ls hello
  gust alias set hello live 7                  all of live to version 7
  gust alias set hello staging 8               hello:staging serves version 8
  gust alias set hello live 7 --split 8:10%    90% to 7, 10% to 8
  gust alias rm hello staging

A split is sticky per client when requests carry a `gust-client` header
or cookie; every answer names its version in `gust-version`.")]
pub struct AliasArgs {
    #[command(subcommand)]
    command: AliasCommand,
}

#[derive(clap::Subcommand)]
enum AliasCommand {
    /// List a function's aliases: version, split, canary, URL.
    Ls {
        /// Function name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Point an alias (created if missing) at a version, optionally
    /// splitting its traffic with another one.
    Set {
        /// Function name.
        name: String,
        /// Alias name (`live`: the function's URL).
        alias: String,
        /// The version it serves.
        version: u64,
        /// `VERSION:SHARE`: send that share of its traffic to another version.
        #[arg(long, value_parser = parse_split)]
        split: Option<(u64, u16)>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an alias (not `live`).
    Rm {
        /// Function name.
        name: String,
        /// Alias name.
        alias: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `8:10%` → (8, 1000 basis points).
fn parse_split(text: &str) -> Result<(u64, u16), String> {
    let (version, share) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not `VERSION:SHARE` (such as `8:10%`)"))?;
    let version = version
        .trim()
        .parse()
        .map_err(|_| format!("`{version}` is not a version number"))?;
    Ok((version, deploy::parse_share(share)?))
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust rollback hello                 live back to the version it served before
  gust rollback hello --alias staging

Rolling back twice returns to where it was. A canary running on live is
ended instead: the stable version keeps all the traffic.")]
pub struct RollbackArgs {
    /// Function name.
    name: String,
    /// The alias to roll back.
    #[arg(long, default_value = LIVE)]
    alias: String,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn alias(args: AliasArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AliasCommand::Ls {
            name,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let function: FunctionInfo = api
                .send(api.request(reqwest::Method::GET, &format!("/v1/functions/{name}")))
                .await?;
            if api_args.json {
                output::print_json(&function.aliases)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = function.aliases.iter().map(row).collect();
            output::table(&["ALIAS", "VERSION", "TRAFFIC", "PREVIOUS", "URL"], &rows);
            if let Some(last) = function.canaries.last() {
                println!(
                    "\nlast canary: version {} {} at {}: {}",
                    last.version,
                    last.outcome.as_str(),
                    output::timestamp(last.ended_at_ms),
                    last.reason
                );
            }
        }
        AliasCommand::Set {
            name,
            alias,
            version,
            split,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let body = serde_json::json!({
                "version": version,
                "split": split.map(|(version, bp)| serde_json::json!({
                    "version": version,
                    "percent": f64::from(bp) / 100.0,
                })),
            });
            let info: AliasInfo = api
                .send(
                    api.request(
                        reqwest::Method::PUT,
                        &format!("/v1/functions/{name}/aliases/{alias}"),
                    )
                    .json(&body),
                )
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!("{name}:{alias} → {}", traffic(&info));
                println!("{}", info.url);
            }
        }
        AliasCommand::Rm {
            name,
            alias,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            api.send_raw(api.request(
                reqwest::Method::DELETE,
                &format!("/v1/functions/{name}/aliases/{alias}"),
            ))
            .await?;
            if api_args.json {
                output::print_json(&serde_json::json!({ "removed": alias }))?;
            } else {
                println!("removed {name}:{alias}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let done: RolledBack = api
        .send(
            api.request(
                reqwest::Method::POST,
                &format!("/v1/functions/{}/rollback", args.name),
            )
            .query(&[("alias", args.alias.as_str())]),
        )
        .await
        .with_context(|| format!("cannot roll back {}:{}", args.name, args.alias))?;
    if args.api.json {
        output::print_json(&done)?;
    } else {
        println!("{}:{} → {}", args.name, args.alias, traffic(&done.alias));
    }
    Ok(ExitCode::SUCCESS)
}

/// `version 7`, `version 7 (90%), 8 (10%)`, with a canary's window.
fn traffic(alias: &AliasInfo) -> String {
    let mut text = match &alias.split {
        Some(split) => format!(
            "version {} ({}%), {} ({}%)",
            alias.version,
            100.0 - split.percent,
            split.version,
            split.percent
        ),
        None => format!("version {}", alias.version),
    };
    if let Some(canary) = &alias.canary {
        text.push_str(&format!(
            "; canary {} judged by {}",
            canary.version,
            output::timestamp(canary.ends_at_ms)
        ));
    }
    text
}

fn row(alias: &AliasInfo) -> Vec<String> {
    vec![
        alias.name.clone(),
        alias.version.to_string(),
        traffic(alias),
        alias.previous.map_or("-".into(), |p| p.to_string()),
        alias.url.clone(),
    ]
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust route ls api
  gust route add api api.example.com          every path on that host
  gust route add api api.example.com/v1       that prefix on that host
  gust route add shop /shop                   that prefix on any host
  gust route add api beta.example.com:staging  an alias
  gust route rm api api.example.com/v1

A host claim is matched first (longest prefix wins); a path claim only
when the path names no function. The function sees the path after the
prefix. A place another function holds is refused, naming it.")]
pub struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(clap::Subcommand)]
enum RouteCommand {
    /// List what a function claims.
    Ls {
        /// Function name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Claim a host name and/or path prefix.
    Add {
        /// Function name.
        name: String,
        /// `host`, `host/prefix` or `/prefix`, with `:alias` after.
        #[arg(value_parser = |s: &str| s.parse::<RouteClaim>())]
        claim: RouteClaim,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Give a claim up.
    Rm {
        /// Function name.
        name: String,
        /// As it was added.
        #[arg(value_parser = |s: &str| s.parse::<RouteClaim>())]
        claim: RouteClaim,
        #[command(flatten)]
        api: ApiArgs,
    },
}

async fn claims_of(api: &Api, name: &str) -> anyhow::Result<Vec<RouteClaim>> {
    api.send(api.request(
        reqwest::Method::GET,
        &format!("/v1/functions/{name}/routes"),
    ))
    .await
}

pub async fn route(args: RouteArgs) -> anyhow::Result<ExitCode> {
    let (name, api_args, claims) = match args.command {
        RouteCommand::Ls { name, api: a } => {
            let api = Api::new(&a)?;
            let claims = claims_of(&api, &name).await?;
            print_claims(&claims, a.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        RouteCommand::Add {
            name,
            claim,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let mut claims = claims_of(&api, &name).await?;
            claims.retain(|c| c.place() != claim.place());
            claims.push(claim);
            (name, a, claims)
        }
        RouteCommand::Rm {
            name,
            claim,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let mut claims = claims_of(&api, &name).await?;
            let before = claims.len();
            claims.retain(|c| c.place() != claim.place());
            if claims.len() == before {
                anyhow::bail!("`{name}` does not claim `{claim}` (see `gust route ls {name}`)");
            }
            (name, a, claims)
        }
    };
    let api = Api::new(&api_args)?;
    let texts: Vec<String> = claims.iter().map(ToString::to_string).collect();
    let now: Vec<RouteClaim> = api
        .send(
            api.request(
                reqwest::Method::PUT,
                &format!("/v1/functions/{name}/routes"),
            )
            .json(&texts),
        )
        .await?;
    print_claims(&now, api_args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_claims(claims: &[RouteClaim], json: bool) -> anyhow::Result<()> {
    if json {
        return output::print_json(&claims);
    }
    let rows: Vec<Vec<String>> = claims
        .iter()
        .map(|c| {
            vec![
                c.host.clone().unwrap_or_else(|| "(any)".into()),
                c.prefix.clone().unwrap_or_else(|| "/".into()),
                c.alias.clone().unwrap_or_else(|| LIVE.into()),
            ]
        })
        .collect();
    output::table(&["HOST", "PREFIX", "ALIAS"], &rows);
    Ok(())
}

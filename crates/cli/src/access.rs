//! `gust tenant`, `gust token` and `gust audit`: who may use the platform.

use std::process::ExitCode;

use gust_api::{AuditEntry, TenantInfo, TokenInfo};

use crate::http::{Api, ApiArgs};
use crate::listing::print_list;
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples (with an admin token in GUST_TOKEN):
  gust tenant create acme
  gust tenant ls
  gust token create --role owner --tenant acme      then give the token to acme")]
pub struct TenantArgs {
    #[command(subcommand)]
    action: TenantAction,
}

#[derive(clap::Subcommand)]
enum TenantAction {
    /// Create a tenant (admins).
    Create {
        /// Lowercase letters, digits and `-`.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List tenants and their quotas (admins).
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn tenant(args: TenantArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        TenantAction::Create { id, api: api_args } => {
            let api = Api::new(&api_args)?;
            let info: TenantInfo = api
                .send(
                    api.request(reqwest::Method::POST, "/v1/tenants")
                        .json(&serde_json::json!({ "id": id })),
                )
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!(
                    "created tenant {}; its functions answer at /@{}/<name>",
                    info.id, info.id
                );
            }
        }
        TenantAction::Ls { api: api_args } => {
            let header = ["TENANT", "FUNCTIONS", "CONCURRENCY", "RATE/S", "CREATED"];
            return print_list(&api_args, "/v1/tenants", &header, |t: &TenantInfo| {
                vec![
                    t.id.clone(),
                    t.quotas.functions.to_string(),
                    t.quotas.concurrency.to_string(),
                    t.quotas.invocations_per_second.to_string(),
                    output::timestamp(t.created_at_ms),
                ]
            })
            .await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust token create --role deployer --description ci --expires-in 30d
  gust token create --role invoker
  gust token ls
  gust token revoke 3f9a0c1b2d4e")]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(clap::Subcommand)]
enum TokenAction {
    /// Create a token for the tenant; it is shown once.
    Create {
        /// owner, deployer, viewer or invoker (admin: admins only).
        #[arg(long)]
        role: String,
        /// Expires after this long: `3600s`, `90m`, `12h`, `30d` (default: never).
        #[arg(long)]
        expires_in: Option<String>,
        /// What the token is for.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the tenant's tokens (never the tokens themselves).
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// Token id (the part after `gust_`, as `gust token ls` shows it).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A token lifetime in whole seconds (rounded up): `30d`, `12h`, `3600`.
fn lifetime_s(text: &str) -> anyhow::Result<u64> {
    Ok(gust_core::time::parse_duration_ms_or_seconds(text)?.div_ceil(1000))
}

fn expiry(t: &TokenInfo) -> String {
    match (t.revoked_at_ms, t.expires_at_ms) {
        (Some(at), _) => format!("revoked {}", output::timestamp(at)),
        (None, Some(at)) => output::timestamp(at),
        (None, None) => "never".into(),
    }
}

pub async fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        TokenAction::Create {
            role,
            expires_in,
            description,
            api: api_args,
        } => {
            let expires_in_s = expires_in.as_deref().map(lifetime_s).transpose()?;
            let api = Api::new(&api_args)?;
            let info: TokenInfo =
                api.send(api.request(reqwest::Method::POST, "/v1/tokens").json(
                    &serde_json::json!({
                        "role": role, "expires_in_s": expires_in_s, "description": description
                    }),
                ))
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!(
                    "created {} token {} for tenant {} (expires: {})",
                    info.role,
                    info.id,
                    info.tenant,
                    expiry(&info)
                );
                println!("{}", info.token.as_deref().unwrap_or_default());
                eprintln!("this is the only time the token is shown; use it as GUST_TOKEN");
            }
        }
        TokenAction::Ls { api: api_args } => {
            let header = ["ID", "ROLE", "CREATED", "EXPIRES", "DESCRIPTION"];
            return print_list(&api_args, "/v1/tokens", &header, |t: &TokenInfo| {
                vec![
                    t.id.clone(),
                    t.role.to_string(),
                    output::timestamp(t.created_at_ms),
                    expiry(t),
                    t.description.clone(),
                ]
            })
            .await;
        }
        TokenAction::Revoke { id, api: api_args } => {
            let api = Api::new(&api_args)?;
            let info: TokenInfo = api
                .send(api.request(reqwest::Method::DELETE, &format!("/v1/tokens/{id}")))
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!("revoked token {}", info.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust audit
  gust audit --json")]
pub struct AuditArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// The tenant's control-plane changes: who, what, when, and how it ended.
pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut entries: Vec<AuditEntry> = Vec::new();
    loop {
        let after = entries.last().map_or(0, |e| e.seq);
        let page: Vec<AuditEntry> = api
            .send(
                api.request(reqwest::Method::GET, "/v1/audit")
                    .query(&[("after", after.to_string()), ("limit", "1000".into())]),
            )
            .await?;
        let done = page.len() < 1000;
        entries.extend(page);
        if done {
            break;
        }
    }
    if args.api.json {
        output::print_json(&entries)?;
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    output::timestamp(e.time_ms),
                    e.token.clone(),
                    e.role.to_string(),
                    format!("{} {}", e.method, e.path),
                    e.status.to_string(),
                ]
            })
            .collect();
        output::table(&["TIME", "TOKEN", "ROLE", "ACTION", "STATUS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

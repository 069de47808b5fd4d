//! `gust config` (plain variables) and `gust secret` (sealed ones): what a
//! function's guest sees as environment variables and through
//! `wasi:config`, per function or per alias, changed without a redeploy.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use gust_api::VarInfo;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust config set hello GREETING=Hi COLOR=blue
  gust config set hello GREETING=Hej --alias staging    staging only
  gust config ls hello
  gust config get hello GREETING
  gust config rm hello COLOR

The next request sees a change; no redeploy. Guests read them as
environment variables and through wasi:config/store.")]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: VarCommand,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  printf %s \"$DB_PASSWORD\" | gust secret set api DB_PASSWORD
  gust secret set api TOKEN --value-file token.txt
  gust secret ls api                 names only: values are never shown
  gust secret get api TOKEN          whether it is set
  gust secret rm api TOKEN

A secret is sealed at rest and never shown again; setting it again
rotates it for the next request, without a redeploy.")]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(clap::Subcommand)]
enum VarCommand {
    /// List a function's variables (secrets by name only).
    Ls {
        /// Function name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print one variable's value (a secret's is never shown).
    Get {
        /// Function name.
        name: String,
        /// Variable name.
        key: String,
        /// The alias's own value (default: what `live` sees).
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set variables: NAME=VALUE ...
    Set {
        /// Function name.
        name: String,
        /// NAME=VALUE pairs.
        #[arg(required = true, value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
        /// Set them on this alias only (over the function's).
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove variables.
    Rm {
        /// Function name.
        name: String,
        /// Variable names.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Remove them from this alias.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand)]
enum SecretCommand {
    /// List a function's secrets, by name.
    Ls {
        /// Function name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Say whether a secret is set (its value is never shown).
    Get {
        /// Function name.
        name: String,
        /// Variable name.
        key: String,
        /// The alias's own secret (default: the function's).
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set (or rotate) a secret; its value is read from stdin, or a file.
    Set {
        /// Function name.
        name: String,
        /// Variable name.
        key: String,
        /// Read the value from this file instead of stdin (without its
        /// final line ending).
        #[arg(long)]
        value_file: Option<std::path::PathBuf>,
        /// Set it on this alias only.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove secrets.
    Rm {
        /// Function name.
        name: String,
        /// Variable names.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Remove them from this alias.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    gust_core::config::check_name(key)?;
    Ok((key.to_string(), value.to_string()))
}

/// Sends one change of variables; returns them all after it.
pub(crate) async fn patch(
    api: &Api,
    name: &str,
    body: serde_json::Value,
) -> anyhow::Result<Vec<VarInfo>> {
    api.send(
        api.request(
            reqwest::Method::PATCH,
            &format!("/v1/functions/{name}/vars"),
        )
        .json(&body),
    )
    .await
}

async fn list(api: &Api, name: &str) -> anyhow::Result<Vec<VarInfo>> {
    api.send(api.request(reqwest::Method::GET, &format!("/v1/functions/{name}/vars")))
        .await
}

fn print(vars: &[VarInfo], secrets: Option<bool>, json: bool) -> anyhow::Result<()> {
    let shown: Vec<&VarInfo> = vars
        .iter()
        .filter(|v| secrets.is_none_or(|s| v.secret == s))
        .collect();
    if json {
        return output::print_json(&shown);
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.alias.clone().unwrap_or_else(|| "(all)".into()),
                if v.secret {
                    "(secret)".into()
                } else {
                    output::sanitize(v.value.as_deref().unwrap_or_default()).into_owned()
                },
            ]
        })
        .collect();
    output::table(&["NAME", "ALIAS", "VALUE"], &rows);
    Ok(())
}

/// The variable `key` as `alias` sees it: its own, else the function's.
fn find<'a>(vars: &'a [VarInfo], key: &str, alias: Option<&str>) -> Option<&'a VarInfo> {
    let own = alias.and_then(|a| {
        vars.iter()
            .find(|v| v.name == key && v.alias.as_deref() == Some(a))
    });
    own.or_else(|| vars.iter().find(|v| v.name == key && v.alias.is_none()))
}

/// Prints a variable found by `gust config get` / `gust secret get`;
/// never a secret's value.
fn print_one(name: &str, key: &str, var: Option<&VarInfo>, json: bool) -> anyhow::Result<ExitCode> {
    let Some(var) = var else {
        output::error(&format!(
            "`{name}` has no variable {key} (see `gust config ls {name}`)"
        ));
        return Ok(ExitCode::FAILURE);
    };
    if json {
        output::print_json(var)?;
    } else if var.secret {
        println!("{key} is a secret: set, sealed, never shown");
    } else {
        println!("{}", var.value.as_deref().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        VarCommand::Get {
            name,
            key,
            alias,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let vars = list(&api, &name).await?;
            return print_one(&name, &key, find(&vars, &key, alias.as_deref()), a.json);
        }
        VarCommand::Ls { name, api: a } => {
            let api = Api::new(&a)?;
            print(&list(&api, &name).await?, None, a.json)?;
        }
        VarCommand::Set {
            name,
            pairs,
            alias,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let set: serde_json::Map<String, serde_json::Value> = pairs
                .into_iter()
                .map(|(k, v)| (k, serde_json::json!({ "value": v })))
                .collect();
            let vars = patch(
                &api,
                &name,
                serde_json::json!({ "alias": alias, "set": set }),
            )
            .await?;
            print(&vars, None, a.json)?;
        }
        VarCommand::Rm {
            name,
            keys,
            alias,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let vars = patch(
                &api,
                &name,
                serde_json::json!({ "alias": alias, "remove": keys }),
            )
            .await?;
            print(&vars, None, a.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn secret(args: SecretArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SecretCommand::Get {
            name,
            key,
            alias,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let vars = list(&api, &name).await?;
            let secret = find(&vars, &key, alias.as_deref()).filter(|v| v.secret);
            return print_one(&name, &key, secret, a.json);
        }
        SecretCommand::Ls { name, api: a } => {
            let api = Api::new(&a)?;
            print(&list(&api, &name).await?, Some(true), a.json)?;
        }
        SecretCommand::Set {
            name,
            key,
            value_file,
            alias,
            api: a,
        } => {
            gust_core::config::check_name(&key).map_err(anyhow::Error::msg)?;
            let value = match value_file {
                // A file's last line ending is not part of the value.
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    text.strip_suffix('\r').unwrap_or(text).to_string()
                }
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("type the value of {key}, then Ctrl-D:");
                    }
                    let mut value = String::new();
                    std::io::stdin()
                        .read_to_string(&mut value)
                        .context("cannot read the value from stdin")?;
                    value
                }
            };
            if value.is_empty() {
                bail!("the value of {key} is empty: pipe it in, or use --value-file");
            }
            let api = Api::new(&a)?;
            let body = serde_json::json!({
                "alias": alias,
                "set": { key.clone(): { "value": value, "secret": true } },
            });
            let vars = patch(&api, &name, body).await?;
            if a.json {
                print(&vars, Some(true), true)?;
            } else {
                println!("set secret {key} of {name} (it is never shown again)");
            }
        }
        SecretCommand::Rm {
            name,
            keys,
            alias,
            api: a,
        } => {
            let api = Api::new(&a)?;
            let vars = patch(
                &api,
                &name,
                serde_json::json!({ "alias": alias, "remove": keys }),
            )
            .await?;
            print(&vars, Some(true), a.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

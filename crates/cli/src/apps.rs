//! `gust app`: applications (several functions released as one unit) and
//! `gust deploy` of an application's folder: each function built and
//! staged, then one release makes them live together, then each
//! function's schedules, triggers and sources as its manifest says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use gust_api::{AppInfo, AppRemoved, Released};
use gust_core::manifest::{self, AppManifest, ProjectManifest};

use crate::functions::DeployArgs;
use crate::http::{Api, ApiArgs};
use crate::output;
use crate::project::Project;

/// An application's folder and its manifest.
pub struct AppProject {
    dir: PathBuf,
    manifest: AppManifest,
}

impl AppProject {
    /// The application described by `dir`'s `gust.toml`, if it describes
    /// one (`None`: a function's manifest, or none).
    pub fn find(dir: &Path) -> anyhow::Result<Option<AppProject>> {
        let path = dir.join(manifest::FILE_NAME);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        match ProjectManifest::parse(&text) {
            Ok(ProjectManifest::App(manifest)) => Ok(Some(AppProject {
                dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
                manifest,
            })),
            Ok(ProjectManifest::Function(_)) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// Builds and stages every function, releases them together (a canary
    /// with `--canary`), then applies each one's schedules, triggers and
    /// sources.
    pub async fn deploy(self, args: DeployArgs) -> anyhow::Result<ExitCode> {
        let app = self.manifest.app.name.clone();
        if args.name.is_some() || args.alias.is_some() {
            return Err(output::Usage(format!(
                "{} describes application `{app}`: deploy it without a name or --alias (its functions are named in it)",
                self.dir.join(manifest::FILE_NAME).display()
            ))
            .into());
        }
        let canary = match &args.canary {
            Some(spec) => Some(
                spec.parse::<gust_core::deploy::CanarySpec>()
                    .map_err(output::Usage)?,
            ),
            None => None,
        };
        // Secrets first: a missing one stops the deploy before any build.
        let mut vars: serde_json::Map<String, serde_json::Value> = self
            .manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!({ "value": v })))
            .collect();
        for (name, value) in &self.manifest.secrets {
            let value = gust_core::config::expand_env(value, |n| std::env::var(n).ok())
                .map_err(|e| output::Usage(format!("[secrets] {name}: {e}")))?;
            vars.insert(
                name.clone(),
                serde_json::json!({ "value": value, "secret": true }),
            );
        }
        let api = Api::new(&args.api)?;
        let mut members = Vec::new();
        let mut versions = BTreeMap::new();
        for member in &self.manifest.functions {
            let project = Project {
                dir: self.dir.join(member.dir()),
                manifest: member.manifest(),
            };
            let mut one = DeployArgs::for_project(project.dir.clone(), args.api.clone());
            project.fill_in(&mut one);
            one.app = Some(app.clone());
            one.file = Some(
                project
                    .build(args.api.json)
                    .await
                    .with_context(|| format!("building `{}`", member.name))?,
            );
            let version = crate::functions::deploy_with(one, Some(project.clone()), true).await?;
            versions.insert(member.name.clone(), version.version);
            members.push(project);
        }
        let body = serde_json::json!({
            "functions": versions,
            "vars": vars,
            "canary_percent": canary.map(|c| f64::from(c.basis_points) / 100.0),
            "canary_window_ms": canary.map(|c| c.window_ms),
        });
        let released: Released = api
            .send(
                api.request(reqwest::Method::POST, &format!("/v1/apps/{app}/releases"))
                    .json(&body),
            )
            .await?;
        for project in &members {
            project
                .reconcile(&api, &project.manifest.function.name, args.api.json)
                .await?;
        }
        // Functions of the application that this file no longer names:
        // not served by its releases any more, and left for the user to
        // remove.
        let functions: Vec<gust_api::FunctionInfo> = api
            .send(api.request(reqwest::Method::GET, "/v1/functions"))
            .await?;
        let dropped: Vec<&str> = functions
            .iter()
            .filter(|f| f.app.as_deref() == Some(app.as_str()) && !versions.contains_key(&f.name))
            .map(|f| f.name.as_str())
            .collect();
        if !dropped.is_empty() && !args.api.json {
            eprintln!(
                "note: {} of application {app} no longer in {}: remove with `gust rm NAME`",
                dropped.join(", "),
                manifest::FILE_NAME
            );
        }
        if args.api.json {
            output::print_json(&released)?;
        } else {
            let what = match &released.app.split {
                Some(split) if split.version == released.version => format!(
                    "as a canary taking {}% of the traffic, judged until {}",
                    split.percent,
                    released
                        .app
                        .canary_ends_at_ms
                        .map_or_else(|| "promoted".into(), output::timestamp)
                ),
                _ => "live".to_string(),
            };
            println!(
                "released {app} version {} {what}: {}",
                released.version,
                members_text(&versions)
            );
            for node in &released.not_serving {
                println!("not yet served by node {node}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn members_text(versions: &BTreeMap<String, u64>) -> String {
    versions
        .iter()
        .map(|(name, v)| format!("{name} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust deploy                          in an application's folder: build, stage, release together
  gust deploy --canary 10%,5m          a canary release: 10% of every function's traffic, judged 5 minutes
  gust app ls
  gust app versions shop
  gust app rollback shop               every function back to the previous release
  gust app rollback shop --to 3
  gust app promote shop                the canary release takes all traffic
  gust app release shop front=4 back=7 a release of versions staged by hand (gust deploy --app shop)
  gust app rm shop                     removes the application and its functions")]
pub struct AppArgs {
    #[command(subcommand)]
    action: AppAction,
}

#[derive(clap::Subcommand)]
enum AppAction {
    /// List the tenant's applications.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An application's releases, newest first.
    Versions {
        /// Application name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Release staged versions together: FUNCTION=VERSION for each.
    Release {
        /// Application name (created by its first release).
        name: String,
        /// FUNCTION=VERSION, one per function.
        #[arg(required = true, value_parser = parse_member)]
        functions: Vec<(String, u64)>,
        /// A canary release: `10%,5m` gives it 10% of every function's
        /// traffic for 5 minutes, judged on all of them, then promoted, or
        /// rolled back as soon as it is worse.
        #[arg(long, value_parser = |s: &str| s.parse::<gust_core::deploy::CanarySpec>().map(|_| s.to_string()))]
        canary: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move every function back together: to the release before the last
    /// move (or end a canary release), or to --to.
    Rollback {
        /// Application name.
        name: String,
        /// The release to go back to.
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a canary release take all traffic.
    Promote {
        /// Application name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an application and all its functions.
    Rm {
        /// Application name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn parse_member(text: &str) -> Result<(String, u64), String> {
    let (name, version) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: write FUNCTION=VERSION, e.g. front=4"))?;
    let version = version
        .parse()
        .map_err(|_| format!("`{text}`: the version must be a number"))?;
    Ok((name.to_string(), version))
}

fn print_app(info: &AppInfo, json: bool, said: &str) -> anyhow::Result<()> {
    if json {
        return output::print_json(info);
    }
    println!(
        "{said}{} serves version {}: {}",
        info.name,
        info.live,
        members_text(&info.functions)
    );
    if let Some(split) = &info.split {
        println!(
            "version {} takes {}% of the traffic",
            split.version, split.percent
        );
    }
    Ok(())
}

pub async fn app(args: AppArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        AppAction::Ls { api: args } => {
            let api = Api::new(&args)?;
            let apps: Vec<AppInfo> = api
                .send(api.request(reqwest::Method::GET, "/v1/apps"))
                .await?;
            if args.json {
                output::print_json(&apps)?;
            } else if apps.is_empty() {
                println!(
                    "no applications yet: `gust deploy` in a folder whose gust.toml has [app]"
                );
            } else {
                let rows: Vec<Vec<String>> = apps
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.live.to_string(),
                            a.split
                                .as_ref()
                                .map_or("-".into(), |s| format!("{} ({}%)", s.version, s.percent)),
                            members_text(&a.functions),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "LIVE", "CANARY", "FUNCTIONS"], &rows);
            }
        }
        AppAction::Versions { name, api: args } => {
            let api = Api::new(&args)?;
            let app: AppInfo = api
                .send(api.request(reqwest::Method::GET, &format!("/v1/apps/{name}")))
                .await?;
            if args.json {
                output::print_json(&app.versions)?;
            } else {
                let rows: Vec<Vec<String>> = app
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            if v.state.is_empty() {
                                "-".into()
                            } else {
                                v.state.clone()
                            },
                            output::timestamp(v.created_at_ms),
                            members_text(&v.functions),
                        ]
                    })
                    .collect();
                output::table(&["VERSION", "STATE", "RELEASED", "FUNCTIONS"], &rows);
            }
        }
        AppAction::Release {
            name,
            functions,
            canary,
            api: args,
        } => {
            let api = Api::new(&args)?;
            let canary = canary
                .map(|c| c.parse::<gust_core::deploy::CanarySpec>())
                .transpose()
                .map_err(output::Usage)?;
            let functions: BTreeMap<String, u64> = functions.into_iter().collect();
            let released: Released = api
                .send(
                    api.request(reqwest::Method::POST, &format!("/v1/apps/{name}/releases"))
                        .json(&serde_json::json!({
                            "functions": functions,
                            "canary_percent": canary.map(|c| f64::from(c.basis_points) / 100.0),
                            "canary_window_ms": canary.map(|c| c.window_ms),
                        })),
                )
                .await?;
            if args.json {
                output::print_json(&released)?;
            } else {
                print_app(
                    &released.app,
                    false,
                    &format!("released version {}: ", released.version),
                )?;
            }
        }
        AppAction::Rollback {
            name,
            to,
            api: args,
        } => {
            let api = Api::new(&args)?;
            let mut request =
                api.request(reqwest::Method::POST, &format!("/v1/apps/{name}/rollback"));
            if let Some(to) = to {
                request = request.query(&[("version", to)]);
            }
            let app: AppInfo = api.send(request).await?;
            print_app(&app, args.json, "rolled back: ")?;
        }
        AppAction::Promote { name, api: args } => {
            let api = Api::new(&args)?;
            let app: AppInfo = api
                .send(api.request(reqwest::Method::POST, &format!("/v1/apps/{name}/promote")))
                .await?;
            print_app(&app, args.json, "promoted: ")?;
        }
        AppAction::Rm { name, api: args } => {
            let api = Api::new(&args)?;
            let removed: AppRemoved = api
                .send(api.request(reqwest::Method::DELETE, &format!("/v1/apps/{name}")))
                .await?;
            if args.json {
                output::print_json(&removed)?;
            } else {
                println!(
                    "removed application {} and its functions: {}",
                    removed.name,
                    removed.functions.join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

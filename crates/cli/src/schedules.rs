//! `gust schedule`: add, list and remove a function's schedules.

use std::process::ExitCode;

use gust_api::ScheduleInfo;

use crate::http::{Api, ApiArgs};
use crate::listing::{print_list, print_removal, with_function_column};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust schedule add hello '*/5 * * * * *'          every 5 seconds
  gust schedule add report '0 30 9 * * 1-5' --tz Europe/Paris --id weekday-report
  gust schedule add backup '0 0 3 * * *' --tz +02:00 --catch-up 1      run a missed 03:00 at start-up
  gust schedule add ping '@every 1m'
  gust schedule ls hello
  gust schedule ls                                 every function's
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
    /// List a function's schedules, or without a name all of the tenant's.
    Ls {
        /// Function name (default: every function).
        name: Option<String>,
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
            let row = |s: &ScheduleInfo| {
                vec![
                    s.id.clone(),
                    s.expr.clone(),
                    s.tz.clone(),
                    s.next_ms.map_or("-".to_string(), output::timestamp),
                ]
            };
            let header = ["ID", "SCHEDULE", "TZ", "NEXT"];
            return match name {
                Some(name) => {
                    let path = format!("/v1/functions/{name}/schedules");
                    print_list(&api_args, &path, &header, row).await
                }
                None => {
                    let header = with_function_column(&header);
                    print_list(&api_args, "/v1/schedules", &header, |s: &ScheduleInfo| {
                        [vec![s.function.clone()], row(s)].concat()
                    })
                    .await
                }
            };
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

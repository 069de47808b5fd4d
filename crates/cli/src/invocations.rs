//! `gust invocations`, `gust invocation` and `gust dlq`: asynchronous
//! invocations (events), their state and their dead letters.

use std::process::ExitCode;

use gust_api::{DeadLetterInfo, Redriven};
use gust_core::InvocationRecord;

use crate::http::{Api, ApiArgs};
use crate::output;

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

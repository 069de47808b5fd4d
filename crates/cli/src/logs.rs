//! `gust logs`: what a function's invocations printed, once or followed.

use std::process::ExitCode;

use gust_api::{LogEntry, LogPage};
use gust_core::Outcome;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust logs hello
  gust logs hello --follow")]
pub struct LogsArgs {
    /// Function name.
    name: String,
    /// Keep waiting for new entries.
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut after = 0;
    // Without --follow, --json prints one array; with it, one object per line.
    let mut collected = Vec::new();
    let mut seen = 0usize;
    loop {
        let wait_ms = if args.follow { "10000" } else { "0" };
        let page: LogPage = api
            .send(
                api.request(
                    reqwest::Method::GET,
                    &format!("/v1/functions/{}/logs", args.name),
                )
                .query(&[
                    ("after", after.to_string().as_str()),
                    ("limit", "1000"),
                    ("wait_ms", wait_ms),
                ]),
            )
            .await?;
        let caught_up = page.entries.is_empty() || page.next == after;
        after = page.next;
        seen += page.entries.len();
        for entry in page.entries {
            if args.api.json && !args.follow {
                collected.push(entry);
            } else {
                print_log(&entry, args.api.json)?;
            }
        }
        if caught_up && !args.follow {
            break;
        }
    }
    if args.api.json && !args.follow {
        output::print_json(&collected)?;
    }
    if seen == 0 {
        // On stderr: `--json` output stays a clean (empty) array.
        eprintln!("no log entries yet for {}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_log(entry: &LogEntry, json: bool) -> anyhow::Result<()> {
    if json {
        // One JSON object per line, so `--follow --json` can be piped.
        println!("{}", serde_json::to_string(entry)?);
        return Ok(());
    }
    let r = &entry.record;
    let prefix = format!(
        "{} {} v{}",
        output::timestamp(r.time_ms),
        r.invocation_id,
        r.version
    );
    for line in r.stdout.lines() {
        println!("{prefix} stdout: {}", output::sanitize(line));
    }
    for line in r.stderr.lines() {
        println!("{prefix} stderr: {}", output::sanitize(line));
    }
    if r.truncated {
        println!("{prefix} (output past the function's limit was dropped)");
    }
    match &r.outcome {
        Outcome::Completed => {}
        Outcome::TimedOut => println!("{prefix} timed out after {} ms", r.duration_us / 1000),
        Outcome::Trapped { message } | Outcome::Failed { message } => {
            println!("{prefix} {}", output::sanitize(message))
        }
        Outcome::Cancelled => println!(
            "{prefix} cancelled after {} ms: the client went away",
            r.duration_us / 1000
        ),
    }
    Ok(())
}

//! `gust logs`: what a function's invocations printed, once or followed.

use std::process::ExitCode;

use gust_api::{LogEntry, LogPage};
use gust_core::Outcome;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust logs hello
  gust logs hello --follow
  gust logs hello --since 1h --grep timeout
  gust logs hello --status 5xx --since 2026-12-03T00:00:00Z --until 2026-12-04T00:00:00Z
  gust logs hello --invocation 01JD6Y3QX8W7 --json")]
pub struct LogsArgs {
    /// Function name.
    name: String,
    /// Keep waiting for new entries (with the filters below).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only entries from this time on: a duration ago (`30m`, `1h`, `7d`),
    /// an RFC 3339 time, a date (UTC) or Unix milliseconds.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only entries before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Only entries whose output or failure message contains TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// Only the entry of this invocation id.
    #[arg(long, value_name = "ID")]
    invocation: Option<String>,
    /// Only entries that answered this status (`404`) or class (`5xx`).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// Print at most this many entries (the oldest first).
    #[arg(long, short = 'n')]
    limit: Option<usize>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Unix ms for --since and --until: a duration ago, else a time.
fn parse_when(text: &str) -> anyhow::Result<u64> {
    if let Ok(ago) = gust_core::time::parse_duration_ms(text) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        return Ok(now.saturating_sub(ago));
    }
    crate::usage::parse_time(text).map_err(|_| {
        anyhow::anyhow!(
            "`{text}` is not a time: use a duration ago (30m, 1h, 7d), 2026-11-01T00:00:00Z, 2026-11-01 or Unix milliseconds"
        )
    })
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(since) = &args.since {
        filters.push(("since_ms", parse_when(since)?.to_string()));
    }
    if let Some(until) = &args.until {
        filters.push(("until_ms", parse_when(until)?.to_string()));
    }
    for (name, value) in [
        ("grep", &args.grep),
        ("invocation", &args.invocation),
        ("status", &args.status),
    ] {
        if let Some(value) = value {
            filters.push((name, value.clone()));
        }
    }
    let mut after = 0;
    // Without --follow, --json prints one array; with it, one object per line.
    let mut collected = Vec::new();
    let mut seen = 0usize;
    let wanted = args.limit.unwrap_or(usize::MAX);
    loop {
        let wait_ms = if args.follow { "10000" } else { "0" };
        let page_size = wanted.saturating_sub(seen).clamp(1, 1000).to_string();
        let mut query = vec![
            ("after", after.to_string()),
            ("limit", page_size),
            ("wait_ms", wait_ms.to_string()),
        ];
        query.extend(filters.iter().cloned());
        let page: LogPage = api
            .send(
                api.request(
                    reqwest::Method::GET,
                    &format!("/v1/functions/{}/logs", args.name),
                )
                .query(&query),
            )
            .await?;
        let caught_up = page.end;
        after = page.next;
        seen += page.entries.len();
        for entry in page.entries {
            if args.api.json && !args.follow {
                collected.push(entry);
            } else {
                print_log(&entry, args.api.json)?;
            }
        }
        if seen >= wanted || (caught_up && !args.follow) {
            break;
        }
    }
    if args.api.json && !args.follow {
        output::print_json(&collected)?;
    }
    if seen == 0 {
        // On stderr: `--json` output stays a clean (empty) array.
        if filters.is_empty() {
            eprintln!("no log entries yet for {}", args.name);
        } else {
            eprintln!("no log entries of {} match", args.name);
        }
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

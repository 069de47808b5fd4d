//! `gust usage`: what the tenant's invocations used and cost, summed and
//! grouped, or the ledger's records for a period (CSV or JSON lines).

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use gust_meter::{UsageReport, UsageTotals};

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(
    after_help = "Times are RFC 3339 (`2026-11-01T00:00:00Z`), a date (`2026-11-01`, UTC) or Unix ms.
The period is [--from, --to); by default this month so far.

Examples:
  gust usage
  gust usage --by day
  gust usage --function hello --from 2026-11-01 --to 2026-11-08 --by hour --json
  gust usage --by function --csv
  gust usage --by app                 per application
  gust usage --app shop --by function its functions
  gust usage --export csv > november.csv      every record, for reconciling
  gust usage --export jsonl --from 2026-11-01
  gust usage --local                          in a cluster: this node's alone"
)]
pub struct UsageArgs {
    /// Only this function.
    #[arg(long)]
    function: Option<String>,
    /// Start of the period.
    #[arg(long)]
    from: Option<String>,
    /// End of the period (excluded).
    #[arg(long)]
    to: Option<String>,
    /// Group by `hour`, `day`, `function` or `app` (application).
    #[arg(long, value_parser = ["hour", "day", "function", "app"])]
    by: Option<String>,
    /// Only the functions of this application.
    #[arg(long)]
    app: Option<String>,
    /// Print the summary as CSV.
    #[arg(long, conflicts_with = "export")]
    csv: bool,
    /// Print every usage record of the period instead: `csv` or `jsonl`.
    #[arg(long, value_parser = ["csv", "jsonl"])]
    export: Option<String>,
    /// In a cluster: only what ran on the node asked (default: every node's).
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Unix ms from RFC 3339, a date (UTC midnight) or a number.
pub(crate) fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return u64::try_from(ts.as_millisecond()).context("times before 1970 are not metered");
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        let ts = date
            .to_zoned(jiff::tz::TimeZone::UTC)
            .context("date out of range")?
            .timestamp();
        return u64::try_from(ts.as_millisecond()).context("times before 1970 are not metered");
    }
    bail!("`{text}` is not a time: use 2026-11-01T00:00:00Z, 2026-11-01 or Unix milliseconds")
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(function) = &args.function {
        query.push(("function", function.clone()));
    }
    if let Some(from) = &args.from {
        query.push(("from_ms", parse_time(from)?.to_string()));
    }
    if let Some(to) = &args.to {
        query.push(("to_ms", parse_time(to)?.to_string()));
    }
    if args.local {
        query.push(("local", "true".into()));
    }
    if let Some(format) = &args.export {
        query.push(("format", format.clone()));
        let (_, bytes) = api
            .send_raw(
                api.request(reqwest::Method::GET, "/v1/usage/records")
                    .query(&query),
            )
            .await?;
        use std::io::Write as _;
        std::io::stdout().lock().write_all(&bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(by) = &args.by {
        query.push(("by", by.clone()));
    }
    if let Some(app) = &args.app {
        query.push(("app", app.clone()));
    }
    let report: UsageReport = api
        .send(api.request(reqwest::Method::GET, "/v1/usage").query(&query))
        .await?;
    if args.api.json {
        output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "GROUP",
        "INVOCATIONS",
        "REJECTED",
        "GB-S",
        "CPU-MS",
        "BILLED-MS",
        "BYTES-IN",
        "BYTES-OUT",
        "COST",
    ];
    let row = |key: &str, t: &UsageTotals| {
        vec![
            key.to_string(),
            t.invocations.to_string(),
            t.rejected.to_string(),
            format!("{:.6}", t.gb_seconds),
            format!("{:.3}", t.cpu_ms),
            t.billed_ms.to_string(),
            t.request_bytes.to_string(),
            t.response_bytes.to_string(),
            format!("{:.6}", t.cost_micros as f64 / 1e6),
        ]
    };
    let mut rows: Vec<Vec<String>> = report
        .groups
        .iter()
        .map(|g| row(&g.key, &g.totals))
        .collect();
    rows.push(row("TOTAL", &report.total));
    if args.csv {
        println!("{}", header.join(",").to_lowercase());
        for r in rows {
            println!("{}", r.join(","));
        }
    } else {
        output::table(&header, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The usage record of one request's invocation (attempt 1), waiting up
/// to 3 s for the ledger, which writes off the request path.
pub(crate) async fn record_of(
    api: &Api,
    function: &str,
    invocation_id: &str,
    started_ms: u64,
) -> anyhow::Result<Option<serde_json::Value>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    // Clocks of client and server may differ a little.
    let from = started_ms.saturating_sub(60_000).to_string();
    let to = (started_ms + 60_000).to_string();
    loop {
        let (_, bytes) = api
            .send_raw(
                api.request(reqwest::Method::GET, "/v1/usage/records")
                    .query(&[
                        ("format", "jsonl"),
                        ("function", function),
                        ("from_ms", from.as_str()),
                        ("to_ms", to.as_str()),
                    ]),
            )
            .await?;
        let found = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|r| r["invocation_id"] == invocation_id);
        if found.is_some() || std::time::Instant::now() > deadline {
            return Ok(found);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One line about an invocation's metered figures.
pub(crate) fn describe(invocation_id: &str, record: Option<&serde_json::Value>) -> String {
    let Some(r) = record else {
        return format!(
            "usage of {invocation_id}: not in the ledger yet (see `gust usage --export jsonl`)"
        );
    };
    let number = |field: &str| r[field].as_u64().unwrap_or(0);
    format!(
        "usage of {invocation_id}: {} · wall {:.3} ms, billed {} ms · guest CPU {:.3} ms · peak memory {} KiB of {} MiB · {:.6} GB-s · {} bytes in, {} out · {} KV ops, {} outbound · cost {:.6} ({})",
        r["outcome"].as_str().unwrap_or("?"),
        number("wall_ns") as f64 / 1e6,
        number("billed_ms"),
        number("cpu_ns") as f64 / 1e6,
        number("peak_memory_bytes") >> 10,
        number("memory_limit_bytes") >> 20,
        number("gib_us") as f64 / 1e6,
        number("request_bytes"),
        number("response_bytes"),
        number("kv_operations"),
        number("outbound_requests"),
        number("cost_micros") as f64 / 1e6,
        r["plan"].as_str().unwrap_or("?"),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_in_three_spellings() {
        assert_eq!(parse_time("1793491200000").unwrap(), 1_793_491_200_000);
        assert_eq!(parse_time("2026-11-01").unwrap(), 1_793_491_200_000);
        assert_eq!(
            parse_time("2026-11-01T00:00:01Z").unwrap(),
            1_793_491_201_000
        );
        assert!(parse_time("yesterday").is_err());
    }
}

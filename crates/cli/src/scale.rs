//! `gust scale NAME`: a function's desired and warm instances, why, and
//! the autoscaler's recent decisions.

use std::process::ExitCode;

use gust_autoscale::ScaleStatus;
use gust_core::time::format_duration_ms;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust scale hello
  gust scale hello --json
  gust deploy hello hello.wasm --keep-alive 30s      unload after 30 s idle
  gust deploy hello hello.wasm --keep-alive learned  learn from its idle times (default)
  gust deploy hello hello.wasm --provisioned '2@mon-fri 09:00-17:00'")]
pub struct ScaleArgs {
    /// Function name.
    name: String,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let status: ScaleStatus = api
        .send(api.request(
            reqwest::Method::GET,
            &format!("/v1/functions/{}/scale", args.name),
        ))
        .await?;
    if args.api.json {
        output::print_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {}, desired {} ({}), running {}",
        status.function,
        if status.warm {
            "warm"
        } else {
            "scaled to zero"
        },
        status.desired,
        status.reason,
        status.running
    );
    println!("keep-alive: {}", describe_keep_alive(&status));
    match &status.provisioned_setting {
        Some(setting) => println!("provisioned: {setting} (now {})", status.provisioned),
        None => println!("provisioned: none"),
    }
    println!(
        "demand: {:.2} concurrent over 60 s, {:.2} over 6 s{}",
        status.stable_concurrency,
        status.panic_concurrency,
        if status.panicking {
            " (panic mode)"
        } else {
            ""
        }
    );
    if !status.nodes.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = status
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.node.clone(),
                    n.desired.to_string(),
                    n.running.to_string(),
                    if n.warm { "yes" } else { "no" }.into(),
                    n.reason.clone(),
                ]
            })
            .collect();
        output::table(&["NODE", "DESIRED", "RUNNING", "WARM", "REASON"], &rows);
    }
    if !status.history.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = status
            .history
            .iter()
            .map(|e| {
                vec![
                    output::timestamp(e.at_ms),
                    e.desired.to_string(),
                    if e.warm { "yes" } else { "no" }.into(),
                    e.reason.clone(),
                    e.action.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        output::table(&["TIME", "DESIRED", "WARM", "REASON", "ACTION"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_keep_alive(s: &ScaleStatus) -> String {
    let window = if s.prewarm_ms > 0 {
        format!(
            "unloaded after each invocation, pre-warmed {} later, kept {}",
            format_duration_ms(s.prewarm_ms),
            format_duration_ms(s.keep_ms)
        )
    } else if s.keep_ms == 0 {
        "unloaded as soon as it is idle".to_string()
    } else {
        format!(
            "kept {} after each invocation",
            format_duration_ms(s.keep_ms)
        )
    };
    let basis = match s.basis.as_str() {
        "fixed" | "" => String::new(),
        "learned" => format!(" (learned from {} idle times)", s.idle_samples),
        "too_little_history" => format!(
            " (fallback: {} idle times learned, not enough yet)",
            s.idle_samples
        ),
        other => format!(" ({other})"),
    };
    format!("{} — {window}{basis}", s.keep_alive)
}

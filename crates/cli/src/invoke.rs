//! `gust invoke`: one call to a function through the data plane, its
//! answer printed as it came (or as JSON).

use std::process::ExitCode;

use anyhow::Context as _;
use gust_api::FunctionInfo;

use crate::http::{Api, ApiArgs};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust invoke hello
  gust invoke echo --path /items?id=3 --data '{\"x\":1}' -H 'content-type: application/json'
  gust invoke echo --data @payload.bin
  gust invoke hello --verbose            the metered figures too
  gust invoke hello:staging              through an alias")]
pub struct InvokeArgs {
    /// Function name, or `NAME:ALIAS`.
    name: String,
    /// Path (and query) the function sees.
    #[arg(long, default_value = "/")]
    path: String,
    /// Request body; `@FILE` reads it from a file. Implies POST.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// HTTP method (default GET, or POST with --data).
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Also show the invocation's usage record (on stderr; in `usage` with --json).
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let (name, alias) = gust_core::deploy::split_qualifier(&args.name);
    let mut function: FunctionInfo = api
        .send(api.request(reqwest::Method::GET, &format!("/v1/functions/{name}")))
        .await?;
    if alias != gust_core::deploy::LIVE {
        function.url = function
            .aliases
            .iter()
            .find(|a| a.name == alias)
            .map(|a| a.url.clone())
            .with_context(|| {
                format!("`{name}` has no alias `{alias}` (see `gust alias ls {name}`)")
            })?;
    }
    let body = match &args.data {
        Some(data) => match data.strip_prefix('@') {
            Some(file) => Some(
                tokio::fs::read(file)
                    .await
                    .with_context(|| format!("cannot read {file}"))?,
            ),
            None => Some(data.clone().into_bytes()),
        },
        None => None,
    };
    let method = match &args.method {
        Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("`{m}` is not an HTTP method"))?,
        None if body.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let mut request = api
        .http
        .request(method, format!("{}{}", function.url, path));
    if !function.public {
        request = api.authorize(request);
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header `{header}` is not of the form `name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the function at {}", function.url))?;
    let status = response.status();
    let invocation_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let headers: serde_json::Map<String, serde_json::Value> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let bytes = response.bytes().await?;
    let usage = if args.verbose {
        crate::usage::record_of(&api, name, &invocation_id, started_ms).await?
    } else {
        None
    };
    if args.api.json {
        output::print_json(&serde_json::json!({
            "status": status.as_u16(),
            "invocation_id": invocation_id,
            "headers": headers,
            "body": String::from_utf8_lossy(&bytes),
            "usage": usage,
        }))?;
    } else {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        stdout.write_all(&bytes)?;
        stdout.flush()?;
        if !status.is_success() {
            output::error(&format!(
                "{} answered {status} (invocation {invocation_id})",
                args.name
            ));
        }
        if args.verbose {
            eprintln!("{}", crate::usage::describe(&invocation_id, usage.as_ref()));
        }
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! `gust source`: event sources (brokers, databases, signed webhooks).

use std::process::ExitCode;

use gust_api::SourceInfo;
use gust_core::source::SourceSpec;

use crate::http::{Api, ApiArgs};
use crate::listing::{print_list, print_removal, with_function_column};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust source add orders --kind redis --url redis://127.0.0.1:6379 --stream orders
  gust source add sensors --kind mqtt --url mqtt://127.0.0.1:1883 --topic 'sensors/+/temp' --qos 1
  gust source add deploys --kind webhook --style github --secret \"$HOOK_SECRET\"
  gust source add jobs --kind amqp --url amqps://app:pw@mq.internal/%2f --queue jobs --ca-file ca.pem
  gust source ls orders
  gust source ls                                          every function's
  gust source rm orders s0199

A broker's password goes in --url (or GUST_SOURCE_URL); it is sealed at rest
and never shown again, as is a webhook's --secret (or GUST_SOURCE_SECRET).")]
pub struct SourceArgs {
    #[command(subcommand)]
    action: SourceAction,
}

#[derive(clap::Subcommand)]
enum SourceAction {
    /// Run a function on each message of a broker, database or webhook.
    Add {
        /// Function name.
        name: String,
        #[command(flatten)]
        spec: Box<SpecArgs>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a function's sources with their state, or without a name all of the tenant's.
    Ls {
        /// Function name (default: every function).
        name: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a source: it stops taking messages within a second.
    Rm {
        /// Function name.
        name: String,
        /// Source id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args)]
struct SpecArgs {
    /// webhook, mqtt, nats, amqp, redis or postgres.
    #[arg(long, short = 'k')]
    kind: String,
    /// The broker: mqtt://host:1883, redis://host:6379/0, …
    #[arg(long, env = "GUST_SOURCE_URL", hide_env_values = true)]
    url: Option<String>,
    /// MQTT topic filter or NATS subject (repeat for several).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Redis stream, or NATS JetStream stream.
    #[arg(long)]
    stream: Option<String>,
    /// Redis consumer group, or NATS durable consumer.
    #[arg(long)]
    group: Option<String>,
    /// AMQP queue.
    #[arg(long)]
    queue: Option<String>,
    /// PostgreSQL publication.
    #[arg(long)]
    publication: Option<String>,
    /// PostgreSQL replication slot.
    #[arg(long)]
    slot: Option<String>,
    /// MQTT QoS: 1 or 2.
    #[arg(long)]
    qos: Option<u8>,
    /// Redis: the entry field whose value orders and names events.
    #[arg(long)]
    key_field: Option<String>,
    /// Messages taken and not yet acknowledged at once (default 64).
    #[arg(long)]
    prefetch: Option<u32>,
    /// The function's queued events at which the source stops pulling (default 1000).
    #[arg(long)]
    max_backlog: Option<u32>,
    /// Webhook signature style: github or stripe.
    #[arg(long)]
    style: Option<String>,
    /// Webhook signing secret.
    #[arg(long, env = "GUST_SOURCE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Webhook (stripe style): replay window in seconds (default 300).
    #[arg(long)]
    tolerance_secs: Option<u64>,
    /// A private CA's certificates (PEM) the broker's TLS certificate is checked against.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Request path the function sees (default `/`).
    #[arg(long)]
    path: Option<String>,
    /// A name for the source (default: generated).
    #[arg(long)]
    id: Option<String>,
}

impl SpecArgs {
    fn into_spec(self) -> anyhow::Result<SourceSpec> {
        let style = self
            .style
            .map(|s| s.parse())
            .transpose()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let ca = self
            .ca_file
            .map(|file| {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", file.display()))
            })
            .transpose()?;
        let spec = SourceSpec {
            kind: self.kind,
            url: self.url,
            topics: self.topics,
            stream: self.stream,
            group: self.group,
            queue: self.queue,
            publication: self.publication,
            slot: self.slot,
            qos: self.qos,
            key_field: self.key_field,
            prefetch: self.prefetch,
            max_backlog: self.max_backlog,
            style,
            secret: self.secret,
            tolerance_secs: self.tolerance_secs,
            ca,
            path: self.path,
            id: self.id,
        };
        // The same checks the server makes, before anything is sent.
        spec.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(spec)
    }
}

/// Where a source takes its messages from, in a few words.
fn origin(s: &SourceInfo) -> String {
    let spec = &s.spec;
    let url = spec.url.clone().unwrap_or_default();
    let what = [
        spec.topics.join(","),
        spec.stream.clone().unwrap_or_default(),
        spec.queue.clone().unwrap_or_default(),
        spec.publication.clone().unwrap_or_default(),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    match &s.webhook_url {
        Some(hook) => hook.clone(),
        None => format!("{url} {what}").trim().to_string(),
    }
}

fn state(s: &SourceInfo) -> String {
    match &s.status {
        Some(status) => match &status.last_error {
            Some(error) => format!("{}: {error}", status.state),
            None => status.state.clone(),
        },
        None => "starting".to_string(),
    }
}

pub async fn source(args: SourceArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        SourceAction::Add {
            name,
            spec,
            api: api_args,
        } => {
            let spec = (*spec).into_spec()?;
            let api = Api::new(&api_args)?;
            let info: SourceInfo = api
                .send(
                    api.request(
                        reqwest::Method::POST,
                        &format!("/v1/functions/{name}/sources"),
                    )
                    .header("content-type", "application/json")
                    .body(serde_json::to_string(&spec)?),
                )
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!(
                    "source {} ({}) runs {name} on {}",
                    info.id,
                    info.kind,
                    origin(&info)
                );
                if let Some(hook) = &info.webhook_url {
                    println!("  point the sender at POST {hook}");
                }
            }
        }
        SourceAction::Ls {
            name,
            api: api_args,
        } => {
            let row = |s: &SourceInfo| vec![s.id.clone(), s.kind.to_string(), origin(s), state(s)];
            let header = ["ID", "KIND", "FROM", "STATE"];
            return match name {
                Some(name) => {
                    let path = format!("/v1/functions/{name}/sources");
                    print_list(&api_args, &path, &header, row).await
                }
                None => {
                    let header = with_function_column(&header);
                    print_list(&api_args, "/v1/sources", &header, |s: &SourceInfo| {
                        [vec![s.function.clone()], row(s)].concat()
                    })
                    .await
                }
            };
        }
        SourceAction::Rm {
            name,
            id,
            api: api_args,
        } => {
            let path = format!("/v1/functions/{name}/sources/{id}");
            return print_removal(&api_args, &path, "source", &id).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

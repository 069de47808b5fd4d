//! `gust kv` (the tenant's buckets) and `gust trigger` (change triggers).

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use gust_api::{KeyPage, TriggerInfo, Written};

use crate::http::{Api, ApiArgs};
use crate::listing::{print_list, print_removal, with_function_column};
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust kv put greeting 'hello'
  gust kv put users/42 --bucket users < user.json
  gust kv get greeting
  gust kv ls users/ --bucket users
  gust kv rm greeting")]
pub struct KvArgs {
    #[command(subcommand)]
    action: KvAction,
}

#[derive(clap::Args)]
struct BucketArg {
    /// Bucket (default: `default`).
    #[arg(long, short = 'b', default_value = "default")]
    bucket: String,
}

#[derive(clap::Subcommand)]
enum KvAction {
    /// Write a value (from the argument, or from stdin when it is omitted).
    Put {
        key: String,
        value: Option<String>,
        #[command(flatten)]
        bucket: BucketArg,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a value as stored.
    Get {
        key: String,
        #[command(flatten)]
        bucket: BucketArg,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List keys, optionally those starting with a prefix.
    Ls {
        prefix: Option<String>,
        #[command(flatten)]
        bucket: BucketArg,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a key.
    Rm {
        key: String,
        #[command(flatten)]
        bucket: BucketArg,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A key in a URL path: `/` kept (the route takes the rest of the path),
/// everything else outside the unreserved set percent-encoded.
fn key_path(bucket: &str, key: &str) -> String {
    let mut out = format!("/v1/kv/{bucket}/keys/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        KvAction::Put {
            key,
            value,
            bucket,
            api: api_args,
        } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            let api = Api::new(&api_args)?;
            let written: Written = api
                .send(
                    api.request(reqwest::Method::PUT, &key_path(&bucket.bucket, &key))
                        .body(value),
                )
                .await?;
            if api_args.json {
                output::print_json(&serde_json::json!({
                    "bucket": bucket.bucket, "key": key, "revision": written.revision
                }))?;
            } else {
                println!("{}/{key} = revision {}", bucket.bucket, written.revision);
            }
        }
        KvAction::Get {
            key,
            bucket,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let (headers, value) = api
                .send_raw(api.request(reqwest::Method::GET, &key_path(&bucket.bucket, &key)))
                .await?;
            let revision = headers
                .get("gust-revision")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if api_args.json {
                let (text, base64) = match std::str::from_utf8(&value) {
                    Ok(text) => (Some(text), None),
                    Err(_) => (None, Some(gust_core::kv::base64(&value))),
                };
                output::print_json(&serde_json::json!({
                    "bucket": bucket.bucket, "key": key, "revision": revision,
                    "value": text, "value_base64": base64,
                }))?;
            } else {
                std::io::stdout().write_all(&value)?;
            }
        }
        KvAction::Ls {
            prefix,
            bucket,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let mut keys = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut query = vec![("prefix", prefix.clone().unwrap_or_default())];
                if let Some(after) = &after {
                    query.push(("after", after.clone()));
                }
                let page: KeyPage = api
                    .send(
                        api.request(
                            reqwest::Method::GET,
                            &format!("/v1/kv/{}/keys", bucket.bucket),
                        )
                        .query(&query),
                    )
                    .await?;
                keys.extend(page.keys);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if api_args.json {
                output::print_json(&keys)?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| vec![k.key.clone(), k.revision.to_string(), k.size.to_string()])
                    .collect();
                output::table(&["KEY", "REVISION", "BYTES"], &rows);
            }
        }
        KvAction::Rm {
            key,
            bucket,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let () = api
                .send(api.request(reqwest::Method::DELETE, &key_path(&bucket.bucket, &key)))
                .await?;
            if api_args.json {
                output::print_json(&serde_json::json!({
                    "bucket": bucket.bucket, "key": key, "removed": true
                }))?;
            } else {
                println!("removed {}/{key}", bucket.bucket);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust trigger add indexer --bucket users                 every change in `users`
  gust trigger add audit --bucket orders --prefix eu/ --path /changed
  gust trigger ls indexer
  gust trigger ls                                         every function's
  gust trigger rm indexer t0199")]
pub struct TriggerArgs {
    #[command(subcommand)]
    action: TriggerAction,
}

#[derive(clap::Subcommand)]
enum TriggerAction {
    /// Run a function on every change (put or delete) in a bucket.
    Add {
        /// Function name.
        name: String,
        /// The bucket to watch.
        #[arg(long, short = 'b')]
        bucket: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Request path the function sees (default `/`).
        #[arg(long)]
        path: Option<String>,
        /// A name for the trigger (default: generated).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a function's triggers, or without a name all of the tenant's.
    Ls {
        /// Function name (default: every function).
        name: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a trigger.
    Rm {
        /// Function name.
        name: String,
        /// Trigger id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        TriggerAction::Add {
            name,
            bucket,
            prefix,
            path,
            id,
            api: api_args,
        } => {
            let api = Api::new(&api_args)?;
            let body =
                serde_json::json!({ "bucket": bucket, "prefix": prefix, "path": path, "id": id });
            let info: TriggerInfo = api
                .send(
                    api.request(
                        reqwest::Method::POST,
                        &format!("/v1/functions/{name}/triggers"),
                    )
                    .header("content-type", "application/json")
                    .body(body.to_string()),
                )
                .await?;
            if api_args.json {
                output::print_json(&info)?;
            } else {
                println!(
                    "trigger {} runs {name} on changes in {}/{}*",
                    info.id, info.bucket, info.prefix
                );
            }
        }
        TriggerAction::Ls {
            name,
            api: api_args,
        } => {
            let row = |t: &TriggerInfo| {
                vec![
                    t.id.clone(),
                    t.kind.clone(),
                    t.bucket.clone(),
                    t.prefix.clone(),
                    t.path.clone(),
                ]
            };
            let header = ["ID", "KIND", "BUCKET", "PREFIX", "PATH"];
            return match name {
                Some(name) => {
                    let path = format!("/v1/functions/{name}/triggers");
                    print_list(&api_args, &path, &header, row).await
                }
                None => {
                    let header = with_function_column(&header);
                    print_list(&api_args, "/v1/triggers", &header, |t: &TriggerInfo| {
                        [vec![t.function.clone()], row(t)].concat()
                    })
                    .await
                }
            };
        }
        TriggerAction::Rm {
            name,
            id,
            api: api_args,
        } => {
            let path = format!("/v1/functions/{name}/triggers/{id}");
            return print_removal(&api_args, &path, "trigger", &id).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

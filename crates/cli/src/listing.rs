//! The two shapes most resource commands share: list (GET, then a table
//! or JSON) and remove (DELETE, then say so).

use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::http::{Api, ApiArgs};
use crate::output;

/// A listing command: GETs `path` and prints the items as JSON or as a
/// table with one row per item.
pub(crate) async fn print_list<T>(
    api_args: &ApiArgs,
    path: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode>
where
    T: DeserializeOwned + serde::Serialize,
{
    let api = Api::new(api_args)?;
    let items: Vec<T> = api.send(api.request(reqwest::Method::GET, path)).await?;
    if api_args.json {
        output::print_json(&items)?;
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        output::table(header, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A removal command: DELETEs `path` and reports the `kind` `id` removed.
pub(crate) async fn print_removal(
    api_args: &ApiArgs,
    path: &str,
    kind: &str,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(api_args)?;
    let () = api.send(api.request(reqwest::Method::DELETE, path)).await?;
    if api_args.json {
        output::print_json(&serde_json::json!({ "id": id, "removed": true }))?;
    } else {
        println!("removed {kind} {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A listing's header with `FUNCTION` first, for listings that span the
/// tenant's functions.
pub(crate) fn with_function_column<'a>(header: &[&'a str]) -> Vec<&'a str> {
    [&["FUNCTION"], header].concat()
}

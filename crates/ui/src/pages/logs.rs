//! The logs page: filters, pages of rows, and live follow.

use super::*;

#[derive(Deserialize, Default)]
pub(crate) struct LogQuery {
    since: Option<String>,
    grep: Option<String>,
    status: Option<String>,
    invocation: Option<String>,
    after: Option<u64>,
}

impl LogQuery {
    /// The API's query for these filters (without a cursor).
    fn api_filters(&self) -> Result<String, String> {
        let mut query = String::new();
        let since = self
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("1h");
        let ms = gust_core::time::parse_duration_ms(since).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        query.push_str(&format!("since_ms={}", now.saturating_sub(ms)));
        for (name, value) in [
            ("grep", &self.grep),
            ("status", &self.status),
            ("invocation", &self.invocation),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                query.push_str(&format!("&{name}={}", encode(value)));
            }
        }
        Ok(query)
    }

    /// The same filters for the rows' own URL (live follow).
    fn ui_filters(&self) -> String {
        [
            ("grep", &self.grep),
            ("status", &self.status),
            ("invocation", &self.invocation),
        ]
        .iter()
        .filter_map(|(n, v)| {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{n}={}", encode(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Completed => "completed".into(),
        Outcome::Trapped { message } => format!("trapped: {message}"),
        Outcome::TimedOut => "timed out".into(),
        Outcome::Failed { message } => format!("failed: {message}"),
        Outcome::Cancelled => "cancelled".into(),
    }
}

fn log_row(r: &LogRecord) -> Markup {
    html! {
        tr.log {
            td { (when(r.time_ms)) }
            td.mono { (r.invocation_id) }
            td { "v" (r.version) }
            td.status { (r.status) }
            td { (format_value(r.duration_us as f64 / 1000.0)) " ms" }
            td { (outcome_text(&r.outcome)) }
            td { pre { (r.stdout) @if !r.stderr.is_empty() { span.stderr { (r.stderr) } } @if r.truncated { em { " (truncated)" } } } }
        }
    }
}

/// Pages a log view reads at most (of 500 records each).
const LOG_PAGES: usize = 10;

/// Reads the filtered logs from `after` towards the end (at most
/// [`LOG_PAGES`] pages): the newest rows read, the cursor after them, and
/// whether that was the end.
async fn read_logs(
    ui: &Ui,
    s: &Session,
    name: &str,
    filters: &str,
    mut after: u64,
) -> Result<(Vec<LogRecord>, u64, bool), Failure> {
    let mut rows: Vec<LogRecord> = Vec::new();
    for _ in 0..LOG_PAGES {
        let page: LogPage = ui
            .api
            .get(
                s,
                &format!("{}/logs?{filters}&after={after}&limit=500", fn_path(name)),
            )
            .await?;
        after = page.next;
        rows.extend(page.entries.into_iter().map(|e| e.record));
        if rows.len() > LOG_ROWS {
            rows.drain(..rows.len() - LOG_ROWS);
        }
        if page.end {
            return Ok((rows, after, true));
        }
    }
    Ok((rows, after, false))
}

pub(crate) async fn logs(
    State(ui): UiState,
    Signed(s): Signed,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let filters = match q.api_filters() {
        Ok(filters) => filters,
        Err(message) => {
            return failed(
                &ui,
                &s,
                Failure {
                    status: StatusCode::BAD_REQUEST,
                    message,
                },
            )
            .await;
        }
    };
    let (rows, next, complete) =
        match read_logs(&ui, &s, &name, &filters, q.after.unwrap_or(0)).await {
            Ok(read) => read,
            Err(f) => return failed(&ui, &s, f).await,
        };
    let here = format!("/ui/functions/{}", encode(&name));
    let content = html! {
        p { a href=(here) { "← " (name) } }
        form.filters method="get" action={ (here) "/logs" } {
            label { "Since " input name="since" value=(q.since.clone().unwrap_or_else(|| "1h".into())) size="5"; }
            label { "Text " input name="grep" value=(q.grep.clone().unwrap_or_default()); }
            label { "Status " input name="status" value=(q.status.clone().unwrap_or_default()) placeholder="5xx" size="6"; }
            label { "Invocation " input name="invocation" value=(q.invocation.clone().unwrap_or_default()); }
            button type="submit" { "Search" }
            label.follow { input #follow type="checkbox"; " Follow" }
        }
        table #logs data-rows-url={ (here) "/logs/rows?" (q.ui_filters()) } data-next=(next) {
            thead { tr { th { "Time" } th { "Invocation" } th { "Version" } th { "Status" } th { "Took" } th { "Outcome" } th { "Output" } } }
            tbody #log-rows { @for r in &rows { (log_row(r)) } }
        }
        @if rows.is_empty() { p.empty #no-logs { "No logs match." } }
        @if !complete {
            p.hint #more-logs {
                "More records match than one view reads: these are not the newest. Narrow the search (a later "
                em { "Since" } ", some text), or "
                a href={ (here) "/logs?since=" (encode(q.since.as_deref().unwrap_or("1h"))) "&" (q.ui_filters()) "&after=" (next) } { "read on" } "."
            }
        }
    };
    page(&ui, &s, &format!("Logs of {name}"), content).await
}

/// New rows after a cursor, as table rows, for live follow; the next
/// cursor in `Gust-Next`.
pub(crate) async fn log_rows(
    State(ui): UiState,
    Signed(s): Signed,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let filters = match q.api_filters() {
        Ok(filters) => filters,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    match read_logs(&ui, &s, &name, &filters, q.after.unwrap_or(0)).await {
        Ok((rows, next, _)) => (
            [("gust-next", next.to_string())],
            Html(html! { @for r in &rows { (log_row(r)) } }.into_string()),
        )
            .into_response(),
        Err(f) => {
            if f.status == StatusCode::UNAUTHORIZED {
                let _ = ui.sessions.remove(&s).await;
            }
            (f.status, f.message).into_response()
        }
    }
}

// ---------------------------------------------------------------- usage

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_become_the_apis_query_encoded() {
        let q = LogQuery {
            since: Some("2h".into()),
            grep: Some("a b&c".into()),
            status: Some("5xx".into()),
            invocation: None,
            after: None,
        };
        let query = q.api_filters().unwrap();
        assert!(query.starts_with("since_ms="), "{query}");
        assert!(query.contains("&grep=a%20b%26c&status=5xx"), "{query}");
        assert_eq!(q.ui_filters(), "grep=a%20b%26c&status=5xx");
        let bad = LogQuery {
            since: Some("soon".into()),
            ..LogQuery::default()
        };
        assert!(bad.api_filters().is_err());
    }

    #[test]
    fn outcomes_read_as_words() {
        assert_eq!(outcome_text(&Outcome::Completed), "completed");
        assert_eq!(outcome_text(&Outcome::TimedOut), "timed out");
    }
}

//! The pages: each reads what it shows through the API as the session,
//! renders it, and says so when the API refuses (a role that may not see
//! a page gets the API's own reason, not an empty page).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, extract::rejection::FormRejection};
use gust_api::{
    AuditEntry, DeadLetterInfo, FunctionInfo, FunctionStats, LogPage, ScheduleInfo, TenantInfo,
    TokenInfo, TriggerInfo, VarInfo, VersionInfo,
};
use gust_autoscale::ScaleStatus;
use gust_core::{InvocationRecord, LogRecord, Outcome};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::api::{Failure, encode};
use crate::chart::{Line, format_value, line_chart};
use crate::session::{self, Session, SessionError, Sessions};
use crate::{Signed, Ui, UiState, check_change, from_here};

mod logs;

pub(crate) use logs::{log_rows, logs};

/// Log rows a page shows at most (the newest).
const LOG_ROWS: usize = 300;

// ---------------------------------------------------------------- shell

/// A whole page around `content`, with the navigation and the tenant.
async fn page(ui: &Ui, s: &Session, title: &str, content: Markup) -> Response {
    let tenant: TenantInfo = match ui.api.get(s, "/v1/tenant").await {
        Ok(t) => t,
        Err(f) => return failed(ui, s, f).await,
    };
    Html(shell(Some((s, &tenant.id)), title, content).into_string()).into_response()
}

fn shell(signed: Option<(&Session, &str)>, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Gust" }
                link rel="stylesheet" href="/ui/assets/gust.css";
                link rel="icon" href="/ui/assets/icon.svg" type="image/svg+xml";
                script src="/ui/assets/gust.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/functions" { "Gust" }
                    @if let Some((s, tenant)) = signed {
                        nav {
                            a href="/ui/functions" { "Functions" }
                            a href="/ui/usage" { "Usage" }
                            a href="/ui/triggers" { "Schedules & triggers" }
                            a href="/ui/tokens" { "Tokens & audit" }
                            a href="/ui/admin" { "Admin" }
                        }
                        span.tenant { "tenant " strong #tenant { (tenant) } }
                        form.inline method="post" action="/ui/signout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" #signout { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (content) }
            }
        }
    }
}

/// The API refused or failed: its message, with its status; a token
/// that no longer signs in ends the session.
async fn failed(ui: &Ui, s: &Session, f: Failure) -> Response {
    if f.status == StatusCode::UNAUTHORIZED {
        // The token is no longer good: a session left behind is harmless
        // (the API refuses it) and expires.
        let _ = ui.sessions.remove(s).await;
        return signed_out(ui, Some(&f.message), StatusCode::UNAUTHORIZED);
    }
    let body = shell(
        Some((s, s.viewing.as_deref().unwrap_or("(yours)"))),
        "Not shown",
        html! { p.error role="alert" { (f.message) } p { a href="/ui/functions" { "Back to functions" } } },
    );
    (f.status, Html(body.into_string())).into_response()
}

/// The sign-in page, with the session cookie removed.
fn signed_out(ui: &Ui, message: Option<&str>, status: StatusCode) -> Response {
    let body = shell(
        None,
        "Sign in",
        html! {
            @if let Some(message) = message { p.error role="alert" { (message) } }
            form.signin method="post" action="/ui/signin" {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
            p.hint { "Use the admin token `gust up` printed, or one from `gust token create`." }
        },
    );
    (
        status,
        [(
            header::SET_COOKIE,
            session::clear_cookie(ui.config.secure_cookies),
        )],
        Html(body.into_string()),
    )
        .into_response()
}

fn when(ms: u64) -> Markup {
    let text = gust_core::time::rfc3339(ms);
    html! { time datetime=(text) { (text.replace('T', " ")) } }
}

fn cost(micros: u64) -> String {
    format!("{:.6}", micros as f64 / 1e6)
}

fn fn_path(name: &str) -> String {
    format!("/v1/functions/{}", encode(name))
}

/// Fixed notes after a change, by code: a link cannot put words here.
fn note(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "rollback" => Some("Rolled back."),
        "redrive" => Some("Dead letters redriven."),
        _ => None,
    }
}

// ---------------------------------------------------------------- sign-in

pub(crate) async fn signin_form(State(ui): UiState, signed: Option<Signed>) -> Response {
    match signed {
        Some(_) => Redirect::to("/ui/functions").into_response(),
        None => signed_out(&ui, None, StatusCode::OK),
    }
}

#[derive(Deserialize)]
pub(crate) struct SignIn {
    token: String,
}

pub(crate) async fn signin(
    State(ui): UiState,
    headers: HeaderMap,
    form: Result<Form<SignIn>, FormRejection>,
) -> Response {
    // A sign-in from another site would sign the browser in as someone else.
    if !from_here(&headers) {
        return signed_out(
            &ui,
            Some("refused: sign in from this page"),
            StatusCode::FORBIDDEN,
        );
    }
    let Ok(Form(SignIn { token })) = form else {
        return signed_out(&ui, Some("enter a token"), StatusCode::BAD_REQUEST);
    };
    let token = token.trim().to_string();
    // The API decides whether the token is good; only then is it kept.
    if let Err(f) = ui
        .api
        .get::<TenantInfo>(&Sessions::trial(token.clone()), "/v1/tenant")
        .await
    {
        return signed_out(&ui, Some(&f.message), f.status);
    }
    let session = match ui.sessions.create(token, session::now_ms()).await {
        Ok(session) => session,
        Err(e @ SessionError::Random) => {
            return signed_out(&ui, Some(&e.to_string()), StatusCode::INTERNAL_SERVER_ERROR);
        }
        Err(e) => {
            if let SessionError::Store(failed) = &e {
                tracing::warn!(error = %failed, "dashboard: a sign-in could not be kept");
            }
            return signed_out(&ui, Some(&e.to_string()), StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie(&session.id, ui.sessions.ttl(), ui.config.secure_cookies),
            ),
            (header::LOCATION, "/ui/functions".to_string()),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct Change {
    #[serde(default)]
    csrf: String,
    alias: Option<String>,
    id: Option<String>,
    tenant: Option<String>,
}

pub(crate) async fn signout(
    State(ui): UiState,
    Signed(s): Signed,
    headers: HeaderMap,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Err(refused) = check_change(&headers, &s, &csrf) {
        return refused.into_response();
    }
    if let Err(e) = ui.sessions.remove(&s).await {
        return crate::unavailable(&e);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::clear_cookie(ui.config.secure_cookies),
            ),
            (header::LOCATION, "/ui/signin".to_string()),
        ],
    )
        .into_response()
}

/// An admin looks at another tenant (empty: back to the token's own).
pub(crate) async fn view_tenant(
    State(ui): UiState,
    Signed(s): Signed,
    headers: HeaderMap,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    let Ok(Form(change)) = form else {
        return (StatusCode::BAD_REQUEST, "a bad form\n").into_response();
    };
    if let Err(refused) = check_change(&headers, &s, &change.csrf) {
        return refused.into_response();
    }
    let tenant = change.tenant.filter(|t| !t.is_empty());
    let mut trial = s.clone();
    trial.viewing = tenant.clone();
    // The API says whether this token may act for that tenant.
    if let Err(f) = ui.api.get::<TenantInfo>(&trial, "/v1/tenant").await {
        return failed(&ui, &s, f).await;
    }
    match ui.sessions.view(&s, tenant).await {
        Ok(true) => {}
        // Signed out (or its slot taken) since this request read it.
        Ok(false) => return Redirect::to("/ui/signin").into_response(),
        Err(e) => return crate::unavailable(&e),
    }
    Redirect::to("/ui/functions").into_response()
}

// ---------------------------------------------------------------- functions

fn state_of(scale: Option<&ScaleStatus>) -> &'static str {
    match scale {
        None => "not deployed",
        Some(s) if s.warm => "warm",
        Some(_) => "scaled to zero",
    }
}

fn canary_text(f: &FunctionInfo) -> Option<String> {
    if let Some((alias, c)) = f
        .aliases
        .iter()
        .find_map(|a| a.canary.as_ref().map(|c| (&a.name, c)))
    {
        return Some(format!("v{} running on {alias}", c.version));
    }
    f.canaries.last().map(report_text)
}

fn report_text(r: &gust_core::deploy::CanaryReport) -> String {
    let outcome = serde_json::to_value(r.outcome)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default();
    format!("v{} {outcome}: {}", r.version, r.reason)
}

pub(crate) async fn functions(State(ui): UiState, Signed(s): Signed) -> Response {
    let list: Vec<FunctionInfo> = match ui.api.get(&s, "/v1/functions").await {
        Ok(list) => list,
        Err(f) => return failed(&ui, &s, f).await,
    };
    // Every deployed function's scaling, asked for at once (this node's).
    let mut asked = tokio::task::JoinSet::new();
    for (i, f) in list.iter().enumerate().filter(|(_, f)| f.version.is_some()) {
        let (api, session) = (ui.api.clone(), s.clone());
        let path = format!("{}/scale?local=true", fn_path(&f.name));
        asked.spawn(async move { (i, api.get::<ScaleStatus>(&session, &path).await.ok()) });
    }
    let mut scales: Vec<Option<ScaleStatus>> = vec![None; list.len()];
    while let Some(Ok((i, scale))) = asked.join_next().await {
        scales[i] = scale;
    }
    let content = html! {
        @if list.is_empty() {
            p.empty { "No functions yet: deploy one with " code { "gust deploy NAME FILE.wasm" } "." }
        } @else {
            table #functions {
                thead { tr { th { "Function" } th { "Live" } th { "Aliases" } th { "Canary" } th { "State" } th { "Access" } } }
                tbody {
                    @for (f, scale) in list.iter().zip(&scales) {
                        tr data-function=(f.name) {
                            td { a href={ "/ui/functions/" (encode(&f.name)) } { (f.name) } }
                            td { @if let Some(v) = f.version { "v" (v) } @else { "—" } }
                            td {
                                @for a in &f.aliases {
                                    span.alias { (a.name) " → v" (a.version)
                                        @if let Some(split) = &a.split { " (" (format_value(split.percent)) "% → v" (split.version) ")" }
                                    }
                                }
                            }
                            td { (canary_text(f).unwrap_or_default()) }
                            td.state { (state_of(scale.as_ref())) }
                            td { @if f.public { "public" } @else { "private" } }
                        }
                    }
                }
            }
        }
    };
    page(&ui, &s, "Functions", content).await
}

#[derive(Deserialize)]
pub(crate) struct FunctionQuery {
    done: Option<String>,
}

pub(crate) async fn function(
    State(ui): UiState,
    Signed(s): Signed,
    Path(name): Path<String>,
    Query(q): Query<FunctionQuery>,
) -> Response {
    let base = fn_path(&name);
    let info: FunctionInfo = match ui.api.get(&s, &base).await {
        Ok(info) => info,
        Err(f) => return failed(&ui, &s, f).await,
    };
    // Each part asked for at once; a part the API refuses says why in
    // its place, never as an empty table.
    let api = &ui.api;
    let path = |part: &str| format!("{base}/{part}");
    let paths = [
        path("versions"),
        path("vars"),
        path("scale"),
        path("stats?intervals=60"),
        path("invocations?limit=20"),
        path("dead-letters"),
        path("schedules"),
        path("triggers"),
    ];
    let (versions, vars, scale, stats, invocations, letters, schedules, triggers) = tokio::join!(
        api.get::<Vec<VersionInfo>>(&s, &paths[0]),
        api.get::<Vec<VarInfo>>(&s, &paths[1]),
        api.get::<ScaleStatus>(&s, &paths[2]),
        api.get::<FunctionStats>(&s, &paths[3]),
        api.get::<Vec<InvocationRecord>>(&s, &paths[4]),
        api.get::<Vec<DeadLetterInfo>>(&s, &paths[5]),
        api.get::<Vec<ScheduleInfo>>(&s, &paths[6]),
        api.get::<Vec<TriggerInfo>>(&s, &paths[7]),
    );
    // Not deployed yet: no scaling to show, which is no error.
    let scale = scale.ok();
    let here = format!("/ui/functions/{}", encode(&name));
    let content = html! {
        @if let Some(note) = note(q.done.as_deref()) { p.note role="status" { (note) } }
        p.summary {
            "Live " strong #live-version { @if let Some(v) = info.version { "v" (v) } @else { "none" } }
            " · " span #state { (state_of(scale.as_ref())) }
            @if let Some(scale) = &scale { " · " (scale.running) " running, " (scale.desired) " wanted (" (scale.reason) ")" }
            " · " @if info.public { "public" } @else { "private" }
            " · " a href=(info.url) { (info.url) }
            " · " a href={ (here) "/logs" } { "Logs" }
        }
        section {
            h2 { "Activity, last hour" }
            @match &stats {
                Ok(stats) => { (charts(stats, scale.as_ref())) }
                Err(f) => { p.empty { (f.message) } }
            }
        }
        section {
            h2 { "Aliases" }
            table #aliases {
                thead { tr { th { "Alias" } th { "Version" } th { "Split" } th { "Canary" } th { "Before" } th {} } }
                tbody {
                    @for a in &info.aliases {
                        tr data-alias=(a.name) {
                            td { (a.name) }
                            td { "v" (a.version) }
                            td { @if let Some(split) = &a.split { (format_value(split.percent)) "% → v" (split.version) } }
                            td { @if let Some(c) = &a.canary { "v" (c.version) " until " (when(c.ends_at_ms)) } }
                            td { @if let Some(p) = a.previous { "v" (p) } }
                            td {
                                @if a.previous.is_some() || a.canary.is_some() {
                                    form.inline method="post" action={ (here) "/rollback" } data-confirm={ "Roll back " (a.name) "?" } {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        input type="hidden" name="alias" value=(a.name);
                                        button type="submit" { "Roll back" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !info.canaries.is_empty() {
                h3 { "Canaries" }
                ul #canaries {
                    @for r in info.canaries.iter().rev() {
                        li { (report_text(r)) " — " (when(r.ended_at_ms)) }
                    }
                }
            }
        }
        section {
            h2 { "Versions" }
            @match &versions {
                Ok(versions) => {
                    table #versions {
                        thead { tr { th { "Version" } th { "Component" } th { "Size" } th { "Deployed" } } }
                        tbody {
                            @for v in versions.iter().rev() {
                                tr { td { "v" (v.version) } td.mono { (v.digest.chars().take(19).collect::<String>()) "…" } td { (v.size_bytes / 1024) " KiB" } td { (when(v.created_at_ms)) } }
                            }
                        }
                    }
                }
                Err(f) => { p.error { (f.message) } }
            }
        }
        section {
            h2 { "Variables" }
            @match &vars {
                Ok(vars) if vars.is_empty() => { p.empty { "None." } }
                Ok(vars) => {
                    table #vars {
                        thead { tr { th { "Name" } th { "Alias" } th { "Value" } } }
                        tbody {
                            @for v in vars {
                                tr { td.mono { (v.name) } td { (v.alias.clone().unwrap_or_default()) }
                                     td { @if v.secret { em { "secret" } } @else { span.mono { (v.value.clone().unwrap_or_default()) } } } }
                            }
                        }
                    }
                }
                Err(f) => { p.empty { (f.message) } }
            }
        }
        section {
            h2 { "Asynchronous invocations" }
            @if let Err(f) = &invocations { p.error { (f.message) } }
            @if let Ok(invocations) = &invocations {
            @if invocations.is_empty() { p.empty { "None recently." } } @else {
                table #invocations {
                    thead { tr { th { "Invocation" } th { "State" } th { "Attempts" } th { "Last status" } th { "Accepted" } } }
                    tbody {
                        @for i in invocations {
                            tr { td.mono { a href={ (here) "/logs?invocation=" (encode(&i.invocation_id)) "&since=7d" } { (i.invocation_id) } }
                                 td { (serde_json::to_value(&i.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                                 td { (i.attempts) } td { (i.last_status.map(|s| s.to_string()).unwrap_or_default()) } td { (when(i.accepted_ms)) } }
                        }
                    }
                }
            }
            }
            h3 { "Dead letters" }
            @if let Err(f) = &letters { p.error { (f.message) } }
            @if let Ok(letters) = &letters {
            @if letters.is_empty() { p.empty #no-dead-letters { "None." } } @else {
                form.inline method="post" action={ (here) "/redrive" } data-confirm="Redrive every dead letter?" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    button type="submit" #redrive-all { "Redrive all" }
                }
                table #dead-letters {
                    thead { tr { th { "Invocation" } th { "Why" } th { "Attempts" } th { "Last error" } th { "Died" } th {} } }
                    tbody {
                        @for l in letters {
                            tr data-invocation=(l.invocation_id) {
                                td.mono { (l.invocation_id) }
                                td { (serde_json::to_value(l.reason).ok().and_then(|v| v.as_str().map(|s| s.replace('_', " "))).unwrap_or_default()) }
                                td { (l.attempts) }
                                td { (l.last_error.clone().or(l.last_status.map(|s| format!("status {s}"))).unwrap_or_default()) }
                                td { (when(l.dead_at_ms)) }
                                td { form.inline method="post" action={ (here) "/redrive" } {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    input type="hidden" name="id" value=(l.invocation_id);
                                    button type="submit" { "Redrive" }
                                } }
                            }
                        }
                    }
                }
            }
            }
        }
        section {
            h2 { "Schedules and triggers" }
            @match &schedules { Ok(schedules) => { (schedule_table(schedules)) } Err(f) => { p.error { (f.message) } } }
            @match &triggers { Ok(triggers) => { (trigger_table(triggers)) } Err(f) => { p.error { (f.message) } } }
        }
    };
    page(&ui, &s, &format!("Function {name}"), content).await
}

/// The function page's charts: from the ledger, per minute; cold starts
/// from its scaling history.
fn charts(stats: &FunctionStats, scale: Option<&ScaleStatus>) -> Markup {
    let per = |f: fn(&gust_core::series::Interval) -> f64| -> Vec<f64> {
        stats.intervals.iter().map(f).collect()
    };
    let mut cold = vec![0.0; stats.intervals.len()];
    for event in scale.iter().flat_map(|s| &s.history) {
        if event.action.as_deref() == Some("cold_start")
            && let Some(i) = event
                .at_ms
                .checked_sub(stats.from_ms)
                .map(|d| (d / stats.step_ms.max(1)) as usize)
            && let Some(slot) = cold.get_mut(i)
        {
            *slot += 1.0;
        }
    }
    let total: u64 = stats.intervals.iter().map(|i| i.requests).sum();
    let errors: u64 = stats.intervals.iter().map(|i| i.errors).sum();
    let spent: u64 = stats.intervals.iter().map(|i| i.cost_micros).sum();
    html! {
        p #activity-totals { (total) " requests, " (errors) " errors, cost " (cost(spent)) }
        div.charts {
            (line_chart("Requests and errors", "", stats.from_ms, stats.step_ms, &[
                Line { label: "requests", values: per(|i| i.requests as f64) },
                Line { label: "errors", values: per(|i| i.errors as f64) },
            ]))
            (line_chart("Latency", " ms", stats.from_ms, stats.step_ms, &[
                Line { label: "p50", values: per(|i| i.p50_ms) },
                Line { label: "p99", values: per(|i| i.p99_ms) },
            ]))
            (line_chart("Cold starts", "", stats.from_ms, stats.step_ms, &[
                Line { label: "cold starts", values: cold },
            ]))
            (line_chart("Cost", "", stats.from_ms, stats.step_ms, &[
                Line { label: "cost (units)", values: per(|i| i.cost_micros as f64 / 1e6) },
            ]))
        }
    }
}

fn schedule_table(schedules: &[ScheduleInfo]) -> Markup {
    html! {
        @if schedules.is_empty() { p.empty { "No schedules." } } @else {
            table.schedules {
                thead { tr { th { "Function" } th { "Schedule" } th { "Zone" } th { "Path" } th { "Next" } } }
                tbody { @for s in schedules { tr {
                    td { (s.function) } td.mono { (s.expr) } td { (s.tz) } td.mono { (s.path) }
                    td { @if let Some(next) = s.next_ms { (when(next)) } }
                } } }
            }
        }
    }
}

fn trigger_table(triggers: &[TriggerInfo]) -> Markup {
    html! {
        @if triggers.is_empty() { p.empty { "No key-value triggers." } } @else {
            table.triggers {
                thead { tr { th { "Function" } th { "On" } th { "Bucket" } th { "Prefix" } th { "Path" } } }
                tbody { @for t in triggers { tr {
                    td { (t.function) } td { (t.kind) } td.mono { (t.bucket) } td.mono { (t.prefix) } td.mono { (t.path) }
                } } }
            }
        }
    }
}

/// A change posted from a function's page: checked, made through the API
/// as the session (at the path `path` makes of the form), then back to
/// the page with the fixed note `done`.
async fn change_function(
    ui: &Ui,
    s: &Session,
    name: &str,
    headers: &HeaderMap,
    form: Result<Form<Change>, FormRejection>,
    done: &str,
    path: impl FnOnce(Change) -> String,
) -> Response {
    let Ok(Form(change)) = form else {
        return (StatusCode::BAD_REQUEST, "a bad form\n").into_response();
    };
    if let Err(refused) = check_change(headers, s, &change.csrf) {
        return refused.into_response();
    }
    match ui.api.post(s, &path(change), None).await {
        Ok(_) => {
            Redirect::to(&format!("/ui/functions/{}?done={done}", encode(name))).into_response()
        }
        Err(f) => failed(ui, s, f).await,
    }
}

pub(crate) async fn rollback(
    State(ui): UiState,
    Signed(s): Signed,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    change_function(&ui, &s, &name, &headers, form, "rollback", |change| {
        let alias = change.alias.unwrap_or_else(|| "live".into());
        format!("{}/rollback?alias={}", fn_path(&name), encode(&alias))
    })
    .await
}

pub(crate) async fn redrive(
    State(ui): UiState,
    Signed(s): Signed,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Change>, FormRejection>,
) -> Response {
    change_function(
        &ui,
        &s,
        &name,
        &headers,
        form,
        "redrive",
        |change| match change.id.filter(|id| !id.is_empty()) {
            Some(id) => format!("{}/dead-letters/{}/redrive", fn_path(&name), encode(&id)),
            None => format!("{}/dead-letters/redrive", fn_path(&name)),
        },
    )
    .await
}

// ---------------------------------------------------------------- logs

pub(crate) async fn usage(State(ui): UiState, Signed(s): Signed) -> Response {
    let tenant: TenantInfo = match ui.api.get(&s, "/v1/tenant").await {
        Ok(t) => t,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let by_function: gust_meter::UsageReport = match ui.api.get(&s, "/v1/usage?by=function").await {
        Ok(r) => r,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let by_day: Option<gust_meter::UsageReport> = ui.api.get(&s, "/v1/usage?by=day").await.ok();
    let total = &by_function.total;
    let budget = tenant.quotas.monthly_budget_micros;
    let content = html! {
        p.summary #usage-total {
            "This month: " strong { (total.invocations) } " invocations, "
            (format_value(total.gb_seconds)) " GB-s, " (format_value(total.cpu_ms)) " ms CPU, cost "
            strong #cost { (cost(total.cost_micros)) }
        }
        @if let Some(budget) = budget {
            p #budget {
                "Budget " (cost(budget)) ": "
                meter min="0" max=(budget) value=(total.cost_micros.min(budget)) {}
                " " (format_value(total.cost_micros as f64 * 100.0 / budget.max(1) as f64)) "% used"
            }
        } @else { p.empty #budget { "No monthly budget is set." } }
        @if let Some(days) = &by_day {
            @if !days.groups.is_empty() {
                div.charts {
                    (line_chart("Cost per day", "", day_start(days.from_ms), DAY_MS, &[Line {
                        label: "cost (units)",
                        values: per_day(days, |t| t.cost_micros as f64 / 1e6),
                    }]))
                    (line_chart("Invocations per day", "", day_start(days.from_ms), DAY_MS, &[Line {
                        label: "invocations",
                        values: per_day(days, |t| t.invocations as f64),
                    }]))
                }
            }
        }
        table #usage {
            thead { tr { th { "Function" } th { "Invocations" } th { "Rejected" } th { "Billed ms" } th { "GB-s" } th { "Cost" } } }
            tbody {
                @for g in &by_function.groups {
                    tr { td { (g.key) } td { (g.totals.invocations) } td { (g.totals.rejected) } td { (g.totals.billed_ms) }
                         td { (format_value(g.totals.gb_seconds)) } td { (cost(g.totals.cost_micros)) } }
                }
            }
        }
    };
    page(&ui, &s, "Usage and cost", content).await
}

const DAY_MS: u64 = 86_400_000;

fn day_start(ms: u64) -> u64 {
    ms / DAY_MS * DAY_MS
}

/// A value per day of a report grouped by day, days without records as 0
/// (a group's key is its day's start, RFC 3339).
fn per_day(report: &gust_meter::UsageReport, f: fn(&gust_meter::UsageTotals) -> f64) -> Vec<f64> {
    let first = day_start(report.from_ms);
    let days = report.to_ms.saturating_sub(first).div_ceil(DAY_MS).max(1) as usize;
    let mut values = vec![0.0; days.min(400)];
    for group in &report.groups {
        let Some(i) = (0..values.len())
            .find(|i| gust_core::time::rfc3339(first + *i as u64 * DAY_MS) == group.key)
        else {
            continue;
        };
        values[i] = f(&group.totals);
    }
    values
}

// ---------------------------------------------------------------- triggers, tokens, admin

pub(crate) async fn triggers(State(ui): UiState, Signed(s): Signed) -> Response {
    let schedules: Vec<ScheduleInfo> = match ui.api.get(&s, "/v1/schedules").await {
        Ok(v) => v,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let triggers: Vec<TriggerInfo> = match ui.api.get(&s, "/v1/triggers").await {
        Ok(v) => v,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let content = html! {
        h2 { "Schedules" } (schedule_table(&schedules))
        h2 { "Key-value triggers" } (trigger_table(&triggers))
    };
    page(&ui, &s, "Schedules and triggers", content).await
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    after: Option<u64>,
}

pub(crate) async fn tokens(
    State(ui): UiState,
    Signed(s): Signed,
    Query(q): Query<AuditQuery>,
) -> Response {
    let tokens: Vec<TokenInfo> = match ui.api.get(&s, "/v1/tokens").await {
        Ok(v) => v,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let after = q.after.unwrap_or(0);
    let audit: Vec<AuditEntry> = match ui
        .api
        .get(&s, &format!("/v1/audit?after={after}&limit=100"))
        .await
    {
        Ok(v) => v,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let role = |r: &gust_core::access::Role| {
        serde_json::to_value(r)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let content = html! {
        h2 { "Tokens" }
        table #tokens {
            thead { tr { th { "Id" } th { "Role" } th { "Description" } th { "Created" } th { "Expires" } th { "Revoked" } } }
            tbody { @for t in &tokens { tr {
                td.mono { (t.id) } td { (role(&t.role)) } td { (t.description) } td { (when(t.created_at_ms)) }
                td { @if let Some(e) = t.expires_at_ms { (when(e)) } } td { @if let Some(r) = t.revoked_at_ms { (when(r)) } }
            } } }
        }
        p.hint { "Create and revoke tokens with " code { "gust token create" } " and " code { "gust token revoke" } "." }
        h2 { "Audit log" }
        table #audit {
            thead { tr { th { "Time" } th { "Token" } th { "Role" } th { "Change" } th { "Status" } } }
            tbody { @for e in &audit { tr {
                td { (when(e.time_ms)) } td.mono { (e.token) } td { (role(&e.role)) } td.mono { (e.method) " " (e.path) } td { (e.status) }
            } } }
        }
        @if let Some(last) = audit.last() {
            @if audit.len() == 100 { p { a href={ "/ui/tokens?after=" (last.seq) } { "Later entries →" } } }
        }
    };
    page(&ui, &s, "Tokens and audit", content).await
}

pub(crate) async fn admin(State(ui): UiState, Signed(s): Signed) -> Response {
    let tenants: Vec<TenantInfo> = match ui.api.get(&s, "/v1/tenants").await {
        Ok(v) => v,
        Err(f) => return failed(&ui, &s, f).await,
    };
    let cluster: Option<gust_api::cluster::ClusterStatus> =
        ui.api.get(&s, "/v1/cluster").await.ok();
    let content = html! {
        h2 { "Tenants" }
        table #tenants {
            thead { tr { th { "Tenant" } th { "Created" } th { "Plan" } th { "Functions at most" } th { "Budget" } th {} } }
            tbody { @for t in &tenants { tr data-tenant=(t.id) {
                td { (t.id) } td { (when(t.created_at_ms)) } td { (t.plan.id) } td { (t.quotas.functions) }
                td { @if let Some(b) = t.quotas.monthly_budget_micros { (cost(b)) } }
                td { form.inline method="post" action="/ui/view" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="tenant" value=(t.id);
                    button type="submit" { "View" }
                } }
            } } }
        }
        @if s.viewing.is_some() {
            form.inline method="post" action="/ui/view" {
                input type="hidden" name="csrf" value=(s.csrf);
                button type="submit" { "Back to my tenant" }
            }
        }
        @if let Some(c) = &cluster {
            h2 { "Nodes (" (c.mode) ")" }
            table #nodes {
                thead { tr { th { "Node" } th { "Alive" } th { "Last heartbeat" } th { "Registry revision" } th { "Warm functions" } th { "In flight" } th { "Version" } } }
                tbody { @for n in &c.nodes { tr {
                    td { (n.id) } td { @if n.alive { "yes" } @else { "no" } } td { (when(n.last_heartbeat_ms)) }
                    td { (n.registry_revision) } td { (n.warm_functions) } td { (n.in_flight) } td { (n.version) }
                } } }
            }
        }
    };
    page(&ui, &s, "Admin", content).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_fixed_texts_a_link_cannot_choose() {
        assert_eq!(note(Some("rollback")), Some("Rolled back."));
        assert_eq!(note(Some("<script>alert(1)</script>")), None);
        assert_eq!(note(None), None);
    }

    #[test]
    fn a_page_escapes_what_it_shows_and_has_no_inline_script() {
        let s = Session::for_tests();
        let page = shell(Some((&s, "<t>")), "<b>x</b>", html! { p { "<script>" } }).into_string();
        assert!(!page.contains("<script>alert") && page.contains("&lt;script&gt;"));
        assert!(page.contains("&lt;t&gt;") && page.contains("&lt;b&gt;x&lt;/b&gt;"));
        // The only script is the file the CSP allows.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains(r#"<script src="/ui/assets/gust.js" defer>"#));
        assert!(!page.contains("style="));
    }

    #[test]
    fn days_without_records_are_zero_in_a_daily_series() {
        let totals = |invocations| gust_meter::UsageTotals {
            invocations,
            ..Default::default()
        };
        let report = gust_meter::UsageReport {
            from_ms: DAY_MS * 10,
            to_ms: DAY_MS * 13 + 5,
            groups: vec![
                gust_meter::UsageGroup {
                    key: gust_core::time::rfc3339(DAY_MS * 10),
                    totals: totals(4),
                },
                gust_meter::UsageGroup {
                    key: gust_core::time::rfc3339(DAY_MS * 13),
                    totals: totals(7),
                },
            ],
            total: totals(11),
        };
        assert_eq!(
            per_day(&report, |t| t.invocations as f64),
            [4.0, 0.0, 0.0, 7.0]
        );
    }
}

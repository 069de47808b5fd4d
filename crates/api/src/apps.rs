//! `/v1/apps`: applications, several functions released as one unit. A
//! release names a staged version of each member (deployed with
//! `?app=NAME`) and the variables they share; it becomes live for every
//! member at once, or takes a share of their traffic, and is rolled back
//! or promoted as a whole. Removing an application removes its functions.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gust_core::access::Action;
use gust_core::app::{AppRecord, AppVersion};
use gust_core::config::{self, Variables};
use gust_core::{FunctionName, TenantId};
use gust_store::ReleaseAs;
use serde::{Deserialize, Serialize};

use crate::vars::NewVar;
use crate::{ApiError, ApiState, Caller, ErrorBody, function_name, now_ms};

/// An application as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppInfo {
    pub name: String,
    /// The version every member serves (0: none released yet).
    pub live: u64,
    /// Another version taking a share of every member's traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::SplitInfo>,
    /// Where `gust app rollback` goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// A canary release in progress: when it is judged at the latest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_ends_at_ms: Option<u64>,
    /// How its last canary releases ended, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<gust_core::deploy::CanaryReport>,
    /// The live version's members: name → function version.
    pub functions: BTreeMap<String, u64>,
    pub latest_version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Its versions, newest first (with `GET /v1/apps/{name}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<AppVersionInfo>,
}

/// One release of an application.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppVersionInfo {
    pub version: u64,
    /// Member name → function version.
    pub functions: BTreeMap<String, u64>,
    /// Its shared variables' names (values are not shown).
    pub vars: Vec<String>,
    pub created_at_ms: u64,
    /// `live`, `split`, `previous` or empty.
    pub state: String,
}

/// A release: the version of each member, and what they share.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    /// Member name → the version it serves in this release (deployed
    /// with `?app=` this application's name, or any version of a function
    /// that joins it).
    pub functions: BTreeMap<String, u64>,
    /// Variables every member sees, under its own (a secret's sealed);
    /// absent: the live release's.
    pub vars: Option<BTreeMap<String, NewVar>>,
    /// Give the release this share of every member's traffic (percent,
    /// `10` for 10%) instead of all of it; promote or roll back after.
    pub canary_percent: Option<f64>,
    /// With `canary_percent`: judge the release over this window (ms) on
    /// all its functions' errors and latency, then promote it, or roll it
    /// back as soon as it is worse (absent: until promoted or rolled back).
    pub canary_window_ms: Option<u64>,
}

/// What a release made.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Released {
    /// The new application version.
    pub version: u64,
    pub app: AppInfo,
    /// Nodes of a cluster that did not serve it within the wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_serving: Vec<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AppRollbackParams {
    /// The version to go back to (default: the one before the last move;
    /// with a split in progress, ending the split).
    pub version: Option<u64>,
}

/// What removing an application removed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppRemoved {
    pub name: String,
    pub functions: Vec<String>,
}

impl From<gust_core::app::AppError> for ApiError {
    fn from(e: gust_core::app::AppError) -> Self {
        match e {
            gust_core::app::AppError::NoSuchVersion { .. } => ApiError::NotFound(e.to_string()),
            gust_core::app::AppError::BadShare(_)
            | gust_core::app::AppError::Empty
            | gust_core::app::AppError::TooManyMembers(_) => ApiError::BadRequest(e.to_string()),
            _ => ApiError::Conflict(e.to_string()),
        }
    }
}

fn member_versions(version: &AppVersion) -> BTreeMap<String, u64> {
    version
        .functions
        .iter()
        .map(|(name, active)| (name.clone(), active.version))
        .collect()
}

fn app_info(app: &AppRecord, with_versions: bool) -> AppInfo {
    let versions = if with_versions {
        app.versions
            .iter()
            .rev()
            .map(|v| AppVersionInfo {
                version: v.version,
                functions: member_versions(v),
                vars: v.vars.keys().cloned().collect(),
                created_at_ms: v.created_at_ms,
                state: if v.version == app.live {
                    "live"
                } else if app.split.is_some_and(|s| s.version == v.version) {
                    "split"
                } else if app.previous == Some(v.version) {
                    "previous"
                } else {
                    ""
                }
                .into(),
            })
            .collect()
    } else {
        Vec::new()
    };
    AppInfo {
        name: app.name.to_string(),
        live: app.live,
        split: app.split.map(|s| crate::SplitInfo {
            version: s.version,
            percent: f64::from(s.basis_points) / 100.0,
        }),
        previous: app.previous,
        canary_ends_at_ms: app
            .split
            .and_then(|s| s.canary)
            .map(|c| c.started_at_ms.saturating_add(c.window_ms)),
        canaries: app.canaries.clone(),
        functions: app.live_version().map(member_versions).unwrap_or_default(),
        latest_version: app.latest_version,
        created_at_ms: app.created_at_ms,
        updated_at_ms: app.updated_at_ms,
        versions,
    }
}

impl ApiState {
    async fn app_record(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<AppRecord, ApiError> {
        self.registry.app(tenant, name).await?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "application `{name}` does not exist; `gust app ls` lists them"
            ))
        })
    }

    /// Moves an application as `change` says (its result checked first
    /// on the record as it is, so a refusal changes nothing, and the
    /// members' reservations checked as they would then be); returns the
    /// record once the data plane serves it.
    async fn move_app(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        change: impl Fn(&mut AppRecord) -> Result<u64, gust_core::app::AppError>,
    ) -> Result<AppRecord, ApiError> {
        let mut planned = self.app_record(tenant, name).await?;
        change(&mut planned)?;
        self.check_app_reservations(tenant, &planned).await?;
        let (app, _, revision) = self
            .registry
            .update_app(tenant, name, false, now_ms(), |app| Ok(change(app)?))
            .await?;
        let _ = self.until_live(revision).await;
        Ok(app)
    }

    /// The version a function's plain URL serves: its application's live
    /// release's for a member, else its `live` alias's (`None`: nothing).
    pub(crate) async fn serving(
        &self,
        record: &gust_core::FunctionRecord,
    ) -> Result<Option<gust_core::ActiveVersion>, ApiError> {
        if let Some(app) = record.app.as_deref() {
            let app = FunctionName::new(app).map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Some(app) = self.registry.app(&record.tenant, &app).await?
                && let Some(active) = app
                    .live_version()
                    .and_then(|v| v.functions.get(record.name.as_str()))
            {
                return Ok(Some(active.clone()));
            }
        }
        Ok(record.live().map(|a| a.target.clone()))
    }

    /// Refuses to remove a function its application's live release (or
    /// canary release) serves: its partners would call a function gone.
    pub(crate) async fn check_not_released(
        &self,
        record: &gust_core::FunctionRecord,
    ) -> Result<(), ApiError> {
        let Some(app) = record.app.as_deref() else {
            return Ok(());
        };
        let app = FunctionName::new(app).map_err(|e| ApiError::Internal(e.to_string()))?;
        let released = self
            .registry
            .app(&record.tenant, &app)
            .await?
            .is_some_and(|a| a.releases(record.name.as_str()));
        if released {
            return Err(ApiError::Conflict(format!(
                "function `{}` is in application `{app}`'s live release: release the application without it first (remove it from its gust.toml and deploy), or remove the whole application with `gust app rm {app}`",
                record.name
            )));
        }
        Ok(())
    }

    /// Every member of the live version must fit the node's reservations.
    async fn check_app_reservations(
        &self,
        tenant: &TenantId,
        app: &AppRecord,
    ) -> Result<(), ApiError> {
        for (name, active) in app
            .live_version()
            .map(|v| &v.functions)
            .into_iter()
            .flatten()
        {
            if let Some(reserved) = active.limits.reserved_concurrency {
                (self.reservations)(tenant.as_str(), name, reserved).map_err(ApiError::Conflict)?;
            }
        }
        Ok(())
    }
}

#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    responses((status = 200, body = [AppInfo])))]
pub(crate) async fn list_apps(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<AppInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let apps = state.registry.apps(&caller.tenant).await?;
    Ok(Json(apps.iter().map(|a| app_info(a, false)).collect()))
}

#[utoipa::path(get, path = "/v1/apps/{name}", tag = "apps",
    params(("name" = String, Path, description = "Application name")),
    responses((status = 200, body = AppInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_app(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AppInfo>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let app = state.app_record(&caller.tenant, &name).await?;
    Ok(Json(app_info(&app, true)))
}

#[utoipa::path(post, path = "/v1/apps/{name}/releases", tag = "apps",
    params(("name" = String, Path, description = "Application name (created on its first release)")),
    request_body = NewRelease,
    responses(
        (status = 201, description = "Released, and served by every node", body = Released),
        (status = 400, body = ErrorBody),
        (status = 404, description = "No such function or version", body = ErrorBody),
        (status = 409, description = "A function belongs to another application", body = ErrorBody)))]
pub(crate) async fn release_app(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<NewRelease>, JsonRejection>,
) -> Result<(StatusCode, Json<Released>), ApiError> {
    caller.require(Action::Write)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    if body.functions.is_empty() {
        return Err(ApiError::BadRequest(
            "name the functions of the release: {\"functions\": {\"NAME\": VERSION, …}}".into(),
        ));
    }
    let mut members = BTreeMap::new();
    for (function, version) in &body.functions {
        members.insert(function_name(function.clone())?, *version);
    }
    gust_core::app::check_members(members.len())?;
    let vars = match body.vars {
        None => None,
        Some(new) => {
            if new.len() > config::MAX_VARIABLES {
                return Err(ApiError::BadRequest(format!(
                    "an application shares at most {} variables",
                    config::MAX_VARIABLES
                )));
            }
            let mut vars = Variables::new();
            for (key, value) in new {
                config::check_name(&key).map_err(ApiError::BadRequest)?;
                config::check_value(&key, &value.value).map_err(ApiError::BadRequest)?;
                let context =
                    gust_core::app::secret_context(caller.tenant.as_str(), name.as_str(), &key);
                vars.insert(key, state.variable(value, &context)?);
            }
            Some(vars)
        }
    };
    let how = match (body.canary_percent, body.canary_window_ms) {
        (Some(percent), window) => {
            let share = gust_core::deploy::parse_share(&percent.to_string())
                .map_err(ApiError::BadRequest)?;
            match window {
                Some(window_ms) if !(1000..=24 * 3_600_000).contains(&window_ms) => {
                    return Err(ApiError::BadRequest(
                        "a canary window must be between 1s and 24h".into(),
                    ));
                }
                Some(window_ms) => ReleaseAs::Canary {
                    basis_points: share,
                    window_ms,
                },
                None => ReleaseAs::Split(share),
            }
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "`canary_window_ms` goes with `canary_percent`".into(),
            ));
        }
        (None, None) => ReleaseAs::Live,
    };
    if how == ReleaseAs::Live {
        for (function, version) in &members {
            let reserved = state
                .registry
                .version(&caller.tenant, function, *version)
                .await?
                .and_then(|v| v.limits.reserved_concurrency);
            if let Some(reserved) = reserved {
                (state.reservations)(caller.tenant.as_str(), function.as_str(), reserved)
                    .map_err(ApiError::Conflict)?;
            }
        }
    }
    // Held so that retention cannot remove a version while a release
    // names it (see `Registry::components_lock`).
    let uploading = state.registry.components_lock().await?;
    let released = state
        .registry
        .release_app(&caller.tenant, &name, &members, vars, how, now_ms())
        .await?;
    drop(uploading);
    let not_serving = state.until_live(released.revision).await;
    tracing::info!(app = %name, version = released.version, "application released");
    Ok((
        StatusCode::CREATED,
        Json(Released {
            version: released.version,
            app: app_info(&released.app, false),
            not_serving,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/apps/{name}/rollback", tag = "apps",
    params(("name" = String, Path, description = "Application name"), AppRollbackParams),
    responses(
        (status = 200, description = "Every member serves the version rolled back to", body = AppInfo),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing to roll back to", body = ErrorBody)))]
pub(crate) async fn rollback_app(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<AppRollbackParams>, QueryRejection>,
) -> Result<Json<AppInfo>, ApiError> {
    caller.require(Action::Write)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    let to = params.version;
    let app = state
        .move_app(&caller.tenant, &name, |app| app.rollback(to, now_ms()))
        .await?;
    tracing::info!(app = %name, version = app.live, "application rolled back");
    Ok(Json(app_info(&app, false)))
}

#[utoipa::path(post, path = "/v1/apps/{name}/promote", tag = "apps",
    params(("name" = String, Path, description = "Application name")),
    responses(
        (status = 200, description = "The split's version serves all traffic", body = AppInfo),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No split in progress", body = ErrorBody)))]
pub(crate) async fn promote_app(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AppInfo>, ApiError> {
    caller.require(Action::Write)?;
    let name = function_name(name)?;
    let app = state
        .move_app(&caller.tenant, &name, |app| app.promote(now_ms()))
        .await?;
    tracing::info!(app = %name, version = app.live, "application promoted");
    Ok(Json(app_info(&app, false)))
}

#[utoipa::path(delete, path = "/v1/apps/{name}", tag = "apps",
    params(("name" = String, Path, description = "Application name")),
    responses(
        (status = 200, description = "Removed, with its functions", body = AppRemoved),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_app(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AppRemoved>, ApiError> {
    caller.require(Action::Write)?;
    let name = function_name(name)?;
    let app = state.app_record(&caller.tenant, &name).await?;
    // Each member goes as `gust rm` would take it (components, logs,
    // sources), then the application's record.
    let mut removed = Vec::new();
    for member in state.registry.app_members(&caller.tenant, &app).await? {
        if crate::functions::remove_function(&state, &caller.tenant, &member)
            .await?
            .is_some()
        {
            removed.push(member.to_string());
        }
    }
    if let Some((_, revision)) = state.registry.delete_app(&caller.tenant, &name).await? {
        let _ = state.until_live(revision).await;
    }
    tracing::info!(app = %name, functions = removed.len(), "application removed");
    Ok(Json(AppRemoved {
        name: name.to_string(),
        functions: removed,
    }))
}

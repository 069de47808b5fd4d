//! `/v1/functions/{name}/vars`: a function's variables (and its aliases'
//! own), seen by its guest as environment variables and through
//! `wasi:config`. A secret is sealed here before it is stored and is never
//! shown again: listings give its name only.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use gust_core::FunctionRecord;
use gust_core::access::Action;
use gust_core::config::{self, Variable};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, Caller, ErrorBody, function_name};

/// A variable as the API shows it: a secret's value never.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VarInfo {
    pub name: String,
    /// The alias it belongs to (`null`: the function's, for every alias).
    pub alias: Option<String>,
    pub secret: bool,
    /// The value (absent for a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A new value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVar {
    pub value: String,
    /// Stored sealed and never shown again.
    #[serde(default)]
    pub secret: bool,
}

impl ApiState {
    /// A new value as stored: a secret sealed under `context` (what it is
    /// bound to), a plain value as it is.
    pub(crate) fn variable(&self, new: NewVar, context: &str) -> Result<Variable, ApiError> {
        if !new.secret {
            return Ok(Variable::Plain { value: new.value });
        }
        let sealed = self
            .secrets
            .seal(context, &new.value)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Variable::Secret { sealed })
    }
}

/// Changes to a function's (or an alias's) variables, made at once.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VarsPatch {
    /// The alias whose own variables change (default: the function's).
    pub alias: Option<String>,
    #[serde(default)]
    pub set: BTreeMap<String, NewVar>,
    #[serde(default)]
    pub remove: Vec<String>,
}

fn listing(record: &FunctionRecord) -> Vec<VarInfo> {
    let info = |alias: Option<&str>, name: &str, v: &Variable| VarInfo {
        name: name.to_string(),
        alias: alias.map(str::to_string),
        secret: v.is_secret(),
        value: match v {
            Variable::Plain { value } => Some(value.clone()),
            Variable::Secret { .. } => None,
        },
    };
    let mut all: Vec<VarInfo> = record.vars.iter().map(|(n, v)| info(None, n, v)).collect();
    for (alias, a) in &record.aliases {
        all.extend(a.vars.iter().map(|(n, v)| info(Some(alias), n, v)));
    }
    all
}

#[utoipa::path(get, path = "/v1/functions/{name}/vars", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, description = "Its variables; secrets by name only", body = [VarInfo]),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn list_vars(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<VarInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let record = state.function_record(&caller.tenant, &name).await?;
    Ok(Json(listing(&record)))
}

#[utoipa::path(patch, path = "/v1/functions/{name}/vars", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body = VarsPatch,
    responses((status = 200, description = "Changed; the next request sees them", body = [VarInfo]),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn change_vars(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<VarsPatch>, JsonRejection>,
) -> Result<Json<Vec<VarInfo>>, ApiError> {
    caller.require(Action::Write)?;
    let Json(patch) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    let mut changes = Vec::new();
    for (key, new) in patch.set {
        config::check_name(&key).map_err(ApiError::BadRequest)?;
        config::check_value(&key, &new.value).map_err(ApiError::BadRequest)?;
        let context = config::secret_context(
            caller.tenant.as_str(),
            name.as_str(),
            patch.alias.as_deref(),
            &key,
        );
        let value = state.variable(new, &context)?;
        changes.push((key, Some(value)));
    }
    for key in patch.remove {
        config::check_name(&key).map_err(ApiError::BadRequest)?;
        changes.push((key, None));
    }
    let (record, revision) = state
        .registry
        .set_vars(&caller.tenant, &name, patch.alias.as_deref(), changes)
        .await?;
    let _ = state.until_live(revision).await;
    Ok(Json(listing(&record)))
}

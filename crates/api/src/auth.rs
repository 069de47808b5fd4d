//! Who is calling: every `/v1` request carries a bearer token (unless the
//! server runs in dev mode), which names a tenant and a role. The
//! [`Caller`] it resolves to is what handlers use for the tenant, so a
//! handler cannot reach another tenant's records by accident; each handler
//! states the [`Action`] it performs and the role must allow it.
//!
//! Also here: tenants, tokens and the audit log of control-plane changes.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gust_core::TenantId;
use gust_core::access::{Action, Quotas, Role};
use gust_core::usage::PricePlan;
use gust_store::{AuthError, TenantRecord, TokenRecord};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, now_ms, text};

/// Header naming the tenant a request acts on (admins: any; others: their own).
pub const TENANT_HEADER: &str = "gust-tenant";

/// The resolved identity of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub role: Role,
    /// `None` in dev mode.
    pub token_id: Option<String>,
}

impl Caller {
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.role.allows(action) {
            return Ok(());
        }
        let needs = match action {
            Action::Read => "viewer, deployer or owner",
            Action::Write => "deployer or owner",
            Action::Invoke => "invoker, deployer or owner",
            Action::ManageTokens => "owner",
            Action::Administer => "admin",
        };
        Err(ApiError::Forbidden(format!(
            "a `{}` token cannot do this; it needs a {needs} token",
            self.role
        )))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Unauthorized("no caller: the request was not authenticated".into())
        })
    }
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Resolves the caller of a request, or refuses it.
pub(crate) fn authenticate_request(
    state: &ApiState,
    request: &Request,
) -> Result<Caller, ApiError> {
    resolve(state, request)
}

fn resolve(state: &ApiState, request: &Request) -> Result<Caller, ApiError> {
    let wanted = header(request, TENANT_HEADER)
        .map(|t| {
            TenantId::new(t).map_err(|e| ApiError::BadRequest(format!("{TENANT_HEADER}: {e}")))
        })
        .transpose()?;
    let (tenant, role, token_id) = if state.auth {
        let token = header(request, "authorization")
            .and_then(gust_core::access::bearer_token)
            .ok_or_else(|| {
                ApiError::Unauthorized(format!(
                    "this API needs a token: set GUST_TOKEN (the admin token `gust up` printed on first start, or one from `gust token create`); {LOST_ADMIN_TOKEN}"
                ))
            })?;
        let record = state
            .accounts
            .verify(token, now_ms())
            .map_err(|e| ApiError::Unauthorized(refusal(token, &e)))?;
        let tenant = match wanted {
            Some(t) if t != record.tenant && record.role != Role::Admin => {
                return Err(ApiError::Forbidden(format!(
                    "this token belongs to tenant `{}`, not `{t}`",
                    record.tenant
                )));
            }
            Some(t) => t,
            None => record.tenant.clone(),
        };
        (tenant, record.role, Some(record.id))
    } else {
        (wanted.unwrap_or_default(), Role::Admin, None)
    };
    if state.accounts.tenant(&tenant).is_none() {
        return Err(ApiError::NotFound(format!(
            "no tenant `{tenant}` (an admin creates it with `gust tenant create {tenant}`)"
        )));
    }
    Ok(Caller {
        tenant,
        role,
        token_id,
    })
}

/// The way back for an admin whose token is lost or mistyped.
const LOST_ADMIN_TOKEN: &str = "an admin who lost the token gets a new one by restarting the server with `gust up --new-admin-token`";

/// Why a token is refused, with what to do about it.
fn refusal(token: &str, error: &AuthError) -> String {
    match error {
        AuthError::Malformed if looks_like_a_token(token) => format!(
            "the token is incomplete or mistyped: it starts like a Gust token (`gust_<id>_<secret>`) but its secret is cut short or has extra characters; copy all of it again into GUST_TOKEN ({LOST_ADMIN_TOKEN})"
        ),
        AuthError::Malformed => {
            format!("{error}; set GUST_TOKEN to the token `gust up` or `gust token create` printed")
        }
        AuthError::Unknown => format!(
            "the token is not valid: it is not one this server issued, or it is mistyped; check GUST_TOKEN ({LOST_ADMIN_TOKEN})"
        ),
        AuthError::Revoked(_) | AuthError::Expired(_) => {
            format!("{error}: ask an owner for a new one (`gust token create`)")
        }
    }
}

/// `gust_` and a 12-digit hexadecimal id, then `_`: the shape of a Gust
/// token, whatever follows.
fn looks_like_a_token(token: &str) -> bool {
    let Some((id, _)) = token
        .strip_prefix("gust_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return false;
    };
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One control-plane change, as the audit log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub time_ms: u64,
    /// The token's id (`dev` in dev mode).
    pub token: String,
    pub role: Role,
    pub method: String,
    pub path: String,
    /// The HTTP status of the answer: 2xx done, anything else refused or failed.
    pub status: u16,
}

/// What every audit stream's name starts with (and no other's).
pub(crate) const AUDIT_STREAMS: &str = "audit/";

fn audit_stream(tenant: &TenantId) -> String {
    format!("{AUDIT_STREAMS}{tenant}")
}

/// The middleware in front of every `/v1` route: authenticates, then
/// records changes (anything but GET) in the tenant's audit log.
pub(crate) async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
        return next.run(request).await;
    }
    let caller = match resolve(&state, &request) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let method = request.method().clone();
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let response = name_missing_function(&state, &caller, &path, response).await;
    if method != Method::GET && method != Method::HEAD {
        let entry = AuditEntry {
            seq: 0,
            time_ms: now_ms(),
            token: caller.token_id.unwrap_or_else(|| "dev".into()),
            role: caller.role,
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
        };
        if let Ok(bytes) = serde_json::to_vec(&entry)
            && let Err(e) = state
                .logs
                .append(vec![(audit_stream(&caller.tenant), bytes.into())])
                .await
        {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }
    response
}

/// The answer for a function the tenant does not have, whatever the
/// handler: when a handler answers that the function the path names
/// (`/v1/functions/{name}...`) does not exist, a caller who may list the
/// tenant's functions is told a near name among them.
async fn name_missing_function(
    state: &ApiState,
    caller: &Caller,
    path: &str,
    response: Response,
) -> Response {
    let Some(crate::error::MissingFunction(missing)) = response.extensions().get() else {
        return response;
    };
    let named = path
        .strip_prefix("/v1/functions/")
        .and_then(|rest| rest.split('/').next());
    if named != Some(missing.as_str()) || !caller.role.allows(Action::Read) {
        return response;
    }
    let own = state
        .registry
        .functions(&caller.tenant)
        .await
        .unwrap_or_default();
    let Some(near) = crate::error::near_name(missing, own.iter().map(|f| f.name.as_str())) else {
        return response;
    };
    ApiError::NoSuchFunction {
        name: missing.clone(),
        near: Some(near.to_string()),
    }
    .into_response()
}

/// A tenant as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantInfo {
    pub id: String,
    pub created_at_ms: u64,
    pub quotas: Quotas,
    pub plan: PricePlan,
}

impl From<TenantRecord> for TenantInfo {
    fn from(r: TenantRecord) -> Self {
        Self {
            id: r.id.to_string(),
            created_at_ms: r.created_ms,
            quotas: r.quotas,
            plan: r.plan,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Lowercase letters, digits and `-`.
    pub id: String,
    /// Quotas (default: the platform's defaults).
    pub quotas: Option<Quotas>,
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = TenantInfo), (status = 403, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)))]
pub(crate) async fn create_tenant(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<NewTenant>, JsonRejection>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    caller.require(Action::Administer)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id = TenantId::new(body.id).map_err(|e| ApiError::BadRequest(format!("tenant id: {e}")))?;
    let record = state
        .accounts
        .create_tenant(id, body.quotas.unwrap_or_default(), now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = [TenantInfo]), (status = 403, body = crate::ErrorBody)))]
pub(crate) async fn list_tenants(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TenantInfo>>, ApiError> {
    caller.require(Action::Administer)?;
    Ok(Json(
        state
            .accounts
            .tenants()
            .into_iter()
            .map(TenantInfo::from)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/tenant", tag = "tenants",
    responses((status = 200, description = "The caller's tenant", body = TenantInfo)))]
pub(crate) async fn current_tenant(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<TenantInfo>, ApiError> {
    caller.require(Action::Read)?;
    let record = state
        .accounts
        .tenant(&caller.tenant)
        .ok_or_else(|| ApiError::NotFound(format!("no tenant `{}`", caller.tenant)))?;
    Ok(Json(record.into()))
}

#[utoipa::path(put, path = "/v1/tenants/{id}/quotas", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")), request_body = Quotas,
    responses((status = 200, body = TenantInfo), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn set_quotas(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<TenantInfo>, ApiError> {
    caller.require(Action::Administer)?;
    let quotas: Quotas = crate::json_object(body)?;
    let id = TenantId::new(id).map_err(|e| ApiError::BadRequest(format!("tenant id: {e}")))?;
    Ok(Json(state.accounts.set_quotas(&id, quotas).await?.into()))
}

#[utoipa::path(put, path = "/v1/tenants/{id}/plan", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = PricePlan,
    responses(
        (status = 200, description = "The tenant with its new plan: invocations from now on are priced by it", body = TenantInfo),
        (status = 400, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn set_plan(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<TenantInfo>, ApiError> {
    caller.require(Action::Administer)?;
    let plan: PricePlan = crate::json_object(body)?;
    if plan.id.trim().is_empty() {
        return Err(ApiError::BadRequest("a price plan needs an `id`".into()));
    }
    text::check("id", &plan.id, text::MAX_PLAN_ID_BYTES)?;
    let id = TenantId::new(id).map_err(|e| ApiError::BadRequest(format!("tenant id: {e}")))?;
    Ok(Json(
        state.accounts.set_plan(&id, plan, now_ms()).await?.into(),
    ))
}

/// A token as the API shows it (never the token itself, except once at creation).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub role: Role,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
    /// The token: present only in the answer that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<TokenRecord> for TokenInfo {
    fn from(r: TokenRecord) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant.to_string(),
            role: r.role,
            description: r.description,
            created_at_ms: r.created_ms,
            expires_at_ms: r.expires_ms,
            revoked_at_ms: r.revoked_ms,
            token: None,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    /// Seconds until it expires (default: never).
    pub expires_in_s: Option<u64>,
    /// What it is for, for people reading `gust token ls` (at most 256 bytes).
    pub description: Option<String>,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, description = "The token, shown this once", body = TokenInfo), (status = 403, body = crate::ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenInfo>), ApiError> {
    caller.require(Action::ManageTokens)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text::check_opt(
        "description",
        body.description.as_deref(),
        text::MAX_DESCRIPTION_BYTES,
    )?;
    if body.role == Role::Admin {
        caller.require(Action::Administer)?;
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
    let now = now_ms();
    let expires = body
        .expires_in_s
        .map(|s| now.saturating_add(s.saturating_mul(1000)));
    let (record, token) = state
        .accounts
        .create_token(
            &caller.tenant,
            body.role,
            expires,
            body.description.unwrap_or_default(),
            random,
            now,
        )
        .await?;
    let mut info = TokenInfo::from(record);
    info.token = Some(token);
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = [TokenInfo]), (status = 403, body = crate::ErrorBody)))]
pub(crate) async fn list_tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.require(Action::ManageTokens)?;
    let tokens = state.accounts.tokens(Some(&caller.tenant));
    Ok(Json(tokens.into_iter().map(TokenInfo::from).collect()))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, body = TokenInfo), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody),
        (status = 409, description = "The last admin token that never expires: create another admin token first", body = crate::ErrorBody)))]
pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    caller.require(Action::ManageTokens)?;
    let record = state
        .accounts
        .revoke(Some(&caller.tenant), &id, now_ms())
        .await?;
    Ok(Json(record.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries with a sequence number above this (default 0).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "tokens", params(AuditParams),
    responses((status = 200, description = "Control-plane changes in the tenant, oldest first", body = [AuditEntry]), (status = 403, body = crate::ErrorBody)))]
pub(crate) async fn read_audit(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Action::ManageTokens)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let records = state
        .logs
        .read(
            &audit_stream(&caller.tenant),
            params.after.unwrap_or(0),
            params.limit.unwrap_or(100).clamp(1, 1000),
        )
        .await?;
    Ok(Json(
        records
            .into_iter()
            .filter_map(|(seq, bytes)| {
                let mut entry: AuditEntry = serde_json::from_slice(&bytes).ok()?;
                entry.seq = seq;
                Some(entry)
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_of_the_right_shape_but_cut_short_is_called_incomplete() {
        let short = refusal("gust_8045c6a95d07_abc", &AuthError::Malformed);
        assert!(short.contains("incomplete or mistyped"), "{short}");
        assert!(!short.contains("not a Gust token"), "{short}");
        for other in [
            "gust_nope",
            "abc",
            "gust_8045c6a95d0_abc",
            "gust_8045c6a95dzz_abc",
        ] {
            let message = refusal(other, &AuthError::Malformed);
            assert!(message.contains("not a Gust token"), "{other}: {message}");
        }
    }

    #[test]
    fn a_token_this_server_did_not_issue_points_to_a_new_admin_token() {
        let message = refusal("gust_8045c6a95d07_whatever", &AuthError::Unknown);
        assert!(message.contains("not valid"), "{message}");
        assert!(message.contains("gust up --new-admin-token"), "{message}");
    }
}

//! `/v1/functions/{name}/routes`: the host names and path prefixes a
//! function claims on the data plane (beyond its own `/<name>` URL). A
//! place is held by one function at a time: a claim on a taken one is
//! refused with 409, naming the holder (another tenant's only as such).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use gust_core::TenantId;
use gust_core::access::Action;
use gust_core::route::RouteClaim;

use crate::{ApiError, ApiState, Caller, ErrorBody, function_name};

/// Claims a function may hold, at most.
pub(crate) const MAX_CLAIMS: usize = 32;

/// One claim's text, at most (a host name is at most 253 bytes).
const MAX_CLAIM_BYTES: usize = 2048;

/// Parses claims written as `api.example.com/v1:alias`, for `tenant`: a
/// path alone is the `default` tenant's namespace (`/<name>`), so only
/// its functions may claim one; the data plane's own host is no one's.
pub(crate) fn parse_claims<'a>(
    state: &ApiState,
    tenant: &TenantId,
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<RouteClaim>, ApiError> {
    let own_host = state
        .public_url
        .split_once("://")
        .map_or(state.public_url.as_str(), |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut claims: Vec<RouteClaim> = Vec::new();
    for text in texts {
        if claims.len() >= MAX_CLAIMS {
            return Err(ApiError::BadRequest(format!(
                "a function may claim at most {MAX_CLAIMS} hosts and prefixes"
            )));
        }
        crate::text::check("route", text, MAX_CLAIM_BYTES)?;
        let claim: RouteClaim = text.trim().parse().map_err(ApiError::BadRequest)?;
        match &claim.host {
            Some(host)
                if *host == own_host
                    || state
                        .public_hosts
                        .iter()
                        .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(host)) =>
            {
                return Err(ApiError::BadRequest(format!(
                    "`{host}` is the data plane's own host: it serves every function by its path"
                )));
            }
            Some(host)
                if state.tenant_domain.as_deref().is_some_and(|domain| {
                    let domain = domain.trim_matches('.').to_ascii_lowercase();
                    *host == domain || host.ends_with(&format!(".{domain}"))
                }) =>
            {
                return Err(ApiError::BadRequest(format!(
                    "`{host}` is under the tenant domain, where each tenant's functions are served on its own origin; claim a host outside it"
                )));
            }
            None if tenant.as_str() != TenantId::default_tenant().as_str() => {
                return Err(ApiError::BadRequest(format!(
                    "`{claim}` claims a path on every host, which is the `default` tenant's namespace; claim a host name (`example.com{}`)",
                    claim.prefix.as_deref().unwrap_or("")
                )));
            }
            _ => {}
        }
        if claims.iter().any(|c| c.place() == claim.place()) {
            return Err(ApiError::BadRequest(format!("`{claim}` is claimed twice")));
        }
        claims.push(claim);
    }
    if claims.len() > MAX_CLAIMS {
        return Err(ApiError::BadRequest(format!(
            "a function may claim at most {MAX_CLAIMS} hosts and prefixes"
        )));
    }
    Ok(claims)
}

#[utoipa::path(get, path = "/v1/functions/{name}/routes", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, body = [RouteClaim]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_routes(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<RouteClaim>>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let record = state.function_record(&caller.tenant, &name).await?;
    Ok(Json(record.routes))
}

#[utoipa::path(put, path = "/v1/functions/{name}/routes", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body(content = Vec<String>, description = "Every claim it should hold: `api.example.com`, `api.example.com/v1`, `/shop`, each with `:alias` after if not for `live`"),
    responses(
        (status = 200, description = "Claimed; served from the next request", body = [RouteClaim]),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "A place another function holds", body = ErrorBody)))]
pub(crate) async fn set_routes(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<Vec<String>>, JsonRejection>,
) -> Result<Json<Vec<RouteClaim>>, ApiError> {
    caller.require(Action::Write)?;
    let Json(texts) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    let claims = parse_claims(&state, &caller.tenant, texts.iter().map(String::as_str))?;
    let (record, revision) = state
        .registry
        .set_routes(&caller.tenant, &name, claims)
        .await?;
    let _ = state.until_live(revision).await;
    Ok(Json(record.routes))
}

//! `/v1/schedules` and `/v1/triggers`: every schedule and change trigger of
//! the caller's tenant, across its functions (each names its function).
//! Only the caller's tenant is read: another tenant's never show.

use axum::Json;
use axum::extract::State;
use gust_core::access::Action;

use crate::{ApiError, ApiState, Caller, ScheduleInfo, TriggerInfo};

#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, description = "The tenant's schedules, by function then id", body = [ScheduleInfo])))]
pub(crate) async fn list_all_schedules(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ScheduleInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let mut all = Vec::new();
    for function in state.registry.functions(&caller.tenant).await? {
        let records = state
            .events
            .schedules(&caller.tenant, &function.name)
            .await?;
        all.extend(
            records
                .into_iter()
                .map(|r| ScheduleInfo::listed(&state.events, r)),
        );
    }
    Ok(Json(all))
}

#[utoipa::path(get, path = "/v1/triggers", tag = "triggers",
    responses((status = 200, description = "The tenant's change triggers, by function then id", body = [TriggerInfo])))]
pub(crate) async fn list_all_triggers(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TriggerInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let mut all = Vec::new();
    for function in state.registry.functions(&caller.tenant).await? {
        let records = state
            .events
            .kv_triggers(&caller.tenant, &function.name)
            .await?;
        all.extend(records.into_iter().map(TriggerInfo::from));
    }
    Ok(Json(all))
}

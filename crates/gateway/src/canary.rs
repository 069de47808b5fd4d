//! Drives canaries: every tick, each function whose `live` alias runs a
//! canary has its two versions' figures since the canary started (the
//! catalog keeps the baseline) judged by `gust_autoscale::canary::judge`, and a verdict other than
//! "wait" is written to the registry (promoted: `live` moves to the
//! canary; rolled back: the stable version keeps all traffic), with the
//! reason. The registry write is a compare-and-set that only ends the
//! canary it judged, so a deploy racing it wins. An application's canary
//! release is judged the same way on the sum of all its members' figures
//! (live release against canary release), counted from when this process
//! first saw it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gust_autoscale::canary::{Snapshot, Verdict, judge};
use gust_store::Registry;

use crate::catalog::Catalog;

/// How often canaries are judged.
pub(crate) const TICK: Duration = Duration::from_millis(500);

pub(crate) async fn drive(catalog: Arc<Catalog>, registry: Registry) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut app_baselines = HashMap::new();
    loop {
        ticks.tick().await;
        let now_ms = crate::now_ms();
        judge_apps(&catalog, &registry, &mut app_baselines, now_ms).await;
        for served in catalog.all() {
            let Some(running) = &served.canary else {
                continue;
            };
            let (canary, baseline) = (&running.canary, &running.baseline);
            let stable = &served.live;
            let canary_route = &running.loaded;
            let verdict = judge(
                &canary.policy,
                now_ms.saturating_sub(canary.started_at_ms),
                canary.window_ms,
                &stable.health.snapshot().since(&baseline.stable),
                &canary_route.health.snapshot().since(&baseline.canary),
            );
            let (promote, reason) = match verdict {
                Verdict::Wait => continue,
                Verdict::Promote(reason) => (true, reason),
                Verdict::RollBack(reason) => (false, reason),
            };
            match registry
                .end_canary(
                    &stable.tenant,
                    &stable.name,
                    canary.version,
                    promote,
                    &reason,
                    now_ms,
                )
                .await
            {
                Ok(Some(_)) => tracing::info!(
                    function = %stable.name,
                    tenant = %stable.tenant,
                    canary = canary.version,
                    stable = stable.version,
                    promoted = promote,
                    %reason,
                    "canary ended"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(function = %stable.name, error = %e, "cannot end a canary; trying again");
                }
            }
        }
    }
}

/// Where an application's canary release's figures start: (tenant/app,
/// canary version, started) → (live's, canary's) sums when first seen.
type AppBaselines = HashMap<(String, u64, u64), (Snapshot, Snapshot)>;

/// Judges every application's canary release on this node's figures; a
/// verdict ends it in the registry (a compare-and-set that ends only the
/// canary judged).
async fn judge_apps(
    catalog: &Catalog,
    registry: &Registry,
    baselines: &mut AppBaselines,
    now_ms: u64,
) {
    let running = catalog.app_canaries();
    let mut seen = Vec::new();
    for figures in running {
        let app = &figures.app;
        let Some((split, canary)) = app.split.and_then(|s| Some((s, s.canary?))) else {
            continue;
        };
        let key = (
            format!("{}/{}", app.tenant, app.name),
            split.version,
            canary.started_at_ms,
        );
        seen.push(key.clone());
        let (stable_base, canary_base) = baselines
            .entry(key)
            .or_insert_with(|| (figures.stable.clone(), figures.canary.clone()))
            .clone();
        let verdict = judge(
            &canary.policy,
            now_ms.saturating_sub(canary.started_at_ms),
            canary.window_ms,
            &figures.stable.since(&stable_base),
            &figures.canary.since(&canary_base),
        );
        let (promote, reason) = match verdict {
            Verdict::Wait => continue,
            Verdict::Promote(reason) => (true, reason),
            Verdict::RollBack(reason) => (false, reason),
        };
        let ended = registry
            .update_app(&app.tenant, &app.name, false, now_ms, |record| {
                Ok(record.end_canary(
                    split.version,
                    canary.started_at_ms,
                    promote,
                    &reason,
                    now_ms,
                ))
            })
            .await;
        match ended {
            Ok((_, true, _)) => tracing::info!(
                app = %app.name,
                tenant = %app.tenant,
                canary = split.version,
                stable = app.live,
                promoted = promote,
                %reason,
                "canary release ended"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(app = %app.name, error = %e, "cannot end a canary release; trying again");
            }
        }
    }
    baselines.retain(|key, _| seen.contains(key));
}

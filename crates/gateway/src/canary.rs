//! Drives canaries: every tick, each function whose `live` alias runs a
//! canary has its two versions' figures since the canary started (the
//! catalog keeps the baseline) judged by `gust_autoscale::canary::judge`, and a verdict other than
//! "wait" is written to the registry (promoted: `live` moves to the
//! canary; rolled back: the stable version keeps all traffic), with the
//! reason. The registry write is a compare-and-set that only ends the
//! canary it judged, so a deploy racing it wins.

use std::sync::Arc;
use std::time::Duration;

use gust_autoscale::canary::{Verdict, judge};
use gust_store::Registry;

use crate::catalog::Catalog;

/// How often canaries are judged.
pub(crate) const TICK: Duration = Duration::from_millis(500);

pub(crate) async fn drive(catalog: Arc<Catalog>, registry: Registry) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now_ms = crate::now_ms();
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

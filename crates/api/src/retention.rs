//! Retention: what the node keeps, and for how long.
//!
//! A background pass, every [`RetentionConfig::every`], removes what is
//! past its age: invocation logs, finished invocations' status records,
//! dead letters, audit entries and usage records (each its own age; usage
//! is billing's, so long, and never within this month or the last), and
//! version retention: each function keeps its
//! newest versions and every one an alias refers to. Then it collects
//! components and compiled artifacts that no version refers to (under
//! the registry's components lock, so no deploy is between storing its
//! component and recording its version), and measures the data
//! directory. Every removal walks in bounded steps with pauses between,
//! on the store's own writer: requests never wait for a pass. What each
//! pass removed is counted for `/metrics`.
//!
//! In a cluster every node runs the pass: removals are idempotent, and
//! each node's compiled artifacts and ledger are its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gust_store::{LogLimits, Registry};

use crate::ApiState;

/// Pause between steps of a pass: others' writes go in between.
const STEP_PAUSE: Duration = Duration::from_millis(5);
/// A compiled artifact is removed only once untouched this long: a deploy
/// compiles before it records its version.
const ARTIFACT_GRACE: Duration = Duration::from_secs(600);

/// How long each kind of record is kept (`Duration::ZERO`: forever).
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Between the end of one pass and the start of the next.
    pub every: Duration,
    /// Invocation logs (their size cap is applied as they are written).
    pub logs: LogLimits,
    pub statuses: Duration,
    pub dead_letters: Duration,
    pub audit: Duration,
    pub usage: Duration,
    /// Versions kept per function beyond those an alias refers to (0: all).
    pub versions: usize,
    /// Measured after each pass (`None`: not measured).
    pub data_dir: Option<PathBuf>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            every: Duration::from_secs(60),
            logs: LogLimits::default(),
            statuses: Duration::from_secs(7 * DAY),
            dead_letters: Duration::from_secs(14 * DAY),
            audit: Duration::from_secs(365 * DAY),
            usage: Duration::from_secs(400 * DAY),
            versions: 100,
            data_dir: None,
        }
    }
}

/// What retention removed since the node started, and the data
/// directory's size after the last pass.
#[derive(Debug, Default)]
pub struct RetentionStats {
    pub passes: AtomicU64,
    pub logs: AtomicU64,
    pub statuses: AtomicU64,
    pub dead_letters: AtomicU64,
    pub audit: AtomicU64,
    pub usage: AtomicU64,
    pub versions: AtomicU64,
    pub blobs: AtomicU64,
    pub artifacts: AtomicU64,
    /// Bytes on disk (allocated blocks) under the data directory.
    pub data_dir_bytes: AtomicU64,
}

impl RetentionStats {
    /// (kind, records removed) for `/metrics`.
    pub fn pruned(&self) -> [(&'static str, u64); 8] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("logs", n(&self.logs)),
            ("statuses", n(&self.statuses)),
            ("dead_letters", n(&self.dead_letters)),
            ("audit", n(&self.audit)),
            ("usage", n(&self.usage)),
            ("versions", n(&self.versions)),
            ("blobs", n(&self.blobs)),
            ("artifacts", n(&self.artifacts)),
        ]
    }
}

/// Runs passes until the server stops.
pub fn spawn(
    state: ApiState,
    config: RetentionConfig,
    stats: Arc<RetentionStats>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stopping = state.stopping.clone();
        loop {
            pass(&state, &config, &stats).await;
            stats.passes.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(config.every) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    })
}

fn before(now_ms: u64, age: Duration) -> Option<u64> {
    (!age.is_zero()).then(|| now_ms.saturating_sub(age.as_millis() as u64))
}

/// Where usage records are cut: at their age, but never within the
/// previous month or this one (budgets are rebuilt from this month's
/// records, and last month's invoice from its own).
fn usage_cut(now_ms: u64, age: Duration) -> Option<u64> {
    let keep_from = gust_core::usage::month_start_ms(
        gust_core::usage::month_start_ms(now_ms).saturating_sub(1),
    );
    before(now_ms, age).map(|cut| cut.min(keep_from))
}

/// Counts what a step removed, or says why it stopped: the other kinds
/// go on either way.
fn count<E: std::fmt::Display>(kind: &str, counter: &AtomicU64, result: Result<u64, E>) {
    match result {
        Ok(n) => {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(kind, error = %e, "retention stopped early for this kind; the next pass goes on")
        }
    }
}

/// One pass: each kind in turn, then the collection of components.
async fn pass(state: &ApiState, config: &RetentionConfig, stats: &RetentionStats) {
    let now = crate::now_ms();
    if config.logs.max_age_ms > 0 {
        let result = state
            .logs
            .prune(Registry::LOG_STREAMS, config.logs, now)
            .await;
        count("logs", &stats.logs, result);
    }
    if let Some(before) = before(now, config.audit) {
        let limits = LogLimits {
            max_bytes: u64::MAX,
            max_age_ms: now - before,
        };
        let result = state
            .logs
            .prune(crate::auth::AUDIT_STREAMS, limits, now)
            .await;
        count("audit", &stats.audit, result);
    }
    if let Some(succeeded) = before(now, config.statuses) {
        // A dead letter's status lasts as long as the letter.
        let dead = before(now, config.dead_letters).map_or(0, |d| d.min(succeeded));
        let result = state
            .events
            .prune_statuses(succeeded, dead, STEP_PAUSE)
            .await;
        count("statuses", &stats.statuses, result);
    }
    if let Some(before) = before(now, config.dead_letters) {
        let result = state.events.prune_dead_letters(before, STEP_PAUSE).await;
        count("dead_letters", &stats.dead_letters, result);
    }
    if let (Some(before), Some(meter)) = (usage_cut(now, config.usage), &state.meter) {
        count("usage", &stats.usage, meter.prune(before, STEP_PAUSE).await);
    }
    // No deploy stores a component, and no other node collects, between
    // the removal of versions and the collection.
    match state.registry.components_lock().await {
        Ok(_uploading) => {
            let removed = state.registry.prune_versions(config.versions).await;
            count("versions", &stats.versions, removed.map(|r| r.len() as u64));
            if let Err(e) = collect_components(state, stats).await {
                tracing::warn!(error = %e, "components were not collected; the next pass tries again");
            }
        }
        Err(e) => tracing::warn!(error = %e, "versions and components wait for the next pass"),
    }
    if let Some(dir) = &config.data_dir {
        let dir = dir.clone();
        if let Ok(bytes) = tokio::task::spawn_blocking(move || disk_bytes(&dir)).await {
            stats.data_dir_bytes.store(bytes, Ordering::Relaxed);
        }
    }
}

/// Removes components no version refers to, and their compiled
/// artifacts, and artifacts no one will load; under the components lock.
async fn collect_components(
    state: &ApiState,
    stats: &RetentionStats,
) -> Result<(), crate::ApiError> {
    let keep = state.registry.referenced_digests().await?;
    for digest in state.blobs.digests().await? {
        if !keep.contains(&digest) {
            state.runtime.forget_artifact(&digest);
            if state.blobs.delete(&digest).await? {
                stats.blobs.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let runtime = state.runtime.clone();
    let swept = tokio::task::spawn_blocking(move || runtime.sweep_artifacts(&keep, ARTIFACT_GRACE))
        .await
        .map_err(|e| crate::ApiError::Internal(format!("sweeping artifacts: {e}")))?;
    match swept {
        Ok((files, _)) => {
            stats.artifacts.fetch_add(files, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "compiled artifacts were not swept"),
    }
    Ok(())
}

/// Bytes allocated on disk under `dir` (holes punched are not counted).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_of_zero_keeps_forever_and_others_count_back_from_now() {
        assert_eq!(before(10_000, Duration::ZERO), None);
        assert_eq!(before(10_000, Duration::from_secs(3)), Some(7_000));
        assert_eq!(before(1_000, Duration::from_secs(3)), Some(0));
    }

    #[test]
    fn usage_is_kept_through_the_previous_month_whatever_the_age() {
        // 2026-03-15T00:00:00Z; the previous month starts 2026-02-01.
        let now = 1_773_532_800_000;
        let february = 1_769_904_000_000;
        assert_eq!(usage_cut(now, Duration::from_secs(6)), Some(february));
        let long = Duration::from_secs(400 * 86_400);
        assert_eq!(usage_cut(now, long), Some(now - 400 * 86_400_000));
        assert_eq!(usage_cut(now, Duration::ZERO), None);
    }

    #[test]
    fn the_data_directory_is_measured_by_what_it_holds_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 100_000]).unwrap();
        let bytes = disk_bytes(dir.path());
        assert!((100_000..200_000).contains(&bytes), "{bytes}");
    }
}

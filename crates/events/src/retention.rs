//! Retention of what delivery leaves behind: the status records of
//! finished invocations and dead letters, removed by age.
//!
//! Both are walked in key order a page at a time, with a pause between
//! pages, so a pass over millions of records never holds the store for
//! long; a page's removals go to the store together (one group commit).
//! Only finished invocations lose their status (`succeeded`, and
//! `dead-lettered` once its letter's age has passed too): one still
//! queued or waiting for a retry keeps it whatever its age. A dead letter redriven in the instant its old status
//! is removed loses that status until its attempt writes one.

use std::time::Duration;

use gust_core::{InvocationRecord, InvocationState};
use gust_store::{Entry, MetaStore, StoreError};
use std::sync::Arc;

use crate::{DeadLetter, Events, EventsError, decode};

/// Records read per step.
const PAGE: usize = 256;

impl Events {
    /// Removes the status records of invocations that succeeded before
    /// `succeeded_before` or were dead-lettered before `dead_before` (a
    /// dead letter's status stays as long as the letter may be redriven),
    /// and the entries of successes kept together whose newest is older
    /// than `succeeded_before`; returns how many records and entries went. `pause` is slept between pages.
    pub async fn prune_statuses(
        &self,
        succeeded_before: u64,
        dead_before: u64,
        pause: Duration,
    ) -> Result<u64, EventsError> {
        let records = prune(&self.kv, "inv/", pause, |entry| {
            decode::<InvocationRecord>(&entry.value).is_ok_and(|r| match r.state {
                InvocationState::Succeeded => r.updated_ms < succeeded_before,
                InvocationState::DeadLettered => r.updated_ms < dead_before,
                _ => false,
            })
        })
        .await?;
        let together = prune(&self.kv, crate::done::PREFIX, pause, |entry| {
            crate::done::expired(&entry.value, succeeded_before)
        })
        .await?;
        Ok(records + together)
    }

    /// Removes dead letters that died before `before_ms`; returns how many.
    pub async fn prune_dead_letters(
        &self,
        before_ms: u64,
        pause: Duration,
    ) -> Result<u64, EventsError> {
        prune(&self.kv, "dlq/", pause, |entry| {
            decode::<DeadLetter>(&entry.value).is_ok_and(|l| l.dead_at_ms < before_ms)
        })
        .await
    }
}

/// Walks `prefix` and removes the entries `expired` picks.
async fn prune(
    kv: &Arc<dyn MetaStore>,
    prefix: &str,
    pause: Duration,
    expired: impl Fn(&Entry) -> bool,
) -> Result<u64, EventsError> {
    let mut after: Option<String> = None;
    let mut removed = 0u64;
    loop {
        let page = kv.list_page(prefix, after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(removed);
        };
        after = Some(last.key.clone());
        let mut deletes = tokio::task::JoinSet::new();
        for entry in page.iter().filter(|e| expired(e)) {
            let kv = kv.clone();
            let key = entry.key.clone();
            deletes.spawn(async move { kv.delete(&key).await });
        }
        while let Some(done) = deletes.join_next().await {
            let deleted = done.map_err(|_| StoreError::Closed)??;
            removed += u64::from(deleted.is_some());
        }
        if page.len() < PAGE {
            return Ok(removed);
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use gust_core::delivery::DeadReason;

    fn status(id: &str, state: InvocationState, updated_ms: u64) -> Bytes {
        crate::encode(&InvocationRecord {
            invocation_id: id.into(),
            function: "f".into(),
            state,
            attempts: 1,
            accepted_ms: updated_ms,
            updated_ms,
            last_status: None,
            last_error: None,
            retry_at_ms: None,
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn finished_statuses_and_dead_letters_past_their_age_go_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap(),
        );
        let events = Events::new(store.clone(), store.clone());
        let kv: &dyn MetaStore = store.as_ref();
        // 600 old finished ones (more than a page), and the ones that stay.
        for i in 0..600 {
            let state = if i % 2 == 0 {
                InvocationState::Succeeded
            } else {
                InvocationState::DeadLettered
            };
            kv.put(&format!("inv/t/old{i:04}"), status("x", state, 1_000))
                .await
                .unwrap();
        }
        kv.put(
            "inv/t/new",
            status("new", InvocationState::Succeeded, 5_000),
        )
        .await
        .unwrap();
        kv.put("inv/t/queued", status("q", InvocationState::Queued, 1_000))
            .await
            .unwrap();
        kv.put(
            "inv/t/retrying",
            status("r", InvocationState::Failed, 1_000),
        )
        .await
        .unwrap();
        let letter = |dead_at_ms| {
            crate::encode(&DeadLetter {
                invocation_id: "d".into(),
                function: "f".into(),
                reason: DeadReason::AttemptsExhausted,
                attempts: 3,
                last_status: Some(500),
                last_error: None,
                dead_at_ms,
                envelope: Vec::new(),
            })
            .unwrap()
        };
        kv.put("dlq/t/f/old", letter(1_000)).await.unwrap();
        kv.put("dlq/t/f/new", letter(5_000)).await.unwrap();

        let pause = Duration::ZERO;
        // Dead-lettered statuses are kept as long as dead letters: not yet.
        assert_eq!(events.prune_statuses(2_000, 500, pause).await.unwrap(), 300);
        assert_eq!(
            events.prune_statuses(2_000, 2_000, pause).await.unwrap(),
            300
        );
        assert_eq!(events.prune_dead_letters(2_000, pause).await.unwrap(), 1);
        let keys = |prefix: &'static str| async move {
            kv.list(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys("inv/").await,
            ["inv/t/new", "inv/t/queued", "inv/t/retrying"]
        );
        assert_eq!(keys("dlq/").await, ["dlq/t/f/new"]);
        assert_eq!(events.prune_statuses(2_000, 2_000, pause).await.unwrap(), 0);
    }
}

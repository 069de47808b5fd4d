//! The `QueueStore` trait on the cluster backend, over [`Queues`].

use super::*;

#[async_trait]
impl QueueStore for NatsStore {
    async fn enqueue(
        &self,
        queue: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.linked().await?;
        self.queues
            .append(&self.client, queue, None, payloads, not_before_ms)
            .await
    }

    async fn enqueue_ordered(
        &self,
        queue: &str,
        group: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.linked().await?;
        self.queues
            .append(&self.client, queue, Some(group), payloads, not_before_ms)
            .await
    }

    async fn enqueue_once(
        &self,
        queue: &str,
        group: Option<&str>,
        id: &str,
        payload: Bytes,
        not_before_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.linked().await?;
        self.queues
            .append_once(&self.client, queue, group, id, payload, not_before_ms)
            .await
    }

    fn once_window_ms(&self) -> u64 {
        ONCE_WINDOW_MS
    }

    async fn claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let contended = self.queues.contended(queue);
        let items = self
            .queues
            .candidates(&self.client, queue, now_ms, max)
            .await?;
        // In claim order; a listing from a lagging replica can offer
        // messages claimed or acknowledged since, so the ones after the
        // first `max` stand in for those.
        let mut picks = claimable(&items, now_ms, usize::MAX);
        if contended {
            spread(&mut picks, &self.queues.claimant, max);
        }
        let by_seq: HashMap<u64, &Item> = items.iter().map(|item| (item.seq, item)).collect();
        let mut picks = picks
            .into_iter()
            .filter_map(|seq| by_seq.get(&seq).copied());
        let mut claimed = Vec::new();
        let mut failed = None;
        let mut lost = false;
        while claimed.len() < max {
            let wave: Vec<&Item> = picks.by_ref().take(max - claimed.len()).collect();
            if wave.is_empty() {
                break;
            }
            let claims = futures_util::future::join_all(wave.into_iter().map(|item| {
                self.queues
                    .claim_one(&self.js, queue, item, now_ms, lease_ms)
            }))
            .await;
            for claim in claims {
                match claim {
                    Ok(Some(c)) => claimed.push(c),
                    Ok(None) => lost = true,
                    Err(e) => {
                        tracing::warn!(%queue, error = %e, "claiming one message failed");
                        failed = Some(e);
                    }
                }
            }
            if failed.is_some() {
                break;
            }
        }
        if lost {
            self.queues
                .lost_race()
                .insert(queue.to_string(), std::time::Instant::now());
        }
        // A failed claim of one message must not hide the others, which
        // are claimed now and would otherwise wait out their lease.
        match failed {
            Some(e) if claimed.is_empty() => Err(e),
            _ => Ok(claimed),
        }
    }

    async fn ack(&self, queue: &str, seqs: Vec<u64>) -> Result<(), StoreError> {
        let purges = futures_util::future::join_all(seqs.into_iter().map(|seq| {
            let subject = self.queues.subject(queue, seq);
            async move {
                self.queues
                    .stream
                    .purge()
                    .filter(subject)
                    .await
                    .map_err(backend)
            }
        }))
        .await;
        for purge in purges {
            purge?;
        }
        Ok(())
    }

    async fn release(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        self.queues
            .unclaim(&self.js, queue, seq, not_before_ms, false)
            .await
            .map(drop)
    }

    async fn defer(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        self.queues
            .unclaim(&self.js, queue, seq, not_before_ms, true)
            .await
            .map(drop)
    }

    async fn release_claims(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        let items = self.queues.items(&self.client, queue).await?;
        let mine = items
            .iter()
            .filter(|item| item.state.claimant.as_deref() == Some(self.queues.claimant.as_str()));
        let mut released = 0;
        for item in mine {
            if self
                .queues
                .unclaim(&self.js, queue, item.seq, now_ms, false)
                .await?
            {
                released += 1;
            }
        }
        Ok(released)
    }

    async fn next_due(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        Ok(next_due(&self.queues.items(&self.client, queue).await?))
    }

    async fn enqueued_elsewhere(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, StoreError> {
        let mut wakes = self
            .client
            .subscribe(self.queues.wakes.clone())
            .await
            .map_err(backend)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = wakes.next().await {
                if let Ok(queue) = std::str::from_utf8(&message.payload)
                    && tx.send(queue.to_string()).is_err()
                {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }

    async fn depth(&self, queue: &str) -> Result<u64, StoreError> {
        let filter = format!("{}.{}.*", self.queues.base, queue_token(queue));
        Ok(self.queues.subjects(&filter).await?.len() as u64)
    }

    async fn queues(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.depths().await?.into_iter().map(|(q, _)| q).collect())
    }

    /// One listing of the stream's subjects (a message each) for all.
    async fn depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = format!("{}.", self.queues.base);
        let mut depths = BTreeMap::new();
        for subject in self.queues.subjects(&format!("{prefix}>")).await? {
            let token = subject
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.split('.').next())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("`{subject}` is not a queued message"))
                })?;
            *depths.entry(queue_of_token(token)?).or_insert(0u64) += 1;
        }
        Ok(depths.into_iter().collect())
    }
}

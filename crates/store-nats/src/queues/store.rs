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
        let mut members: HashMap<PackId, Vec<&Item>> = HashMap::new();
        for item in &items {
            members.entry(item.pack).or_default().push(item);
        }
        let pack_of: HashMap<u64, PackId> =
            items.iter().map(|item| (item.seq, item.pack)).collect();
        if contended {
            spread(&mut picks, &self.queues.claimant, max, |seq| {
                pack_of.get(&seq).map_or(seq, |id| id.first)
            });
        }
        let mut picks = picks.into_iter();
        let mut claimed = Vec::new();
        let mut failed = None;
        // Packs this listing was wrong about (another node changed them
        // since): their other picks are not tried with it again.
        let mut lost: Vec<PackId> = Vec::new();
        while claimed.len() < max {
            // The next picks, by pack in the order of their first pick.
            let mut wave: Vec<(PackId, Vec<u64>)> = Vec::new();
            let mut wanted = max - claimed.len();
            for seq in picks.by_ref() {
                let Some(id) = pack_of.get(&seq).filter(|id| !lost.contains(id)) else {
                    continue;
                };
                match wave.iter_mut().find(|(w, _)| w == id) {
                    Some((_, seqs)) => seqs.push(seq),
                    None => wave.push((*id, vec![seq])),
                }
                wanted -= 1;
                if wanted == 0 {
                    break;
                }
            }
            if wave.is_empty() {
                break;
            }
            let claims = futures_util::future::join_all(wave.iter().map(|(id, seqs)| {
                let listed = members.get(id).map(Vec::as_slice).unwrap_or_default();
                self.queues
                    .claim_pack(&self.js, queue, *id, listed, seqs, now_ms, lease_ms)
            }))
            .await;
            for (claim, (id, seqs)) in claims.into_iter().zip(&wave) {
                match claim {
                    Ok(got) => {
                        if got.len() < seqs.len() {
                            lost.push(*id);
                        }
                        claimed.extend(got);
                    }
                    Err(e) => {
                        tracing::warn!(%queue, error = %e, "claiming one pack failed");
                        failed = Some(e);
                    }
                }
            }
            if failed.is_some() {
                break;
            }
        }
        // In claim order, as one node alone takes them.
        if !contended {
            claimed.sort_by_key(|c| (c.due_ms, c.seq));
        }
        if !lost.is_empty() {
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
        let acks = futures_util::future::join_all(
            seqs.into_iter()
                .map(|seq| self.queues.change(&self.js, queue, seq, Change::Ack)),
        )
        .await;
        for ack in acks {
            ack?;
        }
        Ok(())
    }

    async fn release(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        let change = Change::Unclaim {
            not_before: not_before_ms,
            refund: false,
        };
        self.queues
            .change(&self.js, queue, seq, change)
            .await
            .map(drop)
    }

    async fn defer(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        let change = Change::Unclaim {
            not_before: not_before_ms,
            refund: true,
        };
        self.queues
            .change(&self.js, queue, seq, change)
            .await
            .map(drop)
    }

    async fn release_claims(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        let items = self.queues.items(&self.client, queue).await?;
        let change = Change::Unclaim {
            not_before: now_ms,
            refund: false,
        };
        let mine = items
            .iter()
            .filter(|item| item.state.claimant.as_deref() == Some(self.queues.claimant.as_str()));
        let released = futures_util::future::join_all(mine.map(|item| {
            self.queues
                .placed()
                .insert((queue.to_string(), item.seq), item.pack);
            self.queues.change(&self.js, queue, item.seq, change)
        }))
        .await;
        let mut n = 0;
        for one in released {
            n += u64::from(one?);
        }
        Ok(n)
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

    async fn peek(
        &self,
        queue: &str,
        visit: &mut (dyn FnMut(Peeked) -> bool + Send),
    ) -> Result<(), StoreError> {
        let items = self.queues.items(&self.client, queue).await?;
        // A queue listed by headers alone: its packs read one at a time
        // (`None`: gone since listed, acknowledged).
        let mut read: Option<(PackId, Option<Pack>)> = None;
        for item in items {
            let payload = match item.payload {
                Some(payload) => payload,
                None => {
                    if read.as_ref().is_none_or(|(id, _)| *id != item.pack) {
                        read = Some((item.pack, self.queues.read_pack(queue, item.pack).await?));
                    }
                    let Some(member) = read
                        .as_ref()
                        .and_then(|(_, pack)| pack.as_ref())
                        .and_then(|p| p.members.iter().find(|m| m.seq == item.seq))
                    else {
                        continue;
                    };
                    member.payload.clone()
                }
            };
            let peeked = Peeked {
                seq: item.seq,
                attempts: item.state.attempts,
                claimed: item.state.claimant.is_some(),
                payload,
            };
            if !visit(peeked) {
                break;
            }
        }
        Ok(())
    }

    /// The events its packs were made with: more than it holds by those
    /// acknowledged from a pack whose other events are not yet (see
    /// ARCHITECTURE.md, "bounds").
    async fn depth(&self, queue: &str) -> Result<u64, StoreError> {
        Ok(self
            .queues
            .pack_ids(queue)
            .await?
            .iter()
            .map(|id| id.size)
            .sum())
    }

    async fn queues(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.depths().await?.into_iter().map(|(q, _)| q).collect())
    }

    /// One listing of the stream's subjects (a message each) for all.
    async fn depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = format!("{}.", self.queues.base);
        let mut depths = BTreeMap::new();
        for subject in self.queues.subjects(&format!("{prefix}>")).await? {
            let (token, id) = subject
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(token, rest)| Some((token, PackId::parse(rest)?)))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("`{subject}` is not a queued message"))
                })?;
            *depths.entry(queue_of_token(token)?).or_insert(0u64) += id.size;
        }
        Ok(depths.into_iter().collect())
    }
}

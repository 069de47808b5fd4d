//! Group commit: concurrent writes that can share one JetStream batch wait
//! for the write in flight to finish, then all go in the next one. Every
//! write to a stream costs its replicas a Raft entry and, with
//! `sync_interval: always`, a sync to disk each; a batch costs them once.
//!
//! The first caller while nothing is written under a key starts a writer
//! task, which takes everything waiting under that key, batch after batch,
//! until nothing is left. It runs on its own, so a caller that goes away
//! leaves the others their answers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use gust_store::StoreError;
use tokio::sync::oneshot;

/// One caller's items and where its answer goes.
struct Call<T, R> {
    items: Vec<T>,
    done: oneshot::Sender<Result<Vec<R>, StoreError>>,
}

/// Writes waiting per key (a key is present while its writer runs).
pub(crate) struct GroupCommit<T, R> {
    waiting: Mutex<HashMap<String, Vec<Call<T, R>>>>,
    /// Most items in one write (a call larger than this alone still goes
    /// in one piece: `write` splits it).
    max: usize,
}

impl<T: Clone + Send + 'static, R: Clone + Send + 'static> GroupCommit<T, R> {
    pub fn new(max: usize) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Writes `items` under `key` together with whatever else waits there;
    /// `write` gets the items of several calls in order and answers one
    /// result per item (or one error for them all).
    pub async fn submit<W, F>(
        self: &Arc<Self>,
        key: &str,
        items: Vec<T>,
        write: W,
    ) -> Result<Vec<R>, StoreError>
    where
        W: Fn(Vec<T>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<R>, StoreError>> + Send,
    {
        let (done, answer) = oneshot::channel();
        let first = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match waiting.get_mut(key) {
                Some(calls) => {
                    calls.push(Call { items, done });
                    false
                }
                None => {
                    waiting.insert(key.to_string(), vec![Call { items, done }]);
                    true
                }
            }
        };
        if first {
            let this = self.clone();
            let key = key.to_string();
            tokio::spawn(async move { this.write_waiting(&key, write).await });
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes what waits under `key`, chunk after chunk (a call is never
    /// split over two chunks), until nothing does.
    async fn write_waiting<W, F>(&self, key: &str, write: W)
    where
        W: Fn(Vec<T>) -> F,
        F: Future<Output = Result<Vec<R>, StoreError>>,
    {
        loop {
            let calls = {
                let mut all = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                let calls = all.get_mut(key).map(std::mem::take).unwrap_or_default();
                if calls.is_empty() {
                    all.remove(key);
                    return;
                }
                calls
            };
            let mut chunk: Vec<Call<T, R>> = Vec::new();
            let mut size = 0;
            for call in calls {
                if size > 0 && size + call.items.len() > self.max {
                    write_chunk(std::mem::take(&mut chunk), &write).await;
                    size = 0;
                }
                size += call.items.len();
                chunk.push(call);
            }
            if !chunk.is_empty() {
                write_chunk(chunk, &write).await;
            }
        }
    }
}

/// Writes the calls' items at once and answers each call its part.
async fn write_chunk<T: Clone, R: Clone, W, F>(calls: Vec<Call<T, R>>, write: &W)
where
    W: Fn(Vec<T>) -> F,
    F: Future<Output = Result<Vec<R>, StoreError>>,
{
    let items: Vec<T> = calls.iter().flat_map(|c| c.items.clone()).collect();
    let expected = items.len();
    let written = match write(items).await {
        Ok(results) if results.len() != expected => Err(StoreError::Backend(format!(
            "a group write answered {} of {expected}",
            results.len()
        ))),
        other => other,
    };
    let mut at = 0;
    for call in calls {
        let n = call.items.len();
        let answer = match &written {
            Ok(results) => Ok(results[at..at + n].to_vec()),
            Err(e) => Err(e.clone()),
        };
        at += n;
        let _ = call.done.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_calls_share_writes_and_each_gets_its_own_answer() {
        let group = Arc::new(GroupCommit::<u32, u32>::new(100));
        let writes = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..50u32)
            .map(|i| {
                let (group, writes) = (group.clone(), writes.clone());
                tokio::spawn(async move {
                    group
                        .submit("q", vec![i, i + 1000], move |items: Vec<u32>| {
                            let writes = writes.clone();
                            async move {
                                writes.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                                Ok(items.iter().map(|x| x * 2).collect())
                            }
                        })
                        .await
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(call.await.unwrap().unwrap(), vec![i * 2, (i + 1000) * 2]);
        }
        let writes = writes.load(Ordering::Relaxed);
        assert!(writes < 50, "{writes} writes for 50 concurrent calls");
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_call_in_it() {
        let group = Arc::new(GroupCommit::<u32, u32>::new(10));
        let answer = group
            .submit("q", vec![1, 2], |_items: Vec<u32>| async {
                Err(StoreError::Unavailable("down".into()))
            })
            .await;
        assert!(matches!(answer, Err(StoreError::Unavailable(_))));
        // The key is free again.
        let answer = group
            .submit("q", vec![3], |items: Vec<u32>| async move { Ok(items) })
            .await;
        assert_eq!(answer.unwrap(), vec![3]);
    }
}

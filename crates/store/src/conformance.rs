//! The conformance suite every storage backend must pass.
//!
//! A backend's tests call each function here on a fresh, empty store; the
//! functions panic (like `assert!`) on the first behaviour that differs from
//! the contract written on the traits. Only the embedded backend exists today;
//! the cluster backend will run the same suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_core::access::{Quotas, Role};
use gust_core::{FunctionName, Limits, TenantId};

use crate::{
    Accounts, AccountsError, Activation, AliasTarget, AuthError, BlobStore, DataStore, LogStore,
    MetaEvent, MetaStore, NewVersion, QueueStore, Registry, RegistryError, StoreError, digest_of,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(watch: &mut crate::Watch) -> MetaEvent {
    tokio::time::timeout(Duration::from_secs(5), watch.changes.next())
        .await
        .expect("a watched change arrives within 5 s")
        .expect("the watch stays healthy")
}

/// Revisions, compare-and-set, delete, prefix listing and watches.
pub async fn kv(kv: &dyn MetaStore) {
    assert_eq!(kv.get("a/1").await.unwrap(), None);

    let r1 = kv.put("a/1", b("one")).await.unwrap();
    let got = kv.get("a/1").await.unwrap().unwrap();
    assert_eq!(
        (got.key.as_str(), got.value, got.revision),
        ("a/1", b("one"), r1)
    );

    // Revisions grow across keys and writes.
    let r2 = kv.put("a/2", b("two")).await.unwrap();
    let r3 = kv.put("a/1", b("uno")).await.unwrap();
    assert!(r1 < r2 && r2 < r3, "revisions grow: {r1} {r2} {r3}");

    // Compare-and-set: create-only, then on the right revision, and a refusal on the wrong one.
    let created = kv.compare_and_set("b/1", b("x"), None).await.unwrap();
    assert!(matches!(
        kv.compare_and_set("b/1", b("y"), None).await,
        Err(StoreError::Conflict { found: Some(f), expected: None, .. }) if f == created
    ));
    assert!(matches!(
        kv.compare_and_set("b/1", b("y"), Some(created + 100)).await,
        Err(StoreError::Conflict { .. })
    ));
    let updated = kv
        .compare_and_set("b/1", b("y"), Some(created))
        .await
        .unwrap();
    assert!(updated > created);
    assert_eq!(kv.get("b/1").await.unwrap().unwrap().value, b("y"));
    assert!(matches!(
        kv.compare_and_set("missing", b("y"), Some(1)).await,
        Err(StoreError::Conflict { found: None, .. })
    ));

    // Listing is by prefix, in key order, and does not leak neighbours.
    kv.put("a/10", b("ten")).await.unwrap();
    kv.put("a", b("not under a/")).await.unwrap();
    kv.put("ab/1", b("not under a/")).await.unwrap();
    let keys: Vec<String> = kv
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["a/1", "a/10", "a/2"]);

    // Delete reports whether the key existed.
    let deleted = kv.delete("a/10").await.unwrap().expect("a/10 existed");
    assert!(deleted > r3);
    assert_eq!(kv.delete("a/10").await.unwrap(), None);
    assert_eq!(kv.get("a/10").await.unwrap(), None);

    // A watch sees the current entries, then later changes under its prefix only, in order.
    let mut watch = kv.watch("a/").await.unwrap();
    let initial: Vec<&str> = watch.initial.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(initial, ["a/1", "a/2"]);
    assert!(watch.initial.iter().all(|e| e.revision <= watch.revision));
    kv.put("elsewhere", b("x")).await.unwrap();
    let w1 = kv.put("a/3", b("three")).await.unwrap();
    kv.delete("a/1").await.unwrap();
    match next_event(&mut watch).await {
        MetaEvent::Put(entry) => {
            assert_eq!(
                (entry.key.as_str(), entry.value, entry.revision),
                ("a/3", b("three"), w1)
            );
        }
        other => panic!("expected the put of a/3, got {other:?}"),
    }
    match next_event(&mut watch).await {
        MetaEvent::Delete { key, revision } => {
            assert_eq!(key, "a/1");
            assert!(revision > w1);
        }
        other => panic!("expected the delete of a/1, got {other:?}"),
    }

    // Concurrent writers: the watcher sees every change, in revision order.
    let mut watch = kv.watch("c/").await.unwrap();
    let writes = (0..300).map(|i| kv.put_owned(format!("c/{}", i % 7), b("v")));
    let revisions = join_all(writes.collect()).await;
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        seen.push(next_event(&mut watch).await.revision());
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(seen, sorted, "events arrive in revision order");
    let mut expected = revisions;
    expected.sort_unstable();
    assert_eq!(seen, expected, "every write is seen once");

    // Concurrent compare-and-set on one key: exactly one writer wins each round.
    let base = kv.put("race", b("0")).await.unwrap();
    let results = futures_join(kv, base).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

/// Polls every future in turn until all are done (no runtime spawn needed,
/// so they may borrow the store).
async fn join_all<'a>(
    futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send + 'a>>>,
) -> Vec<u64> {
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut results = vec![0; futures.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futures.iter_mut().enumerate() {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        results[i] = value;
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results
}

trait PutOwned {
    fn put_owned(
        &self,
        key: String,
        value: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send + '_>>;
}

impl<T: MetaStore + ?Sized> PutOwned for T {
    fn put_owned(
        &self,
        key: String,
        value: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send + '_>> {
        Box::pin(async move { self.put(&key, value).await.unwrap() })
    }
}

async fn futures_join(kv: &dyn MetaStore, base: u64) -> Vec<Result<u64, StoreError>> {
    let a = kv.compare_and_set("race", b("a"), Some(base));
    let b_ = kv.compare_and_set("race", b("b"), Some(base));
    let c = kv.compare_and_set("race", b("c"), Some(base));
    let (a, b_, c) = tokio::join!(a, b_, c);
    vec![a, b_, c]
}

/// Content addressing: ids are digests, puts are idempotent.
pub async fn blobs(blobs: &dyn BlobStore) {
    let data = Bytes::from(vec![7u8; 300_000]);
    let id = blobs.put(data.clone()).await.unwrap();
    assert_eq!(id, digest_of(&data));
    assert!(id.starts_with("sha256:") && id.len() == 7 + 64);
    assert_eq!(blobs.put(data.clone()).await.unwrap(), id);
    assert_eq!(blobs.get(&id).await.unwrap(), Some(data.clone()));
    assert_eq!(blobs.get(&digest_of(b"absent")).await.unwrap(), None);
    let empty = blobs.put(Bytes::new()).await.unwrap();
    assert_eq!(blobs.get(&empty).await.unwrap(), Some(Bytes::new()));
    // Removed: gone, and removing again says so.
    assert!(blobs.delete(&id).await.unwrap());
    assert_eq!(blobs.get(&id).await.unwrap(), None);
    assert!(!blobs.delete(&id).await.unwrap());
    assert_eq!(blobs.put(data.clone()).await.unwrap(), id, "stored again");
}

/// Append-only streams: sequence numbers, batching, reading after a point, deletion.
pub async fn logs(logs: &dyn LogStore) {
    let heads = logs
        .append(vec![
            ("s1".into(), b("a")),
            ("s2".into(), b("x")),
            ("s1".into(), b("b")),
        ])
        .await
        .unwrap();
    assert_eq!(heads, [("s1".to_string(), 2), ("s2".to_string(), 1)]);
    let heads = logs.append(vec![("s1".into(), b("c"))]).await.unwrap();
    assert_eq!(heads, [("s1".to_string(), 3)]);

    let all = logs.read("s1", 0, 100).await.unwrap();
    assert_eq!(all, [(1, b("a")), (2, b("b")), (3, b("c"))]);
    assert_eq!(logs.read("s1", 1, 1).await.unwrap(), [(2, b("b"))]);
    assert!(logs.read("s1", 3, 10).await.unwrap().is_empty());
    assert_eq!(logs.read("s2", 0, 10).await.unwrap(), [(1, b("x"))]);
    // A stream whose name is a prefix of another is its own stream.
    assert!(logs.read("s", 0, 10).await.unwrap().is_empty());

    logs.delete_stream("s1").await.unwrap();
    assert!(logs.read("s1", 0, 10).await.unwrap().is_empty());
    assert_eq!(logs.read("s2", 0, 10).await.unwrap().len(), 1);
    // Numbers are not reused after a delete, so a follower never sees a sequence twice.
    let heads = logs.append(vec![("s1".into(), b("d"))]).await.unwrap();
    assert_eq!(heads, [("s1".to_string(), 4)]);
}

/// Log streams held to their limits: by bytes (the oldest records go) and
/// by age (to the minute), in the write that appends and by `prune`.
pub async fn log_limits(logs: &dyn LogStore) {
    use crate::LogLimits;
    const MIN: u64 = 60_000;
    let day = 24 * 60 * MIN;
    let limits = LogLimits {
        max_bytes: 10,
        max_age_ms: day,
    };
    let t0 = 1_000 * day;
    let four = |stream: &str, tag: &str| -> Vec<(String, Bytes)> {
        (0..4)
            .map(|i| (stream.to_string(), b(&format!("{tag}{i}"))))
            .collect()
    };
    // 8 bytes fit; 16 do not: the oldest go until 10 or fewer are left.
    logs.append_within(four("big", "a"), limits, t0)
        .await
        .unwrap();
    assert_eq!(logs.stream_bytes("big").await.unwrap(), 8);
    logs.append_within(four("big", "b"), limits, t0)
        .await
        .unwrap();
    let kept = logs.read("big", 0, 100).await.unwrap();
    assert_eq!(
        kept,
        [
            (4, b("a3")),
            (5, b("b0")),
            (6, b("b1")),
            (7, b("b2")),
            (8, b("b3"))
        ]
    );
    assert_eq!(logs.stream_bytes("big").await.unwrap(), 10);
    // Other streams are untouched by one's limit.
    logs.append_within(four("other", "c"), limits, t0)
        .await
        .unwrap();
    assert_eq!(logs.read("other", 0, 100).await.unwrap().len(), 4);

    // By age: what was appended more than `max_age_ms` ago goes, at the
    // next write to its stream or at `prune`.
    let roomy = LogLimits {
        max_bytes: 1 << 20,
        max_age_ms: day,
    };
    logs.append_within(four("aged", "d"), roomy, t0)
        .await
        .unwrap();
    logs.append_within(four("aged", "e"), roomy, t0 + day / 2)
        .await
        .unwrap();
    assert_eq!(logs.read("aged", 0, 100).await.unwrap().len(), 8);
    assert_eq!(logs.prune(roomy, t0 + day - MIN).await.unwrap(), 0);
    logs.append_within(vec![("aged".into(), b("f0"))], roomy, t0 + day + 2 * MIN)
        .await
        .unwrap();
    let kept: Vec<u64> = logs
        .read("aged", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(kept, [5, 6, 7, 8, 9], "the first day's four are gone");
    // `prune` ages every stream, also those no longer written.
    let dropped = logs.prune(roomy, t0 + 3 * day).await.unwrap();
    assert!(dropped >= 5 + 4, "{dropped}");
    assert!(logs.read("aged", 0, 100).await.unwrap().is_empty());
    assert!(logs.read("other", 0, 100).await.unwrap().is_empty());
    assert_eq!(logs.stream_bytes("aged").await.unwrap(), 0);
    // Numbers go on after pruning.
    let heads = logs
        .append_within(vec![("aged".into(), b("g"))], roomy, t0 + 3 * day)
        .await
        .unwrap();
    assert_eq!(heads, [("aged".to_string(), 10)]);
    // A deleted stream's bytes are forgotten.
    logs.delete_stream("big").await.unwrap();
    assert_eq!(logs.stream_bytes("big").await.unwrap(), 0);
}

fn version(digest: &str, size_bytes: u64) -> NewVersion {
    NewVersion {
        digest: digest.to_string(),
        size_bytes,
        limits: Limits::default(),
        delivery: Default::default(),
        public: None,
        activation: Default::default(),
    }
}

/// The typed registry on top of a backend's KV: versions, tenants, deletes.
pub async fn registry(kv: Arc<dyn MetaStore>) {
    let registry = Registry::new(kv);
    let tenant = TenantId::default_tenant();
    let other = TenantId::new("other").unwrap();
    let hello = FunctionName::new("hello").unwrap();

    assert!(registry.function(&tenant, &hello).await.unwrap().is_none());
    let (v1, r1) = registry
        .deploy(&tenant, &hello, version("sha256:aa", 10), 1)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let (v2, r2) = registry
        .deploy(&tenant, &hello, version("sha256:bb", 20), 2)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert!(r2 > r1, "the activating revision is returned");
    let f = registry.function(&tenant, &hello).await.unwrap().unwrap();
    assert_eq!(f.latest_version, 2);
    assert_eq!(f.live().unwrap().target.digest, "sha256:bb");
    let versions: Vec<u64> = registry
        .versions(&tenant, &hello)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        registry
            .version(&tenant, &hello, 1)
            .await
            .unwrap()
            .unwrap()
            .digest,
        "sha256:aa"
    );

    // Tenants do not see each other's functions.
    assert!(registry.functions(&other).await.unwrap().is_empty());
    assert!(registry.function(&other, &hello).await.unwrap().is_none());
    assert_eq!(registry.functions(&tenant).await.unwrap().len(), 1);

    // Creating an existing function is refused; concurrent deploys get distinct numbers.
    assert!(matches!(
        registry.create_function(&tenant, &hello, 3).await,
        Err(RegistryError::AlreadyExists(_))
    ));
    let (a, b_) = tokio::join!(
        registry.deploy(&tenant, &hello, version("sha256:cc", 1), 3),
        registry.deploy(&tenant, &hello, version("sha256:dd", 1), 3)
    );
    let mut numbers = [a.unwrap().0.version, b_.unwrap().0.version];
    numbers.sort_unstable();
    assert_eq!(numbers, [3, 4]);

    aliases(&registry, &tenant, &hello).await;

    assert!(
        registry
            .delete_function(&tenant, &hello)
            .await
            .unwrap()
            .is_some()
    );
    assert!(registry.function(&tenant, &hello).await.unwrap().is_none());
    assert!(matches!(
        registry.versions(&tenant, &hello).await,
        Err(RegistryError::NoSuchFunction(_))
    ));
    assert!(
        registry
            .delete_function(&tenant, &hello)
            .await
            .unwrap()
            .is_none()
    );
}

/// Aliases over versions 1–4 of `hello` (`live` at 4): moves, splits,
/// rollbacks, canaries.
async fn aliases(registry: &Registry, tenant: &TenantId, hello: &FunctionName) {
    use gust_core::deploy::CanaryOutcome;
    let live = |f: &gust_core::FunctionRecord| f.live().unwrap().target.version;
    let to = |version| AliasTarget {
        version,
        split: None,
    };
    let (f, _) = registry
        .set_alias(tenant, hello, "live", to(2), 4)
        .await
        .unwrap();
    assert_eq!(live(&f), 2);
    let split = AliasTarget {
        version: 1,
        split: Some((2, 1000)),
    };
    let (f, _) = registry
        .set_alias(tenant, hello, "staging", split, 4)
        .await
        .unwrap();
    let staging = &f.aliases["staging"];
    assert_eq!(staging.target.version, 1);
    assert_eq!(
        staging
            .split
            .as_ref()
            .map(|s| (s.to.version, s.basis_points)),
        Some((2, 1000))
    );
    assert!(matches!(
        registry
            .set_alias(tenant, hello, "staging", to(99), 4)
            .await,
        Err(RegistryError::NoSuchVersion { version: 99, .. })
    ));
    let same = AliasTarget {
        version: 1,
        split: Some((1, 500)),
    };
    assert!(matches!(
        registry.set_alias(tenant, hello, "staging", same, 4).await,
        Err(RegistryError::Refused(_))
    ));
    assert!(matches!(
        registry.set_alias(tenant, hello, "Bad", to(1), 4).await,
        Err(RegistryError::Refused(_))
    ));
    // Rolling back returns to the version before the last move, and back.
    assert_eq!(
        registry.rollback(tenant, hello, "live", 5).await.unwrap().1,
        4
    );
    assert_eq!(
        registry.rollback(tenant, hello, "live", 5).await.unwrap().1,
        2
    );
    assert!(matches!(
        registry.rollback(tenant, hello, "nope", 5).await,
        Err(RegistryError::NoSuchAlias { .. })
    ));

    // A canary splits `live` until it is judged; only once.
    let mut canary = version("sha256:ee", 1);
    canary.activation = Activation::Canary {
        basis_points: 1000,
        window_ms: 60_000,
        policy: Default::default(),
    };
    let (v5, _) = registry.deploy(tenant, hello, canary, 6).await.unwrap();
    let f = registry.function(tenant, hello).await.unwrap().unwrap();
    let l = f.live().unwrap();
    assert_eq!(l.target.version, 2);
    assert_eq!(l.split.as_ref().map(|s| s.to.version), Some(v5.version));
    assert_eq!(l.canary.as_ref().map(|c| c.window_ms), Some(60_000));
    let ended = registry.end_canary(tenant, hello, v5.version, true, "healthy", 7);
    assert!(ended.await.unwrap().is_some());
    let again = registry.end_canary(tenant, hello, v5.version, false, "late", 8);
    assert!(again.await.unwrap().is_none());
    let f = registry.function(tenant, hello).await.unwrap().unwrap();
    let l = f.live().unwrap();
    assert_eq!(
        (l.target.version, l.previous, l.split.is_none()),
        (v5.version, Some(2), true)
    );
    let report = f.canaries.last().unwrap();
    assert_eq!(
        (report.outcome, report.stable, report.reason.as_str()),
        (CanaryOutcome::Promoted, 2, "healthy")
    );

    // A canary rolled back by hand leaves the stable version serving.
    let mut canary = version("sha256:ff", 1);
    canary.activation = Activation::Canary {
        basis_points: 5000,
        window_ms: 60_000,
        policy: Default::default(),
    };
    let (v6, _) = registry.deploy(tenant, hello, canary, 9).await.unwrap();
    let (f, serving, _) = registry.rollback(tenant, hello, "live", 10).await.unwrap();
    assert_eq!((serving, live(&f)), (v5.version, v5.version));
    assert_eq!(
        f.canaries.last().map(|r| (r.version, r.outcome)),
        Some((v6.version, CanaryOutcome::RolledBack))
    );

    // A function's aliases are capped.
    let mut refused = false;
    for i in 0..=crate::registry::MAX_ALIASES {
        match registry
            .set_alias(tenant, hello, &format!("a{i}"), to(1), 11)
            .await
        {
            Ok(_) => {}
            Err(RegistryError::Refused(_)) => refused = true,
            Err(e) => panic!("{e}"),
        }
    }
    let f = registry.function(tenant, hello).await.unwrap().unwrap();
    assert!(refused);
    assert_eq!(f.aliases.len(), crate::registry::MAX_ALIASES);

    assert!(matches!(
        registry.remove_alias(tenant, hello, "live").await,
        Err(RegistryError::Refused(_))
    ));
    let (f, _) = registry
        .remove_alias(tenant, hello, "staging")
        .await
        .unwrap();
    assert!(!f.aliases.contains_key("staging"));
    assert!(matches!(
        registry.remove_alias(tenant, hello, "staging").await,
        Err(RegistryError::NoSuchAlias { .. })
    ));
}

/// Work queues: claim order, leases, retries, acknowledgement.
pub async fn queues(q: &dyn QueueStore) {
    let seqs = q
        .enqueue("q1", vec![b("a"), b("b"), b("c")], 0)
        .await
        .unwrap();
    assert_eq!(seqs, [1, 2, 3]);
    q.enqueue("q2", vec![b("x")], 0).await.unwrap();
    // Due later: not claimable before its time.
    q.enqueue("q1", vec![b("later")], 1_000).await.unwrap();
    assert_eq!(q.depth("q1").await.unwrap(), 4);
    assert_eq!(q.next_due("q1").await.unwrap(), Some(0));
    assert_eq!(q.next_due("nothing").await.unwrap(), None);
    assert_eq!(q.queues().await.unwrap(), ["q1", "q2"]);

    let first = q.claim("q1", 100, 500, 2).await.unwrap();
    let got: Vec<(u64, u32, Bytes)> = first
        .iter()
        .map(|c| (c.seq, c.attempt, c.payload.clone()))
        .collect();
    assert_eq!(got, [(1, 1, b("a")), (2, 1, b("b"))]);
    // Claimed messages are hidden for the lease.
    let next = q.claim("q1", 100, 500, 10).await.unwrap();
    assert_eq!(next.iter().map(|c| c.seq).collect::<Vec<_>>(), [3]);
    assert!(q.claim("q1", 200, 500, 10).await.unwrap().is_empty());

    // Acknowledged: gone. Released: back at its time, attempt counted.
    q.ack("q1", vec![1]).await.unwrap();
    q.release("q1", 2, 300).await.unwrap();
    assert!(q.claim("q1", 299, 500, 10).await.unwrap().is_empty());
    let retried = q.claim("q1", 300, 500, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].seq, retried[0].attempt), (2, 2));
    // Deferred (never tried): back at its time, the claim not counted.
    q.defer("q1", 2, 310).await.unwrap();
    let deferred = q.claim("q1", 310, 500, 10).await.unwrap();
    assert_eq!((deferred[0].seq, deferred[0].attempt), (2, 2));

    // A lease that runs out makes the message claimable again (its claimant died).
    let expired = q.claim("q1", 700, 500, 10).await.unwrap();
    let seqs: Vec<u64> = expired.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [3], "seq 3's lease ended at 600");
    assert_eq!(expired[0].attempt, 2);

    // Time order first, then sequence order.
    let at_1000 = q.claim("q1", 1_000, 500, 10).await.unwrap();
    // seq 2 became visible again at 800 (its lease), seq 4 at 1000.
    assert_eq!(at_1000.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 4]);
    // Everything is claimed now: the next due time is the earliest lease end
    // (seq 3, claimed at 700).
    assert_eq!(q.next_due("q1").await.unwrap(), Some(1_200));
    q.ack("q1", vec![2, 3, 4]).await.unwrap();
    assert_eq!(q.depth("q1").await.unwrap(), 0);
    assert_eq!(q.next_due("q1").await.unwrap(), None);
    assert_eq!(q.queues().await.unwrap(), ["q2"]);
    // Acknowledging twice, or something unknown, is harmless.
    q.ack("q1", vec![2, 99]).await.unwrap();
    // Sequence numbers are not reused.
    assert_eq!(q.enqueue("q1", vec![b("again")], 0).await.unwrap(), [5]);

    // After a restart, claims of the dead process are released at once;
    // a retry keeps its time.
    q.enqueue("q3", vec![b("held"), b("retry")], 0)
        .await
        .unwrap();
    let held = q.claim("q3", 2_000, 60_000, 10).await.unwrap();
    q.release("q3", held[1].seq, 9_000).await.unwrap();
    assert_eq!(q.release_claims("q3", 2_100).await.unwrap(), 1);
    let again = q.claim("q3", 2_100, 60_000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].payload.clone(), again[0].attempt), (b("held"), 2));
    assert_eq!(q.next_due("q3").await.unwrap(), Some(9_000));
    q.ack("q3", vec![again[0].seq]).await.unwrap();
    assert_eq!(q.release_claims("q3", 2_200).await.unwrap(), 0);
}

/// Ordering groups: one message of a group at a time, in enqueue order,
/// even across retries and lease expiry; other groups and ungrouped
/// messages are not held back.
pub async fn ordered_queues(q: &dyn QueueStore) {
    let k1 = q.enqueue_ordered("q", "k", vec![b("k1")], 0).await.unwrap();
    q.enqueue_ordered("q", "j", vec![b("j1")], 0).await.unwrap();
    let k2 = q
        .enqueue_ordered("q", "k", vec![b("k2"), b("k3")], 0)
        .await
        .unwrap();
    q.enqueue("q", vec![b("free")], 0).await.unwrap();
    assert_eq!(q.depth("q").await.unwrap(), 5);

    let payloads = |c: &[crate::Claimed]| c.iter().map(|c| c.payload.clone()).collect::<Vec<_>>();
    let first = q.claim("q", 10, 100, 10).await.unwrap();
    assert_eq!(payloads(&first), [b("k1"), b("j1"), b("free")]);
    let grouped: Vec<bool> = first.iter().map(|c| c.grouped).collect();
    assert_eq!(grouped, [true, true, false]);
    q.ack("q", vec![first[1].seq, first[2].seq]).await.unwrap();

    // k1 fails and is retried later: k2 waits behind it.
    q.release("q", k1[0], 50).await.unwrap();
    assert!(q.claim("q", 20, 100, 10).await.unwrap().is_empty());
    let retry = q.claim("q", 50, 100, 10).await.unwrap();
    assert_eq!(payloads(&retry), [b("k1")]);
    // Its lease runs out (the claimant died): still k1 first, never k2.
    let again = q.claim("q", 151, 100, 10).await.unwrap();
    assert_eq!(payloads(&again), [b("k1")]);
    assert_eq!(again[0].attempt, 3);

    q.ack("q", vec![k1[0]]).await.unwrap();
    let next = q.claim("q", 160, 100, 10).await.unwrap();
    assert_eq!(payloads(&next), [b("k2")]);
    q.ack("q", vec![k2[0]]).await.unwrap();
    let last = q.claim("q", 170, 100, 10).await.unwrap();
    assert_eq!(payloads(&last), [b("k3")]);
    q.ack("q", vec![k2[1]]).await.unwrap();
    // A group that emptied starts afresh.
    q.enqueue_ordered("q", "k", vec![b("k4")], 0).await.unwrap();
    let fresh = q.claim("q", 180, 100, 10).await.unwrap();
    assert_eq!(payloads(&fresh), [b("k4")]);
}

/// Tenants' data: writes, counters, batches, key listing and the change feed.
pub async fn data(d: &dyn DataStore) {
    use crate::DataWrite;
    let mut revisions = d.last_revision();
    let put = |k: &str, v: &str| DataWrite::Put {
        key: k.into(),
        value: b(v),
    };
    let changes = d
        .apply(
            vec![put("t/b/one", "1"), put("t/b/two", "22"), put("t/c/x", "x")],
            None,
        )
        .await
        .unwrap();
    let revs: Vec<u64> = changes
        .iter()
        .map(|c| c.as_ref().unwrap().revision)
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "revisions grow: {revs:?}"
    );
    assert!(revisions.has_changed().unwrap());
    let seqs: Vec<u64> = changes.iter().map(|c| c.as_ref().unwrap().seq).collect();
    assert_eq!(*revisions.borrow_and_update(), seqs[2]);

    let one = d.get("t/b/one").await.unwrap().unwrap();
    assert_eq!((one.value, one.revision), (b("1"), revs[0]));
    assert_eq!(d.get("t/b/none").await.unwrap(), None);
    let many = d
        .get_many(vec!["t/b/two".into(), "t/b/none".into()])
        .await
        .unwrap();
    assert_eq!(many[0].as_ref().unwrap().value, b("22"));
    assert!(many[1].is_none());

    // Counters: absent counts as zero; a non-number is refused and nothing changes.
    let inc = |k: &str, delta| DataWrite::Increment {
        key: k.into(),
        delta,
    };
    let c = d.apply(vec![inc("t/b/n", 5)], None).await.unwrap();
    assert_eq!(c[0].as_ref().unwrap().value, Some(b("5")));
    let c = d.apply(vec![inc("t/b/n", 2)], None).await.unwrap();
    assert_eq!(c[0].as_ref().unwrap().value, Some(b("7")));
    d.apply(vec![put("t/b/word", "abc")], None).await.unwrap();
    let before = *d.last_revision().borrow();
    let refused = d
        .apply(vec![put("t/b/side", "s"), inc("t/b/word", 1)], None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::NotACounter(ref k) if k == "t/b/word"),
        "{refused}"
    );
    assert_eq!(d.get("t/b/side").await.unwrap(), None, "all or nothing");
    assert_eq!(*d.last_revision().borrow(), before);

    // Deletes: of a missing key, nothing; of a present key, a change.
    let gone = d
        .apply(
            vec![
                DataWrite::Delete {
                    key: "t/b/none".into(),
                },
                DataWrite::Delete {
                    key: "t/b/two".into(),
                },
            ],
            None,
        )
        .await
        .unwrap();
    assert!(gone[0].is_none());
    assert_eq!(gone[1].as_ref().unwrap().value, None);

    // Keys: by prefix, paged, with sizes.
    let keys = d.keys("t/b/", None, 10).await.unwrap();
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, ["t/b/n", "t/b/one", "t/b/word"]);
    assert_eq!(keys[2].size, 3);
    let page = d.keys("t/b/", None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = d.keys("t/b/", Some(page[1].key.clone()), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["t/b/word"]
    );

    // The feed has every change in revision order, deletes included.
    let feed = d.changes(0, 100).await.unwrap();
    let keys: Vec<&str> = feed.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "t/b/one", "t/b/two", "t/c/x", "t/b/n", "t/b/n", "t/b/word", "t/b/two"
        ]
    );
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(feed.windows(2).all(|w| w[0].revision < w[1].revision));
    assert_eq!(feed[6].value, None);
    let after = d.changes(feed[4].seq, 1).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].key, "t/b/word");
    d.trim_changes(feed[4].seq).await.unwrap();
    let trimmed = d.changes(0, 100).await.unwrap();
    assert_eq!(trimmed.len(), 2);
    assert_eq!(trimmed[0].revision, feed[5].revision);

    // Revisions are numbered per owner: another owner's writes, however
    // many, do not show in this owner's numbers (no side channel).
    let last_t = feed[6].revision;
    for i in 0..5 {
        d.apply(vec![put("u/b/k", &i.to_string())], None)
            .await
            .unwrap();
    }
    let next = d.apply(vec![put("t/b/later", "1")], None).await.unwrap();
    let next = next[0].as_ref().unwrap();
    assert_eq!(
        next.revision,
        last_t + 1,
        "t's revisions do not count u's writes"
    );
    assert!(next.seq > feed[6].seq + 5, "the feed counts every write");
    assert_eq!(
        d.get("t/b/later").await.unwrap().unwrap().revision,
        last_t + 1
    );
    d.apply(
        vec![
            DataWrite::Delete {
                key: "t/b/later".into(),
            },
            DataWrite::Delete {
                key: "u/b/k".into(),
            },
        ],
        None,
    )
    .await
    .unwrap();

    // Usage per owner: t has t/b/n ("7"), t/b/one ("1"), t/b/word ("abc"), t/c/x ("x").
    let usage = d.usage("t").await.unwrap();
    assert_eq!(usage.keys, 4);
    assert_eq!(usage.bytes, (5 + 1) + (7 + 1) + (8 + 3) + (5 + 1));
    assert_eq!(
        d.usage("nobody").await.unwrap(),
        crate::DataUsage::default()
    );
    allowances(d).await;
}

/// Writes past an owner's allowance are refused whole; shrinking is always allowed.
async fn allowances(d: &dyn DataStore) {
    use crate::{Allowance, DataWrite};
    let put = |k: &str, v: &str| DataWrite::Put {
        key: k.into(),
        value: b(v),
    };
    let allowance = Allowance {
        owner: "q".into(),
        keys: 2,
        bytes: 100,
    };
    d.apply(vec![put("q/b/1", "a"), put("q/b/2", "b")], Some(&allowance))
        .await
        .unwrap();
    let before = d.usage("q").await.unwrap();
    assert_eq!(before.keys, 2);
    let refused = d
        .apply(vec![put("q/b/1", "c"), put("q/b/3", "c")], Some(&allowance))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::OverAllowance {
                what: Allowance::KEYS,
                limit: 2,
                would_be: 3,
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(
        d.get("q/b/1").await.unwrap().unwrap().value,
        b("a"),
        "all or nothing"
    );
    // Overwriting in place adds no key; a value too big for the bytes is refused.
    d.apply(vec![put("q/b/1", "cc")], Some(&allowance))
        .await
        .unwrap();
    let big = "x".repeat(100);
    let refused = d
        .apply(vec![put("q/b/2", &big)], Some(&allowance))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::OverAllowance {
                what: Allowance::BYTES,
                ..
            }
        ),
        "{refused}"
    );
    // Another owner's key is never written under this allowance.
    assert!(
        d.apply(vec![put("t/b/1", "a")], Some(&allowance))
            .await
            .is_err()
    );
    // Deleting and then adding within the allowance works in one call.
    d.apply(
        vec![
            DataWrite::Delete {
                key: "q/b/2".into(),
            },
            put("q/b/3", "c"),
        ],
        Some(&allowance),
    )
    .await
    .unwrap();
    // A lowered allowance still lets the owner shrink.
    let tight = Allowance {
        keys: 1,
        ..allowance.clone()
    };
    d.apply(
        vec![DataWrite::Delete {
            key: "q/b/3".into(),
        }],
        Some(&tight),
    )
    .await
    .unwrap();
    let after = d.usage("q").await.unwrap();
    assert_eq!(
        after,
        crate::DataUsage {
            keys: 1,
            bytes: 5 + 2
        }
    );
}

/// The ledger: markers until records close them, one record per key,
/// the writer's position kept with each commit, records by tenant and
/// time, paged.
pub async fn ledger(l: &dyn crate::LedgerStore) {
    use crate::{LedgerCommit, LedgerEntry};
    let entry = |tenant: &str, time_ms, key: &str| LedgerEntry {
        tenant: tenant.into(),
        time_ms,
        key: key.into(),
        record: b(key),
        opened: key != "c#1" && key != "d#1",
    };
    let close = |entries: Vec<LedgerEntry>| LedgerCommit {
        close: entries.into(),
        ..LedgerCommit::default()
    };
    assert_eq!(l.position().await.unwrap(), None);
    l.commit(LedgerCommit {
        open: vec![("a#1".into(), b("m1")), ("b#1".into(), b("m2"))],
        close: Default::default(),
        position: Some(b("p1")),
    })
    .await
    .unwrap();
    assert_eq!(l.position().await.unwrap(), Some(b("p1")));
    let mut open = l.open_markers().await.unwrap();
    open.sort();
    assert_eq!(open, [("a#1".into(), b("m1")), ("b#1".into(), b("m2"))]);

    let written = l
        .commit(close(vec![entry("t", 10, "a#1"), entry("t", 5, "c#1")]))
        .await
        .unwrap();
    assert_eq!(written, 2);
    // A commit without a position keeps the last one.
    assert_eq!(l.position().await.unwrap(), Some(b("p1")));
    assert_eq!(l.open_markers().await.unwrap(), [("b#1".into(), b("m2"))]);
    // Never two records for one opened key.
    assert_eq!(
        l.commit(close(vec![entry("t", 11, "a#1")])).await.unwrap(),
        0
    );
    assert_eq!(
        l.commit(close(vec![entry("t", 12, "b#1"), entry("t", 13, "b#1")]))
            .await
            .unwrap(),
        1,
        "twice in one call: once"
    );
    // Opened and closed in one commit: the record, no marker left.
    let both = LedgerCommit {
        open: vec![("e#1".into(), b("m3"))],
        close: vec![entry("u", 7, "d#1"), entry("u", 8, "e#1")].into(),
        position: Some(b("p2")),
    };
    assert_eq!(l.commit(both).await.unwrap(), 2);
    assert!(l.open_markers().await.unwrap().is_empty());
    assert_eq!(l.position().await.unwrap(), Some(b("p2")));

    let keys = |entries: Vec<LedgerEntry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(l.records("t", 0, u64::MAX, None, 10).await.unwrap()),
        ["c#1", "a#1", "b#1"]
    );
    assert_eq!(
        keys(l.records("t", 6, 12, None, 10).await.unwrap()),
        ["a#1"]
    );
    assert_eq!(
        keys(l.records("u", 0, u64::MAX, None, 10).await.unwrap()),
        ["d#1", "e#1"]
    );
    let page = l.records("t", 0, u64::MAX, None, 2).await.unwrap();
    let last = page.last().map(|e| (e.time_ms, e.key.clone()));
    assert_eq!(
        keys(l.records("t", 0, u64::MAX, last, 10).await.unwrap()),
        ["b#1"]
    );
    // Many records over a few seconds, committed out of order in two
    // commits: pages of 7 give each once, in (time, key) order.
    let many = |range: std::ops::Range<u64>| {
        range
            .rev()
            .map(|i| LedgerEntry {
                tenant: "v".into(),
                time_ms: 10_000 + i * 150,
                key: format!("k{i:02}#1"),
                record: b("r"),
                opened: false,
            })
            .collect::<Vec<_>>()
    };
    l.commit(close(many(10..25))).await.unwrap();
    l.commit(close(many(0..10))).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = l
            .records("v", 10_100, 13_500, after.take(), 7)
            .await
            .unwrap();
        assert!(page.len() <= 7);
        after = page.last().map(|e| (e.time_ms, e.key.clone()));
        seen.extend(page.into_iter().map(|e| e.time_ms));
        if after.is_none() {
            break;
        }
    }
    let expected: Vec<u64> = (1..24).map(|i| 10_000 + i * 150).collect();
    assert_eq!(seen, expected);
}

/// Accounts on `store`: tokens verified, revoked and expired, seen alike by a
/// second view of the same store.
pub async fn accounts(store: Arc<dyn MetaStore>) {
    let accounts = Accounts::start(store.clone()).await.unwrap();
    let acme = TenantId::new("acme").unwrap();
    assert!(matches!(
        accounts
            .create_token(&acme, Role::Owner, None, String::new(), [1; 32], 0)
            .await,
        Err(AccountsError::NoSuchTenant(_))
    ));
    accounts
        .create_tenant(acme.clone(), Quotas::default(), 0)
        .await
        .unwrap();
    assert!(matches!(
        accounts
            .create_tenant(acme.clone(), Quotas::default(), 0)
            .await,
        Err(AccountsError::TenantExists(_))
    ));
    let (record, token) = accounts
        .create_token(&acme, Role::Deployer, Some(1_000), "ci".into(), [7; 32], 0)
        .await
        .unwrap();
    assert!(token.starts_with("gust_070707070707_"));
    assert_ne!(record.hash, token, "only a hash is stored");
    assert_eq!(accounts.verify(&token, 10).unwrap().role, Role::Deployer);
    assert_eq!(
        accounts.verify(&token, 1_000),
        Err(AuthError::Expired(record.id.clone()))
    );
    let mut forged = token.clone();
    forged.pop();
    forged.push('x');
    assert_eq!(accounts.verify(&forged, 10), Err(AuthError::Unknown));
    assert_eq!(accounts.verify("Bearer x", 10), Err(AuthError::Malformed));

    // Another tenant cannot revoke it; its own tenant can.
    let other = TenantId::new("other").unwrap();
    assert!(accounts.revoke(Some(&other), &record.id, 5).await.is_err());
    accounts.revoke(Some(&acme), &record.id, 5).await.unwrap();
    assert_eq!(
        accounts.verify(&token, 10),
        Err(AuthError::Revoked(record.id.clone()))
    );

    // A second view of the same store (another process, a restart) agrees.
    let again = Accounts::start(store).await.unwrap();
    assert_eq!(again.verify(&token, 10), Err(AuthError::Revoked(record.id)));
    assert_eq!(again.tenants().len(), 1);
}

/// The last admin token that never expires is not revoked, even by two
/// revocations at once.
pub async fn last_admin_token(store: Arc<dyn MetaStore>) {
    let accounts = Accounts::start(store).await.unwrap();
    let default = TenantId::default_tenant();
    let acme = TenantId::new("acme").unwrap();
    for tenant in [&default, &acme] {
        accounts
            .create_tenant(tenant.clone(), Quotas::default(), 0)
            .await
            .unwrap();
    }
    let admin = |random: u8, tenant: &TenantId, expires: Option<u64>| {
        let accounts = accounts.clone();
        let tenant = tenant.clone();
        async move {
            let (record, _) = accounts
                .create_token(
                    &tenant,
                    Role::Admin,
                    expires,
                    String::new(),
                    [random; 32],
                    0,
                )
                .await
                .unwrap();
            record.id
        }
    };
    let first = admin(1, &default, None).await;
    let expiring = admin(2, &default, Some(1_000_000)).await;
    // Alone but for one that expires: refused, and still valid.
    let refused = accounts.revoke(None, &first, 5).await;
    assert!(
        matches!(&refused, Err(AccountsError::LastAdminToken(id)) if *id == first),
        "{refused:?}"
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("last admin token")
    );
    assert!(accounts.tokens(None).iter().all(|t| t.revoked_ms.is_none()));
    // The expiring one may go; a second lasting admin (in another
    // tenant) lets the first go, and is then the last.
    accounts.revoke(None, &expiring, 5).await.unwrap();
    let second = admin(3, &acme, None).await;
    accounts.revoke(Some(&default), &first, 6).await.unwrap();
    assert!(matches!(
        accounts.revoke(None, &second, 7).await,
        Err(AccountsError::LastAdminToken(_))
    ));
    // Revoking a revoked token changes nothing (and is no error).
    let again = accounts.revoke(None, &first, 8).await.unwrap();
    assert_eq!(again.revoked_ms, Some(6));
    // Two revocations at once cannot both pass.
    let third = admin(4, &default, None).await;
    let (a, b) = tokio::join!(
        accounts.revoke(None, &second, 9),
        accounts.revoke(None, &third, 9)
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
}

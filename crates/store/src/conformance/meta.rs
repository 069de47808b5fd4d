//! The metadata store: revisions, compare-and-set, delete, listing and watches.

use super::*;

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
    // Pages of the same, in key order, each after the last key seen.
    let page = |after: Option<&'static str>| async move {
        kv.list_page("a/", after, 2)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None).await, ["a/1", "a/10"]);
    assert_eq!(page(Some("0")).await, ["a/1", "a/10"]);
    assert_eq!(page(Some("a/10")).await, ["a/2"]);
    assert!(page(Some("a/2")).await.is_empty());

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

    // Concurrent writers: the watcher sees changes in revision order, each
    // once, and every key's last change. A change that a later change of
    // the same key replaced may be skipped (a backend that keeps only each
    // key's last value, as a JetStream KV bucket does, cannot replay it).
    let mut watch = kv.watch("c/").await.unwrap();
    let writes = (0..300).map(|i| kv.put_owned(format!("c/{}", i % 7), b("v")));
    let revisions = join_all(writes.collect()).await;
    let last = *revisions.iter().max().unwrap();
    let mut seen = Vec::new();
    let mut keys_seen = std::collections::BTreeMap::new();
    while seen.last() != Some(&last) {
        let event = next_event(&mut watch).await;
        keys_seen.insert(event.key().to_string(), event.revision());
        seen.push(event.revision());
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "events arrive in revision order, once each: {seen:?}"
    );
    assert!(
        seen.iter().all(|r| revisions.contains(r)),
        "only writes are seen"
    );
    for key in 0..7 {
        let key = format!("c/{key}");
        let current = kv.get(&key).await.unwrap().unwrap().revision;
        assert_eq!(
            keys_seen.get(&key),
            Some(&current),
            "{key}'s last change is seen"
        );
    }

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

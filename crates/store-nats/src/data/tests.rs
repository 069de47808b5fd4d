use std::time::Instant;

use bytes::Bytes;
use gust_store::{DataStore as _, DataWrite};

use crate::testkit;

#[tokio::test(flavor = "multi_thread")]
async fn conformance_data() {
    let Some(store) = testkit::store().await else {
        return;
    };
    gust_store::conformance::data(&store).await;
}

fn inc(key: &str) -> DataWrite {
    DataWrite::Increment {
        key: key.into(),
        delta: 1,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_increments_on_two_nodes_lose_none() {
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let (tasks, each) = (4, 10);
    let mut handles = Vec::new();
    for i in 0..tasks {
        let store = if i % 2 == 0 {
            one.clone()
        } else {
            other.clone()
        };
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..each {
                let change = store.apply(vec![inc("t/c/n")], None).await.unwrap();
                let change = change[0].clone().unwrap();
                let value: u64 = std::str::from_utf8(&change.value.unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                seen.push((value, change.revision, change.seq));
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for handle in handles {
        seen.extend(handle.await.unwrap());
    }
    let total = (tasks * each) as u64;
    let entry = other.get("t/c/n").await.unwrap().unwrap();
    assert_eq!(entry.value, Bytes::from(total.to_string()), "none lost");
    // Each increment saw the one before it and no other: the values
    // returned are 1..=total once each, and revisions and feed
    // positions grow with them (one order for all three).
    seen.sort_unstable();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1 && w[0].2 < w[1].2));
    assert_eq!(entry.revision, seen.last().unwrap().1);
    assert_eq!(one.usage("t").await.unwrap().keys, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_and_replace_race_through_apply_has_one_order() {
    // The trait offers no conditional write; the nearest is a batch
    // whose outcome depends on the state it replaces: take a token
    // (increment) and record who took it at that number. Every
    // number must go to exactly one writer, and the record under each
    // number is the writer's own.
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let race = |store: crate::NatsStore, who: &'static str| async move {
        let mut mine = Vec::new();
        for _ in 0..8 {
            let changes = store
                .apply(
                    vec![
                        inc("r/token"),
                        DataWrite::Put {
                            key: "r/holder".into(),
                            value: who.into(),
                        },
                    ],
                    None,
                )
                .await
                .unwrap();
            let token = changes[0].clone().unwrap();
            let holder = changes[1].clone().unwrap();
            assert_eq!(holder.revision, token.revision + 1);
            assert_eq!(holder.seq, token.seq + 1, "one batch, consecutive");
            mine.push(token.value.unwrap());
        }
        mine
    };
    let (a, b) = tokio::join!(race(one.clone(), "a"), race(other.clone(), "b"));
    let mut all: Vec<u64> = a
        .iter()
        .chain(&b)
        .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=16).collect::<Vec<_>>());
    // The feed shows the same order: token n then its holder, pairwise.
    let feed = one.changes(0, 100).await.unwrap();
    assert_eq!(feed.len(), 32);
    for pair in feed.chunks(2) {
        assert_eq!(
            (pair[0].key.as_str(), pair[1].key.as_str()),
            ("r/token", "r/holder")
        );
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    let holders_of = |mine: &[Bytes]| -> Vec<u64> {
        mine.iter()
            .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
            .collect()
    };
    for (who, tokens) in [("a", holders_of(&a)), ("b", holders_of(&b))] {
        for token in tokens {
            let i = (token as usize - 1) * 2;
            assert_eq!(feed[i].value.as_deref(), Some(token.to_string().as_bytes()));
            assert_eq!(feed[i + 1].value.as_deref(), Some(who.as_bytes()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_moves_when_another_node_writes() {
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let mut revisions = one.last_revision();
    let change = other
        .apply(vec![inc("t/c/n")], None)
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        revisions.wait_for(|r| *r >= change.seq),
    )
    .await
    .expect("the feed moved within 5 s")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_reads_one_point_in_time_while_another_node_writes() {
    // Keys of two owners: fenced key by key.
    reads_one_point_in_time("t/p/a", "u/p/b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_of_one_owner_reads_one_point_in_time_while_it_writes_elsewhere() {
    // Keys of one owner, fenced through its record, which the writes of
    // another of its keys keep moving: the fences fall back to the keys.
    reads_one_point_in_time("t/p/a", "t/p/b").await;
}

/// Another node writes `a` and `b` together, and another key of `a`'s
/// owner alone; every `get_many` of both sees both of one write.
async fn reads_one_point_in_time(a: &'static str, b: &'static str) {
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let writer = tokio::spawn(async move {
        for i in 0..40u32 {
            let v = Bytes::from(i.to_string());
            let put = |key: &str, value: &Bytes| DataWrite::Put {
                key: key.into(),
                value: value.clone(),
            };
            other
                .apply(vec![put(a, &v), put(b, &v)], None)
                .await
                .unwrap();
            other
                .apply(vec![put("t/p/elsewhere", &v)], None)
                .await
                .unwrap();
        }
    });
    let mut reads = 0;
    while !writer.is_finished() {
        let got = one.get_many(vec![a.into(), b.into()]).await.unwrap();
        let values: Vec<_> = got.iter().map(|e| e.as_ref().map(|e| &e.value)).collect();
        assert_eq!(values[0], values[1], "both keys of one batch, or neither");
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_racing_for_an_allowance_never_pass_it() {
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let allowance = gust_store::Allowance {
        owner: "q".into(),
        keys: 10,
        bytes: 1000,
    };
    let fill = |store: crate::NatsStore, who: &'static str, allowance: gust_store::Allowance| async move {
        let mut written = 0;
        for i in 0..10 {
            let put = DataWrite::Put {
                key: format!("q/{who}/{i}"),
                value: Bytes::from_static(b"v"),
            };
            match store.apply(vec![put], Some(&allowance)).await {
                Ok(_) => written += 1,
                Err(gust_store::StoreError::OverAllowance { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        written
    };
    let (a, b) = tokio::join!(
        fill(one.clone(), "a", allowance.clone()),
        fill(other.clone(), "b", allowance.clone())
    );
    assert_eq!(a + b, 10, "{a} + {b}");
    assert_eq!(one.usage("q").await.unwrap().keys, 10);
    assert_eq!(one.keys("q/", None, 100).await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trim_purges_what_it_superseded_and_keeps_last_values() {
    let Some(store) = testkit::store().await else {
        return;
    };
    let put = |k: &str, v: &str| DataWrite::Put {
        key: k.into(),
        value: Bytes::from(v.to_string()),
    };
    for i in 0..5 {
        store
            .apply(vec![put("t/k/a", &i.to_string()), inc("t/k/n")], None)
            .await
            .unwrap();
    }
    store.apply(vec![put("t/k/gone", "x")], None).await.unwrap();
    let last = store
        .apply(
            vec![DataWrite::Delete {
                key: "t/k/gone".into(),
            }],
            None,
        )
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    // Written after the trimmed range: kept whole.
    let later = store.apply(vec![put("t/k/a", "late")], None).await.unwrap()[0]
        .clone()
        .unwrap();
    store.trim_changes(last.seq).await.unwrap();
    let feed = store.changes(0, 100).await.unwrap();
    assert_eq!(feed, vec![later.clone()]);
    assert_eq!(
        store.get("t/k/n").await.unwrap().unwrap().value,
        Bytes::from("5")
    );
    assert_eq!(
        store.get("t/k/a").await.unwrap().unwrap().value,
        Bytes::from("late")
    );
    assert_eq!(store.get("t/k/gone").await.unwrap(), None);
    let keys = store.keys("t/", None, 10).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["t/k/a", "t/k/n"]
    );
    // Left: t/k/a's last two values (one after the range), t/k/n's,
    // the owner's last record, the trim mark, the last read fence.
    let info = store.data.stream.clone().info().await.unwrap().clone();
    assert_eq!(info.state.messages, 6, "{:?}", info.state);
    let usage = store.usage("t").await.unwrap();
    assert_eq!((usage.keys, usage.bytes), (2, (5 + 4) + (5 + 1)));
    // Writing on goes on from the kept state.
    let next = store.apply(vec![inc("t/k/n")], None).await.unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(next.value, Some(Bytes::from("6")));
    assert_eq!(next.revision, later.revision + 1);
}

/// The cost of one apply on the test cluster (printed, not asserted):
/// `cargo test -p gust-store-nats apply_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement"]
async fn apply_cost() {
    let Some(store) = testkit::store().await else {
        return;
    };
    let put = |k: String| DataWrite::Put {
        key: k,
        value: Bytes::from_static(b"some value of twenty"),
    };
    store
        .apply(vec![put("t/w/warm".into())], None)
        .await
        .unwrap();
    let n = 50;
    let start = Instant::now();
    for i in 0..n {
        store
            .apply(vec![put(format!("t/w/{i}"))], None)
            .await
            .unwrap();
    }
    let one = start.elapsed() / n;
    let start = Instant::now();
    let rounds = 10;
    for r in 0..rounds {
        let writes = (0..100).map(|i| put(format!("t/b{r}/{i}"))).collect();
        store.apply(writes, None).await.unwrap();
    }
    let hundred = start.elapsed() / rounds;
    // Of which reading and deciding (the rest is the batch).
    let writes: Vec<DataWrite> = (0..100).map(|i| put(format!("t/b0/{i}"))).collect();
    let start = Instant::now();
    for _ in 0..rounds {
        store.plan(&writes, None).await.unwrap();
    }
    eprintln!("reads of a 100-write apply: {:?}", start.elapsed() / rounds);
    let biggest = (0..999).map(|i| put(format!("t/max/{i}"))).collect();
    let start = Instant::now();
    store.apply(biggest, None).await.unwrap();
    let most = start.elapsed();
    // 1000 writes and the owner's record: past NATS's default batch limit,
    // within the test cluster's.
    let thousand = (0..1000).map(|i| put(format!("t/over/{i}"))).collect();
    let over = match store.apply(thousand, None).await {
        Ok(_) => "stored".to_string(),
        Err(e) => e.to_string(),
    };
    eprintln!("apply of 999 writes: {most:?}; of 1000: {over}");
    let start = Instant::now();
    for _ in 0..n {
        store.get("t/w/1").await.unwrap();
    }
    let get = start.elapsed() / n;
    // One owner's keys: read, then one fence on the owner's record.
    let keys: Vec<String> = (0..100).map(|i| format!("t/b0/{i}")).collect();
    let start = Instant::now();
    for _ in 0..rounds {
        store.get_many(keys.clone()).await.unwrap();
    }
    let many = start.elapsed() / rounds;
    eprintln!(
        "apply of 1 write: {one:?}; apply of 100 writes: {hundred:?}; get: {get:?}; get_many of 100 keys: {many:?} (mean, 3-server loopback cluster, sync always)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_holds_only_while_the_key_is_where_it_was_read() {
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let subject = one.data.key_subject("t/f/k");
    // Absent: sequence 0 holds until a first write.
    assert!(one.data.fence(&one.js, &subject, 0).await.unwrap());
    let put = |v: &'static str| DataWrite::Put {
        key: "t/f/k".into(),
        value: Bytes::from_static(v.as_bytes()),
    };
    other.apply(vec![put("1")], None).await.unwrap();
    assert!(!one.data.fence(&one.js, &subject, 0).await.unwrap());
    let (_, read) = one.data.entry_at("t/f/k").await.unwrap();
    assert!(one.data.fence(&one.js, &subject, read).await.unwrap());
    // Another node's write moves the key: the read it made is refused.
    other.apply(vec![put("2")], None).await.unwrap();
    assert!(!one.data.fence(&one.js, &subject, read).await.unwrap());
    let found = one
        .get_many(vec!["t/f/k".into(), "t/f/k".into(), "t/f/none".into()])
        .await
        .unwrap();
    let values: Vec<_> = found
        .iter()
        .map(|e| e.as_ref().map(|e| &e.value[..]))
        .collect();
    assert_eq!(values, [Some(&b"2"[..]), Some(&b"2"[..]), None]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_whose_keys_move_under_every_fence_gives_up_with_a_503() {
    let Some(one) = testkit::store().await else {
        return;
    };
    let other = testkit::store_beside(&one).await;
    let keys: Vec<String> = vec!["t/h/a".into(), "t/h/b".into()];
    let reads = std::sync::atomic::AtomicUsize::new(0);
    // Each read is followed by another node's write of the key, before
    // the fence: as a writer that never lets the key rest.
    let moved = |key: &str| {
        let (one, other, reads) = (&one, &other, &reads);
        let key = key.to_string();
        async move {
            let read = one.data.entry_at(&key).await?;
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            other
                .apply(
                    vec![DataWrite::Put {
                        key: key.clone(),
                        value: Bytes::from_static(b"again"),
                    }],
                    None,
                )
                .await?;
            Ok(read)
        }
    };
    let gave_up = one
        .data
        .fenced_entries_with(&one.js, &keys, moved)
        .await
        .unwrap_err();
    match gave_up {
        gust_store::StoreError::Unavailable(message) => {
            assert!(message.contains("kept changing"), "{message}");
        }
        other => panic!("not a 503: {other:?}"),
    }
    // The owner's fence once, then a fence per key, for every attempt.
    assert_eq!(
        reads.into_inner(),
        keys.len() * super::FENCE_ATTEMPTS,
        "every attempt read both keys"
    );
    // Left alone, the same keys read at once.
    let found = one.get_many(keys.clone()).await.unwrap();
    assert!(found.iter().all(|e| e.as_ref().unwrap().value == "again"));
}

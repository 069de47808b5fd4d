use std::collections::HashSet;
use std::time::Instant;

use super::*;
use crate::testkit;

fn payload(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn item(seq: u64, due: u64, group: Option<&str>) -> Item {
    Item {
        seq,
        state: State {
            due,
            attempts: 0,
            claimant: None,
            group: group.map(str::to_string),
        },
        at: 0,
        payload: None,
        pack: PackId {
            first: seq,
            size: 1,
        },
    }
}

#[test]
fn spread_claims_of_two_nodes_mostly_differ_and_keep_to_the_front() {
    let picks: Vec<u64> = (1..=100).collect();
    let (mut a, mut b) = (picks.clone(), picks.clone());
    spread(&mut a, "node-a", 8, |seq| seq);
    spread(&mut b, "node-b", 8, |seq| seq);
    // The first 32 are reordered among themselves; the rest keep their order.
    for spread in [&a, &b] {
        let mut front = spread[..32].to_vec();
        front.sort_unstable();
        assert_eq!(front, picks[..32]);
        assert_eq!(spread[32..], picks[32..]);
    }
    let first_a: HashSet<u64> = a[..8].iter().copied().collect();
    let shared = b[..8].iter().filter(|seq| first_a.contains(seq)).count();
    assert!(shared <= 4, "{:?} vs {:?}", &a[..8], &b[..8]);
    // Fewer picks than the window: all of them, reordered.
    let mut few = vec![5, 6, 7];
    spread(&mut few, "node-a", 8, |seq| seq);
    few.sort_unstable();
    assert_eq!(few, [5, 6, 7]);
}

#[test]
fn a_group_offers_only_its_first_message() {
    let items = [
        item(1, 50, Some("k")),
        item(2, 0, Some("j")),
        item(3, 0, Some("k")),
        item(4, 10, None),
        item(5, 0, None),
    ];
    assert_eq!(claimable(&items, 20, 10), [2, 5, 4]);
    assert_eq!(claimable(&items, 50, 2), [2, 5]);
    assert_eq!(claimable(&items, 50, 10), [2, 5, 4, 1]);
    // seq 3 is due at 0 but held back behind seq 1 (due at 50).
    assert_eq!(next_due(&items[..1]), Some(50));
    assert_eq!(
        next_due(&[item(1, 50, Some("k")), item(3, 0, Some("k"))]),
        Some(50)
    );
    assert_eq!(next_due(&[]), None);
}

#[test]
fn a_state_round_trips_through_headers() {
    let state = State {
        due: 123,
        attempts: 4,
        claimant: Some("node-1".into()),
        group: Some("aw".into()),
    };
    assert_eq!(State::read(Some(&state.headers())).unwrap(), state);
    let bare = State {
        claimant: None,
        group: None,
        ..state
    };
    assert_eq!(State::read(Some(&bare.headers())).unwrap(), bare);
    assert!(State::read(None).is_err());
}

#[test]
fn a_pack_round_trips_through_its_message() {
    let state = |due, claimant: Option<&str>, group: Option<&str>| State {
        due,
        attempts: 2,
        claimant: claimant.map(str::to_string),
        group: group.map(str::to_string),
    };
    let id = PackId { first: 7, size: 4 };
    let pack = Pack {
        id,
        at: 0,
        members: vec![
            Member {
                seq: 7,
                state: state(5, Some("node:a,b"), None),
                payload: payload("one"),
            },
            Member {
                seq: 9,
                state: state(0, None, Some("Zw")),
                payload: payload(""),
            },
            Member {
                seq: 10,
                state: state(u64::MAX, None, None),
                payload: payload("three, with: separators"),
            },
        ],
    };
    let (headers, body) = pack.encode();
    let read = Pack::read(id, 3, Some(&headers), Some(body)).unwrap();
    assert_eq!(read.at, 3);
    assert_eq!(read.members.len(), 3);
    for (a, b) in read.members.iter().zip(&pack.members) {
        assert_eq!((a.seq, &a.state, &a.payload), (b.seq, &b.state, &b.payload));
    }
    // Headers only: the states, no payloads.
    let listed = Pack::read(id, 0, Some(&headers), None).unwrap();
    assert_eq!(listed.members[2].state, pack.members[2].state);
    assert!(listed.members[2].payload.is_empty());
    // A pack of one is an event's own message, as before packs.
    let one = Pack {
        id: PackId { first: 7, size: 1 },
        at: 0,
        members: pack.members[..1].to_vec(),
    };
    let (headers, body) = one.encode();
    assert!(headers.get(MEMBERS).is_none());
    assert_eq!(body, payload("one"));
    let read = Pack::read(one.id, 1, Some(&headers), Some(body)).unwrap();
    assert_eq!(read.members[0].state, pack.members[0].state);
    // Subjects.
    assert_eq!(PackId::parse("7"), Some(PackId { first: 7, size: 1 }));
    assert_eq!(PackId::parse("7.4"), Some(id));
    assert_eq!(PackId::parse("7.1"), None);
    assert_eq!(PackId::parse("x"), None);
    assert!(id.contains(10) && !id.contains(11) && !id.contains(6));
    // A body shorter than its members say, or a member outside the
    // range, is corrupt.
    let (headers, _) = pack.encode();
    assert!(Pack::read(id, 1, Some(&headers), Some(payload("on"))).is_err());
    let narrow = PackId { first: 8, size: 3 };
    assert!(Pack::read(narrow, 1, Some(&headers), None).is_err());
}

#[test]
fn an_enqueue_packs_unnamed_events_and_leaves_named_ones_alone() {
    let pending = |len: usize, once: bool| Pending {
        payload: Bytes::from(vec![b'x'; len]),
        state: State {
            due: 0,
            attempts: 0,
            claimant: None,
            group: None,
        },
        once: once.then(|| "id".to_string()),
    };
    let many: Vec<Pending> = (0..150).map(|_| pending(10, false)).collect();
    assert_eq!(pack_sizes(&many, 64), [64, 64, 22]);
    assert_eq!(pack_sizes(&many[..3], 1), [1, 1, 1]);
    // By bytes: a large event goes alone.
    let big = [
        pending(10, false),
        pending(PACK_MAX_BYTES, false),
        pending(10, false),
        pending(10, false),
    ];
    assert_eq!(pack_sizes(&big, 64), [1, 1, 2]);
    let named: Vec<Pending> = (0..3).map(|_| pending(10, true)).collect();
    assert_eq!(pack_sizes(&named, 64), [1, 1, 1]);
}

#[test]
fn queue_names_round_trip_through_one_token() {
    for name in ["", "q", "events/t/f", "a.b c/ü"] {
        let token = queue_token(name);
        assert!(!token.contains('.'), "{token}");
        assert_eq!(queue_of_token(&token).unwrap(), name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_queues() {
    let Some(store) = testkit::store().await else {
        return;
    };
    gust_store::conformance::queues(&store).await;
}

/// What `append_batch` relies on when a try was stored although its answer
/// said refused: the next try, carrying the same message ids, is refused
/// as a duplicate (and stores nothing), not stored a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_again_with_a_stored_message_id_is_refused_as_a_duplicate() {
    let Some(store) = testkit::store().await else {
        return;
    };
    store
        .enqueue("dup", vec![payload("first")], 0)
        .await
        .unwrap();
    let queues = &store.queues;
    let batch = |seq: u64, id: &str| {
        let mut headers = State {
            due: 0,
            attempts: 0,
            claimant: None,
            group: None,
        }
        .headers();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        let id = PackId {
            first: seq,
            size: 1,
        };
        vec![(queues.subject("dup", id), headers, payload("again"))]
    };
    let first = crate::batch::publish(&store.client, batch(100, "an-id"))
        .await
        .unwrap();
    assert!(matches!(first, Batch::Stored(_)), "{first:?}");
    let again = crate::batch::publish(&store.client, batch(101, "an-id"))
        .await
        .unwrap();
    assert!(
        matches!(
            again,
            Batch::Refused {
                code: DUPLICATE_IN_BATCH,
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(
        store.depth("dup").await.unwrap(),
        2,
        "the duplicate stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_ordered_queues() {
    let Some(store) = testkit::store().await else {
        return;
    };
    gust_store::conformance::ordered_queues(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_named_messages() {
    let Some(store) = testkit::store().await else {
        return;
    };
    gust_store::conformance::named_messages(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_racing_never_both_claim_one_message_while_its_lease_runs() {
    let Some(one) = testkit::store().await else {
        return;
    };
    // Another node: the same namespace, another name.
    let mut options = one.options().clone();
    options.servers.reverse();
    options.client_name = "other-node".into();
    let other = NatsStore::connect(options).await.unwrap();
    let payloads: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("m{i}"))).collect();
    // Both enqueue at once: the sequence numbers stay distinct.
    let (a, b) = tokio::join!(
        one.enqueue("race", payloads[..20].to_vec(), 0),
        other.enqueue("race", payloads[20..].to_vec(), 0)
    );
    // Each node numbers from a block of its own.
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));
    let given: HashSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(given.len(), 40);

    // Grouped messages are numbered by the counter: a node whose idea of
    // it is stale is refused and reads it again; the numbers stay
    // distinct and in the order given, across nodes and blocks.
    let mut last = 0;
    for (i, node) in [&one, &other, &one, &other].into_iter().enumerate() {
        let seq = node
            .enqueue_ordered("stale", "g", vec![payload(&i.to_string())], 0)
            .await
            .unwrap()[0];
        assert!(seq > last, "{seq} after {last}");
        last = seq;
    }
    let unnamed = one.enqueue("stale", vec![payload("u")], 0).await.unwrap()[0];
    let grouped = other
        .enqueue_ordered("stale", "g", vec![payload("4")], 0)
        .await
        .unwrap()[0];
    assert!(grouped > last && grouped != unnamed);

    // Both claim the same due messages, round after round, with a
    // lease that outlasts the test: each message goes to one of them.
    let mut seen = HashSet::new();
    for round in 0..10u64 {
        let now = 1_000 + round;
        let (a, b) = tokio::join!(
            one.claim("race", now, 60_000, 3),
            other.claim("race", now, 60_000, 3)
        );
        for claimed in a.unwrap().into_iter().chain(b.unwrap()) {
            assert!(
                seen.insert(claimed.seq),
                "seq {} claimed twice in round {round}",
                claimed.seq
            );
            assert_eq!(claimed.attempt, 1);
        }
    }
    assert!(seen.len() >= 30, "{} claimed", seen.len());
    // Each node releases only its own claims after a restart.
    let mine = one.release_claims("race", 2_000).await.unwrap();
    let theirs = other.release_claims("race", 2_000).await.unwrap();
    assert_eq!(mine + theirs, seen.len() as u64);
    assert!(mine > 0 && theirs > 0, "{mine} {theirs}");
    assert_eq!(other.release_claims("race", 2_000).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_too_long_for_one_direct_answer_is_listed_whole() {
    let Some(store) = testkit::store().await else {
        return;
    };
    // One message per event, as before packs: this is about listings.
    store
        .queues
        .pack_max
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let queues = &store.queues;
    // A short queue: one direct answer, payloads and sequences included.
    store
        .enqueue("short", vec![payload("a"), payload("b")], 0)
        .await
        .unwrap();
    let items = queues
        .list_direct(&store.client, "short", None)
        .await
        .unwrap();
    let (items, all) = items.expect("two messages fit one answer");
    assert!(all);
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(items.iter().all(|i| i.at > 0 && i.payload.is_some()));
    assert_eq!(
        queues
            .list_direct(&store.client, "empty", None)
            .await
            .unwrap()
            .map(|(items, all)| (items.len(), all)),
        Some((0, true))
    );
    // Longer than one answer may carry: the consumer lists it instead.
    let n = 1_100u64;
    let payloads: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("m{i}"))).collect();
    let given = store.enqueue("long", payloads, 0).await.unwrap();
    assert!(
        queues
            .list_direct(&store.client, "long", None)
            .await
            .unwrap()
            .is_none()
    );
    let listed = queues.items(&store.client, "long").await.unwrap();
    assert_eq!(listed.len() as u64, n);
    // `peek` over it: every event with its payload, read pack by pack.
    let mut peeked = Vec::new();
    store
        .peek("long", &mut |p| {
            peeked.push((p.seq, p.payload));
            true
        })
        .await
        .unwrap();
    assert_eq!(peeked.len() as u64, n);
    assert_eq!(
        peeked.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        given
    );
    assert_eq!(peeked[1_099].1, Bytes::from("m1099"));
    // Its front is still one direct answer.
    let (front, all) = queues
        .list_direct(&store.client, "long", Some(10))
        .await
        .unwrap()
        .expect("a front of 10");
    assert!(!all);
    assert_eq!(
        front.iter().map(|i| i.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let (none, all) = queues
        .list_direct(&store.client, "empty", Some(10))
        .await
        .unwrap()
        .expect("an empty front");
    assert!(none.is_empty() && all);
    // Claims past the first answer's worth, in order, each once.
    let claimed = store.claim("long", 1, 60_000, 1_050).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.seq).collect::<Vec<_>>(),
        given[..1_050]
    );
    assert_eq!(claimed[1_049].payload, Bytes::from("m1049"));
    // Now 50 claimable ones remain, listed directly again after acks.
    store
        .ack("long", claimed.iter().map(|c| c.seq).collect())
        .await
        .unwrap();
    let rest = queues
        .list_direct(&store.client, "long", None)
        .await
        .unwrap();
    assert_eq!(
        rest.map(|(items, all)| (items.len(), all)),
        Some((50, true))
    );
    assert_eq!(store.depth("long").await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_reads_the_front_of_the_queue_unless_a_group_could_wait_behind() {
    let Some(store) = testkit::store().await else {
        return;
    };
    // One message per event, as before packs: this is about listings.
    store
        .queues
        .pack_max
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let queues = &store.queues;
    let many: Vec<Bytes> = (0..60).map(|i| Bytes::from(format!("u{i}"))).collect();
    store.enqueue("front", many.clone(), 0).await.unwrap();
    // Ungrouped and all due: the front alone serves a claim of 2.
    let front = queues
        .candidates(&store.client, "front", 1, 2)
        .await
        .unwrap();
    assert_eq!(front.len(), 2 * SPREAD + FRONT_SPARE);
    assert_eq!(front[0].seq, 1);
    // The front's first is claimed, then released for later: it moves to
    // the stream's end, and the front starts at the next.
    let first = store.claim("front", 1, 60_000, 1).await.unwrap();
    assert_eq!(first[0].seq, 1);
    store.release("front", 1, 10_000).await.unwrap();
    let front = queues
        .candidates(&store.client, "front", 2, 2)
        .await
        .unwrap();
    assert_eq!(front[0].seq, 2);

    // A group whose first message was rewritten (now at the stream's
    // end, not due) must hold back its second, which sits in the front.
    store
        .enqueue_ordered("grouped", "g", vec![payload("g1"), payload("g2")], 0)
        .await
        .unwrap();
    store.enqueue("grouped", many, 0).await.unwrap();
    let g1 = store.claim("grouped", 1, 60_000, 1).await.unwrap();
    assert_eq!(g1[0].seq, 1);
    store.release("grouped", 1, 10_000).await.unwrap();
    let all = queues
        .candidates(&store.client, "grouped", 2, 1)
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        62,
        "a grouped message in the front: the whole queue"
    );
    let next = store.claim("grouped", 2, 60_000, 1).await.unwrap();
    assert_eq!(next[0].seq, 3, "g2 waits behind g1");
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_still_work_when_no_server_answers_direct_gets() {
    let Some(store) = testkit::store().await else {
        return;
    };
    // A node of an older version turns direct gets off when it opens the
    // stream: nobody answers them (503), and listings go by consumer.
    let mut config = store.queues.stream.get_info().await.unwrap().config.clone();
    config.allow_direct = false;
    store.js.update_stream(config).await.unwrap();
    store
        .enqueue(
            "nodirect",
            vec![payload("a"), payload("b"), payload("c")],
            0,
        )
        .await
        .unwrap();
    assert!(
        store
            .queues
            .list_direct(&store.client, "nodirect", Some(2))
            .await
            .unwrap()
            .is_none()
    );
    let claimed = store.claim("nodirect", 1, 60_000, 2).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(store.next_due("nodirect").await.unwrap(), Some(0));
}

/// Prints throughput on the test cluster:
/// `cargo test -p gust-store-nats queue_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn queue_throughput() {
    let Some(store) = testkit::store().await else {
        return;
    };
    let n = 200;
    let start = Instant::now();
    for i in 0..n {
        store
            .enqueue("single", vec![Bytes::from(format!("event {i}"))], 0)
            .await
            .unwrap();
    }
    let single = n as f64 / start.elapsed().as_secs_f64();

    let batches = 20;
    let start = Instant::now();
    for b in 0..batches {
        let payloads = (0..100)
            .map(|i| Bytes::from(format!("event {b}/{i}")))
            .collect();
        store.enqueue("batched", payloads, 0).await.unwrap();
    }
    let batched = (batches * 100) as f64 / start.elapsed().as_secs_f64();

    let mut drained = Vec::new();
    for (queue, backlog) in [("drain", 1_000), ("short", 20)] {
        let payloads = (0..backlog)
            .map(|i| Bytes::from(format!("backlog {i}")))
            .collect();
        let given = store.enqueue(queue, payloads, 0).await.unwrap();
        assert_eq!(given.len(), backlog);
        assert_eq!(store.depth(queue).await.unwrap(), backlog as u64);
        let start = Instant::now();
        let mut done = 0;
        while done < backlog {
            let claimed = store.claim(queue, 1, 60_000, 10).await.unwrap();
            assert!(!claimed.is_empty());
            done += claimed.len();
            store
                .ack(queue, claimed.iter().map(|c| c.seq).collect())
                .await
                .unwrap();
        }
        drained.push(done as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "enqueue of 1 event: {single:.0} events/s; of 100-event batches: {batched:.0} events/s; \
         claim (10 per call) + ack from a 1,000-message backlog: {:.0} messages/s, \
         from a 20-message backlog: {:.0} messages/s",
        drained[0], drained[1]
    );
}

/// A node whose NATS connection is gone refuses a write at once, saying
/// so, instead of waiting out the request timeout for an ambiguous error.
#[tokio::test(flavor = "multi_thread")]
async fn an_enqueue_without_a_nats_connection_is_refused_as_such() {
    let Some(binary) = testkit::require() else {
        return;
    };
    let cluster = tokio::task::spawn_blocking(move || testkit::Cluster::start(&binary, 3))
        .await
        .unwrap();
    let store = NatsStore::connect(testkit::options(&cluster))
        .await
        .unwrap();
    store
        .enqueue("q", vec![payload("before")], 0)
        .await
        .unwrap();
    for i in 0..3 {
        cluster.signal(i, "KILL");
    }
    // Once the client has noticed the servers are gone …
    for _ in 0..100 {
        if store.client().connection_state() != async_nats::connection::State::Connected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // … a write is refused for that reason (not a timeout, after 5 s).
    let refused = store.enqueue("q", vec![payload("after")], 0).await.err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| e.to_string().contains("lost its connection to NATS")),
        "{refused:?}"
    );
    assert!(matches!(refused, Some(StoreError::Unavailable(_))));
}

/// A batch of several callers' named messages, one of them named as a
/// message the queue already holds: JetStream refuses the whole batch
/// without saying which, so each goes again alone; the duplicate is not
/// stored, the others are, each once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_a_named_duplicate_stores_the_others_once() {
    let Some(store) = testkit::store().await else {
        return;
    };
    // Ungrouped (numbered from the node's block, each named message
    // written alone) and grouped (with the counter, in one atomic batch
    // split when it holds a duplicate).
    for (queue, group) in [("mixed", None), ("mixed-grouped", Some("Zw"))] {
        let first = store
            .enqueue_once(queue, group, "tick-1", payload("tick"), 0)
            .await
            .unwrap()
            .expect("stored");
        let named = |text: &str, id: &str| Pending {
            payload: payload(text),
            state: State {
                due: 0,
                attempts: 0,
                claimant: None,
                group: group.map(str::to_string),
            },
            once: Some(once_id(queue, id)),
        };
        let batch = [
            named("tick-2", "tick-2"),
            named("tick-again", "tick-1"),
            named("tick-3", "tick-3"),
        ];
        let seqs = store
            .queues
            .append_chunk(&store.client, queue, &batch)
            .await
            .unwrap();
        assert_eq!(seqs[1], None, "{queue}: the duplicate");
        let (two, three) = (seqs[0].unwrap(), seqs[2].unwrap());
        assert!(first < two && two < three, "{queue}: {first} {seqs:?}");
        // Unnamed messages meanwhile are their own batches, stored as ever.
        let plain = store
            .enqueue(queue, vec![payload("plain")], 0)
            .await
            .unwrap();
        assert!(plain[0] > three, "{queue}: {plain:?}");
        let mut texts = Vec::new();
        for _ in 0..4 {
            let claimed = store.claim(queue, 0, 1_000, 10).await.unwrap();
            for c in &claimed {
                texts.push(String::from_utf8_lossy(&c.payload).to_string());
                store.ack(queue, vec![c.seq]).await.unwrap();
            }
        }
        texts.sort();
        assert_eq!(texts, ["plain", "tick", "tick-2", "tick-3"], "{queue}");
    }
}

/// A QUEUES stream whose duplicate window was changed (by hand, or by an
/// older Gust) gets Gust's back when a node opens it: what `enqueue_once`
/// promises rests on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_stream_with_another_duplicate_window_gets_gusts_back_when_opened() {
    let Some(store) = testkit::store().await else {
        return;
    };
    let name = store.queues.stream_name.clone();
    let window = |store: &NatsStore| {
        let (js, name) = (store.js.clone(), name.clone());
        async move {
            let mut stream = js.get_stream(&name).await.unwrap();
            stream.info().await.unwrap().config.duplicate_window
        }
    };
    let mut stream = store.js.get_stream(&name).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.duplicate_window = std::time::Duration::from_secs(5);
    store.js.update_stream(config).await.unwrap();
    assert_eq!(window(&store).await, std::time::Duration::from_secs(5));
    let reopened = testkit::store_beside(&store).await;
    assert_eq!(
        window(&reopened).await,
        std::time::Duration::from_millis(ONCE_WINDOW_MS)
    );
}

/// Events enqueued together share one message (a pack); each is still
/// claimed, released, deferred and acknowledged on its own, from any node.
#[tokio::test(flavor = "multi_thread")]
async fn events_enqueued_together_share_a_pack_and_still_change_one_by_one() {
    let Some(one) = testkit::store().await else {
        return;
    };
    let mut options = one.options().clone();
    options.client_name = "other-node".into();
    let other = NatsStore::connect(options).await.unwrap();
    let payloads: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("e{i}"))).collect();
    let seqs = one.enqueue("packed", payloads, 0).await.unwrap();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let mut ids = one.queues.pack_ids("packed").await.unwrap();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            PackId { first: 1, size: 64 },
            PackId {
                first: 65,
                size: 36
            }
        ]
    );
    assert_eq!(one.depth("packed").await.unwrap(), 100);

    // Claims take the front in order, with payloads.
    let first = one.claim("packed", 10, 60_000, 10).await.unwrap();
    assert_eq!(
        first.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(first[9].payload, Bytes::from("e9"));
    assert!(first.iter().all(|c| c.attempt == 1 && c.due_ms == 0));
    // The other node claims the next ones, not these.
    let second = other.claim("packed", 10, 60_000, 10).await.unwrap();
    assert_eq!(second.first().map(|c| c.seq), Some(11));
    assert!(second.iter().all(|c| c.seq > 10));

    // Acknowledged by the node that did not claim them (it finds their
    // pack by listing): gone, the rest of the pack stays.
    other.ack("packed", (1..=5).collect()).await.unwrap();
    // Released and deferred ones come back, the deferred one without
    // counting its claim.
    one.release("packed", 6, 0).await.unwrap();
    one.defer("packed", 7, 0).await.unwrap();
    let again = one.claim("packed", 20, 60_000, 2).await.unwrap();
    let attempts: Vec<(u64, u32)> = again.iter().map(|c| (c.seq, c.attempt)).collect();
    assert_eq!(attempts, [(6, 2), (7, 1)]);
    // The bound of `depth`: a pack counts its events until its last one
    // is acknowledged.
    assert_eq!(one.depth("packed").await.unwrap(), 100);

    // A restarted node releases its claims in the pack, not the other's.
    let mine = one.release_claims("packed", 30).await.unwrap();
    assert_eq!(mine, 5, "8, 9, 10, 6 and 7");
    assert_eq!(other.release_claims("packed", 30).await.unwrap(), 10);

    // Everything delivered: nothing left of either pack.
    let mut left = 95;
    while left > 0 {
        let claimed = other.claim("packed", 40, 60_000, 30).await.unwrap();
        assert!(!claimed.is_empty(), "{left} left");
        left -= claimed.len();
        one.ack("packed", claimed.iter().map(|c| c.seq).collect())
            .await
            .unwrap();
    }
    assert_eq!(one.depth("packed").await.unwrap(), 0);
    assert!(one.queues.pack_ids("packed").await.unwrap().is_empty());
    assert_eq!(one.next_due("packed").await.unwrap(), None);

    // An ordering group inside one pack: one at a time.
    one.enqueue_ordered(
        "grouped",
        "k",
        vec![payload("a"), payload("b"), payload("c")],
        0,
    )
    .await
    .unwrap();
    for expected in ["a", "b", "c"] {
        let claimed = one.claim("grouped", 1, 60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].payload, payload(expected));
        assert!(claimed[0].grouped);
        one.ack("grouped", vec![claimed[0].seq]).await.unwrap();
    }
    assert_eq!(one.depth("grouped").await.unwrap(), 0);
}

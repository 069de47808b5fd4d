//! Queues: claim order, leases, retries, ordering groups.

use super::*;

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

    // What is queued, claimed or not.
    let all = |queue: &'static str| async move {
        let mut seen = Vec::new();
        q.peek(queue, &mut |p| {
            seen.push(p);
            true
        })
        .await
        .unwrap();
        seen
    };
    let peeked = |seq, attempts, claimed, payload| Peeked {
        seq,
        attempts,
        claimed,
        payload,
    };
    assert_eq!(
        all("q1").await,
        [
            peeked(1, 0, false, b("a")),
            peeked(2, 0, false, b("b")),
            peeked(3, 0, false, b("c")),
            peeked(4, 0, false, b("later")),
        ]
    );
    assert!(all("nothing").await.is_empty());
    // A visit stops when asked to.
    let mut first = Vec::new();
    q.peek("q1", &mut |p| {
        first.push(p.seq);
        false
    })
    .await
    .unwrap();
    assert_eq!(first, [1]);

    let first = q.claim("q1", 100, 500, 2).await.unwrap();
    assert_eq!(
        all("q1").await[..2],
        [peeked(1, 1, true, b("a")), peeked(2, 1, true, b("b"))]
    );
    let got: Vec<(u64, u32, Bytes)> = first
        .iter()
        .map(|c| (c.seq, c.attempt, c.payload.clone()))
        .collect();
    assert_eq!(got, [(1, 1, b("a")), (2, 1, b("b"))]);
    // Due at once: since 0.
    assert_eq!(first[0].due_ms, 0);
    // Claimed messages are hidden for the lease.
    let next = q.claim("q1", 100, 500, 10).await.unwrap();
    assert_eq!(next.iter().map(|c| c.seq).collect::<Vec<_>>(), [3]);
    assert!(q.claim("q1", 200, 500, 10).await.unwrap().is_empty());

    // Acknowledged: gone. Released: back at its time, attempt counted.
    q.ack("q1", vec![1]).await.unwrap();
    q.release("q1", 2, 300).await.unwrap();
    assert!(q.claim("q1", 299, 500, 10).await.unwrap().is_empty());
    assert_eq!(
        all("q1").await[0],
        peeked(2, 1, false, b("b")),
        "released: waiting again"
    );
    let retried = q.claim("q1", 300, 500, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].seq, retried[0].attempt), (2, 2));
    // A retry is due since the time it was released to.
    assert_eq!(retried[0].due_ms, 300);
    // Deferred (never tried): back at its time, the claim not counted.
    q.defer("q1", 2, 310).await.unwrap();
    let deferred = q.claim("q1", 310, 500, 10).await.unwrap();
    assert_eq!((deferred[0].seq, deferred[0].attempt), (2, 2));
    assert_eq!(deferred[0].due_ms, 310);

    // A lease that runs out makes the message claimable again (its claimant died).
    let expired = q.claim("q1", 700, 500, 10).await.unwrap();
    let seqs: Vec<u64> = expired.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [3], "seq 3's lease ended at 600");
    assert_eq!(expired[0].attempt, 2);
    assert_eq!(expired[0].due_ms, 600, "due since its lease ended");

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

    // Acknowledged with its successor claimed at once (a backend may leave
    // the successor to `claim` instead): the same successor, leased, and
    // never claimable twice.
    let k5 = q
        .enqueue_ordered("q", "k", vec![b("k5"), b("k6")], 0)
        .await
        .unwrap();
    let next = q
        .ack_and_claim_next("q", fresh[0].seq, 190, 100)
        .await
        .unwrap();
    // Repeated (a retry after an error): nothing more is acknowledged or claimed.
    assert!(
        q.ack_and_claim_next("q", fresh[0].seq, 190, 100)
            .await
            .unwrap()
            .is_none()
    );
    let k5_claim = match next {
        Some(claimed) => {
            assert_eq!(
                (claimed.payload.clone(), claimed.attempt, claimed.grouped),
                (b("k5"), 1, true)
            );
            assert!(q.claim("q", 191, 100, 10).await.unwrap().is_empty());
            claimed
        }
        None => {
            let claimed = q.claim("q", 191, 100, 10).await.unwrap();
            assert_eq!(payloads(&claimed), [b("k5")]);
            claimed[0].clone()
        }
    };
    assert_eq!(k5_claim.seq, k5[0]);
    // Its lease runs out like any claim's.
    let expired = q.claim("q", 400, 100, 10).await.unwrap();
    assert_eq!(payloads(&expired), [b("k5")]);
    assert_eq!(expired[0].attempt, 2);
    // The last of a group, or a message of none, claims nothing next.
    q.ack("q", vec![k5[0]]).await.unwrap();
    let k6 = q.claim("q", 410, 100, 10).await.unwrap();
    assert_eq!(payloads(&k6), [b("k6")]);
    assert!(
        q.ack_and_claim_next("q", k6[0].seq, 420, 100)
            .await
            .unwrap()
            .is_none()
    );
    q.enqueue("q", vec![b("loose")], 0).await.unwrap();
    let loose = q.claim("q", 430, 100, 10).await.unwrap();
    assert!(
        q.ack_and_claim_next("q", loose[0].seq, 440, 100)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(q.depth("q").await.unwrap(), 0);
}

/// Named messages (`enqueue_once`): a name is stored once per queue within
/// the window, whatever became of the message since; other queues' names
/// and unnamed messages are not affected.
pub async fn named_messages(q: &dyn QueueStore) {
    assert!(
        q.once_window_ms() >= 60_000,
        "a window shorter than a restart"
    );
    let first = q
        .enqueue_once("n", Some("k"), "tick-1", b("one"), 0)
        .await
        .unwrap();
    assert!(first.is_some());
    // Submitted again (an answer lost, a process restarted): not stored.
    assert_eq!(
        q.enqueue_once("n", Some("k"), "tick-1", b("one"), 0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(q.depth("n").await.unwrap(), 1);
    // The same name in another queue (another tenant's function) is its own.
    assert!(
        q.enqueue_once("other", None, "tick-1", b("theirs"), 0)
            .await
            .unwrap()
            .is_some()
    );
    // Concurrent submissions of one name, with other messages in between:
    // one stored, the unnamed ones all.
    let (a, b2, c, d) = tokio::join!(
        q.enqueue_once("n", None, "tick-2", b("two"), 0),
        q.enqueue_once("n", None, "tick-2", b("two"), 0),
        q.enqueue("n", vec![b("plain")], 0),
        q.enqueue_once("n", Some("k"), "tick-3", b("three"), 0),
    );
    let stored = [a.unwrap(), b2.unwrap()];
    assert_eq!(
        stored.iter().filter(|s| s.is_some()).count(),
        1,
        "{stored:?}"
    );
    assert_eq!(c.unwrap().len(), 1);
    assert!(d.unwrap().is_some());
    assert_eq!(q.depth("n").await.unwrap(), 4);
    // Delivered and acknowledged: still not stored again.
    let claimed = q.claim("n", 10, 100, 10).await.unwrap();
    let one = claimed.iter().find(|c| c.payload == b("one")).unwrap();
    q.ack("n", vec![one.seq]).await.unwrap();
    assert_eq!(
        q.enqueue_once("n", Some("k"), "tick-1", b("one"), 0)
            .await
            .unwrap(),
        None
    );
    // The group still orders: tick-3 waits behind tick-1's acknowledgement
    // and comes now.
    let next = q.claim("n", 20, 100, 10).await.unwrap();
    assert!(next.iter().any(|c| c.payload == b("three")), "{next:?}");
}

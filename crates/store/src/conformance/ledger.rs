//! The usage ledger: markers, records, the writer's position.

use super::*;

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
        outbox: false,
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
        outbox: false,
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

    // Retention: records of seconds wholly before the cut go, tenant by
    // tenant, in steps as small as asked; later ones stay.
    let mut pruned = l.prune(11_000, 1).await.unwrap();
    assert!(pruned > 0, "a step removes something");
    loop {
        let step = l.prune(11_000, 1).await.unwrap();
        if step == 0 {
            break;
        }
        pruned += step;
    }
    assert_eq!(pruned, 5 + 7, "t's 3, u's 2, v's 7 before 11 s");
    assert!(
        l.records("t", 0, u64::MAX, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        l.records("u", 0, u64::MAX, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let left: Vec<u64> = l
        .records("v", 0, u64::MAX, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.time_ms)
        .collect();
    assert_eq!(left, (7..25).map(|i| 10_000 + i * 150).collect::<Vec<_>>());
    assert_eq!(l.prune(11_000, 100).await.unwrap(), 0);
    outbox(l).await;
}

/// The outbox: what commits asked to keep, exactly the records they
/// wrote, in commit order, until dropped.
async fn outbox(l: &dyn crate::LedgerStore) {
    use crate::{LedgerCommit, LedgerEntry, LedgerRecords};
    assert!(l.outbox(10).await.unwrap().is_empty());
    let entry = |key: &str, opened| LedgerEntry {
        tenant: "o".into(),
        time_ms: 50,
        key: key.into(),
        record: b(&format!("record of {key}")),
        opened,
    };
    let shipped = |commit: LedgerCommit| async move {
        l.commit(LedgerCommit {
            outbox: true,
            ..commit
        })
        .await
        .unwrap()
    };
    let keys = |bytes: &Bytes| {
        LedgerRecords::decode(bytes)
            .unwrap()
            .iter()
            .map(|r| (r.tenant.to_string(), r.key.to_string(), r.record.to_vec()))
            .collect::<Vec<_>>()
    };
    // A commit that writes nothing keeps no entry.
    shipped(LedgerCommit::default()).await;
    assert!(l.outbox(10).await.unwrap().is_empty());
    shipped(LedgerCommit {
        open: vec![("o1#1".into(), b("m"))],
        close: vec![entry("o2#1", false)].into(),
        ..LedgerCommit::default()
    })
    .await;
    // Not kept: a commit without `outbox`, and a record skipped (its
    // marker gone: closed before).
    l.commit(LedgerCommit {
        close: vec![entry("o3#1", false)].into(),
        ..LedgerCommit::default()
    })
    .await
    .unwrap();
    shipped(LedgerCommit {
        close: vec![
            entry("o1#1", true),
            entry("o1#1", true),
            entry("o4#1", false),
        ]
        .into(),
        ..LedgerCommit::default()
    })
    .await;
    let kept = l.outbox(10).await.unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].0 < kept[1].0);
    assert_eq!(
        kept[0].0 >> 32,
        kept[1].0 >> 32,
        "one ledger's numbers share their upper half"
    );
    let record = |key: &str| {
        (
            "o".to_string(),
            key.to_string(),
            format!("record of {key}").into_bytes(),
        )
    };
    assert_eq!(keys(&kept[0].1), [record("o2#1")]);
    assert_eq!(keys(&kept[1].1), [record("o1#1"), record("o4#1")]);
    assert_eq!(l.outbox(1).await.unwrap(), kept[..1]);
    l.drop_outbox(kept[0].0).await.unwrap();
    assert_eq!(l.outbox(10).await.unwrap(), kept[1..]);
    l.drop_outbox(kept[1].0).await.unwrap();
    assert!(l.outbox(10).await.unwrap().is_empty());
    // Numbers are never reused after a drop.
    shipped(LedgerCommit {
        close: vec![entry("o5#1", false)].into(),
        ..LedgerCommit::default()
    })
    .await;
    let again = l.outbox(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].0 > kept[1].0);
}

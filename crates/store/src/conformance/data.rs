//! Tenants' data: writes, counters, the change feed, allowances.

use super::*;

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

//! Log streams: positions, reading, deletion, limits.

use super::*;

/// Append-only streams: positions, batching, reading after a point, deletion.
///
/// A record's position grows within its stream but need not grow by one
/// (a backend may number records across streams): it is a cursor, and
/// these checks hold for any such numbering.
pub async fn logs(logs: &dyn LogStore) {
    let heads = logs
        .append(vec![
            ("s1".into(), b("a")),
            ("s2".into(), b("x")),
            ("s1".into(), b("b")),
        ])
        .await
        .unwrap();
    let names: Vec<&str> = heads.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        ["s1", "s2"],
        "each stream written, in first-seen order"
    );
    let heads2 = logs.append(vec![("s1".into(), b("c"))]).await.unwrap();
    assert_eq!(heads2.len(), 1);

    let all = logs.read("s1", 0, 100).await.unwrap();
    let payloads: Vec<Bytes> = all.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(
        payloads,
        [b("a"), b("b"), b("c")],
        "every record, in order, once"
    );
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "{all:?}");
    assert!(all[0].0 > 0, "0 reads from the start");
    // An append returns the position of each stream's last record.
    assert_eq!(heads[0].1, all[1].0);
    assert_eq!(heads2[0].1, all[2].0);
    // Reading after a position gives what follows it, whatever lies between.
    assert_eq!(
        logs.read("s1", all[0].0, 1).await.unwrap(),
        [all[1].clone()]
    );
    assert_eq!(logs.read("s1", all[1].0 - 1, 10).await.unwrap(), all[1..]);
    assert!(logs.read("s1", all[2].0, 10).await.unwrap().is_empty());
    let s2 = logs.read("s2", 0, 10).await.unwrap();
    assert_eq!(s2, [(heads[1].1, b("x"))]);
    // A stream whose name is a prefix of another is its own stream.
    assert!(logs.read("s", 0, 10).await.unwrap().is_empty());

    // Paging with a small limit returns each record once, none skipped,
    // while another stream is written between them.
    let mut written = Vec::new();
    for i in 0..10 {
        let record = b(&format!("p{i}"));
        written.push(record.clone());
        logs.append(vec![("paged".into(), record), ("noise".into(), b("n"))])
            .await
            .unwrap();
    }
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = logs.read("paged", after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.0;
        paged.extend(page.into_iter().map(|(_, r)| r));
    }
    assert_eq!(paged, written);

    logs.delete_stream("s1").await.unwrap();
    assert!(logs.read("s1", 0, 10).await.unwrap().is_empty());
    assert_eq!(logs.read("s2", 0, 10).await.unwrap().len(), 1);
    // Positions are not reused after a delete: a reader that had reached
    // the end sees the new record, and never one position twice.
    let heads = logs.append(vec![("s1".into(), b("d"))]).await.unwrap();
    assert!(heads[0].1 > all[2].0, "{heads:?}");
    assert_eq!(
        logs.read("s1", all[2].0, 10).await.unwrap(),
        [(heads[0].1, b("d"))]
    );
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
    let kept: Vec<Bytes> = logs
        .read("big", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(kept, [b("a3"), b("b0"), b("b1"), b("b2"), b("b3")]);
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
    assert_eq!(logs.prune("", roomy, t0 + day - MIN).await.unwrap(), 0);
    logs.append_within(vec![("aged".into(), b("f0"))], roomy, t0 + day + 2 * MIN)
        .await
        .unwrap();
    let aged = logs.read("aged", 0, 100).await.unwrap();
    let kept: Vec<Bytes> = aged.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(
        kept,
        [b("e0"), b("e1"), b("e2"), b("e3"), b("f0")],
        "the first day's four are gone"
    );
    // `prune` ages the streams under its prefix, also those no longer
    // written, and no other.
    assert_eq!(logs.prune("agee", roomy, t0 + 3 * day).await.unwrap(), 0);
    assert_eq!(logs.read("aged", 0, 100).await.unwrap().len(), 5);
    let others = logs.read("other", 0, 100).await.unwrap().len();
    assert!(others > 0);
    assert_eq!(logs.prune("ag", roomy, t0 + 3 * day).await.unwrap(), 5);
    assert_eq!(logs.read("other", 0, 100).await.unwrap().len(), others);
    let dropped = logs.prune("", roomy, t0 + 3 * day).await.unwrap();
    assert!(dropped >= others as u64, "{dropped}");
    assert!(logs.read("aged", 0, 100).await.unwrap().is_empty());
    assert!(logs.read("other", 0, 100).await.unwrap().is_empty());
    assert_eq!(logs.stream_bytes("aged").await.unwrap(), 0);
    // Positions go on after pruning.
    let heads = logs
        .append_within(vec![("aged".into(), b("g"))], roomy, t0 + 3 * day)
        .await
        .unwrap();
    assert!(heads[0].1 > aged[4].0, "{heads:?}");
    // A deleted stream's bytes are forgotten.
    logs.delete_stream("big").await.unwrap();
    assert_eq!(logs.stream_bytes("big").await.unwrap(), 0);
}

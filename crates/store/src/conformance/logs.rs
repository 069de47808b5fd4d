//! Log streams: sequence numbers, reading, deletion, limits.

use super::*;

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

//! The change-feed check. A trigger on the KV workload's bucket runs
//! [`FUNCTION`] (the test guest's `/record`), which appends each change it
//! is handed (key, revision, attempt, operation) to its own bucket `seen`
//! under a counter it increments first: the order of the records is the
//! order in which the deliveries ran. Per key, revisions must arrive in
//! increasing order (a redelivery may repeat the last one), and every write
//! a client saw acknowledged must arrive, unless it was dead-lettered.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::nodes::World;
use crate::workload::{BUCKET, KvOp};

/// The function the trigger runs, and the trigger's id.
pub const FUNCTION: &str = "recorder";
const TRIGGER: &str = "feed";

/// One delivery of a change, as the guest recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub key: String,
    pub revision: u64,
    pub attempt: u64,
}

/// Deploys [`FUNCTION`] and triggers it on every change in the workload's
/// bucket. Its retries outlast any fault of the run, so that a change is
/// dead-lettered only if something is wrong.
pub fn setup(world: &World, guest: &str) -> anyhow::Result<()> {
    world.gust_json(
        0,
        &[
            "deploy",
            FUNCTION,
            guest,
            "--concurrency",
            "4",
            "--max-attempts",
            "100",
            "--backoff-ms",
            "100",
            "--max-backoff-ms",
            "2000",
        ],
    )?;
    world.gust_json(
        0,
        &[
            "trigger", "add", FUNCTION, "--bucket", BUCKET, "--path", "/record", "--id", TRIGGER,
        ],
    )?;
    Ok(())
}

/// The deliveries recorded so far, in the order they ran (`None` if no
/// node answered).
async fn read(world: &World) -> Option<Vec<Delivery>> {
    for (_, endpoint) in crate::workload::live(&world.endpoints) {
        let Ok(response) = world
            .http
            .post(format!("{}/{FUNCTION}/kv/dump?bucket=seen", endpoint.url))
            .timeout(Duration::from_secs(30))
            .send()
            .await
        else {
            continue;
        };
        if response.status() != 200 {
            continue;
        }
        let Ok(text) = response.text().await else {
            continue;
        };
        return Some(parse(&text));
    }
    None
}

/// The dump's lines (`<n>\t<key> <revision> <attempt> <operation>`, and
/// the counter `n` itself) as deliveries in the order of `n`.
fn parse(dump: &str) -> Vec<Delivery> {
    let mut numbered: Vec<(u64, Delivery)> = dump
        .lines()
        .filter_map(|line| {
            let (n, record) = line.split_once('\t')?;
            let n = n.parse().ok()?;
            let mut parts = record.split(' ');
            let key = parts.next()?.to_string();
            let revision = parts.next()?.parse().ok()?;
            let attempt = parts.next()?.parse().ok()?;
            Some((
                n,
                Delivery {
                    key,
                    revision,
                    attempt,
                },
            ))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    numbered.into_iter().map(|(_, d)| d).collect()
}

/// Waits until every acknowledged write in `ops` was delivered (or
/// `within` passes), then a little longer for late redeliveries; the last
/// records read (a read that fails keeps the one before).
pub async fn collect(world: &World, ops: &[KvOp], within: Duration) -> Vec<Delivery> {
    let expected = acknowledged(ops);
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        if let Some(now) = read(world).await {
            seen = now;
        }
        let got: HashSet<(&str, u64)> = seen.iter().map(|d| (d.key.as_str(), d.revision)).collect();
        let all = expected.iter().all(|(k, r)| got.contains(&(*k, *r)));
        if all || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    read(world).await.unwrap_or(seen)
}

/// (key, revision) of every write a client saw acknowledged.
fn acknowledged(ops: &[KvOp]) -> Vec<(&'static str, u64)> {
    ops.iter()
        .filter_map(|op| Some((op.key, op.revision?)))
        .collect()
}

/// The change-feed checker's figures.
#[derive(Debug, Default, Clone)]
pub struct FeedFigures {
    /// Writes acknowledged with their revision.
    pub acknowledged: usize,
    /// Deliveries recorded, and how many repeated a revision already seen.
    pub deliveries: usize,
    pub redelivered: usize,
    /// A key's revision delivered after a later one of the same key.
    pub out_of_order: Vec<String>,
    /// Acknowledged writes neither delivered nor dead-lettered.
    pub missing: Vec<String>,
    /// Acknowledged writes the trigger gave up on (dead-lettered).
    pub dead_lettered: usize,
}

/// Checks `deliveries` (in the order they ran) against the writes in `ops`;
/// `dead` holds the invocation ids of the trigger's dead letters
/// (`kv-<function>-<trigger>-<revision>`).
pub fn check(ops: &[KvOp], deliveries: &[Delivery], dead: &HashSet<String>) -> FeedFigures {
    let mut last = BTreeMap::<&str, u64>::new();
    let mut figures = FeedFigures {
        deliveries: deliveries.len(),
        ..Default::default()
    };
    for d in deliveries {
        match last.get(d.key.as_str()) {
            Some(&before) if d.revision < before => figures.out_of_order.push(format!(
                "{}: revision {} (attempt {}) delivered after {before}",
                d.key, d.revision, d.attempt
            )),
            Some(&before) if d.revision == before => figures.redelivered += 1,
            _ => {
                last.insert(d.key.as_str(), d.revision);
            }
        }
    }
    let delivered: HashSet<(&str, u64)> = deliveries
        .iter()
        .map(|d| (d.key.as_str(), d.revision))
        .collect();
    let expected = acknowledged(ops);
    figures.acknowledged = expected.len();
    for (key, revision) in expected {
        if delivered.contains(&(key, revision)) {
            continue;
        }
        if dead.contains(&format!("kv-{FUNCTION}-{TRIGGER}-{revision}")) {
            figures.dead_lettered += 1;
        } else {
            figures.missing.push(format!("{key}@{revision}"));
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearize::{Call, Operation, Outcome, Ret};

    fn write(key: &'static str, revision: u64) -> KvOp {
        KvOp {
            key,
            op: Operation {
                client: 0,
                call: Call::Write(revision),
                invoked: 0,
                outcome: Outcome::Ok {
                    ret: Ret::Written,
                    completed: 1,
                },
            },
            revision: Some(revision),
        }
    }

    fn delivered(key: &str, revision: u64) -> Delivery {
        Delivery {
            key: key.into(),
            revision,
            attempt: 1,
        }
    }

    #[test]
    fn the_dump_is_read_in_the_order_of_its_counter() {
        let dump = "n\t3\n000002\tr1 7 1 put\n000001\tr0 5 2 delete\n000003\tr0 9 1 put\n";
        assert_eq!(
            parse(dump),
            vec![
                Delivery {
                    key: "r0".into(),
                    revision: 5,
                    attempt: 2
                },
                delivered("r1", 7),
                delivered("r0", 9),
            ]
        );
    }

    #[test]
    fn increasing_revisions_per_key_pass_and_a_repeat_is_a_redelivery() {
        let ops = [write("r0", 1), write("r1", 2), write("r0", 3)];
        let got = [
            delivered("r0", 1),
            delivered("r1", 2),
            delivered("r0", 1),
            delivered("r0", 3),
        ];
        let f = check(&ops, &got, &HashSet::new());
        assert!(f.out_of_order.is_empty(), "{f:?}");
        assert!(f.missing.is_empty(), "{f:?}");
        assert_eq!((f.acknowledged, f.deliveries, f.redelivered), (3, 4, 1));
    }

    #[test]
    fn an_older_revision_after_a_newer_one_and_a_write_never_delivered_are_found() {
        let ops = [write("r0", 1), write("r0", 3), write("r1", 2)];
        let got = [delivered("r0", 3), delivered("r0", 1)];
        let f = check(&ops, &got, &HashSet::new());
        assert_eq!(f.out_of_order.len(), 1, "{f:?}");
        assert_eq!(f.missing, vec!["r1@2".to_string()]);
        // Dead-lettered, it is not missing.
        let dead = HashSet::from(["kv-recorder-feed-2".to_string()]);
        let f = check(&ops, &got, &dead);
        assert!(f.missing.is_empty(), "{f:?}");
        assert_eq!(f.dead_lettered, 1);
    }
}

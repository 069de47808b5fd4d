//! Work nobody waits for: a client that goes away cancels its invocation
//! (its CPU stops, its slot frees, its record says `cancelled` and bills
//! the time it ran), and a response the guest could not finish ends in an
//! error the client sees, recorded as `incomplete`.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{Server, guests};

/// CPU time (user + system) the server process has used, in ms.
fn server_cpu_ms(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).expect("stat");
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field of the line, utime the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')').expect("a command name") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 1000 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

/// The tenant's usage records by invocation id, once there are `expected`.
pub(crate) async fn records(
    server: &Server,
    expected: usize,
) -> HashMap<String, serde_json::Value> {
    let lines = Server::eventually(Duration::from_secs(10), || async {
        let out = server.gust(&["usage", "--export", "jsonl", "--from", "0"]);
        assert_eq!(out.status.code(), Some(0));
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() >= expected).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("{expected} usage records"));
    lines
        .into_iter()
        .map(|r| (r["invocation_id"].as_str().unwrap().to_string(), r))
        .collect()
}

/// The server's CPU time over `span`, in ms.
async fn cpu_over(server: &Server, span: Duration) -> u64 {
    let before = server_cpu_ms(server);
    tokio::time::sleep(span).await;
    server_cpu_ms(server) - before
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_gives_up_cancels_its_invocation_and_pays_for_what_ran() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--timeout-ms", "30000"]);
    let gone = server
        .http
        .get(format!("{}/tb/spin", server.url))
        .timeout(Duration::from_millis(1000))
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the client gave up: {:?}",
        gone.map(|r| r.status())
    );
    // The guest would loop for 30 s; its client is gone, so it must not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = cpu_over(&server, Duration::from_secs(2)).await;
    assert!(
        spent < 500,
        "the server used {spent} ms of CPU in the 2 s after the client left"
    );
    let records = records(&server, 1).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = records.values().next().unwrap();
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    let billed = record["billed_ms"].as_u64().unwrap();
    assert!(
        (900..3000).contains(&billed),
        "billed for the ~1 s it ran: {record}"
    );
    let cpu_ms = record["cpu_ns"].as_u64().unwrap() / 1_000_000;
    assert!((300..3000).contains(&cpu_ms), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_mid_body_cancels_its_invocation() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--timeout-ms", "30000"]);
    let mut response = server
        .http
        .get(format!("{}/tb/partial?then=spin", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"the first part, ");
    // The guest now loops with its head and a first part sent; the
    // client reads no more and closes the connection.
    drop(response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = cpu_over(&server, Duration::from_secs(2)).await;
    assert!(
        spent < 500,
        "the server used {spent} ms of CPU in the 2 s after the client left"
    );
    let records = records(&server, 1).await;
    let record = &records[&id];
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["response_bytes"], 16, "{record}");
    assert!(record["billed_ms"].as_u64().unwrap() < 3000, "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_requests_free_their_slots_for_others() {
    const HELD: usize = 16;
    let server = Server::start_with(&["--max-in-flight", &HELD.to_string()]);
    server.deploy("tb", &guests().testbed, &["--timeout-ms", "30000"]);
    let clients: Vec<_> = (0..HELD)
        .map(|_| {
            let request = server
                .http
                .get(format!("{}/tb/spin", server.url))
                .timeout(Duration::from_millis(1500));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, _) = server.get("/tb/").await;
    assert_ne!(status, 200, "the spinning requests hold every slot");
    let mut abandoned = 0;
    for client in clients {
        if client.await.unwrap().is_err() {
            abandoned += 1;
        }
    }
    assert!(abandoned > 0, "some requests were left running");
    // Their clients are gone: their slots are free at once, not when the
    // guests' 30 s timeout would have stopped them.
    let free = Server::eventually(Duration::from_secs(2), || async {
        (server.get("/tb/").await.0 == 200).then_some(())
    })
    .await;
    assert!(
        free.is_some(),
        "a request after the abandoned ones is served"
    );
    // Records arrive in any order: the refused and served requests' records
    // can be written before the last cancelled one, so wait for the count of
    // cancelled records itself, then check none more follows.
    let cancelled = |records: &HashMap<String, serde_json::Value>| {
        records
            .values()
            .filter(|r| r["outcome"] == "cancelled")
            .count()
    };
    let mut seen = records(&server, abandoned + 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cancelled(&seen) < abandoned && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = records(&server, abandoned + 2).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = records(&server, abandoned + 2).await;
    assert_eq!(cancelled(&seen), abandoned, "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_the_guest_did_not_finish_ends_in_an_error() {
    let server = Server::start();
    server.deploy(
        "tb",
        &guests().testbed,
        &[
            "--timeout-ms",
            "1000",
            "--stream-idle-ms",
            "1000",
            "--memory-mb",
            "32",
        ],
    );
    let mut ids = Vec::new();
    for then in ["trap", "spin", "grow"] {
        let response = server
            .http
            .get(format!("{}/tb/partial?then={then}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{then}");
        ids.push((
            then,
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        ));
        let body = response.bytes().await;
        assert!(
            body.is_err(),
            "{then}: the body must not end cleanly: {body:?}"
        );
    }
    // What curl makes of it: an error exit, not 0.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", server.token))
        .arg(format!("{}/tb/partial?then=trap", server.url))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_ne!(
        out.status.code(),
        Some(0),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = records(&server, ids.len() + 1).await;
    for (then, id) in &ids {
        let record = &records[id];
        assert_eq!(record["outcome"], "incomplete", "{then}: {record}");
        assert_eq!(record["status"], 200, "{then}: {record}");
        assert_eq!(record["response_bytes"], 16, "{then}: {record}");
    }
    // A response that ends well still ends cleanly.
    let (status, text) = server.get("/tb/").await;
    assert_eq!((status, text.as_str()), (200, "testbed ok"));
}

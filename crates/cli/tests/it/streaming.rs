//! Streaming responses: a server-sent event stream runs past the
//! request's wall-clock limit while it keeps sending, is cut when it goes
//! quiet or runs past its total limit, stops its guest when its client
//! leaves, and is metered whole.

use std::time::{Duration, Instant};

use crate::abandoned::records;
use crate::harness::{Server, guests};

/// Reads a streamed body to its end: the chunks with when each arrived
/// (since `since`), and whether the body ended cleanly.
async fn read_stream(
    mut response: reqwest::Response,
    since: Instant,
) -> (Vec<(Duration, bytes::Bytes)>, Result<(), String>) {
    let mut chunks = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => chunks.push((since.elapsed(), chunk)),
            Ok(None) => return (chunks, Ok(())),
            Err(e) => return (chunks, Err(format!("{e:?}"))),
        }
    }
}

fn events(chunks: &[(Duration, bytes::Bytes)]) -> Vec<String> {
    let text: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.to_vec()).collect();
    String::from_utf8(text)
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

fn id_of(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_stream_runs_past_the_wall_clock_limit_while_it_keeps_sending() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &["--timeout-ms", "1000"]);
    let started = Instant::now();
    let response = server
        .http
        .get(format!("{}/tb/sse?n=16&every_ms=150", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let id = id_of(&response);
    let (chunks, ended) = read_stream(response, started).await;
    assert_eq!(ended, Ok(()), "the stream ends cleanly");
    let events = events(&chunks);
    let expected: Vec<String> = (1..=16).map(|i| format!("data: {i}")).collect();
    assert_eq!(events, expected);
    // Each event arrived as it was written, not all at the end.
    let (first, last) = (chunks[0].0, chunks[chunks.len() - 1].0);
    assert!(first < Duration::from_millis(900), "first after {first:?}");
    assert!(last > Duration::from_millis(2000), "last after {last:?}");
    assert!(chunks.len() >= 8, "{} chunks", chunks.len());

    // Metered whole: the stream's wall time and every byte.
    let records = records(&server, 1).await;
    let record = &records[&id];
    assert_eq!(record["outcome"], "success", "{record}");
    let bytes: usize = expected.iter().map(|e| e.len() + 2).sum();
    assert_eq!(record["response_bytes"], bytes as u64, "{record}");
    assert!(record["billed_ms"].as_u64().unwrap() >= 2000, "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_goes_quiet_or_runs_too_long_is_cut() {
    let server = Server::start();
    server.deploy(
        "quiet",
        &guests().testbed,
        &["--timeout-ms", "5000", "--stream-idle-ms", "500"],
    );
    server.deploy(
        "long",
        &guests().testbed,
        &["--timeout-ms", "5000", "--stream-max-ms", "1200"],
    );
    // Three events, then a pause of 4 s: cut 0.5 s into it.
    let started = Instant::now();
    let response = server
        .http
        .get(format!(
            "{}/quiet/sse?n=6&every_ms=50&pause_after=3&pause_ms=4000",
            server.url
        ))
        .send()
        .await
        .unwrap();
    let quiet_id = id_of(&response);
    let (chunks, ended) = read_stream(response, started).await;
    assert!(ended.is_err(), "a cut stream does not end cleanly");
    assert_eq!(events(&chunks), ["data: 1", "data: 2", "data: 3"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(3000),
        "cut after {took:?}"
    );

    // Busy all along, but past its total limit.
    let started = Instant::now();
    let response = server
        .http
        .get(format!("{}/long/sse?n=100&every_ms=100", server.url))
        .send()
        .await
        .unwrap();
    let long_id = id_of(&response);
    let (chunks, ended) = read_stream(response, started).await;
    assert!(ended.is_err(), "a cut stream does not end cleanly");
    let got = events(&chunks).len();
    assert!((8..=14).contains(&got), "{got} events in 1.2 s");

    let records = records(&server, 2).await;
    for id in [&quiet_id, &long_id] {
        let record = &records[id];
        assert_eq!(record["outcome"], "incomplete", "{record}");
        assert_eq!(record["status"], 200, "{record}");
    }
    // The stream limits have ceilings, as every limit.
    for (flag, value) in [
        ("--stream-idle-ms", "0"),
        ("--stream-max-ms", "999999999999"),
    ] {
        let refused = server.gust(&[
            "deploy",
            "x",
            guests().testbed.to_str().unwrap(),
            flag,
            value,
        ]);
        assert_eq!(refused.status.code(), Some(1), "{flag} {value}");
        let name = flag.trim_start_matches("--").replace('-', "_");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(&name),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_a_stream_stops_its_guest() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let mut response = server
        .http
        .get(format!("{}/tb/sse?n=100000&every_ms=100", server.url))
        .send()
        .await
        .unwrap();
    let id = id_of(&response);
    let mut read = 0;
    while read < 20 {
        read += response.chunk().await.unwrap().unwrap().len();
    }
    let left = Instant::now();
    drop(response);
    let records = records(&server, 1).await;
    let record = &records[&id];
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "recorded {:?} after the client left",
        left.elapsed()
    );
    assert_eq!(record["outcome"], "cancelled", "{record}");
    let billed = record["billed_ms"].as_u64().unwrap();
    assert!((150..3000).contains(&billed), "{record}");
    // The guest is gone: no instance of it runs any more.
    let stopped = Server::eventually(Duration::from_secs(3), || async {
        (server.metric("gust_invocations_in_flight").await == 0).then_some(())
    })
    .await;
    assert!(stopped.is_some(), "an instance still runs for nobody");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_streams_into_the_guest_as_it_arrives() {
    let server = Server::start();
    server.deploy("tb", &guests().testbed, &[]);
    let (parts, receiver) = tokio::sync::mpsc::channel::<&'static str>(1);
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let part = receiver.recv().await?;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(part.as_bytes())),
            receiver,
        ))
    });
    let sending = server
        .http
        .post(format!("{}/tb/pipe", server.url))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    parts.send("first part; ").await.unwrap();
    let mut response = sending.await.unwrap();
    assert_eq!(response.status(), 200);
    // Each part comes back before the next one is sent: the guest read it
    // while the request was still arriving.
    for (i, part) in ["first part; ", "second part; ", "third part"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            parts.send(part).await.unwrap();
        }
        let mut echoed = Vec::new();
        while echoed.len() < part.len() {
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                .await
                .expect("the part comes back while the body is still open")
                .unwrap()
                .unwrap();
            echoed.extend_from_slice(&chunk);
        }
        assert_eq!(String::from_utf8(echoed).unwrap(), *part);
    }
    drop(parts);
    assert_eq!(
        response.chunk().await.unwrap(),
        None,
        "it ends with the body"
    );
}

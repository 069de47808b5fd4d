//! Traces: a real `gust up` exporting spans over OTLP/HTTP to a receiver
//! inside the test, on loopback: protobuf (the default, Gust's own
//! encoder) and JSON (through `opentelemetry-otlp`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::harness::{Server, guests};

/// One exported span, as the receiver read it.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, serde_json::Value>,
    service: String,
}

impl Span {
    /// An attribute as text, whatever its OTLP type.
    fn attr(&self, key: &str) -> String {
        let Some(value) = self.attributes.get(key) else {
            return String::new();
        };
        for kind in ["stringValue", "intValue", "boolValue", "doubleValue"] {
            if let Some(v) = value.get(kind) {
                return match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
            }
        }
        value.to_string()
    }
}

type Spans = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver for `/v1/traces`, in protobuf or JSON (by the
/// request's content type); returns its base URL.
async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let protobuf = headers
                        .get("content-type")
                        .is_some_and(|t| t.as_bytes() == b"application/x-protobuf");
                    let got = if protobuf {
                        use prost::Message as _;
                        let request = ExportTraceServiceRequest::decode(body).unwrap_or_else(|e| {
                            panic!("an export is not an OTLP protobuf request: {e}")
                        });
                        parse_protobuf(&request)
                    } else {
                        let json: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        parse(&json)
                    };
                    kept.lock().unwrap().extend(got);
                    ([("content-type", "application/json")], "{}")
                }
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, spans)
}

fn parse(json: &serde_json::Value) -> Vec<Span> {
    let mut out = Vec::new();
    let list = |v: &serde_json::Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    for resource in list(json, "resourceSpans") {
        let service = list(&resource["resource"], "attributes")
            .iter()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_string))
            .unwrap_or_default();
        for scope in list(&resource, "scopeSpans") {
            for span in list(&scope, "spans") {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_lowercase();
                out.push(Span {
                    trace: text("traceId"),
                    id: text("spanId"),
                    parent: text("parentSpanId"),
                    name: span["name"].as_str().unwrap_or_default().to_string(),
                    attributes: list(&span, "attributes")
                        .iter()
                        .filter_map(|a| Some((a["key"].as_str()?.to_string(), a["value"].clone())))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

/// The spans of a protobuf export, as [`parse`] reads JSON ones.
fn parse_protobuf(request: &ExportTraceServiceRequest) -> Vec<Span> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let json = |value: &Option<Value>| match value {
        Some(Value::StringValue(s)) => serde_json::json!({ "stringValue": s }),
        Some(Value::IntValue(i)) => serde_json::json!({ "intValue": i.to_string() }),
        Some(Value::BoolValue(b)) => serde_json::json!({ "boolValue": b }),
        Some(Value::DoubleValue(d)) => serde_json::json!({ "doubleValue": d }),
        other => serde_json::json!({ "other": format!("{other:?}") }),
    };
    let mut out = Vec::new();
    for resource in &request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                out.push(Span {
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            let value = a.value.as_ref().and_then(|v| v.value.clone());
                            (a.key.clone(), json(&value))
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

/// `gust up` exporting to `url` in protobuf, the default.
async fn start_traced(url: &str, extra: &[&str]) -> Server {
    start_traced_as(url, extra, "http/protobuf")
}

/// `gust up` exporting to `url` in `protocol` (`http/protobuf`, `http/json`).
fn start_traced_as(url: &str, extra: &[&str], protocol: &str) -> Server {
    let mut args = vec!["--otlp-endpoint", url];
    args.extend_from_slice(extra);
    Server::start_with_env(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
}

/// Waits until a span of each of `names` has arrived, and returns all so far.
async fn wait_for(spans: &Spans, names: &[&str]) -> Vec<Span> {
    let found = Server::eventually(Duration::from_secs(30), || async {
        let all = spans.lock().unwrap().clone();
        names
            .iter()
            .all(|name| all.iter().any(|s| s.name == *name))
            .then_some(all)
    })
    .await;
    found.unwrap_or_else(|| {
        let got: Vec<String> = spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        panic!("not every span of {names:?} was exported; got {got:?}")
    })
}

/// The one outbound request span (named by its method) under `parent`.
fn request<'a>(spans: &'a [Span], method: &str, parent: &Span) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == method && s.parent == parent.id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{method} requests under {parent:#?}: {found:#?}"
    );
    found[0]
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named `{name}`: {found:#?}");
    found[0]
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_calls_a_function_which_queues_an_event_is_one_trace() {
    let (url, spans) = receiver().await;
    let server = start_traced(&url, &[]).await;
    let testbed = guests().testbed.to_str().unwrap();
    for name in ["front", "mid", "back"] {
        server.gust_json(&["deploy", name, testbed, "--public"]);
    }
    // front calls mid, which queues an event for back; back prints the
    // headers it was given.
    let response = server
        .http
        .get(format!(
            "{}/front/call?url=http://gust.internal/mid/enqueue?url=http://gust.internal/back/headers",
            server.url
        ))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let front_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.text().await.unwrap();
    assert_eq!(body, "status 200: status 202", "{body}");

    let all = wait_for(
        &spans,
        &[
            "invoke front",
            "invoke mid",
            "accept event back",
            "invoke back",
            "queue wait",
        ],
    )
    .await;
    let all: Vec<Span> = all
        .into_iter()
        .filter(|s| s.trace == CLIENT_TRACE)
        .collect();
    assert!(all.iter().all(|s| s.service == "gust"), "{all:#?}");

    // The client's request: its span continues the client's trace.
    let front = one(&all, "invoke front");
    assert_eq!(front.parent, CLIENT_SPAN);
    for (key, value) in [
        ("gust.tenant", "default"),
        ("gust.function", "front"),
        ("gust.version", "1"),
        ("gust.alias", "live"),
        ("gust.attempt", "1"),
        ("gust.trigger", "http"),
        ("gust.outcome", "completed"),
        ("http.response.status_code", "200"),
        ("gust.invocation_id", front_id.as_str()),
    ] {
        assert_eq!(front.attr(key), value, "{key} of {front:#?}");
    }
    assert!(
        ["true", "false"].contains(&front.attr("gust.cold_start").as_str()),
        "{front:#?}"
    );
    assert!(
        front.attr("gust.wall_us").parse::<u64>().unwrap() > 0,
        "{front:#?}"
    );
    assert!(
        front.attr("gust.cpu_us").parse::<u64>().is_ok(),
        "{front:#?}"
    );
    // Every attempt has its admission as a child.
    for attempt in ["invoke front", "invoke mid", "invoke back"] {
        let attempt = one(&all, attempt);
        let steps = all
            .iter()
            .filter(|s| s.name == "admission" && s.parent == attempt.id);
        assert_eq!(steps.count(), 1, "{attempt:#?}");
    }

    // Its call to mid: an outbound span, then mid's attempt under it.
    let call = request(&all, "GET", front);
    assert_eq!(call.attr("server.address"), "gust.internal");
    assert_eq!(call.attr("gust.internal"), "true");
    assert_eq!(call.attr("http.response.status_code"), "200");
    let mid = one(&all, "invoke mid");
    assert_eq!(mid.parent, call.id);
    assert_eq!(mid.attr("gust.trigger"), "call");

    // mid queues an event: accepted under its outbound span, delivered
    // under the acceptance, with its wait in the queue.
    let send = request(&all, "POST", mid);
    assert_eq!(send.attr("http.response.status_code"), "202");
    let accept = one(&all, "accept event back");
    assert_eq!(accept.parent, send.id);
    let back = one(&all, "invoke back");
    assert_eq!(back.parent, accept.id);
    assert_eq!(back.attr("gust.trigger"), "event");
    assert_eq!(back.attr("gust.attempt"), "1");
    assert_eq!(
        back.attr("gust.invocation_id"),
        accept.attr("gust.invocation_id")
    );
    assert_eq!(one(&all, "queue wait").parent, back.id);

    // What back's guest saw: its own span as `traceparent`, the event's
    // origin as the CloudEvents attribute.
    let logs = Server::eventually(Duration::from_secs(10), || async {
        let entries = server.gust_json(&["logs", "back"]);
        let stdout = entries.as_array()?.first()?["stdout"].as_str()?.to_string();
        Some(stdout)
    })
    .await
    .expect("back's headers in its logs");
    assert!(
        logs.contains(&format!("traceparent: 00-{CLIENT_TRACE}-{}-01", back.id)),
        "{logs}"
    );
    assert!(
        logs.contains(&format!(
            "ce-traceparent: 00-{CLIENT_TRACE}-{}-01",
            accept.id
        )),
        "{logs}"
    );
}

/// A server on `127.0.0.2` that answers 200 to everything and keeps each
/// request's head.
async fn recording_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (port, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_client_context_starts_a_new_trace_and_outside_hosts_see_it_only_when_asked() {
    let (url, spans) = receiver().await;
    // The one test on JSON, through `opentelemetry-otlp`'s exporter.
    let server = start_traced_as(&url, &["--trace-client-context", "ignore"], "http/json");
    let testbed = guests().testbed.as_path();
    let (port, heads) = recording_server().await;
    let fetch = format!("/out/fetch?url=http://127.0.0.2:{port}/hook");
    let traced = |heads: &Arc<Mutex<Vec<String>>>| {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1, "{heads:?}");
        heads[0]
            .lines()
            .find_map(|l| l.strip_prefix("traceparent: ").map(str::to_string))
    };

    // Without the opt-in, nothing of the trace leaves for an outside host.
    server.deploy(
        "out",
        testbed,
        &["--public", "--allow-internal-host", "127.0.0.2"],
    );
    let response = server
        .http
        .get(format!("{}{fetch}", server.url))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "status 200");
    assert_eq!(traced(&heads), None, "a trace id left without the opt-in");
    // The client's context was not believed: a trace of its own.
    let all = wait_for(&spans, &["invoke out", "GET"]).await;
    let first = one(&all, "invoke out").clone();
    assert_ne!(first.trace, CLIENT_TRACE);
    assert_eq!(first.parent, "");
    let outbound = request(&all, "GET", &first).clone();
    assert_eq!(outbound.attr("server.address"), "127.0.0.2");
    assert_eq!(outbound.parent, first.id);
    assert_eq!(outbound.attr("gust.internal"), "false");

    // With `--trace-outbound`, the request carries its outbound span.
    heads.lock().unwrap().clear();
    spans.lock().unwrap().clear();
    server.deploy(
        "out",
        testbed,
        &[
            "--public",
            "--allow-internal-host",
            "127.0.0.2",
            "--trace-outbound",
        ],
    );
    let (status, body) = server.get(&fetch).await;
    assert_eq!((status, body.as_str()), (200, "status 200"));
    let sent = traced(&heads).expect("a traceparent with the opt-in");
    let all = wait_for(&spans, &["invoke out", "GET"]).await;
    let outbound = one(&all, "GET");
    assert_eq!(
        sent.trim(),
        format!("00-{}-{}-01", outbound.trace, outbound.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_by_calls_count_as_calls_so_a_chain_of_them_ends() {
    let server = Server::start();
    let testbed = guests().testbed.to_str().unwrap();
    server.gust_json(&["deploy", "chain", testbed, "--public"]);
    // Twelve nested hops, each an event the previous one queues: the
    // ninth call is past the depth limit, so eight events run.
    let mut url = "http://gust.internal/chain/".to_string();
    for _ in 0..12 {
        url = format!("http://gust.internal/chain/enqueue?url={url}");
    }
    let path = url.trim_start_matches("http://gust.internal");
    let (status, body) = server.get(path).await;
    assert_eq!((status, body.as_str()), (200, "status 202"));
    let count = || {
        let out = server.gust(&["usage", "--export", "jsonl", "--from", "0"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["function"] == "chain" && r["trigger"] == "event")
            .count()
    };
    let eight = Server::eventually(Duration::from_secs(20), || async {
        (count() >= 8).then_some(())
    })
    .await;
    assert!(eight.is_some(), "{} events ran", count());
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(), 8);
}

/// A traced server with `flaky`, whose events get three attempts 100 ms
/// apart, and the spans it exports.
async fn start_with_flaky() -> (Server, Spans) {
    let (url, spans) = receiver().await;
    let server = start_traced(&url, &[]).await;
    server.deploy(
        "flaky",
        guests().testbed.as_path(),
        &["--max-attempts", "3", "--backoff-ms", "100"],
    );
    (server, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_through_the_api_joins_its_callers_trace_on_every_attempt() {
    let (server, spans) = start_with_flaky().await;
    // Traps on every attempt: three attempts of one event, then its letter.
    let submit = |path: &str, traceparent: Option<String>| {
        let mut request = server
            .http
            .post(format!(
                "{}/v1/functions/flaky/invocations?path={path}",
                server.api
            ))
            .body("{}");
        if let Some(traceparent) = traceparent {
            request = request
                .header("traceparent", traceparent)
                .header("tracestate", "vendor=1");
        }
        request.send()
    };
    let response = submit("/trap", Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_for_state(&id, "dead_lettered").await;
    let attempts = Server::eventually(Duration::from_secs(30), || async {
        let all = spans.lock().unwrap().clone();
        let attempts: Vec<Span> = all
            .into_iter()
            .filter(|s| s.name == "invoke flaky")
            .collect();
        (attempts.len() >= 3).then_some(attempts)
    })
    .await
    .expect("three attempt spans");
    for attempt in &attempts {
        assert_eq!(attempt.trace, CLIENT_TRACE, "{attempt:#?}");
        assert_eq!(attempt.parent, CLIENT_SPAN, "{attempt:#?}");
        assert_eq!(attempt.attr("gust.invocation_id"), id);
    }
    let mut numbers: Vec<String> = attempts.iter().map(|a| a.attr("gust.attempt")).collect();
    numbers.sort();
    assert_eq!(numbers, ["1", "2", "3"]);

    // A malformed context is not kept: the event starts a trace of its
    // own, at the span it was accepted in.
    spans.lock().unwrap().clear();
    let response = submit("/", Some("00-not-a-trace-01".to_string()))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let all = wait_for(&spans, &["accept event flaky", "invoke flaky"]).await;
    let own = one(&all, "invoke flaky");
    let accept = one(&all, "accept event flaky");
    assert_ne!(own.trace, CLIENT_TRACE);
    assert_eq!(accept.parent, "");
    assert_eq!((&own.trace, &own.parent), (&accept.trace, &accept.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_is_one_trace_through_its_retries_each_with_its_queue_wait() {
    let (server, spans) = start_with_flaky().await;
    // Every tick traps: three attempts each, then a dead letter.
    server.gust_json(&[
        "schedule",
        "add",
        "flaky",
        "@every 1s",
        "--id",
        "tick",
        "--path",
        "/trap",
    ]);
    // The first tick whose three attempts were all exported.
    let (accept, attempts) = Server::eventually(Duration::from_secs(30), || async {
        let all = spans.lock().unwrap().clone();
        let mut by_id: HashMap<String, Vec<Span>> = HashMap::new();
        for span in all.iter().filter(|s| s.name == "invoke flaky") {
            by_id
                .entry(span.attr("gust.invocation_id"))
                .or_default()
                .push(span.clone());
        }
        let (id, attempts) = by_id.into_iter().find(|(_, a)| a.len() == 3)?;
        let accept = all
            .iter()
            .find(|s| s.name == "accept event flaky" && s.attr("gust.invocation_id") == id)?
            .clone();
        Some((accept, attempts))
    })
    .await
    .expect("a tick's three attempts, and the span it was accepted in");
    server.gust_json(&["schedule", "rm", "flaky", "tick"]);

    assert_eq!(accept.parent, "", "a tick starts its own trace");
    assert_eq!(
        accept.attr("cloudevents.event_type"),
        "dev.gust.schedule.tick"
    );
    let all = spans.lock().unwrap().clone();
    let mut numbers = Vec::new();
    for attempt in &attempts {
        assert_eq!(attempt.trace, accept.trace, "{attempt:#?}");
        assert_eq!(attempt.parent, accept.id, "{attempt:#?}");
        numbers.push(attempt.attr("gust.attempt"));
        // Each attempt, retries included, shows its time in the queue.
        let waits = all
            .iter()
            .filter(|s| s.name == "queue wait" && s.parent == attempt.id)
            .count();
        assert_eq!(waits, 1, "attempt {}", attempt.attr("gust.attempt"));
    }
    numbers.sort();
    assert_eq!(numbers, ["1", "2", "3"]);
}

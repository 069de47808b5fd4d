//! The guest the integration tests drive. Each path exercises one limit or
//! failure mode of the platform; it is not an example to copy.
//!
//! | path | does |
//! |---|---|
//! | `/` | answers `testbed ok` |
//! | `/trap` | executes `unreachable` |
//! | `/cookie?value=V` | answers with `Set-Cookie: V` (`!` in V stands for `;`), `Service-Worker-Allowed: /` and `Clear-Site-Data` |
//! | `/spin` | loops forever without yielding |
//! | `/partial?then=T` | sends its head and `the first part, ` (no length), then traps (`T=trap`), loops past its timeout (`spin`) or grows past its memory limit (`grow`) |
//! | `/grow?mb=N` | allocates and touches N MiB, answers `grew N` |
//! | `/sleep?ms=N` | sleeps N ms, answers `slept N` |
//! | `/busy?ms=N` | computes for N ms of wall time, asking the host's clock on every turn (no `ms`: forever, a loop through host calls) |
//! | `/print` | writes a line to stdout and one to stderr |
//! | `/headers` | writes every request header to stdout, `name: value` per line |
//! | `/flood?kb=N` | writes N KiB to stdout |
//! | `/body` | reads the whole body, answers its size |
//! | `/fetch?url=U` | sends GET U through outgoing `wasi:http`, answers the status or the error |
//! | `/call?url=U` | the same, answering `status N: <body>` (`http://gust.internal/<fn>/…` calls a function) |
//! | `/chain?name=V&next=b,c&sleep_ms=N&fail=X` | answers variable V's value, then (after N ms) what `/chain` of the next function answers, space-separated; 500 where V's value is X |
//! | `/lines?n=N&tag=T` | prints N short lines, the last one ending in T |
//! | `/status?code=N` | answers status N, printing nothing |
//! | `/enqueue?url=U` | POSTs a small body to U as an event (`Gust-Invocation-Type: Event`), answers `status N` |
//! | `/fanout?url=U&n=N` | sends N GETs to U at once (all before awaiting any), answers `ok=A limit=B other=C` (B: `connection-limit-reached`) |
//! | `/follow?url=U&hops=N` | GETs U and follows `Location` up to N times, one line per hop: `URL -> status S` or `URL -> error E` |
//! | `/recurse?depth=N` | recurses N calls deep (past the stack: a trap) |
//! | `/escape` | prints terminal escape sequences to stdout |
//! | `/state` | bumps a global counter and answers it: always `1` in a fresh instance |
//! | `/kv/get?bucket=B&key=K` | the value, or 404 `missing` |
//! | `/kv/set?bucket=B&key=K` | stores the request body |
//! | `/kv/delete?bucket=B&key=K` | deletes the key |
//! | `/kv/exists?bucket=B&key=K` | `true` or `false` |
//! | `/kv/incr?bucket=B&key=K&by=N` | the counter after adding N |
//! | `/kv/list?bucket=B` | every key, one per line, paging with the cursor |
//! | `/kv/dump?bucket=B` | every `key<TAB>value`, one per line (list-keys, then get-many) |
//! | `/kv/batch?bucket=B&keys=a,b,c` | set-many (value = key upper-cased), get-many, delete-many of the first |
//! | `/env?name=N` | `env=<$N> config=<wasi:config's N> count=<variables in wasi:config>` (`-`: none) |
//! | `/collect?fail_first=N&fail_always=1&fail_unless=K` | an event recorder for sources: appends `attempt<TAB>ce-id<TAB>ce-type<TAB>ce-subject<TAB>ce-source<TAB>body` (body's tabs and newlines as spaces) to bucket `seen` (key = a counter); answers 503 to attempts up to N, or to every attempt, or (`fail_unless=K`) while key K is not in bucket `flags` |
//! | `/sse?n=N&every_ms=M&pause_after=K&pause_ms=P` | a `text/event-stream` of N events `data: <i>` (no length), one every M ms, with a pause of P ms after the Kth; stops when a write fails |
//! | `/pipe` | sends each part of the request body back as it arrives (no length), then ends |
//! | `/record?fail_every=N` | a change-event recorder: appends `subject revision attempt operation` to bucket `seen` (key = a counter); fails the first attempt of every Nth revision |
//!
//! WebSocket connections (deployed with `--websocket`; their invocations
//! carry `gust-websocket: connect|message|close`):
//!
//! | path | does |
//! |---|---|
//! | `/ws/echo?refuse=1` | connect: 403 with `refuse`, else 200 (and the first `sec-websocket-protocol` asked for); message: answers `echo: <message>`, or for `bye` closes its own connection with 4000 through `gust.internal/_ws/<id>`; close: stores the close code in bucket `closes` (key = connection id) |
//! | `/ws/room` | a chat room: connect adds the connection to bucket `room`, a message is sent to every connection there through `gust.internal/_ws/<id>` (answering nothing), except `kick <id>`, which closes that connection with 4001 (answering the status of the close); close removes it |
//!
//! Any `wasi:keyvalue` error is answered as 500 with the error's debug text.

use std::io::Write as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Testbed;

impl wasip2::exports::http::incoming_handler::Guest for Testbed {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_query.split_once('?').unwrap_or((&path_query, ""));
        let param = |name: &str| -> Option<String> {
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        };
        let number = |name: &str| param(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .first()
                .map(|v| String::from_utf8_lossy(v).to_string())
        };
        if let Some(event) = header("gust-websocket") {
            let connection = header("gust-websocket-connection").unwrap_or_default();
            return websocket(request, response_out, path, query, &event, &connection);
        }
        let text = match path {
            "/" => "testbed ok".to_string(),
            "/trap" => core::arch::wasm32::unreachable(),
            "/cookie" => {
                // `value` is a whole Set-Cookie value, `;` written as `!`.
                let cookie = param("value").unwrap_or_default().replace('!', ";");
                let headers = Fields::new();
                let _ = headers.append("set-cookie", cookie.as_bytes());
                let _ = headers.append("service-worker-allowed", b"/");
                let _ = headers.append("clear-site-data", b"\"cookies\"");
                return respond_with(response_out, headers, 200, "cookie set");
            }
            "/partial" => return partial(response_out, &param("then").unwrap_or_default()),
            "/pipe" => return pipe(request, response_out),
            "/sse" => {
                let pause = (number("pause_after"), number("pause_ms"));
                return sse(response_out, number("n"), number("every_ms"), pause);
            }
            "/spin" => spin(),
            "/grow" => {
                let mb = number("mb");
                let mut chunks = Vec::new();
                for _ in 0..mb {
                    let chunk = vec![1u8; 1024 * 1024];
                    chunks.push(chunk);
                }
                format!("grew {}", chunks.len())
            }
            "/busy" => {
                let limit = param("ms").and_then(|v| v.parse::<u64>().ok());
                let start = wasip2::clocks::monotonic_clock::now();
                let mut x = 1u64;
                let mut turns = 0u64;
                loop {
                    for _ in 0..1000 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                    }
                    turns += 1;
                    let elapsed_ms = (wasip2::clocks::monotonic_clock::now() - start) / 1_000_000;
                    if limit.is_some_and(|ms| elapsed_ms >= ms) {
                        break;
                    }
                }
                format!("busy {} ms, {turns} turns, {}", limit.unwrap_or(0), x % 10)
            }
            "/chain" => {
                let name = param("name").unwrap_or_default();
                let text = chain(
                    &name,
                    &param("next").unwrap_or_default(),
                    number("sleep_ms"),
                );
                // `fail=V`: a function whose variable is V answers 500.
                if param("fail").is_some_and(|v| std::env::var(&name).is_ok_and(|own| own == v)) {
                    return respond(response_out, 500, &text);
                }
                text
            }
            "/sleep" => {
                let ms = number("ms");
                std::thread::sleep(std::time::Duration::from_millis(ms));
                format!("slept {ms}")
            }
            "/headers" => {
                for (name, value) in request.headers().entries() {
                    println!("{name}: {}", String::from_utf8_lossy(&value));
                }
                "headers printed".to_string()
            }
            "/print" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                "printed".to_string()
            }
            "/flood" => {
                let line = [b'x'; 1023];
                let mut out = std::io::stdout();
                for _ in 0..number("kb") {
                    let _ = out.write_all(&line);
                    let _ = out.write_all(b"\n");
                }
                "flooded".to_string()
            }
            "/body" => {
                let mut total = 0usize;
                if let Ok(body) = request.consume() {
                    if let Ok(mut stream) = body.stream() {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match std::io::Read::read(&mut stream, &mut buf) {
                                Ok(0) => break,
                                Ok(n) => total += n,
                                Err(e) => {
                                    return respond(response_out, 400, &format!("read error: {e}"));
                                }
                            }
                        }
                    }
                }
                format!("body {total}")
            }
            "/fetch" => fetch(&param("url").unwrap_or_default(), false),
            "/call" => fetch(&param("url").unwrap_or_default(), true),
            "/enqueue" => enqueue(&param("url").unwrap_or_default()),
            "/lines" => {
                let n = number("n");
                let tag = param("tag").unwrap_or_default();
                let mut out = std::io::stdout().lock();
                for i in 1..=n {
                    let _ = writeln!(out, "line {i} of {n} {}", if i == n { &tag } else { "" });
                }
                format!("{n} lines")
            }
            "/status" => {
                let code = u16::try_from(number("code")).unwrap_or(500);
                return respond(response_out, code, "as asked");
            }
            "/fanout" => fanout(&param("url").unwrap_or_default(), number("n")),
            "/follow" => follow(&param("url").unwrap_or_default(), number("hops")),
            "/recurse" => format!("depth {}", recurse(number("depth"))),
            "/escape" => {
                println!("\x1b[2J\x1b]0;owned\x07cleared");
                "escaped".to_string()
            }
            "/state" => {
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                format!("{n}")
            }
            p if p.starts_with("/kv/") => {
                let bucket = param("bucket").unwrap_or_default();
                let key = param("key").unwrap_or_default();
                let body = read_body(&request);
                match kv(
                    &p[4..],
                    &bucket,
                    &key,
                    number("by"),
                    &param("keys").unwrap_or_default(),
                    body,
                ) {
                    Ok(Some(text)) => text,
                    Ok(None) => return respond(response_out, 404, "missing"),
                    Err(e) => return respond(response_out, 500, &format!("kv error: {e:?}")),
                }
            }
            "/record" => {
                let header = |name: &str| header(name).unwrap_or_default();
                let subject = header("ce-subject");
                let attempt: u64 = header("gust-attempt").parse().unwrap_or(0);
                let body = String::from_utf8_lossy(&read_body(&request)).to_string();
                let revision = json_number(&body, "revision");
                let operation = json_text(&body, "operation");
                let fail_every = number("fail_every");
                if fail_every > 0 && revision.is_multiple_of(fail_every) && attempt == 1 {
                    return respond(response_out, 503, "failing a first attempt on purpose");
                }
                match record(&format!("{subject} {revision} {attempt} {operation}")) {
                    Ok(()) => "recorded".to_string(),
                    Err(e) => return respond(response_out, 500, &format!("kv error: {e:?}")),
                }
            }
            "/collect" => {
                let header = |name: &str| header(name).unwrap_or_default();
                let attempt: u64 = header("gust-attempt").parse().unwrap_or(0);
                if attempt <= number("fail_first") || number("fail_always") > 0 {
                    return respond(response_out, 503, "failing on purpose");
                }
                if let Some(flag) = param("fail_unless") {
                    match store::open("flags").and_then(|flags| flags.exists(&flag)) {
                        Ok(true) => {}
                        Ok(false) => return respond(response_out, 503, "not fixed yet"),
                        Err(e) => return respond(response_out, 500, &format!("kv error: {e:?}")),
                    }
                }
                let body = String::from_utf8_lossy(&read_body(&request)).replace(['\t', '\n'], " ");
                let line = [
                    attempt.to_string(),
                    header("ce-id"),
                    header("ce-type"),
                    header("ce-subject"),
                    header("ce-source"),
                    body,
                ]
                .join("\t");
                match record(&line) {
                    Ok(()) => "collected".to_string(),
                    Err(e) => return respond(response_out, 500, &format!("kv error: {e:?}")),
                }
            }
            "/env" => {
                let name = param("name").unwrap_or_default();
                let from_env = std::env::var(&name).unwrap_or_else(|_| "-".into());
                let from_config = match config::wasi::config::store::get(&name) {
                    Ok(Some(value)) => value,
                    Ok(None) => "-".into(),
                    Err(e) => format!("error {e:?}"),
                };
                let all = config::wasi::config::store::get_all().map_or(0, |all| all.len());
                format!("env={from_env} config={from_config} count={all}")
            }
            _ => return respond(response_out, 404, "testbed: no such path"),
        };
        respond(response_out, 200, &text)
    }
}

mod keyvalue {
    wit_bindgen::generate!({
        path: "../../crates/runtime/wit",
        world: "gust:host/keyvalue",
        generate_all,
    });
}

mod config {
    wit_bindgen::generate!({
        path: "../../crates/runtime/wit",
        world: "gust:host/config",
        generate_all,
    });
}

use keyvalue::wasi::keyvalue::{atomics, batch, store};

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(body) = request.consume()
        && let Ok(mut stream) = body.stream()
    {
        let _ = std::io::Read::read_to_end(&mut stream, &mut out);
    }
    out
}

fn kv(
    op: &str,
    bucket: &str,
    key: &str,
    by: u64,
    keys: &str,
    body: Vec<u8>,
) -> Result<Option<String>, store::Error> {
    let b = store::open(bucket)?;
    Ok(Some(match op {
        "get" => match b.get(key)? {
            Some(v) => String::from_utf8_lossy(&v).to_string(),
            None => return Ok(None),
        },
        "set" => {
            b.set(key, &body)?;
            "set".to_string()
        }
        "delete" => {
            b.delete(key)?;
            "deleted".to_string()
        }
        "exists" => b.exists(key)?.to_string(),
        "incr" => atomics::increment(&b, key, by)?.to_string(),
        "list" => {
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                let page = b.list_keys(cursor)?;
                all.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            all.join("\n")
        }
        "dump" => {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = b.list_keys(cursor)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let mut lines = Vec::new();
            for chunk in keys.chunks(1000) {
                for (k, v) in batch::get_many(&b, chunk)?.into_iter().flatten() {
                    lines.push(format!("{k}\t{}", String::from_utf8_lossy(&v)));
                }
            }
            lines.join("\n")
        }
        "batch" => {
            let names: Vec<String> = keys.split(',').map(str::to_string).collect();
            let pairs: Vec<(String, Vec<u8>)> = names
                .iter()
                .map(|k| (k.clone(), k.to_uppercase().into_bytes()))
                .collect();
            batch::set_many(&b, &pairs)?;
            batch::delete_many(&b, &names[..1])?;
            let got = batch::get_many(&b, &names)?;
            got.iter()
                .map(|entry| match entry {
                    Some((k, v)) => format!("{k}={}", String::from_utf8_lossy(v)),
                    None => "-".to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        }
        _ => return Ok(None),
    }))
}

fn json_number(text: &str, field: &str) -> u64 {
    let needle = format!("\"{field}\":");
    text.find(&needle)
        .map(|i| &text[i + needle.len()..])
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

fn json_text(text: &str, field: &str) -> String {
    let needle = format!("\"{field}\":\"");
    text.find(&needle)
        .map(|i| &text[i + needle.len()..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

fn record(line: &str) -> Result<(), store::Error> {
    let seen = store::open("seen")?;
    let n = atomics::increment(&seen, "n", 1)?;
    seen.set(&format!("{n:06}"), line.as_bytes())
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Each frame keeps a buffer alive across the call, so the depth is real.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    let frame = std::hint::black_box([depth as u8; 256]);
    1 + recurse(depth - 1) + u64::from(std::hint::black_box(frame)[0] & 0)
}

#[allow(clippy::empty_loop)]
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// A GET of `url` (`http://` when it names no scheme).
fn get_request(url: &str) -> OutgoingRequest {
    request_with(url, Fields::new())
}

/// A request for `url` with `headers` (a request's own are immutable once made).
fn request_with(url: &str, headers: Fields) -> OutgoingRequest {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(headers);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    request
}

/// POSTs a small body to `url` as an event (`Gust-Invocation-Type: Event`)
/// and says what came back.
fn enqueue(url: &str) -> String {
    let headers = Fields::new();
    let _ = headers.append("gust-invocation-type", b"event");
    let request = request_with(url, headers);
    let _ = request.set_method(&wasip2::http::types::Method::Post);
    let body = request.body().expect("body is taken once");
    match outgoing_handler::handle(request, None) {
        Ok(future) => {
            if let Ok(stream) = body.write() {
                let _ = stream.blocking_write_and_flush(b"queued by testbed");
            }
            let _ = OutgoingBody::finish(body, None);
            let pollable = future.subscribe();
            pollable.block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("status {}", response.status()),
                Some(Ok(Err(e))) => format!("error {e:?}"),
                _ => "error no response".to_string(),
            }
        }
        Err(e) => format!("error {e:?}"),
    }
}

/// Sends `n` GETs of `url` before awaiting any answer, so that all are
/// open at once; counts how they ended.
fn fanout(url: &str, n: u64) -> String {
    use wasip2::http::types::ErrorCode;
    let (mut ok, mut limit, mut other) = (0, 0, 0);
    let mut pending = Vec::new();
    for _ in 0..n {
        match outgoing_handler::handle(get_request(url), None) {
            Ok(future) => pending.push(future),
            Err(ErrorCode::ConnectionLimitReached) => limit += 1,
            Err(_) => other += 1,
        }
    }
    for future in &pending {
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(_))) => ok += 1,
            Some(Ok(Err(ErrorCode::ConnectionLimitReached))) => limit += 1,
            _ => other += 1,
        }
    }
    format!("ok={ok} limit={limit} other={other}")
}

/// GETs `url`, then where each `Location` points, `hops` times at most:
/// redirects are not followed by the host, each hop is a request of its own.
fn follow(url: &str, hops: u64) -> String {
    let mut lines = Vec::new();
    let mut next = url.to_string();
    for _ in 0..=hops {
        let outcome = match outgoing_handler::handle(get_request(&next), None) {
            Ok(future) => {
                future.subscribe().block();
                future.get()
            }
            Err(e) => Some(Ok(Err(e))),
        };
        match outcome {
            Some(Ok(Ok(response))) => {
                lines.push(format!("{next} -> status {}", response.status()));
                let location = response.headers().get("location");
                match location.first() {
                    Some(to) => next = String::from_utf8_lossy(to).into_owned(),
                    None => break,
                }
            }
            Some(Ok(Err(e))) => {
                lines.push(format!("{next} -> error {e:?}"));
                break;
            }
            _ => {
                lines.push(format!("{next} -> error no response"));
                break;
            }
        }
    }
    lines.join("\n")
}

/// Variable `name`'s value here, then what the next function of `next`
/// (comma-separated) answers to the same, after `sleep_ms`.
fn chain(name: &str, next: &str, sleep_ms: u64) -> String {
    let own = std::env::var(name).unwrap_or_else(|_| "-".into());
    let Some((first, rest)) =
        (!next.is_empty()).then(|| next.split_once(',').unwrap_or((next, "")))
    else {
        return own;
    };
    std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
    let url =
        format!("http://gust.internal/{first}/chain?name={name}&next={rest}&sleep_ms={sleep_ms}");
    let answer = fetch(&url, true);
    match answer.strip_prefix("status 200: ") {
        Some(body) => format!("{own} {body}"),
        None => format!("{own} [{answer}]"),
    }
}

fn fetch(url: &str, with_body: bool) -> String {
    let request = get_request(url);
    match outgoing_handler::handle(request, None) {
        Ok(future) => {
            let pollable = future.subscribe();
            pollable.block();
            match future.get() {
                Some(Ok(Ok(response))) if with_body => {
                    let status = response.status();
                    let mut text = Vec::new();
                    if let Ok(body) = response.consume()
                        && let Ok(mut stream) = body.stream()
                    {
                        let _ = std::io::Read::read_to_end(&mut stream, &mut text);
                    }
                    format!("status {status}: {}", String::from_utf8_lossy(&text))
                }
                Some(Ok(Ok(response))) => format!("status {}", response.status()),
                Some(Ok(Err(e))) => format!("error {e:?}"),
                _ => "error no response".to_string(),
            }
        }
        Err(e) => format!("error {e:?}"),
    }
}

/// Answers 200 with a first piece of body, flushed, then fails as `then` says.
fn partial(out: ResponseOutparam, then: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream is taken once");
    let _ = stream.blocking_write_and_flush(b"the first part, ");
    match then {
        "spin" => spin(),
        "grow" => {
            let mut held = Vec::new();
            loop {
                held.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        _ => core::arch::wasm32::unreachable(),
    }
}

/// One event of a WebSocket connection (see the second table above).
fn websocket(
    request: IncomingRequest,
    out: ResponseOutparam,
    path: &str,
    query: &str,
    event: &str,
    connection: &str,
) {
    let command = |method: Method, suffix: &str, body: &[u8]| -> u16 {
        let url = format!("http://gust.internal/_ws/{connection}{suffix}");
        send(&url, method, body)
    };
    let ok = |result: Result<(), store::Error>| match result {
        Ok(()) => (200, String::new()),
        Err(e) => (500, format!("{e:?}")),
    };
    let (status, text) = match (path, event) {
        ("/ws/echo", "connect") if query.contains("refuse=1") => (403, "refused".to_string()),
        ("/ws/echo", "connect") => {
            let asked = request.headers().get("sec-websocket-protocol");
            let headers = Fields::new();
            if let Some(first) = asked.first() {
                let first = String::from_utf8_lossy(first);
                let chosen = first
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let _ = headers.append("sec-websocket-protocol", chosen.as_bytes());
            }
            return respond_with(out, headers, 200, "");
        }
        ("/ws/echo", "message") => {
            let body = read_body(&request);
            if body == b"bye" {
                let status = command(Method::Delete, "?code=4000&reason=bye", b"");
                (204, format!("{status}"))
            } else {
                (200, format!("echo: {}", String::from_utf8_lossy(&body)))
            }
        }
        ("/ws/room", "connect") => ok(store::open("room").and_then(|b| b.set(connection, b""))),
        ("/ws/room", "message") => {
            let body = read_body(&request);
            if let Some(member) = body.strip_prefix(b"kick ") {
                let member = String::from_utf8_lossy(member);
                let url = format!("http://gust.internal/_ws/{member}?code=4001&reason=kicked");
                return respond(out, 200, &format!("{}", send(&url, Method::Delete, b"")));
            }
            let members = kv("list", "room", "", 0, "", Vec::new());
            let mut failed = 0;
            for member in members.ok().flatten().unwrap_or_default().lines() {
                let url = format!("http://gust.internal/_ws/{member}");
                if send(&url, Method::Post, &body) != 202 {
                    failed += 1;
                }
            }
            (if failed == 0 { 204 } else { 500 }, String::new())
        }
        ("/ws/room", "close") => ok(store::open("room").and_then(|b| b.delete(connection))),
        (_, "close") => {
            let code = request
                .headers()
                .get("gust-websocket-close-code")
                .first()
                .map(|v| v.clone())
                .unwrap_or_default();
            ok(store::open("closes").and_then(|b| b.set(connection, &code)))
        }
        _ => (200, String::new()),
    };
    if status == 204 {
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(204);
        ResponseOutparam::set(out, Ok(response));
        return;
    }
    respond(out, status, &text)
}

/// Sends `body` to `url` with `method`; the status, or 0 when it failed.
fn send(url: &str, method: Method, body: &[u8]) -> u16 {
    let request = get_request(url);
    let _ = request.set_method(&method);
    let Ok(outgoing) = request.body() else {
        return 0;
    };
    if let Ok(stream) = outgoing.write() {
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return 0;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
    let Ok(pending) = outgoing_handler::handle(request, None) else {
        return 0;
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => response.status(),
        _ => 0,
    }
}

/// Echoes the request body part by part, as it arrives.
fn pipe(request: IncomingRequest, out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let sink = body.write().expect("stream is taken once");
    if let Ok(incoming) = request.consume()
        && let Ok(source) = incoming.stream()
    {
        while let Ok(part) = source.blocking_read(64 * 1024) {
            for chunk in part.chunks(4096) {
                if sink.blocking_write_and_flush(chunk).is_err() {
                    return;
                }
            }
        }
    }
    drop(sink);
    let _ = OutgoingBody::finish(body, None);
}

/// Server-sent events, written as they are due (see the table above).
fn sse(out: ResponseOutparam, n: u64, every_ms: u64, (pause_after, pause_ms): (u64, u64)) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/event-stream");
    let _ = headers.append("cache-control", b"no-cache");
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream is taken once");
    for i in 1..=n {
        let event = format!("data: {i}\n\n");
        if stream.blocking_write_and_flush(event.as_bytes()).is_err() {
            return;
        }
        let wait = if i == pause_after { pause_ms } else { every_ms };
        if i < n {
            std::thread::sleep(std::time::Duration::from_millis(wait));
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    respond_with(out, Fields::new(), status, text)
}

fn respond_with(out: ResponseOutparam, headers: Fields, status: u16, text: &str) {
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("stream is taken once");
    stream.write_all(text.as_bytes()).expect("write body");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish body");
}

wasip2::http::proxy::export!(Testbed);

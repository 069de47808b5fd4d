//! The guest the integration tests drive. Each path exercises one limit or
//! failure mode of the platform; it is not an example to copy.
//!
//! | path | does |
//! |---|---|
//! | `/` | answers `testbed ok` |
//! | `/trap` | executes `unreachable` |
//! | `/spin` | loops forever without yielding |
//! | `/grow?mb=N` | allocates and touches N MiB, answers `grew N` |
//! | `/sleep?ms=N` | sleeps N ms, answers `slept N` |
//! | `/print` | writes a line to stdout and one to stderr |
//! | `/headers` | writes every request header to stdout, `name: value` per line |
//! | `/flood?kb=N` | writes N KiB to stdout |
//! | `/body` | reads the whole body, answers its size |
//! | `/fetch?url=U` | sends GET U through outgoing `wasi:http`, answers the status or the error |

use std::io::Write as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
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
        let text = match path {
            "/" => "testbed ok".to_string(),
            "/trap" => core::arch::wasm32::unreachable(),
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
            "/fetch" => fetch(&param("url").unwrap_or_default()),
            _ => return respond(response_out, 404, "testbed: no such path"),
        };
        respond(response_out, 200, &text)
    }
}

#[allow(clippy::empty_loop)]
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn fetch(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match outgoing_handler::handle(request, None) {
        Ok(future) => {
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

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("stream is taken once");
    stream.write_all(text.as_bytes()).expect("write body");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish body");
}

wasip2::http::proxy::export!(Testbed);

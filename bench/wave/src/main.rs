//! `wave URL N`: N threads each open a connection at the same moment (a
//! barrier) and send one GET; prints `p50 p99 max errors` (ms), measured
//! from the barrier to the end of each response. Standard library only,
//! so that the client costs little next to the server it measures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<usize>().ok())) else {
        eprintln!("usage: wave http://HOST:PORT/PATH N");
        std::process::exit(2);
    };
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, host, request) = (barrier.clone(), host.to_string(), request.clone());
            std::thread::spawn(move || -> (bool, Duration) {
                barrier.wait();
                let started = Instant::now();
                let ok = (|| -> std::io::Result<bool> {
                    let mut stream = TcpStream::connect(&host)?;
                    stream.write_all(request.as_bytes())?;
                    let mut response = Vec::new();
                    stream.read_to_end(&mut response)?;
                    Ok(response.starts_with(b"HTTP/1.1 200"))
                })()
                .unwrap_or(false);
                (ok, started.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    for thread in threads {
        match thread.join() {
            Ok((ok, took)) => {
                errors += usize::from(!ok);
                latencies.push(took.as_secs_f64() * 1000.0);
            }
            Err(_) => errors += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!("{:.2} {:.2} {:.2} {errors}", at(0.5), at(0.99), at(1.0));
}

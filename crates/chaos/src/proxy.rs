//! A TCP proxy that can be cut: the network fault between a gust node and
//! NATS, or between two NATS servers. While cut, it drops every
//! connection it carries and refuses new ones (accepts and closes them at
//! once); healed, it forwards again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One listening port forwarding to one target.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: connections carried across it end.
    generation: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = TcpListener::from_std(listener)?;
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        // The task keeps receivers only: when the proxy is dropped, its
        // sender goes, and the task and its connections end.
        let mut dropped = generation.subscribe();
        let proxy = Proxy {
            port,
            cut: cut.clone(),
            generation,
        };
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                    // The proxy was dropped: stop listening.
                    Err(_) = dropped.changed() => return,
                };
                // Watching before the check: a cut after it ends this one.
                dropped.borrow_and_update();
                let mut ended = dropped.clone();
                if cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = ended.changed() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Drops every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

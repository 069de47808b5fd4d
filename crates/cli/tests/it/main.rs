//! End-to-end tests: the real `gust` binary, real guests compiled to
//! `wasm32-wasip2`, real sockets. One test binary (see matklad's "Delete
//! Cargo Integration Tests"); each test starts its own server on free ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abandoned;
mod api_hardening;
mod apps;
mod cluster;
mod control;
mod data_plane;
mod deploy;
mod events;
mod hardening;
mod harness;
mod hostile;
mod kv;
mod lifecycle;
mod limits;
mod logs;
mod metering;
mod neighbours;
mod newcomer;
mod projects;
mod retention;
mod scaling;
mod sources;
mod ssrf;
mod streaming;
mod tenants;
mod tls;
mod traces;
mod websockets;

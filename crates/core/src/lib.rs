//! Gust's domain types: what a tenant, a function, a version, its limits and a
//! route are, and the rules that make them valid.
//!
//! This crate owns validation (a name, a limit) and the pure decisions made on
//! these types (routing a request path to a function). It must not do IO and
//! must not depend on tokio, wasmtime or hyper: everything here is plain data
//! that any other crate, and any test, can build by hand.

pub mod access;
pub mod address;
pub mod app;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod deploy;
mod event;
pub mod kv;
mod limits;
pub mod logquery;
pub mod manifest;
mod names;
pub mod path;
mod records;
pub mod route;
pub mod scaling;
pub mod schedule;
pub mod series;
pub mod source;
pub mod time;
pub mod usage;

pub use address::is_internal_ip;
pub use event::{
    Envelope, EnvelopeError, InvocationRecord, InvocationState, MAX_TRACESTATE_BYTES, trace_context,
};
pub use limits::{Limits, LimitsError, LimitsPatch};
pub use names::{FunctionName, NameError, TenantId};
pub use records::{ActiveVersion, FunctionRecord, InvocationId, LogRecord, Outcome, VersionRecord};

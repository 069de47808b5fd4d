//! The conformance suite every storage backend must pass.
//!
//! A backend's tests call each function here on a fresh, empty store; the
//! functions panic (like `assert!`) on the first behaviour that differs from
//! the contract written on the traits. Every backend runs the same suite
//! (`gust-store-embedded` in its tests; a cluster backend in its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod blobs;
mod data;
mod ledger;
mod logs;
mod meta;
mod nodes;
mod queues;
mod registry;

pub use accounts::{accounts, last_admin_token};
pub use blobs::blobs;
pub use data::data;
pub use ledger::ledger;
pub use logs::{log_limits, logs};
pub use meta::kv;
pub use nodes::{
    claims_across_nodes, component_bytes_across_nodes, leases, revocations_across_nodes,
};
pub use queues::{named_messages, ordered_queues, queues};
pub use registry::registry;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_core::access::{Quotas, Role};
use gust_core::{FunctionName, Limits, TenantId};

use crate::{
    Accounts, AccountsError, Activation, AliasTarget, AuthError, BlobStore, DataStore, LogStore,
    MetaEvent, MetaStore, NewVersion, Peeked, QueueStore, Registry, RegistryError, StoreError,
    digest_of,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

//! One task per source in the registry: started when it appears, stopped
//! when it goes or changes, restarted with backoff when its broker fails.
//! In a cluster each source runs on one node at a time (a lease per
//! source): a broker's consumer group, session or slot has one reader, so
//! per-key order holds and a node that dies hands its sources over once
//! its leases run out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gust_core::source::{SourceKind, SourceSpec};
use gust_core::{FunctionName, TenantId};
use gust_events::{Events, SourceRecord, seal_context};
use gust_store::{Accounts, Lease, MetaStore, SecretBox};
use tokio::task::JoinHandle;

use crate::SourceError;
use crate::ctx::Ctx;
use crate::stats::SourceStats;

/// How often sources' tasks that ended are started again (the registry's
/// changes are followed by a watch as they come).
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// How often the registry is read whole again: a watch that fell behind a
/// removal's tombstone (kept 1 h in a cluster) would not see it.
const RESYNC_EVERY: Duration = Duration::from_secs(300);
/// Backoff after a failure: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// How sources run on this node.
#[derive(Debug, Clone)]
pub struct SourcesConfig {
    /// This node's name (in each source's reported state).
    pub node: String,
    /// The largest event a message may become.
    pub max_event_bytes: usize,
    /// Nodes share the registry (a cluster): one runs each source.
    pub shared: bool,
    /// Every tenant's sources may reach private and loopback addresses
    /// (else only the default tenant's).
    pub allow_private: bool,
}

/// Why a function may take no new work now (its tenant's, or its own,
/// monthly budget spent), or `None`: asked before a source pulls more.
pub type BudgetCheck = Arc<dyn Fn(&TenantId, &FunctionName) -> Option<String> + Send + Sync>;

/// The sources of every tenant, run on this node. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    events: Events,
    meta: Arc<dyn MetaStore>,
    secrets: Arc<SecretBox>,
    accounts: Accounts,
    config: SourcesConfig,
    stats: SourceStats,
    budget: Option<BudgetCheck>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Running {
    record: SourceRecord,
    task: JoinHandle<()>,
}

impl Sources {
    pub fn new(
        events: Events,
        meta: Arc<dyn MetaStore>,
        secrets: Arc<SecretBox>,
        accounts: Accounts,
        config: SourcesConfig,
    ) -> Self {
        Self {
            events,
            meta,
            secrets,
            accounts,
            config,
            stats: SourceStats::default(),
            budget: None,
        }
    }

    /// Sources pause (and say why) while `check` finds their function out
    /// of budget, so a tenant that spent its budget takes no new messages
    /// (the broker keeps them) until it is raised or the month ends.
    #[must_use]
    pub fn with_budget(mut self, check: BudgetCheck) -> Self {
        self.budget = Some(check);
        self
    }

    /// The counters of the sources running here.
    pub fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    /// Runs every source until the process ends: follows the registry
    /// with a watch (started again when it breaks, and every
    /// [`RESYNC_EVERY`]), and each [`SCAN_EVERY`] starts again the sources
    /// whose task ended.
    pub fn start(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut running: HashMap<String, Running> = HashMap::new();
            loop {
                let mut watch = match this.events.watch_sources().await {
                    Ok(watch) => watch,
                    Err(e) => {
                        tracing::warn!(error = %e, "sources: cannot read the registry");
                        tokio::time::sleep(SCAN_EVERY).await;
                        continue;
                    }
                };
                let mut records: HashMap<String, SourceRecord> =
                    std::mem::take(&mut watch.initial).into_iter().collect();
                // A watch's `next` is not cancel-safe: its changes come
                // through a channel, which the wait below may drop for a tick.
                let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                let follow = tokio::spawn(async move {
                    loop {
                        let change = watch.next().await;
                        let broken = change.is_err();
                        if tx.send(change).await.is_err() || broken {
                            return;
                        }
                    }
                });
                let mut tick = tokio::time::interval(SCAN_EVERY);
                let watched = tokio::time::Instant::now();
                loop {
                    this.reconcile(&mut running, records.values().cloned().collect());
                    tokio::select! {
                        change = rx.recv() => match change {
                            Some(Ok((key, Some(record)))) => {
                                records.insert(key, record);
                            }
                            Some(Ok((key, None))) => {
                                records.remove(&key);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "sources: the registry's watch broke; reading it again");
                                tokio::time::sleep(SCAN_EVERY).await;
                                break;
                            }
                            None => break,
                        },
                        _ = tick.tick() => {
                            if watched.elapsed() >= RESYNC_EVERY {
                                break;
                            }
                        }
                    }
                }
                follow.abort();
            }
        });
    }

    fn reconcile(&self, running: &mut HashMap<String, Running>, records: Vec<SourceRecord>) {
        let mut wanted: HashMap<String, SourceRecord> = records
            .into_iter()
            .filter(|r| r.kind != SourceKind::Webhook)
            .map(|r| (r.key(), r))
            .collect();
        running.retain(|key, run| {
            let keep = wanted.get(key) == Some(&run.record) && !run.task.is_finished();
            if !keep {
                run.task.abort();
                self.stats.forget(key);
            }
            if !wanted.contains_key(key) {
                self.removed(&run.record);
            }
            keep
        });
        for (key, record) in wanted.drain() {
            if running.contains_key(&key) {
                continue;
            }
            let this = self.clone();
            let task = tokio::spawn({
                let record = record.clone();
                async move { this.run(record).await }
            });
            running.insert(key, Running { record, task });
        }
    }

    /// Cleans up after a removed source: a PostgreSQL slot it made.
    fn removed(&self, record: &SourceRecord) {
        if record.kind != SourceKind::Postgres {
            return;
        }
        let context = seal_context(&record.tenant, &record.function, &record.id, "url");
        let Ok(url) = self
            .secrets
            .open(&context, record.spec.url.as_deref().unwrap_or_default())
        else {
            return;
        };
        tokio::spawn(crate::postgres::drop_default_slot(
            url,
            record.spec.clone(),
            record.function.clone(),
            record.id.clone(),
        ));
    }

    /// Runs one source: under its lease in a cluster, reconnecting with
    /// backoff for as long as it exists.
    async fn run(self, record: SourceRecord) {
        let _held = if self.config.shared {
            let lease = Lease::new(self.meta.clone(), &format!("source/{}", record.key()));
            loop {
                match lease.acquire().await {
                    Ok(guard) => break Some(guard),
                    Err(e) => {
                        tracing::warn!(source = %record.key(), error = %e, "cannot take a source's lease; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        } else {
            None
        };
        let counters = self.stats.register(&record);
        let url = match self.secrets.open(
            &seal_context(&record.tenant, &record.function, &record.id, "url"),
            record.spec.url.as_deref().unwrap_or_default(),
        ) {
            Ok(url) => url,
            Err(e) => {
                let ctx = self.ctx(record, String::new(), counters);
                ctx.set_state("retrying", Some(format!("its address: {e}")))
                    .await;
                return;
            }
        };
        let ctx = Arc::new(self.ctx(record, url, counters));
        let mut backoff = Duration::ZERO;
        loop {
            ctx.set_state("starting", None).await;
            let result = match check_reachable(
                &ctx.url,
                &ctx.record.tenant,
                self.config.allow_private,
            )
            .await
            {
                Ok(()) => connect(&ctx).await,
                Err(e) => Err(e),
            };
            // Read before the state below says otherwise: a source that got
            // connected starts its backoff over.
            let was_connected = ctx
                .counters
                .connected
                .load(std::sync::atomic::Ordering::Relaxed);
            let error = match result {
                Ok(()) => "the connection ended".to_string(),
                Err(e) => e.to_string(),
            };
            ctx.counters
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            backoff = next_backoff(backoff, was_connected);
            tracing::warn!(source = %ctx.record.key(), error = %error, retry_in_ms = backoff.as_millis() as u64, "source disconnected");
            ctx.set_state("retrying", Some(error)).await;
            tokio::time::sleep(backoff).await;
        }
    }

    fn ctx(&self, record: SourceRecord, url: String, counters: Arc<crate::stats::Counters>) -> Ctx {
        let mut ctx = Ctx::new(
            self.events.clone(),
            record,
            url,
            counters,
            self.config.max_event_bytes,
            self.accounts.clone(),
            self.config.node.clone(),
        );
        ctx.budget = self.budget.clone();
        ctx
    }

    /// Checks a source before it is stored: its broker answers with these
    /// settings, and what it needs there exists (or is made: a consumer
    /// group, a persistent session). `spec.url` is in plain text here.
    pub async fn check(
        &self,
        tenant: &TenantId,
        function: &gust_core::FunctionName,
        id: &str,
        spec: &SourceSpec,
    ) -> Result<(), String> {
        let kind = spec.validate()?;
        let Some(url) = spec.url.as_deref() else {
            return Ok(());
        };
        check_reachable(url, tenant, self.config.allow_private)
            .await
            .map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(Duration::from_secs(10), async {
            match kind {
                SourceKind::Redis => crate::redis_streams::prepare(url, spec).await,
                SourceKind::Mqtt => crate::mqtt::prepare(url, spec, tenant, function, id).await,
                SourceKind::Nats => crate::nats::prepare(url, spec, function, id).await,
                SourceKind::Amqp => crate::amqp::prepare(url, spec).await,
                SourceKind::Postgres => crate::postgres::prepare(url, spec, function, id).await,
                SourceKind::Webhook => Ok(()),
            }
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "{} did not answer within 10 s",
                gust_core::source::redact_url(url)
            )),
        }
    }
}

async fn connect(ctx: &Arc<Ctx>) -> Result<(), SourceError> {
    match ctx.record.kind {
        SourceKind::Redis => crate::redis_streams::run(ctx).await,
        SourceKind::Mqtt => crate::mqtt::run(ctx).await,
        SourceKind::Nats => crate::nats::run(ctx).await,
        SourceKind::Amqp => crate::amqp::run(ctx).await,
        SourceKind::Postgres => crate::postgres::run(ctx).await,
        SourceKind::Webhook => Err(SourceError::Config(
            "a webhook source takes requests; it has no connection".into(),
        )),
    }
}

/// The wait before the next connection: the first after one that got
/// connected, else twice the last, within [`BACKOFF`].
fn next_backoff(last: Duration, was_connected: bool) -> Duration {
    if was_connected || last.is_zero() {
        BACKOFF.0
    } else {
        (last * 2).min(BACKOFF.1)
    }
}

/// Host and port of a broker's URL.
pub(crate) fn host_port(url: &str, default_port: u16) -> Result<(String, u16), SourceError> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| SourceError::Config(format!("`{hostport}` is not host:port")))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| SourceError::Config(format!("`{p}` is not a port")))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(SourceError::Config("the address names no host".into()));
    }
    Ok((host.to_string(), port))
}

/// Refuses an address that resolves to a private, loopback or otherwise
/// special range for a tenant that may not reach them.
async fn check_reachable(
    url: &str,
    tenant: &TenantId,
    allow_private: bool,
) -> Result<(), SourceError> {
    if allow_private || tenant.as_str() == TenantId::default_tenant().as_str() {
        return Ok(());
    }
    let (host, port) = host_port(url, 1)?;
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| SourceError::Broker(format!("cannot resolve `{host}`: {e}")))?
        .map(|a| a.ip())
        .collect();
    if let Some(ip) = addresses.iter().find(|ip| gust_core::is_internal_ip(**ip)) {
        return Err(SourceError::Config(format!(
            "`{host}` is a private or special address ({ip}): a source of tenant `{tenant}` may not reach it (the operator may allow it with `gust up --sources-private`)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_until_a_connection_succeeds() {
        let mut wait = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..8 {
            wait = next_backoff(wait, false);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(next_backoff(wait, true), BACKOFF.0);
    }

    #[test]
    fn hosts_and_ports_of_urls() {
        assert_eq!(
            host_port("redis://:pw@h:6380/0", 6379).unwrap(),
            ("h".into(), 6380)
        );
        assert_eq!(host_port("mqtt://h", 1883).unwrap(), ("h".into(), 1883));
        assert_eq!(
            host_port("amqp://u:p@[::1]:5673/%2f", 5672).unwrap(),
            ("::1".into(), 5673)
        );
        assert!(host_port("redis://:6379", 6379).is_err());
        assert!(host_port("redis://h:x", 6379).is_err());
    }

    #[tokio::test]
    async fn only_the_operators_tenant_reaches_private_addresses() {
        let other = TenantId::new("acme").unwrap();
        let refused = check_reachable("redis://127.0.0.1:6379", &other, false)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("--sources-private"),
            "{refused}"
        );
        assert!(
            check_reachable("redis://10.1.2.3:6379", &other, false)
                .await
                .is_err()
        );
        assert!(
            check_reachable("redis://127.0.0.1:6379", &other, true)
                .await
                .is_ok()
        );
        let default = TenantId::default_tenant();
        assert!(
            check_reachable("redis://127.0.0.1:6379", &default, false)
                .await
                .is_ok()
        );
    }
}

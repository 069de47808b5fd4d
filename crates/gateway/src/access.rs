//! Who may call a function, and the tenant quotas of the data plane.
//!
//! A private function needs `Authorization: Bearer <token>` with a token of
//! its tenant (or an admin's) whose role may invoke; the header is removed
//! before the guest sees the request, so a function never learns a token.
//! Public functions, and every function in dev mode, need none.
//!
//! Quotas: invocations per second (a token bucket per tenant) and the
//! monthly budget, at the front door (requests and event submissions
//! alike), and invocations running at once (per tenant, around each run:
//! requests and event deliveries alike). Past any: 429 with `Retry-After`
//! and a message naming the quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gust_core::TenantId;
use gust_core::access::{Action, Quotas, Role, TokenBucket};
use gust_core::cluster::{self, Membership};
use gust_store::Accounts;
use http::{HeaderMap, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::TenantShare;
use crate::catalog::Loaded;
use crate::error::GatewayError;

struct Gate {
    quotas: Quotas,
    /// The live nodes it was made for: each enforces its share of the
    /// tenant's rate and concurrency quotas.
    nodes: usize,
    bucket: Mutex<TokenBucket>,
    running: Arc<Semaphore>,
    /// Its instances on the node's shared slots (see `admission`).
    share: Arc<TenantShare>,
}

/// A tenant's admission to run one invocation: its concurrency quota's
/// permit, and its part of the node's shared slots to take next.
pub(crate) struct TenantRun {
    pub permit: OwnedSemaphorePermit,
    pub share: Arc<TenantShare>,
}

pub(crate) struct Access {
    accounts: Accounts,
    auth: bool,
    gates: Mutex<HashMap<TenantId, Arc<Gate>>>,
    members: Arc<dyn Membership>,
}

impl Access {
    pub fn new(accounts: Accounts, auth: bool, members: Arc<dyn Membership>) -> Self {
        Self {
            accounts,
            auth,
            gates: Mutex::default(),
            members,
        }
    }

    /// Checks (and removes) the caller's token for a private function.
    /// Whatever is wrong with it (none, malformed, unknown, revoked,
    /// expired, another tenant's) the answer is the 404 of a function that
    /// does not exist: a caller who may not invoke it must not learn that
    /// it exists. Only a valid token of its own tenant learns more (403 for
    /// a role that may not invoke).
    pub fn authorize(&self, loaded: &Loaded, headers: &mut HeaderMap) -> Result<(), GatewayError> {
        if !self.auth || loaded.public {
            return Ok(());
        }
        let hidden = || GatewayError::NoSuchFunction(loaded.name.to_string());
        let value = headers.remove(header::AUTHORIZATION).ok_or_else(hidden)?;
        let token = value
            .to_str()
            .ok()
            .and_then(gust_core::access::bearer_token)
            .ok_or_else(hidden)?;
        let record = self
            .accounts
            .verify(token, crate::now_ms())
            .map_err(|_| hidden())?;
        if record.tenant != loaded.tenant && record.role != Role::Admin {
            return Err(hidden());
        }
        if !record.role.allows(Action::Invoke) {
            return Err(GatewayError::Forbidden(format!(
                "a `{}` token cannot invoke functions; use an invoker, deployer or owner token",
                record.role
            )));
        }
        Ok(())
    }

    /// The tenant's gate, made again when its quotas or the number of live
    /// nodes change (invocations running then return their permits to the
    /// old one: until they finish, both count).
    fn gate(&self, tenant: &TenantId) -> Arc<Gate> {
        let quotas = self.accounts.quotas(tenant).unwrap_or_default();
        let nodes = self.members.count();
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        match gates.get(tenant) {
            Some(gate) if gate.quotas == quotas && gate.nodes == nodes => gate.clone(),
            found => {
                let share = found.map_or_else(Arc::default, |old| old.share.clone());
                let gate = Arc::new(Gate {
                    quotas,
                    nodes,
                    bucket: Mutex::new(TokenBucket::new(
                        cluster::share(quotas.invocations_per_second, nodes),
                        cluster::share(quotas.burst, nodes),
                        crate::now_ms(),
                    )),
                    running: Arc::new(Semaphore::new(
                        usize::try_from(cluster::share(quotas.concurrency, nodes))
                            .unwrap_or(usize::MAX)
                            .min(Semaphore::MAX_PERMITS),
                    )),
                    share,
                });
                gates.insert(tenant.clone(), gate.clone());
                gate
            }
        }
    }

    /// The front door for new work: takes one of the tenant's invocations
    /// per second, and refuses once the tenant — or the function, given
    /// with its budget — spent its monthly budget (as far as the ledger has
    /// counted; what was accepted before is not affected). One look-up of
    /// the tenant's quotas for all.
    pub fn admit(
        &self,
        tenant: &TenantId,
        function: Option<(&str, u64)>,
        meter: Option<&gust_meter::Meter>,
    ) -> Result<(), GatewayError> {
        let gate = self.gate(tenant);
        let now = crate::now_ms();
        let taken = gate
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(now);
        taken.map_err(|wait_ms| GatewayError::QuotaExceeded {
            message: format!(
                "tenant `{tenant}` is over its quota `invocations_per_second` ({}/s, bursts of {}{}); retry later",
                gate.quotas.invocations_per_second,
                gate.quotas.burst,
                across(
                    gate.nodes,
                    cluster::share(gate.quotas.invocations_per_second, gate.nodes)
                )
            ),
            retry_after_s: wait_ms.div_ceil(1000),
        })?;
        self.within_budget(tenant, function, meter, now)
    }

    /// [`Access::spent`] as the refusal a client gets (429 until the month
    /// ends), without taking from the tenant's request rate.
    pub fn within_budget(
        &self,
        tenant: &TenantId,
        function: Option<(&str, u64)>,
        meter: Option<&gust_meter::Meter>,
        now: u64,
    ) -> Result<(), GatewayError> {
        match self.spent(tenant, function, meter, now) {
            Some((message, retry_after_s)) => Err(GatewayError::QuotaExceeded {
                message,
                retry_after_s,
            }),
            None => Ok(()),
        }
    }

    /// Why new work is refused for the budget: the tenant — or the
    /// function, given with its budget — spent its monthly budget (as far
    /// as the ledger has counted), with the seconds until the month ends.
    pub fn spent(
        &self,
        tenant: &TenantId,
        function: Option<(&str, u64)>,
        meter: Option<&gust_meter::Meter>,
        now: u64,
    ) -> Option<(String, u64)> {
        let meter = meter?;
        let gate = self.gate(tenant);
        let over = |spent: Option<u64>, budget: u64| {
            let spent = spent.unwrap_or(0);
            (spent >= budget).then_some(spent)
        };
        // Until the month ends.
        let retry_after_s = || {
            let month = gust_core::usage::month_start_ms(now);
            (gust_core::usage::month_start_ms(month + 32 * 86_400_000) - now).div_ceil(1000)
        };
        if let Some(budget) = gate.quotas.monthly_budget_micros
            && let Some(spent) = over(meter.month_cost(tenant.as_str(), now), budget)
        {
            return Some((
                format!(
                    "tenant `{tenant}` reached its monthly budget `monthly_budget_micros` ({budget} micro-units; {spent} spent this month); an admin can raise it, else it resets next month"
                ),
                retry_after_s(),
            ));
        }
        if let Some((function, budget)) = function
            && let Some(spent) = over(
                meter.function_month_cost(tenant.as_str(), function, now),
                budget,
            )
        {
            return Some((
                format!(
                    "function `{function}` reached its monthly budget `monthly_budget_micros` ({budget} micro-units; {spent} spent this month); deploy it with a higher --monthly-budget-micros, else it resets next month"
                ),
                retry_after_s(),
            ));
        }
        None
    }

    /// Refuses an event submission when the tenant's backlog is full.
    pub fn admit_event(&self, tenant: &TenantId, backlog: u64) -> Result<(), GatewayError> {
        let limit = self
            .accounts
            .quotas(tenant)
            .unwrap_or_default()
            .event_backlog;
        if backlog < limit {
            return Ok(());
        }
        Err(GatewayError::QuotaExceeded {
            message: format!(
                "tenant `{tenant}` is at its quota `event_backlog` ({limit} events waiting); retry when some are delivered"
            ),
            retry_after_s: 1,
        })
    }

    /// How many instances the tenant may reserve in all (Σ of its
    /// functions' `reserved_concurrency`).
    pub fn reserved_concurrency_quota(&self, tenant: &str) -> u64 {
        TenantId::new(tenant)
            .ok()
            .and_then(|tenant| self.accounts.quotas(&tenant))
            .unwrap_or_default()
            .reserved_concurrency
    }

    /// This node's share of a limit that holds across the cluster (the
    /// limit itself on one node).
    pub fn node_share(&self, limit: u64) -> u64 {
        cluster::share(limit, self.members.count())
    }

    /// WebSocket connections the tenant may hold open on this node: its
    /// `websockets` quota, this node's share of it in a cluster.
    pub fn websockets_quota(&self, tenant: &TenantId) -> u64 {
        let gate = self.gate(tenant);
        cluster::share(gate.quotas.websockets, gate.nodes)
    }

    /// Takes one of the tenant's concurrent invocations, for the run's length.
    pub fn admit_run(&self, tenant: &TenantId) -> Result<TenantRun, GatewayError> {
        let gate = self.gate(tenant);
        gate.running
            .clone()
            .try_acquire_owned()
            .map(|permit| TenantRun {
                permit,
                share: gate.share.clone(),
            })
            .map_err(|_| GatewayError::QuotaExceeded {
                message: format!(
                    "tenant `{tenant}` is at its quota `concurrency` ({} invocations at once{}); retry shortly",
                    gate.quotas.concurrency,
                    across(gate.nodes, cluster::share(gate.quotas.concurrency, gate.nodes))
                ),
                retry_after_s: 1,
            })
    }
}

/// How a quota is split in a cluster, for messages (nothing on one node).
fn across(nodes: usize, here: u64) -> String {
    if nodes <= 1 {
        String::new()
    } else {
        format!(" across {nodes} nodes, {here} on this one")
    }
}

//! `Accounts`: tenants and API tokens, stored in the [`MetaStore`] under
//! `acct/` and mirrored in memory (a watch keeps the mirror current), so
//! checking a token on every request costs a hash and a map lookup.
//!
//! A token is `gust_<id>_<secret>`: the id names it (in listings, the audit
//! log, revocation); only the SHA-256 of the whole token is stored, so the
//! store never holds a usable token. Randomness comes from the caller.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use gust_core::TenantId;
use gust_core::access::{Quotas, Role};
use serde::{Deserialize, Serialize};

use crate::{Lease, MetaEvent, MetaStore, StoreError, digest_of};

const PREFIX: &str = "acct/";
const TENANTS: &str = "acct/tenant/";
const TOKENS: &str = "acct/token/";

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub created_ms: u64,
    #[serde(default)]
    pub quotas: Quotas,
    /// How its invocations are priced (from now on: records keep the
    /// plan they were priced under).
    #[serde(default)]
    pub plan: gust_core::usage::PricePlan,
    /// When `plan` took effect (Unix ms).
    #[serde(default)]
    pub plan_since_ms: u64,
    /// The plans before it, oldest first, each with when it ended: records
    /// of invocations that started under one are priced by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_plans: Vec<(u64, gust_core::usage::PricePlan)>,
}

impl TenantRecord {
    pub fn plans(&self) -> gust_core::usage::PlanHistory {
        gust_core::usage::PlanHistory {
            current: self.plan.clone(),
            since_ms: self.plan_since_ms,
            earlier: self.earlier_plans.clone(),
        }
    }
}

/// A token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: TenantId,
    pub role: Role,
    /// `sha256:<hex>` of the whole token.
    pub hash: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    #[serde(default)]
    pub description: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token is not a Gust token (it should look like `gust_<id>_<secret>`)")]
    Malformed,
    #[error("the token is not valid")]
    Unknown,
    #[error("the token `{0}` was revoked")]
    Revoked(String),
    #[error("the token `{0}` has expired")]
    Expired(String),
}

/// Why an accounts change failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    #[error("no tenant `{0}`")]
    NoSuchTenant(String),
    #[error("no token `{0}`")]
    NoSuchToken(String),
    /// Revoking it would leave no admin token that never expires: no one
    /// could administer the platform any more.
    #[error(
        "token `{0}` is the last admin token that does not expire: revoking it would lock everyone out of administering this platform; create another admin token first (`gust token create --role admin`), then revoke this one"
    )]
    LastAdminToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct Mirror {
    tenants: HashMap<TenantId, TenantRecord>,
    tokens: HashMap<String, TokenRecord>,
}

/// Tenants and tokens. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    kv: Arc<dyn MetaStore>,
    mirror: Arc<RwLock<Mirror>>,
    /// Held while a revocation checks and writes (on any node), so that
    /// two concurrent revocations cannot each leave the other as the last
    /// admin token.
    revoking: Lease,
}

/// How many times a change to a tenant's record is tried when another
/// change to it races it.
const MAX_CAS_RETRIES: usize = 16;

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Accounts {
    /// Loads every tenant and token and keeps following changes.
    pub async fn start(kv: Arc<dyn MetaStore>) -> Result<Self, StoreError> {
        let accounts = Self {
            revoking: Lease::new(kv.clone(), "revoking"),
            kv,
            mirror: Arc::default(),
        };
        let watch = accounts.kv.watch(PREFIX).await?;
        for entry in &watch.initial {
            accounts.apply(&MetaEvent::Put(entry.clone()));
        }
        let follower = accounts.clone();
        tokio::spawn(async move {
            let mut changes = watch.changes;
            loop {
                match changes.next().await {
                    Ok(event) => follower.apply(&event),
                    Err(StoreError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "accounts watch interrupted; reloading");
                        let Ok(again) = follower.kv.watch(PREFIX).await else {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        };
                        let mut fresh = Mirror::default();
                        std::mem::swap(&mut *follower.write(), &mut fresh);
                        for entry in &again.initial {
                            follower.apply(&MetaEvent::Put(entry.clone()));
                        }
                        changes = again.changes;
                    }
                }
            }
        });
        Ok(accounts)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, event: &MetaEvent) {
        let mut mirror = self.write();
        match event {
            MetaEvent::Put(entry) => {
                if entry.key.starts_with(TENANTS) {
                    match serde_json::from_slice::<TenantRecord>(&entry.value) {
                        Ok(t) => {
                            mirror.tenants.insert(t.id.clone(), t);
                        }
                        Err(e) => tracing::error!(key = entry.key, error = %e, "bad tenant record"),
                    }
                } else if entry.key.starts_with(TOKENS) {
                    match serde_json::from_slice::<TokenRecord>(&entry.value) {
                        Ok(t) => {
                            mirror.tokens.insert(t.id.clone(), t);
                        }
                        Err(e) => tracing::error!(key = entry.key, error = %e, "bad token record"),
                    }
                }
            }
            MetaEvent::Delete { key, .. } => {
                if let Some(id) = key.strip_prefix(TENANTS) {
                    mirror.tenants.retain(|t, _| t.as_str() != id);
                } else if let Some(id) = key.strip_prefix(TOKENS) {
                    mirror.tokens.remove(id);
                }
            }
        }
    }

    /// Writes a record and mirrors it at once (the watch brings it too, a
    /// moment later): a caller reads its own write.
    async fn put<T: Serialize>(&self, key: String, record: &T) -> Result<(), StoreError> {
        let value = encode(record)?;
        self.kv.put(&key, value.clone()).await?;
        self.apply(&MetaEvent::Put(crate::Entry {
            key,
            value,
            revision: 0,
        }));
        Ok(())
    }

    /// Creates a tenant (with default quotas unless given).
    pub async fn create_tenant(
        &self,
        id: TenantId,
        quotas: Quotas,
        now_ms: u64,
    ) -> Result<TenantRecord, AccountsError> {
        let record = TenantRecord {
            id: id.clone(),
            created_ms: now_ms,
            quotas,
            plan: Default::default(),
            plan_since_ms: 0,
            earlier_plans: Vec::new(),
        };
        let key = format!("{TENANTS}{id}");
        match self.kv.compare_and_set(&key, encode(&record)?, None).await {
            Ok(_) => {
                self.apply(&MetaEvent::Put(crate::Entry {
                    key,
                    value: encode(&record)?,
                    revision: 0,
                }));
                Ok(record)
            }
            Err(StoreError::Conflict { .. }) => Err(AccountsError::TenantExists(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a tenant's record as stored now (not as mirrored, which may
    /// lag another node's change), by compare-and-set, so that a quota
    /// change and a plan change never undo each other.
    async fn update_tenant(
        &self,
        id: &TenantId,
        change: impl Fn(&mut TenantRecord),
    ) -> Result<TenantRecord, AccountsError> {
        let key = format!("{TENANTS}{id}");
        for _ in 0..MAX_CAS_RETRIES {
            let Some(entry) = self.kv.get(&key).await? else {
                return Err(AccountsError::NoSuchTenant(id.to_string()));
            };
            let mut record: TenantRecord = serde_json::from_slice(&entry.value)
                .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
            change(&mut record);
            let value = encode(&record)?;
            match self
                .kv
                .compare_and_set(&key, value.clone(), Some(entry.revision))
                .await
            {
                Ok(revision) => {
                    self.apply(&MetaEvent::Put(crate::Entry {
                        key,
                        value,
                        revision,
                    }));
                    return Ok(record);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Backend(format!(
            "tenant `{id}` kept changing under this update; try again"
        ))
        .into())
    }

    /// Replaces a tenant's quotas.
    pub async fn set_quotas(
        &self,
        id: &TenantId,
        quotas: Quotas,
    ) -> Result<TenantRecord, AccountsError> {
        self.update_tenant(id, |record| record.quotas = quotas)
            .await
    }

    /// Sets the tenant's price plan; invocations from now on are priced by it.
    pub async fn set_plan(
        &self,
        id: &TenantId,
        plan: gust_core::usage::PricePlan,
        now_ms: u64,
    ) -> Result<TenantRecord, AccountsError> {
        self.update_tenant(id, |record| {
            let mut plans = record.plans();
            plans.change(plan.clone(), now_ms);
            record.plan = plans.current;
            record.plan_since_ms = plans.since_ms;
            record.earlier_plans = plans.earlier;
        })
        .await
    }

    pub fn tenant(&self, id: &TenantId) -> Option<TenantRecord> {
        self.read().tenants.get(id).cloned()
    }

    /// A tenant's quotas, without copying its record.
    pub fn quotas(&self, id: &TenantId) -> Option<Quotas> {
        self.read().tenants.get(id).map(|t| t.quotas)
    }

    pub fn tenants(&self) -> Vec<TenantRecord> {
        let mut all: Vec<_> = self.read().tenants.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Creates a token from 32 random bytes the caller supplies; returns
    /// its record and the token itself, which is not stored anywhere.
    pub async fn create_token(
        &self,
        tenant: &TenantId,
        role: Role,
        expires_ms: Option<u64>,
        description: String,
        random: [u8; 32],
        now_ms: u64,
    ) -> Result<(TokenRecord, String), AccountsError> {
        if self.tenant(tenant).is_none() {
            return Err(AccountsError::NoSuchTenant(tenant.to_string()));
        }
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let (id, secret) = hex.split_at(12);
        let token = format!("gust_{id}_{secret}");
        let record = TokenRecord {
            id: id.to_string(),
            tenant: tenant.clone(),
            role,
            hash: digest_of(token.as_bytes()),
            created_ms: now_ms,
            expires_ms,
            revoked_ms: None,
            description,
        };
        let key = format!("{TOKENS}{id}");
        let value = encode(&record)?;
        self.kv.compare_and_set(&key, value.clone(), None).await?;
        self.apply(&MetaEvent::Put(crate::Entry {
            key,
            value,
            revision: 0,
        }));
        Ok((record, token))
    }

    /// A tenant's tokens (every tenant's with `None`), newest first.
    pub fn tokens(&self, tenant: Option<&TenantId>) -> Vec<TokenRecord> {
        let mut all: Vec<_> = self
            .read()
            .tokens
            .values()
            .filter(|t| tenant.is_none_or(|want| &t.tenant == want))
            .cloned()
            .collect();
        all.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        all
    }

    pub fn any_token(&self) -> bool {
        !self.read().tokens.is_empty()
    }

    /// Revokes a token of `tenant` (any tenant's with `None`). The last
    /// admin token that never expires is not revoked
    /// ([`AccountsError::LastAdminToken`]): at least one always remains.
    pub async fn revoke(
        &self,
        tenant: Option<&TenantId>,
        id: &str,
        now_ms: u64,
    ) -> Result<TokenRecord, AccountsError> {
        let _one_at_a_time = self.revoking.acquire().await?;
        // The tokens as stored now: the mirror may not have seen a
        // revocation just made on another node.
        let mut tokens = HashMap::new();
        for entry in self.kv.list(TOKENS).await? {
            let token: TokenRecord = serde_json::from_slice(&entry.value)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))?;
            tokens.insert(token.id.clone(), token);
        }
        let mut record = tokens
            .get(id)
            .filter(|t| tenant.is_none_or(|want| &t.tenant == want))
            .cloned()
            .ok_or_else(|| AccountsError::NoSuchToken(id.to_string()))?;
        if record.revoked_ms.is_some() {
            return Ok(record);
        }
        if lasting_admin(&record)
            && !tokens
                .values()
                .any(|t| t.id != record.id && lasting_admin(t))
        {
            return Err(AccountsError::LastAdminToken(record.id));
        }
        record.revoked_ms = Some(now_ms);
        self.put(format!("{TOKENS}{id}"), &record).await?;
        Ok(record)
    }

    /// The token's record if the token is valid at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<TokenRecord, AuthError> {
        let rest = token.strip_prefix("gust_").ok_or(AuthError::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
        if id.len() != 12 || secret.len() != 52 {
            return Err(AuthError::Malformed);
        }
        let record = self
            .read()
            .tokens
            .get(id)
            .cloned()
            .ok_or(AuthError::Unknown)?;
        if record.hash != digest_of(token.as_bytes()) {
            return Err(AuthError::Unknown);
        }
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked(record.id));
        }
        if record.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(AuthError::Expired(record.id));
        }
        Ok(record)
    }
}

/// An admin token that works and never expires: the platform always keeps one.
fn lasting_admin(token: &TokenRecord) -> bool {
    token.role == Role::Admin && token.revoked_ms.is_none() && token.expires_ms.is_none()
}

//! Each tenant's component bytes (a storage quota counts them) and the
//! components nothing refers to any more.

use super::*;

/// Each tenant's total component bytes, counted from its version records
/// on first use and forgotten whenever a version record of the tenant
/// changes: at once when this process changes it, and when a watch of
/// every version record sees it (another node's deploy or removal, a few
/// milliseconds later). Counts are kept only while that watch runs; the
/// generation keeps a count that raced a change from being kept.
#[derive(Default)]
pub(super) struct ComponentBytes {
    generation: u64,
    by_tenant: HashMap<TenantId, u64>,
    /// The watch runs: a count kept now is forgotten on any later change.
    following: bool,
    /// Dropped with the last clone of the registry, which ends the watch.
    follower: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ComponentBytes {
    fn forget_all(&mut self, following: bool) {
        self.generation += 1;
        self.by_tenant.clear();
        self.following = following;
    }
}

impl Registry {
    /// Held by a deploy from storing its component until its version
    /// record is written, and by [`Registry::unreferenced`]'s caller
    /// until it has removed what that found: a lease in the store, so it
    /// holds across the nodes of a cluster (within [`Lease`]'s bound).
    pub async fn components_lock(&self) -> Result<LeaseGuard, RegistryError> {
        Ok(self.uploading.acquire().await?)
    }

    /// Those of `digests` that no version of any function refers to: their
    /// components and compiled artifacts may be removed. Reads every
    /// version record; a removal is rare next to a request.
    pub async fn unreferenced(&self, digests: &[String]) -> Result<Vec<String>, RegistryError> {
        let mut left: Vec<String> = digests.to_vec();
        left.sort();
        left.dedup();
        if left.is_empty() {
            return Ok(left);
        }
        for entry in self.kv.list(VERSIONS_PREFIX).await? {
            let record: VersionRecord = decode(&entry)?;
            left.retain(|d| *d != record.digest);
            if left.is_empty() {
                break;
            }
        }
        Ok(left)
    }

    /// The digest of every version of every function, and of every version
    /// an alias serves (its record names the digest, so it serves even if
    /// its version record went in a race with retention): the components
    /// (and compiled artifacts) that must stay.
    pub async fn referenced_digests(
        &self,
    ) -> Result<std::collections::HashSet<String>, RegistryError> {
        let mut digests = std::collections::HashSet::new();
        for entry in self.kv.list(VERSIONS_PREFIX).await? {
            digests.insert(decode::<VersionRecord>(&entry)?.digest);
        }
        for entry in self.kv.list(FUNCTIONS_PREFIX).await? {
            if Self::parse_app_key(&entry.key).is_some() {
                let app: AppRecord = decode(&entry)?;
                for version in &app.versions {
                    digests.extend(version.functions.values().map(|a| a.digest.clone()));
                }
                continue;
            }
            let record: FunctionRecord = decode(&entry)?;
            for alias in record.aliases.values() {
                digests.insert(alias.target.digest.clone());
                if let Some(split) = &alias.split {
                    digests.insert(split.to.digest.clone());
                }
            }
        }
        Ok(digests)
    }

    /// Version retention: removes each function's versions past its `keep`
    /// newest that no alias refers to ([`FunctionRecord::versions_past`]);
    /// returns the removed versions' digests, whose components the caller
    /// collects ([`Registry::unreferenced`]); the caller holds
    /// [`Registry::components_lock`]. Versions are immutable, so one that an
    /// alias moved to meanwhile (the function's record changed during the
    /// removal) is written back as it was. An alias move whose
    /// compare-and-set lands after that check may point at a removed
    /// version: it serves (its record names the digest, which
    /// [`Registry::referenced_digests`] keeps), but is no longer listed.
    pub async fn prune_versions(&self, keep: usize) -> Result<Vec<String>, RegistryError> {
        let mut removed = Vec::new();
        if keep == 0 {
            return Ok(removed);
        }
        let entries = self.kv.list(FUNCTIONS_PREFIX).await?;
        // Versions a kept application version names stay (its rollback needs them).
        let mut in_apps = std::collections::HashSet::new();
        for entry in &entries {
            if Self::parse_app_key(&entry.key).is_some() {
                let app: AppRecord = decode(entry)?;
                for (name, version) in app.referenced() {
                    in_apps.insert((app.tenant.to_string(), name.to_string(), version));
                }
            }
        }
        for entry in entries {
            if Self::parse_function_key(&entry.key).is_none() {
                continue;
            }
            let record: FunctionRecord = decode(&entry)?;
            if record.latest_version <= keep as u64 {
                continue;
            }
            let prefix = versions_prefix(&record.tenant, &record.name);
            let versions: Vec<VersionRecord> = self
                .kv
                .list(&prefix)
                .await?
                .iter()
                .map(decode)
                .collect::<Result<_, _>>()?;
            let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
            let mut past = record.versions_past(&numbers, keep);
            past.retain(|v| {
                !in_apps.contains(&(record.tenant.to_string(), record.name.to_string(), *v))
            });
            if past.is_empty() {
                continue;
            }
            let mut gone = Vec::new();
            for version in versions.into_iter().filter(|v| past.contains(&v.version)) {
                let key = version_key(&record.tenant, &record.name, version.version);
                if self.kv.delete(&key).await?.is_some() {
                    gone.push(version);
                }
            }
            let now = self.function(&record.tenant, &record.name).await?;
            let still = now.as_ref().map(FunctionRecord::referenced_versions);
            for version in gone {
                if still.as_ref().is_some_and(|s| s.contains(&version.version)) {
                    let key = version_key(&record.tenant, &record.name, version.version);
                    self.kv.put(&key, encode(&version)?).await?;
                } else {
                    removed.push(version.digest);
                }
            }
            self.forget_component_bytes(&record.tenant);
        }
        Ok(removed)
    }

    pub(super) fn components(&self) -> std::sync::MutexGuard<'_, ComponentBytes> {
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn forget_component_bytes(&self, tenant: &TenantId) {
        let mut cache = self.components();
        cache.generation += 1;
        cache.by_tenant.remove(tenant);
    }

    /// Bytes of every stored version of every function of the tenant: as
    /// of a few milliseconds ago for changes made by other processes.
    pub async fn component_bytes(&self, tenant: &TenantId) -> Result<u64, RegistryError> {
        let generation = {
            let mut cache = self.components();
            if cache.follower.is_none()
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                let (keep, stopped) = tokio::sync::oneshot::channel();
                cache.follower = Some(keep);
                runtime.spawn(follow_versions(
                    self.kv.clone(),
                    Arc::downgrade(&self.components),
                    stopped,
                ));
            }
            if cache.following
                && let Some(bytes) = cache.by_tenant.get(tenant)
            {
                return Ok(*bytes);
            }
            cache.generation
        };
        let mut total = 0u64;
        for entry in self.kv.list(&format!("{VERSIONS_PREFIX}{tenant}/")).await? {
            total = total.saturating_add(decode::<VersionRecord>(&entry)?.size_bytes);
        }
        let mut cache = self.components();
        if cache.following && cache.generation == generation {
            cache.by_tenant.insert(tenant.clone(), total);
        }
        Ok(total)
    }
}

/// Forgets the component bytes counted for a tenant whenever one of its
/// version records changes, as long as the registry lives; while the
/// watch is down, nothing is kept (every count reads the records).
async fn follow_versions(
    kv: Arc<dyn MetaStore>,
    cache: Weak<Mutex<ComponentBytes>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let with = |f: &dyn Fn(&mut ComponentBytes)| match cache.upgrade() {
        Some(cache) => {
            f(&mut cache.lock().unwrap_or_else(|p| p.into_inner()));
            true
        }
        None => false,
    };
    loop {
        let watch = tokio::select! {
            _ = &mut stopped => return,
            watch = kv.watch(VERSIONS_PREFIX) => watch,
        };
        let mut changes = match watch {
            Ok(watch) => watch.changes,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch version records; counting component bytes afresh each time");
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if !with(&|c| c.forget_all(true)) {
            return;
        }
        loop {
            let event = tokio::select! {
                _ = &mut stopped => return,
                event = changes.next() => event,
            };
            match event {
                Ok(event) => {
                    let tenant = event
                        .key()
                        .strip_prefix(VERSIONS_PREFIX)
                        .and_then(|rest| rest.split('/').next())
                        .unwrap_or_default()
                        .to_string();
                    let forgot = with(&|c| {
                        c.generation += 1;
                        c.by_tenant.retain(|t, _| t.as_str() != tenant);
                    });
                    if !forgot {
                        return;
                    }
                }
                Err(e) => {
                    with(&|c| c.forget_all(false));
                    if matches!(e, StoreError::Closed) {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

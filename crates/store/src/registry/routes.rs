//! Route claims: host names and path prefixes a function takes on the data
//! plane, one holder each across the cluster.

use super::*;

impl Registry {
    /// Whether `claims` are free for `name` (or already its own); the
    /// first that is not, as [`RegistryError::RouteTaken`]. A check before
    /// a deploy; [`Registry::set_routes`] takes them for good.
    pub async fn check_routes(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        claims: &[RouteClaim],
    ) -> Result<(), RegistryError> {
        let owner = format!("{tenant}/{name}");
        for claim in claims {
            self.check_host_holder(tenant, claim).await?;
            if let Some(holder) = self.kv.get(&claim_key(claim)).await? {
                let holder = String::from_utf8_lossy(&holder.value).into_owned();
                if holder != owner {
                    return Err(route_taken(tenant, claim, &holder));
                }
            }
        }
        Ok(())
    }

    /// A host belongs to the tenant that holds a claim on it: another
    /// tenant's claim on the same host, with any prefix (or none), is
    /// refused, so no tenant serves paths on an origin whose users'
    /// cookies and tokens belong to someone else. The holder is named only
    /// as "another tenant". [`Registry::set_routes`] runs this under its
    /// claiming lease, so two tenants never take a host at once.
    async fn check_host_holder(
        &self,
        tenant: &TenantId,
        claim: &RouteClaim,
    ) -> Result<(), RegistryError> {
        let Some(host) = &claim.host else {
            return Ok(());
        };
        let host_key = format!("claim/{host}");
        for entry in self.kv.list(&host_key).await? {
            let same_host = entry
                .key
                .strip_prefix(host_key.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if !same_host {
                continue;
            }
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            let holder_tenant = holder.split_once('/').map_or("", |(t, _)| t);
            if holder_tenant != tenant.as_str() {
                return Err(RegistryError::RouteTaken {
                    claim: claim.to_string(),
                    owner: "a function of another tenant".into(),
                });
            }
        }
        Ok(())
    }

    /// Makes `claims` the function's routes. Each place (host and prefix)
    /// is held under one key created by compare-and-set, so two functions
    /// never hold the same; a place another function holds is refused,
    /// naming it (another tenant's only as such), and nothing changes.
    /// Places the function gives up are released.
    pub async fn set_routes(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        claims: Vec<RouteClaim>,
    ) -> Result<(FunctionRecord, u64), RegistryError> {
        let _claiming = self.claiming.acquire().await?;
        let owner = format!("{tenant}/{name}");
        if self.function(tenant, name).await?.is_none() {
            return Err(RegistryError::NoSuchFunction(name.clone()));
        }
        for claim in &claims {
            self.check_host_holder(tenant, claim).await?;
        }
        let mut taken: Vec<String> = Vec::new();
        for claim in &claims {
            let key = claim_key(claim);
            match self
                .kv
                .compare_and_set(&key, Bytes::from(owner.clone()), None)
                .await
            {
                Ok(_) => taken.push(key),
                Err(StoreError::Conflict { .. }) => {
                    let holder = self.kv.get(&key).await?;
                    let holder = holder
                        .as_ref()
                        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
                    if holder.as_deref() == Some(owner.as_str()) {
                        continue;
                    }
                    for key in &taken {
                        self.kv.delete(key).await?;
                    }
                    return Err(route_taken(tenant, claim, holder.as_deref().unwrap_or("")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let kept = claims.clone();
        let mut replaced = Vec::new();
        let updated = self
            .update(tenant, name, |record| {
                replaced = std::mem::replace(&mut record.routes, kept.clone());
                Ok(())
            })
            .await;
        let (record, (), revision) = match updated {
            Ok(done) => done,
            Err(e) => {
                for key in &taken {
                    self.kv.delete(key).await?;
                }
                return Err(e);
            }
        };
        for old in &replaced {
            if !claims.iter().any(|c| c.place() == old.place()) {
                self.kv.delete(&claim_key(old)).await?;
            }
        }
        Ok((record, revision))
    }
}

/// `claim` is held by `holder` (`<tenant>/<function>`), named to its own
/// tenant only.
fn route_taken(tenant: &TenantId, claim: &RouteClaim, holder: &str) -> RegistryError {
    let owner = match holder.split_once('/') {
        Some((t, f)) if t == tenant.as_str() => format!("function `{f}`"),
        Some(_) => "a function of another tenant".into(),
        None => "another function (being changed now)".into(),
    };
    RegistryError::RouteTaken {
        claim: claim.to_string(),
        owner,
    }
}

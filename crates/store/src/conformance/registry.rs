//! The registry on a backend's metadata store: versions, tenants, aliases.

use super::*;

fn version(digest: &str, size_bytes: u64) -> NewVersion {
    NewVersion {
        digest: digest.to_string(),
        size_bytes,
        limits: Limits::default(),
        delivery: Default::default(),
        public: None,
        activation: Default::default(),
        app: None,
    }
}

/// The typed registry on top of a backend's KV: versions, tenants, deletes.
pub async fn registry(kv: Arc<dyn MetaStore>) {
    let registry = Registry::new(kv);
    let tenant = TenantId::default_tenant();
    let other = TenantId::new("other").unwrap();
    let hello = FunctionName::new("hello").unwrap();

    assert!(registry.function(&tenant, &hello).await.unwrap().is_none());
    let (v1, r1) = registry
        .deploy(&tenant, &hello, version("sha256:aa", 10), 1)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let (v2, r2) = registry
        .deploy(&tenant, &hello, version("sha256:bb", 20), 2)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert!(r2 > r1, "the activating revision is returned");
    let f = registry.function(&tenant, &hello).await.unwrap().unwrap();
    assert_eq!(f.latest_version, 2);
    assert_eq!(f.live().unwrap().target.digest, "sha256:bb");
    let versions: Vec<u64> = registry
        .versions(&tenant, &hello)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        registry
            .version(&tenant, &hello, 1)
            .await
            .unwrap()
            .unwrap()
            .digest,
        "sha256:aa"
    );

    // Tenants do not see each other's functions.
    assert!(registry.functions(&other).await.unwrap().is_empty());
    assert!(registry.function(&other, &hello).await.unwrap().is_none());
    assert_eq!(registry.functions(&tenant).await.unwrap().len(), 1);

    // Creating an existing function is refused; concurrent deploys get distinct numbers.
    assert!(matches!(
        registry.create_function(&tenant, &hello, 3).await,
        Err(RegistryError::AlreadyExists(_))
    ));
    let (a, b_) = tokio::join!(
        registry.deploy(&tenant, &hello, version("sha256:cc", 1), 3),
        registry.deploy(&tenant, &hello, version("sha256:dd", 1), 3)
    );
    let mut numbers = [a.unwrap().0.version, b_.unwrap().0.version];
    numbers.sort_unstable();
    assert_eq!(numbers, [3, 4]);

    aliases(&registry, &tenant, &hello).await;

    assert!(
        registry
            .delete_function(&tenant, &hello)
            .await
            .unwrap()
            .is_some()
    );
    assert!(registry.function(&tenant, &hello).await.unwrap().is_none());
    assert!(matches!(
        registry.versions(&tenant, &hello).await,
        Err(RegistryError::NoSuchFunction(_))
    ));
    assert!(
        registry
            .delete_function(&tenant, &hello)
            .await
            .unwrap()
            .is_none()
    );
    applications(&registry, &tenant).await;
}

/// Applications: staged versions serve nothing until a release names
/// them; a release, a split and a rollback are each one change; the
/// application's record is not listed as a function; removing it
/// removes its functions and keeps other tenants' alone.
async fn applications(registry: &Registry, tenant: &TenantId) {
    let shop = FunctionName::new("shop").unwrap();
    let (front, back) = (
        FunctionName::new("front").unwrap(),
        FunctionName::new("back").unwrap(),
    );
    let staged = |digest: &str| NewVersion {
        activation: Activation::Staged,
        app: Some(shop.clone()),
        ..version(digest, 5)
    };
    for (name, digest) in [(&front, "sha256:f1"), (&back, "sha256:b1")] {
        registry
            .deploy(tenant, name, staged(digest), 1)
            .await
            .unwrap();
        let record = registry.function(tenant, name).await.unwrap().unwrap();
        assert!(
            record.live().is_none(),
            "a staged first version is not live"
        );
        assert_eq!(record.app.as_deref(), Some("shop"));
    }
    let members = |f: u64, b: u64| {
        [(front.clone(), f), (back.clone(), b)]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let first = registry
        .release_app(
            tenant,
            &shop,
            &members(1, 1),
            Default::default(),
            crate::ReleaseAs::Live,
            2,
        )
        .await
        .unwrap();
    assert_eq!((first.version, first.app.live), (1, 1));
    registry
        .deploy(tenant, &front, staged("sha256:f2"), 3)
        .await
        .unwrap();
    let second = registry
        .release_app(
            tenant,
            &shop,
            &members(2, 1),
            Default::default(),
            crate::ReleaseAs::Split(1000),
            4,
        )
        .await
        .unwrap();
    assert!(second.revision > first.revision);
    assert_eq!(second.app.live, 1);
    assert_eq!(
        second.app.split.map(|s| (s.version, s.basis_points)),
        Some((2, 1000))
    );
    let (app, live, _) = registry
        .update_app(tenant, &shop, false, 5, |app| Ok(app.promote(5)?))
        .await
        .unwrap();
    assert_eq!((live, app.live, app.previous), (2, 2, Some(1)));
    assert_eq!(
        app.live_version().unwrap().functions["front"].digest,
        "sha256:f2"
    );
    // A version no release names cannot be released; a stranger cannot join.
    assert!(matches!(
        registry
            .release_app(
                tenant,
                &shop,
                &members(9, 1),
                Default::default(),
                crate::ReleaseAs::Live,
                6
            )
            .await,
        Err(RegistryError::NoSuchVersion { version: 9, .. })
    ));
    let other_app = FunctionName::new("other").unwrap();
    assert!(matches!(
        registry
            .release_app(
                tenant,
                &other_app,
                &members(1, 1),
                Default::default(),
                crate::ReleaseAs::Live,
                6
            )
            .await,
        Err(RegistryError::Refused(_))
    ));
    let names: Vec<String> = registry
        .functions(tenant)
        .await
        .unwrap()
        .iter()
        .map(|f| f.name.to_string())
        .collect();
    assert_eq!(names, ["back", "front"], "the app record is not a function");
    assert_eq!(registry.apps(tenant).await.unwrap().len(), 1);
    let someone = TenantId::new("someone").unwrap();
    assert!(registry.apps(&someone).await.unwrap().is_empty());
    assert!(registry.app(&someone, &shop).await.unwrap().is_none());
    let (removed, _) = registry.delete_app(tenant, &shop).await.unwrap().unwrap();
    assert_eq!(removed.len(), 2);
    assert!(registry.functions(tenant).await.unwrap().is_empty());
    assert!(registry.app(tenant, &shop).await.unwrap().is_none());
    assert!(registry.delete_app(tenant, &shop).await.unwrap().is_none());
}

/// Aliases over versions 1–4 of `hello` (`live` at 4): moves, splits,
/// rollbacks, canaries.
async fn aliases(registry: &Registry, tenant: &TenantId, hello: &FunctionName) {
    use gust_core::deploy::CanaryOutcome;
    let live = |f: &gust_core::FunctionRecord| f.live().unwrap().target.version;
    let to = |version| AliasTarget {
        version,
        split: None,
    };
    let (f, _) = registry
        .set_alias(tenant, hello, "live", to(2), 4)
        .await
        .unwrap();
    assert_eq!(live(&f), 2);
    let split = AliasTarget {
        version: 1,
        split: Some((2, 1000)),
    };
    let (f, _) = registry
        .set_alias(tenant, hello, "staging", split, 4)
        .await
        .unwrap();
    let staging = &f.aliases["staging"];
    assert_eq!(staging.target.version, 1);
    assert_eq!(
        staging
            .split
            .as_ref()
            .map(|s| (s.to.version, s.basis_points)),
        Some((2, 1000))
    );
    assert!(matches!(
        registry
            .set_alias(tenant, hello, "staging", to(99), 4)
            .await,
        Err(RegistryError::NoSuchVersion { version: 99, .. })
    ));
    let same = AliasTarget {
        version: 1,
        split: Some((1, 500)),
    };
    assert!(matches!(
        registry.set_alias(tenant, hello, "staging", same, 4).await,
        Err(RegistryError::Refused(_))
    ));
    assert!(matches!(
        registry.set_alias(tenant, hello, "Bad", to(1), 4).await,
        Err(RegistryError::Refused(_))
    ));
    // Rolling back returns to the version before the last move, and back.
    assert_eq!(
        registry.rollback(tenant, hello, "live", 5).await.unwrap().1,
        4
    );
    assert_eq!(
        registry.rollback(tenant, hello, "live", 5).await.unwrap().1,
        2
    );
    assert!(matches!(
        registry.rollback(tenant, hello, "nope", 5).await,
        Err(RegistryError::NoSuchAlias { .. })
    ));

    // A canary splits `live` until it is judged; only once.
    let mut canary = version("sha256:ee", 1);
    canary.activation = Activation::Canary {
        basis_points: 1000,
        window_ms: 60_000,
        policy: Default::default(),
    };
    let (v5, _) = registry.deploy(tenant, hello, canary, 6).await.unwrap();
    let f = registry.function(tenant, hello).await.unwrap().unwrap();
    let l = f.live().unwrap();
    assert_eq!(l.target.version, 2);
    assert_eq!(l.split.as_ref().map(|s| s.to.version), Some(v5.version));
    assert_eq!(l.canary.as_ref().map(|c| c.window_ms), Some(60_000));
    let ended = registry.end_canary(tenant, hello, v5.version, true, "healthy", 7);
    assert!(ended.await.unwrap().is_some());
    let again = registry.end_canary(tenant, hello, v5.version, false, "late", 8);
    assert!(again.await.unwrap().is_none());
    let f = registry.function(tenant, hello).await.unwrap().unwrap();
    let l = f.live().unwrap();
    assert_eq!(
        (l.target.version, l.previous, l.split.is_none()),
        (v5.version, Some(2), true)
    );
    let report = f.canaries.last().unwrap();
    assert_eq!(
        (report.outcome, report.stable, report.reason.as_str()),
        (CanaryOutcome::Promoted, 2, "healthy")
    );

    // A canary rolled back by hand leaves the stable version serving.
    let mut canary = version("sha256:ff", 1);
    canary.activation = Activation::Canary {
        basis_points: 5000,
        window_ms: 60_000,
        policy: Default::default(),
    };
    let (v6, _) = registry.deploy(tenant, hello, canary, 9).await.unwrap();
    let (f, serving, _) = registry.rollback(tenant, hello, "live", 10).await.unwrap();
    assert_eq!((serving, live(&f)), (v5.version, v5.version));
    assert_eq!(
        f.canaries.last().map(|r| (r.version, r.outcome)),
        Some((v6.version, CanaryOutcome::RolledBack))
    );

    // A function's aliases are capped.
    let mut refused = false;
    for i in 0..=crate::registry::MAX_ALIASES {
        match registry
            .set_alias(tenant, hello, &format!("a{i}"), to(1), 11)
            .await
        {
            Ok(_) => {}
            Err(RegistryError::Refused(_)) => refused = true,
            Err(e) => panic!("{e}"),
        }
    }
    let f = registry.function(tenant, hello).await.unwrap().unwrap();
    assert!(refused);
    assert_eq!(f.aliases.len(), crate::registry::MAX_ALIASES);

    assert!(matches!(
        registry.remove_alias(tenant, hello, "live").await,
        Err(RegistryError::Refused(_))
    ));
    let (f, _) = registry
        .remove_alias(tenant, hello, "staging")
        .await
        .unwrap();
    assert!(!f.aliases.contains_key("staging"));
    assert!(matches!(
        registry.remove_alias(tenant, hello, "staging").await,
        Err(RegistryError::NoSuchAlias { .. })
    ));
}

//! Two nodes on one store: `one` and `other` are two connections to the
//! same store (or the same handle twice, for a backend on one machine),
//! each with its own registry, accounts and leases, as two processes of a
//! cluster would have. What one process serialised with its own mutexes
//! must hold across them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gust_core::route::RouteClaim;

use super::*;
use crate::{LEASES_PREFIX, Lease};

fn lease_record(holder: Option<&str>, ttl_ms: u64) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "holder": holder, "ttl_ms": ttl_ms })).unwrap(),
    )
}

async fn holder(kv: &Arc<dyn MetaStore>, name: &str) -> Option<String> {
    let entry = kv.get(&format!("{LEASES_PREFIX}{name}")).await.unwrap()?;
    let value: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    value["holder"].as_str().map(str::to_string)
}

/// A lease excludes across processes; a renewing holder keeps it past its
/// time to live; one given back is free at once; an abandoned one is
/// taken over after its time to live; a holder that lost it never gives
/// back the lease its successor holds.
pub async fn leases(one: Arc<dyn MetaStore>, other: Arc<dyn MetaStore>) {
    let ttl = Duration::from_millis(1500);
    let a = Lease::with_ttl(one.clone(), "test", ttl);
    let b = Lease::with_ttl(other.clone(), "test", ttl);

    // Held and renewed: the other waits past twice the time to live.
    let held = a.acquire().await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.unwrap() }
    });
    tokio::time::sleep(ttl * 2 + ttl / 2).await;
    assert!(!waiting.is_finished(), "a renewed lease was taken over");
    let given_back = Instant::now();
    held.release().await;
    let taken = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a lease given back is taken at once")
        .unwrap();
    assert!(given_back.elapsed() < ttl, "{:?}", given_back.elapsed());
    assert!(holder(&one, "test").await.is_some());
    taken.release().await;
    assert_eq!(holder(&one, "test").await, None, "released");

    // A waiter that gives up takes nothing.
    let held = a.acquire().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), b.acquire())
            .await
            .is_err()
    );
    held.release().await;
    let again = tokio::time::timeout(ttl / 2, a.acquire())
        .await
        .expect("a waiter that gave up left the lease free")
        .unwrap();
    again.release().await;

    // Under contention from both processes, one holder at a time.
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let lease = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guard = lease.acquire().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("every contender gets the lease")
            .unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");

    // Abandoned (its holder crashed): taken over once it has not changed
    // for its time to live, not before.
    let key = format!("{LEASES_PREFIX}crashed");
    one.put(&key, lease_record(Some("gone"), 400))
        .await
        .unwrap();
    let started = Instant::now();
    let c = Lease::with_ttl(other.clone(), "crashed", ttl);
    let guard = tokio::time::timeout(Duration::from_secs(10), c.acquire())
        .await
        .expect("an abandoned lease is taken over")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "taken over early: {:?}",
        started.elapsed()
    );
    assert_ne!(holder(&one, "crashed").await.as_deref(), Some("gone"));
    guard.release().await;

    // Lost (another took it over while this holder stalled): giving it
    // back leaves the successor's lease alone.
    let d = Lease::with_ttl(one.clone(), "lost", ttl);
    let guard = d.acquire().await.unwrap();
    let key = format!("{LEASES_PREFIX}lost");
    other
        .put(&key, lease_record(Some("successor"), 60_000))
        .await
        .unwrap();
    tokio::time::sleep(ttl / 2).await;
    guard.release().await;
    assert_eq!(
        holder(&other, "lost").await.as_deref(),
        Some("successor"),
        "a lost lease was given back over its successor's"
    );
}

/// Two registries on one store change the same route claims at once:
/// exactly one takes them, and nothing is left claimed by the other.
pub async fn claims_across_nodes(one: Arc<dyn MetaStore>, other: Arc<dyn MetaStore>) {
    let (first, second) = (Registry::new(one.clone()), Registry::new(other.clone()));
    let tenant = TenantId::default_tenant();
    let stranger = TenantId::new("stranger").unwrap();
    let a = FunctionName::new("a").unwrap();
    let b = FunctionName::new("b").unwrap();
    first.create_function(&tenant, &a, 0).await.unwrap();
    second.create_function(&tenant, &b, 0).await.unwrap();
    second.create_function(&stranger, &b, 0).await.unwrap();
    let claim = |text: &str| text.parse::<RouteClaim>().unwrap();
    let claimed = |claim: RouteClaim| {
        let one = one.clone();
        async move {
            one.get(&format!("claim/{}", claim.place()))
                .await
                .unwrap()
                .map(|e| String::from_utf8(e.value.to_vec()).unwrap())
        }
    };

    for round in 0..6 {
        // The same two places, taken in opposite orders.
        let (p, q) = (claim(&format!("/p{round}")), claim(&format!("/q{round}")));
        let (x, y) = tokio::join!(
            tokio::spawn({
                let (first, tenant, a) = (first.clone(), tenant.clone(), a.clone());
                let claims = vec![p.clone(), q.clone()];
                async move { first.set_routes(&tenant, &a, claims).await }
            }),
            tokio::spawn({
                let (second, tenant, b) = (second.clone(), tenant.clone(), b.clone());
                let claims = vec![q.clone(), p.clone()];
                async move { second.set_routes(&tenant, &b, claims).await }
            }),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            usize::from(x.is_ok()) + usize::from(y.is_ok()),
            1,
            "round {round}: exactly one takes both: {x:?} / {y:?}"
        );
        for refused in [&x, &y].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(refused, RegistryError::RouteTaken { .. }),
                "{refused:?}"
            );
        }
        let (winner, name, registry) = if x.is_ok() {
            ("default/a", &a, &first)
        } else {
            ("default/b", &b, &second)
        };
        assert_eq!(claimed(p.clone()).await.as_deref(), Some(winner));
        assert_eq!(claimed(q.clone()).await.as_deref(), Some(winner));
        let loser = if x.is_ok() { &b } else { &a };
        let record = first.function(&tenant, loser).await.unwrap().unwrap();
        assert!(record.routes.is_empty(), "{:?}", record.routes);
        registry.set_routes(&tenant, name, vec![]).await.unwrap();
        assert_eq!(claimed(p).await, None, "round {round}: claim left behind");
        assert_eq!(claimed(q).await, None, "round {round}: claim left behind");
    }

    // Two tenants, one host, different prefixes: a host is one tenant's.
    for round in 0..4 {
        let host = format!("h{round}.example.com");
        let (mine, theirs) = (claim(&format!("{host}/a")), claim(&format!("{host}/b")));
        let (x, y) = tokio::join!(
            tokio::spawn({
                let (first, tenant, a) = (first.clone(), tenant.clone(), a.clone());
                let claims = vec![mine.clone()];
                async move { first.set_routes(&tenant, &a, claims).await }
            }),
            tokio::spawn({
                let (second, stranger, b) = (second.clone(), stranger.clone(), b.clone());
                let claims = vec![theirs.clone()];
                async move { second.set_routes(&stranger, &b, claims).await }
            }),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            usize::from(x.is_ok()) + usize::from(y.is_ok()),
            1,
            "round {round}: one tenant takes the host: {x:?} / {y:?}"
        );
        first.set_routes(&tenant, &a, vec![]).await.unwrap();
        second.set_routes(&stranger, &b, vec![]).await.unwrap();
        assert_eq!(claimed(mine).await, None);
        assert_eq!(claimed(theirs).await, None);
    }

    // Removing a function releases its claims, whichever node removes it.
    first
        .set_routes(&tenant, &a, vec![claim("/kept")])
        .await
        .unwrap();
    second.delete_function(&tenant, &a).await.unwrap();
    assert_eq!(claimed(claim("/kept")).await, None);
}

/// One node's count of a tenant's component bytes follows another
/// node's deploys and removals.
pub async fn component_bytes_across_nodes(one: Arc<dyn MetaStore>, other: Arc<dyn MetaStore>) {
    let (first, second) = (Registry::new(one), Registry::new(other));
    let tenant = TenantId::default_tenant();
    let hello = FunctionName::new("hello").unwrap();
    let new = |size_bytes| NewVersion {
        digest: format!("sha256:{size_bytes}"),
        size_bytes,
        limits: Limits::default(),
        delivery: Default::default(),
        public: None,
        activation: Default::default(),
        app: None,
    };
    let eventually = |want: u64| {
        let first = first.clone();
        let tenant = tenant.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen = first.component_bytes(&tenant).await.unwrap();
                if seen == want {
                    return;
                }
                assert!(Instant::now() < deadline, "saw {seen} bytes, not {want}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eventually(0).await;
    // Counted (and kept) before the other node deploys.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first.component_bytes(&tenant).await.unwrap(), 0);
    second.deploy(&tenant, &hello, new(100), 1).await.unwrap();
    eventually(100).await;
    second.deploy(&tenant, &hello, new(50), 2).await.unwrap();
    eventually(150).await;
    second.delete_function(&tenant, &hello).await.unwrap();
    eventually(0).await;
    // This node's own deploy counts at once.
    first.deploy(&tenant, &hello, new(7), 3).await.unwrap();
    assert_eq!(first.component_bytes(&tenant).await.unwrap(), 7);
}

/// Two nodes revoke the last two admin tokens that never expire at once:
/// one is refused.
pub async fn revocations_across_nodes(one: Arc<dyn MetaStore>, other: Arc<dyn MetaStore>) {
    let first = Accounts::start(one).await.unwrap();
    let second = Accounts::start(other).await.unwrap();
    let tenant = TenantId::default_tenant();
    first
        .create_tenant(tenant.clone(), Quotas::default(), 0)
        .await
        .unwrap();
    let admin = |random: u8| {
        let (first, tenant) = (first.clone(), tenant.clone());
        async move {
            first
                .create_token(&tenant, Role::Admin, None, String::new(), [random; 32], 0)
                .await
                .unwrap()
                .0
                .id
        }
    };
    let mut last = admin(1).await;
    for round in 0..6u8 {
        let another = admin(round + 2).await;
        let (x, y) = tokio::join!(
            tokio::spawn({
                let (first, id) = (first.clone(), last.clone());
                async move { first.revoke(None, &id, 1).await }
            }),
            tokio::spawn({
                let (second, id) = (second.clone(), another.clone());
                async move { second.revoke(None, &id, 1).await }
            }),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            usize::from(x.is_ok()) + usize::from(y.is_ok()),
            1,
            "round {round}: {x:?} / {y:?}"
        );
        for refused in [&x, &y].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(refused, AccountsError::LastAdminToken(_)),
                "{refused:?}"
            );
        }
        if x.is_ok() {
            last = another;
        }
    }
}

//! Accounts on a backend's metadata store: tokens and admins.

use super::*;

/// Accounts on `store`: tokens verified, revoked and expired, seen alike by a
/// second view of the same store.
pub async fn accounts(store: Arc<dyn MetaStore>) {
    let accounts = Accounts::start(store.clone()).await.unwrap();
    let acme = TenantId::new("acme").unwrap();
    assert!(matches!(
        accounts
            .create_token(&acme, Role::Owner, None, String::new(), [1; 32], 0)
            .await,
        Err(AccountsError::NoSuchTenant(_))
    ));
    accounts
        .create_tenant(acme.clone(), Quotas::default(), 0)
        .await
        .unwrap();
    assert!(matches!(
        accounts
            .create_tenant(acme.clone(), Quotas::default(), 0)
            .await,
        Err(AccountsError::TenantExists(_))
    ));
    let (record, token) = accounts
        .create_token(&acme, Role::Deployer, Some(1_000), "ci".into(), [7; 32], 0)
        .await
        .unwrap();
    assert!(token.starts_with("gust_070707070707_"));
    assert_ne!(record.hash, token, "only a hash is stored");
    assert_eq!(accounts.verify(&token, 10).unwrap().role, Role::Deployer);
    assert_eq!(
        accounts.verify(&token, 1_000),
        Err(AuthError::Expired(record.id.clone()))
    );
    let mut forged = token.clone();
    forged.pop();
    forged.push('x');
    assert_eq!(accounts.verify(&forged, 10), Err(AuthError::Unknown));
    assert_eq!(accounts.verify("Bearer x", 10), Err(AuthError::Malformed));

    // Another tenant cannot revoke it; its own tenant can.
    let other = TenantId::new("other").unwrap();
    assert!(accounts.revoke(Some(&other), &record.id, 5).await.is_err());
    accounts.revoke(Some(&acme), &record.id, 5).await.unwrap();
    assert_eq!(
        accounts.verify(&token, 10),
        Err(AuthError::Revoked(record.id.clone()))
    );

    // A second view of the same store (another process, a restart) agrees.
    let again = Accounts::start(store).await.unwrap();
    assert_eq!(again.verify(&token, 10), Err(AuthError::Revoked(record.id)));
    assert_eq!(again.tenants().len(), 1);
}

/// The last admin token that never expires is not revoked, even by two
/// revocations at once.
pub async fn last_admin_token(store: Arc<dyn MetaStore>) {
    let accounts = Accounts::start(store).await.unwrap();
    let default = TenantId::default_tenant();
    let acme = TenantId::new("acme").unwrap();
    for tenant in [&default, &acme] {
        accounts
            .create_tenant(tenant.clone(), Quotas::default(), 0)
            .await
            .unwrap();
    }
    let admin = |random: u8, tenant: &TenantId, expires: Option<u64>| {
        let accounts = accounts.clone();
        let tenant = tenant.clone();
        async move {
            let (record, _) = accounts
                .create_token(
                    &tenant,
                    Role::Admin,
                    expires,
                    String::new(),
                    [random; 32],
                    0,
                )
                .await
                .unwrap();
            record.id
        }
    };
    let first = admin(1, &default, None).await;
    let expiring = admin(2, &default, Some(1_000_000)).await;
    // Alone but for one that expires: refused, and still valid.
    let refused = accounts.revoke(None, &first, 5).await;
    assert!(
        matches!(&refused, Err(AccountsError::LastAdminToken(id)) if *id == first),
        "{refused:?}"
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("last admin token")
    );
    assert!(accounts.tokens(None).iter().all(|t| t.revoked_ms.is_none()));
    // The expiring one may go; a second lasting admin (in another
    // tenant) lets the first go, and is then the last.
    accounts.revoke(None, &expiring, 5).await.unwrap();
    let second = admin(3, &acme, None).await;
    accounts.revoke(Some(&default), &first, 6).await.unwrap();
    assert!(matches!(
        accounts.revoke(None, &second, 7).await,
        Err(AccountsError::LastAdminToken(_))
    ));
    // Revoking a revoked token changes nothing (and is no error).
    let again = accounts.revoke(None, &first, 8).await.unwrap();
    assert_eq!(again.revoked_ms, Some(6));
    // Two revocations at once cannot both pass.
    let third = admin(4, &default, None).await;
    let (a, b) = tokio::join!(
        accounts.revoke(None, &second, 9),
        accounts.revoke(None, &third, 9)
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
}

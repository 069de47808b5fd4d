//! The control API's request bodies and query strings, through the real
//! router, handlers and embedded store: whatever a client sends gets an
//! answer, and never a 500 (a 500 means the server failed, not the input).
//!
//! Input: the first byte picks an endpoint; up to the first newline is
//! the query string; the rest is the body.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use gust_api::ApiState;
use gust_events::Events;
use gust_runtime::{Runtime, RuntimeConfig};
use gust_store::{Accounts, Buckets, Registry};
use gust_store_embedded::{EmbeddedStore, StoreOptions};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/v1/functions"),
    ("POST", "/v1/functions/f/versions"),
    ("POST", "/v1/functions/f/schedules"),
    ("POST", "/v1/functions/f/triggers"),
    ("POST", "/v1/functions/f/sources"),
    ("POST", "/v1/tenants"),
    ("PUT", "/v1/tenants/default/quotas"),
    ("PUT", "/v1/tenants/default/plan"),
    ("POST", "/v1/tokens"),
    ("PUT", "/v1/kv/b/keys/k"),
    ("GET", "/v1/kv/b/keys"),
    ("GET", "/v1/functions/f/logs"),
    ("GET", "/v1/functions/f/invocations"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/usage"),
];

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let router = rt.block_on(async {
            let store = EmbeddedStore::open_with(
                &dir.path().join("gust.redb"),
                &StoreOptions { min_free_bytes: 0 },
            )
            .unwrap();
            let kv: Arc<dyn gust_store::MetaStore> = Arc::new(store.clone());
            let accounts = Accounts::start(kv.clone()).await.unwrap();
            // What `gust up` does on a fresh data directory.
            accounts
                .create_tenant(gust_core::TenantId::default_tenant(), Default::default(), 0)
                .await
                .unwrap();
            let registry = Registry::new(kv.clone());
            let buckets = Buckets::new(Arc::new(store.clone()))
                .with_quotas(accounts.clone(), registry.clone());
            let runtime = Runtime::new(&RuntimeConfig::new(dir.path().join("artifacts"))).unwrap();
            let (_stop, stopping) = tokio::sync::watch::channel(false);
            // Deploys answer once the data plane serves them: here, at once.
            let (_live, applied) = tokio::sync::watch::channel(u64::MAX);
            std::mem::forget((_stop, _live));
            gust_api::router(ApiState {
                registry,
                blobs: Arc::new(store.clone()),
                logs: Arc::new(store.clone()),
                runtime,
                public_url: "http://127.0.0.1:8080".into(),
                tenant_domain: Some("tenants.example".into()),
                public_hosts: vec!["gust.example".into()],
                max_upload_bytes: 1 << 20,
                metrics: Arc::new(gust_api::DataPlaneStats::default),
                events: Events::new(Arc::new(store.clone()), kv),
                buckets,
                accounts,
                meter: Some(
                    gust_meter::Meter::start(
                        Arc::new(store.clone()),
                        Arc::new(|_: &str| Default::default()),
                        &dir.path().join("ledger"),
                    )
                    .await
                    .unwrap(),
                ),
                auth: false,
                stopping,
                applied: applied.clone(),
                // No data plane here: no function is deployed on one.
                scale: Arc::new(|_: &str, _: &str| None),
                reservations: Arc::new(|_: &str, _: &str, _: u32| Ok(())),
                secrets: Arc::new(gust_store::SecretBox::from_key(&[7; 32]).unwrap()),
                retention: Default::default(),
                keep_trace_context: false,
                // No brokers here: every source that passes validation is
                // refused by its check, as an unreachable broker would be.
                source_check: Arc::new(|_, _, _, _| {
                    Box::pin(async { Err("fuzzing: no brokers".to_string()) })
                }),
                cluster: Arc::new(gust_api::cluster::SingleNode {
                    node: "fuzz".into(),
                    started_ms: 0,
                    data_url: "http://127.0.0.1:8080".into(),
                    api_url: "http://127.0.0.1:8081".into(),
                    applied: applied.clone(),
                    metrics: Arc::new(gust_api::DataPlaneStats::default),
                }),
            })
        });
        let harness = Harness {
            rt,
            router,
            _dir: dir,
        };
        // A function for the endpoints that need one.
        let created = send(
            &harness,
            "POST",
            "/v1/functions",
            "",
            br#"{"name":"f"}"#.to_vec(),
        );
        assert_eq!(created, 201, "the harness serves the API");
        harness
    })
}

fn send(h: &Harness, method: &str, path: &str, query: &str, body: Vec<u8>) -> u16 {
    let uri = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let Ok(request) = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
    else {
        return 400;
    };
    h.rt.block_on(h.router.clone().oneshot(request))
        .map(|r| r.status().as_u16())
        .unwrap_or(500)
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, rest)) = bytes.split_first() else {
        return;
    };
    let (method, path) = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(0);
    let query = String::from_utf8_lossy(&rest[..split]);
    let body = rest[split..].strip_prefix(b"\n").unwrap_or(&rest[split..]);
    let status = send(harness(), method, path, &query, body.to_vec());
    assert!(status != 500, "{method} {path}?{query}: 500");
});

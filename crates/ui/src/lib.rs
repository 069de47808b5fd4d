//! The web dashboard, served by `gust up` on the API listener at `/ui/`.
//!
//! Owns: sign-in and sessions (`session.rs`), the pages (`pages.rs`),
//! charts drawn as SVG on the server (`chart.rs`), and its two assets (a
//! stylesheet and a small script, in `assets/`, built into the binary).
//! Pages are HTML rendered here (maud, escaped by construction); there is
//! no build step and nothing from another origin: the
//! Content-Security-Policy allows this origin's script and stylesheet
//! only, no inline script or style.
//!
//! Everything a page shows or changes goes through the control API's own
//! router, in process, with the session's token (`api.rs`): what a
//! session sees is what its token may see under the API's rules, and its
//! changes are audited as the API's. Changes are forms posted with the
//! session's anti-forgery value, refused when the browser says they come
//! from another site; the cookie is SameSite=Strict besides.
//!
//! Must not depend on: a store, the gateway, the runtime (it is a client
//! of the API, nothing more).

mod api;
mod chart;
mod pages;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

pub use api::{Api, Failure};
pub use session::{MemorySessions, SessionStore, StoreFailed};
use session::{Session, Sessions};

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Cookies only over HTTPS (the API listener serves TLS).
    pub secure_cookies: bool,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
    /// How often this node sweeps expired sessions out of the store.
    pub sweep_every: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            secure_cookies: false,
            session_ttl: Duration::from_secs(8 * 3600),
            sweep_every: Duration::from_secs(600),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Ui {
    api: Api,
    sessions: Arc<Sessions>,
    config: Arc<UiConfig>,
}

/// The policy every dashboard answer carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, for the API listener; `api` is the control
/// API's router, which every page calls, and `store` keeps the sessions
/// (see [`SessionStore`]). Inside a tokio runtime, this also starts the
/// sweep of expired sessions, which ends when the router is dropped.
pub fn router(api: Router, config: UiConfig, store: Arc<dyn SessionStore>) -> Router {
    let sessions = Arc::new(Sessions::new(store, config.session_ttl));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(sweep(Arc::downgrade(&sessions), config.sweep_every));
    }
    let ui = Ui {
        api: Api(api),
        sessions,
        config: Arc::new(config),
    };
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/signin", get(pages::signin_form).post(pages::signin))
        .route("/ui/signout", post(pages::signout))
        .route("/ui/view", post(pages::view_tenant))
        .route("/ui/functions", get(pages::functions))
        .route("/ui/functions/{name}", get(pages::function))
        .route("/ui/functions/{name}/rollback", post(pages::rollback))
        .route("/ui/functions/{name}/redrive", post(pages::redrive))
        .route("/ui/functions/{name}/logs", get(pages::logs))
        .route("/ui/functions/{name}/logs/rows", get(pages::log_rows))
        .route("/ui/usage", get(pages::usage))
        .route("/ui/triggers", get(pages::triggers))
        .route("/ui/tokens", get(pages::tokens))
        .route("/ui/admin", get(pages::admin))
        .route("/ui/assets/gust.css", get(stylesheet))
        .route("/ui/assets/gust.js", get(script))
        .route("/ui/assets/icon.svg", get(icon))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(ui)
}

/// Headers on every answer: the CSP, no sniffing, no referrer to other
/// sites (`same-origin`: with none at all, browsers send `Origin: null` on
/// the dashboard's own forms, which the forgery check refuses), no frames,
/// and no caching of pages (they hold a tenant's data).
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Sweeps the sessions now and every `every` while the dashboard lives.
async fn sweep(sessions: std::sync::Weak<Sessions>, every: Duration) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        // A failed sweep is tried again at the next tick; sessions read
        // meanwhile are still checked for expiry one by one.
        let _ = sessions.sweep(session::now_ms()).await;
    }
}

async fn home(session: Option<Signed>) -> Redirect {
    match session {
        Some(_) => Redirect::to("/ui/functions"),
        None => Redirect::to("/ui/signin"),
    }
}

async fn stylesheet() -> impl IntoResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("../assets/gust.css"),
    )
}

async fn script() -> impl IntoResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/gust.js"),
    )
}

async fn icon() -> impl IntoResponse {
    asset("image/svg+xml", include_str!("../assets/icon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

/// A request from a signed-in browser; without a live session, a page
/// answers with the sign-in page instead.
pub(crate) struct Signed(pub Session);

impl FromRequestParts<Ui> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Response> {
        let ids = session::from_cookie_headers(
            parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            session::cookie_name(ui.config.secure_cookies),
        );
        // Two session cookies: one was planted; trust neither.
        let [id] = ids.as_slice() else {
            return Err(Redirect::to("/ui/signin").into_response());
        };
        match ui.sessions.get(id, session::now_ms()).await {
            Ok(Some(session)) => Ok(Signed(session)),
            Ok(None) => Err(Redirect::to("/ui/signin").into_response()),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

impl axum::extract::OptionalFromRequestParts<Ui> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        ui: &Ui,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Signed as FromRequestParts<Ui>>::from_request_parts(parts, ui)
                .await
                .ok(),
        )
    }
}

/// The session store did not answer: 503, and the page may be reloaded
/// (the store's own words go to the log, not to the browser).
pub(crate) fn unavailable(e: &session::StoreFailed) -> Response {
    tracing::warn!(error = %e, "dashboard: the session store did not answer");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "sessions cannot be reached now; reload the page in a moment\n",
    )
        .into_response()
}

/// Whether the browser says a change comes from this dashboard.
pub(crate) fn from_here(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    session::same_origin(
        get("sec-fetch-site"),
        get("origin"),
        get(header::HOST.as_str()),
    )
}

/// A change's checks: from this dashboard, with this session's value.
pub(crate) fn check_change(
    headers: &HeaderMap,
    session: &Session,
    csrf: &str,
) -> Result<(), Refused> {
    if from_here(headers) && session::same(csrf, &session.csrf) {
        Ok(())
    } else {
        Err(Refused)
    }
}

/// A change that did not come from a dashboard page.
pub(crate) struct Refused;

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "refused: this change did not come from a Gust dashboard page (reload the page and try again)\n",
        )
            .into_response()
    }
}

/// The state for handlers.
pub(crate) type UiState = State<Ui>;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::session::{MemorySessions, StoreFailed};

    /// A control API that takes every token (no page's other calls are
    /// made here).
    fn api() -> Router {
        Router::new().route(
            "/v1/tenant",
            get(|| async {
                axum::Json(serde_json::json!({
                    "id": "acme", "created_at_ms": 0, "quotas": {}, "plan": {}
                }))
            }),
        )
    }

    const UP: u8 = 0;
    const DOWN: u8 = 1;
    /// Every compare-and-set lost to another node.
    const LOSING: u8 = 2;

    /// Sessions in memory, out of reach or always losing on demand.
    #[derive(Default)]
    struct Switch {
        inner: MemorySessions,
        mode: AtomicU8,
    }

    impl Switch {
        fn check(&self) -> Result<(), StoreFailed> {
            match self.mode.load(Ordering::Relaxed) {
                DOWN => Err(StoreFailed("nats: no responders on 10.1.2.3:4222".into())),
                _ => Ok(()),
            }
        }
    }

    #[async_trait::async_trait]
    impl SessionStore for Switch {
        async fn get(&self, key: &str) -> Result<Option<(String, u64)>, StoreFailed> {
            self.check()?;
            self.inner.get(key).await
        }
        async fn compare_and_set(
            &self,
            key: &str,
            value: String,
            expected: Option<u64>,
        ) -> Result<Option<u64>, StoreFailed> {
            self.check()?;
            if self.mode.load(Ordering::Relaxed) == LOSING {
                return Ok(None);
            }
            self.inner.compare_and_set(key, value, expected).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, StoreFailed> {
            self.check()?;
            self.inner.list(prefix).await
        }
    }

    async fn sign_in(ui: &Router) -> (StatusCode, Option<String>, String) {
        let request = Request::post("/ui/signin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from("token=gust_secret"))
            .unwrap();
        let response = ui.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .filter(|pair| !pair.ends_with('='))
            .map(str::to_string);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, cookie, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_session_store_out_of_reach_or_always_losing_answers_503_and_says_what_to_do() {
        let store = Arc::new(Switch::default());
        let ui = router(api(), UiConfig::default(), store.clone());
        let (status, cookie, _) = sign_in(&ui).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let cookie = cookie.expect("a session cookie");

        // A page of a signed-in browser while the store is out of reach.
        store.mode.store(DOWN, Ordering::Relaxed);
        let page = Request::get("/ui/functions")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap();
        let response = ui.clone().oneshot(page).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("reload the page in a moment"), "{body}");
        assert!(
            !body.contains("10.1.2.3"),
            "the store's own words stay in the log"
        );

        // A sign-in while it is out of reach: 503, nothing kept.
        let (status, cookie, body) = sign_in(&ui).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(cookie.is_none());
        assert!(body.contains("try again in a moment"), "{body}");
        assert!(!body.contains("10.1.2.3"), "{body}");

        // A sign-in that loses every race for a slot gives up: 503.
        store.mode.store(LOSING, Ordering::Relaxed);
        let (status, cookie, body) = sign_in(&ui).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(cookie.is_none());
        assert!(
            body.contains("signing in on many browsers at once"),
            "{body}"
        );

        // Back: sign-ins work again.
        store.mode.store(UP, Ordering::Relaxed);
        assert_eq!(sign_in(&ui).await.0, StatusCode::SEE_OTHER);
    }
}

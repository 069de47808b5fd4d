//! Sessions: a token, once it signed in, behind a random cookie.
//!
//! The token never reaches the browser again: the cookie holds a random
//! session id (HttpOnly, SameSite=Strict, `Secure` under TLS, path `/ui`),
//! and the token stays in this process's memory, with the session's own
//! anti-forgery value and its expiry. Sign-out forgets the session. Under
//! TLS the cookie is `__Host-gust_session` (the browser keeps it to this
//! exact host, secure, path `/`). The data plane never hands these cookies
//! to a guest nor lets one set them (the gateway's `cookies.rs`): browsers
//! scope cookies by host, not port, and the two listeners may share a host.
//!
//! A session is stored only once the API accepted its token. The store is
//! bounded: a token keeps at most [`PER_TOKEN`] sessions (its oldest goes
//! first), and past the store's size the session closest to expiry goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "gust_session";
/// The cookie's name under TLS: `__Host-` binds it to this host, `Secure`
/// and path `/`.
pub const SECURE_COOKIE: &str = "__Host-gust_session";
/// Sessions one token may hold at once.
pub const PER_TOKEN: usize = 32;

/// The cookie's name for a listener with or without TLS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_COOKIE } else { COOKIE }
}

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    /// The token it signed in with; every API call of its pages carries it.
    pub token: String,
    /// Sent back with every change (a form's hidden field), checked here.
    pub csrf: String,
    /// The tenant an admin looks at (`None`: the token's own).
    pub viewing: Option<String>,
    expires: Instant,
}

#[cfg(test)]
impl Session {
    pub fn for_tests() -> Self {
        Self {
            id: "id".into(),
            token: "token".into(),
            csrf: "csrf".into(),
            viewing: None,
            expires: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, the id or the anti-forgery value.
        f.debug_struct("Session")
            .field("viewing", &self.viewing)
            .finish_non_exhaustive()
    }
}

/// The sessions of this node.
#[derive(Debug)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    max: usize,
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session for `token` that is not stored: to ask the API whether
    /// the token is good before anything is kept.
    pub fn trial(token: String) -> Session {
        Session {
            id: String::new(),
            token,
            csrf: String::new(),
            viewing: None,
            expires: Instant::now(),
        }
    }

    /// Starts a session for `token` (which the API accepted); `None` if the
    /// system's random source failed (no session is better than a
    /// guessable one).
    pub fn create(&self, token: String, now: Instant) -> Option<Session> {
        let session = Session {
            id: random_hex()?,
            token,
            csrf: random_hex()?,
            viewing: None,
            expires: now + self.ttl,
        };
        let mut all = self.lock();
        all.retain(|_, s| s.expires > now);
        // The token's own oldest session makes room first.
        let mut own: Vec<(Instant, String)> = all
            .values()
            .filter(|s| same(&s.token, &session.token))
            .map(|s| (s.expires, s.id.clone()))
            .collect();
        if own.len() >= PER_TOKEN {
            own.sort();
            for (_, id) in own.iter().take(own.len() + 1 - PER_TOKEN) {
                all.remove(id);
            }
        }
        while all.len() >= self.max {
            let Some(oldest) = all.values().min_by_key(|s| s.expires).map(|s| s.id.clone()) else {
                break;
            };
            all.remove(&oldest);
        }
        all.insert(session.id.clone(), session.clone());
        Some(session)
    }

    /// The live session of `id`.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut all = self.lock();
        match all.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                all.remove(id);
                None
            }
            None => None,
        }
    }

    /// Changes the tenant a session looks at.
    pub fn view(&self, id: &str, tenant: Option<String>) {
        if let Some(s) = self.lock().get_mut(id) {
            s.viewing = tenant;
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// 32 random bytes, in hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The session ids named `name` in `Cookie` headers.
pub fn from_cookie_headers<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Vec<&'a str> {
    headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .collect()
}

/// The `Set-Cookie` value that gives a browser its session.
pub fn set_cookie(id: &str, ttl: Duration, secure: bool) -> String {
    if secure {
        format!(
            "{SECURE_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            ttl.as_secs()
        )
    } else {
        format!(
            "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
            ttl.as_secs()
        )
    }
}

/// The `Set-Cookie` value that takes it away.
pub fn clear_cookie(secure: bool) -> String {
    if secure {
        format!("{SECURE_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
    } else {
        format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// Equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether a change comes from the dashboard's own pages, by what the
/// browser says of its origin: `Sec-Fetch-Site` (`same-origin`, or `none`
/// for what the user typed) and, when sent, `Origin` naming `host`. A
/// request that says neither (an old browser, a script) passes here and
/// is held by the session's anti-forgery value.
pub fn same_origin(sec_fetch_site: Option<&str>, origin: Option<&str>, host: Option<&str>) -> bool {
    if let Some(site) = sec_fetch_site
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (origin, host) {
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_it_expires_or_signs_out() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let s = sessions.create("tok".into(), t0).unwrap();
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(sessions.get(&s.id, t0).unwrap().token, "tok");
        assert!(sessions.get("nope", t0).is_none());
        assert!(sessions.get(&s.id, t0 + Duration::from_secs(61)).is_none());
        let s2 = sessions.create("tok".into(), t0).unwrap();
        sessions.remove(&s2.id);
        assert!(sessions.get(&s2.id, t0).is_none());
    }

    #[test]
    fn the_store_is_bounded_and_gives_up_the_session_closest_to_expiry() {
        let sessions = Sessions::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let a = sessions.create("a".into(), t0).unwrap();
        let b = sessions
            .create("b".into(), t0 + Duration::from_secs(1))
            .unwrap();
        let c = sessions
            .create("c".into(), t0 + Duration::from_secs(2))
            .unwrap();
        let now = t0 + Duration::from_secs(3);
        assert!(sessions.get(&a.id, now).is_none());
        assert!(sessions.get(&b.id, now).is_some() && sessions.get(&c.id, now).is_some());
    }

    #[test]
    fn cookies_are_http_only_same_site_strict_and_read_back() {
        let set = set_cookie("abc", Duration::from_secs(3600), true);
        for part in [
            "__Host-gust_session=abc",
            "Path=/;",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=3600",
            "Secure",
        ] {
            assert!(set.contains(part), "{set}");
        }
        let plain = set_cookie("abc", Duration::from_secs(1), false);
        assert!(plain.starts_with("gust_session=abc; Path=/ui;") && !plain.contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert!(clear_cookie(true).starts_with("__Host-gust_session=;"));
        let read = |h: &'static str| from_cookie_headers([h].into_iter(), COOKIE);
        assert_eq!(read("a=1; gust_session=xyz; b=2"), ["xyz"]);
        assert!(read("other_gust_session=1").is_empty());
        assert_eq!(read("gust_session=a; gust_session=b"), ["a", "b"]);
    }

    #[test]
    fn a_token_holds_a_bounded_number_of_sessions() {
        let sessions = Sessions::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        let other = sessions.create("other".into(), t0).unwrap();
        let first = sessions.create("busy".into(), t0).unwrap();
        for i in 1..=PER_TOKEN as u64 {
            sessions
                .create("busy".into(), t0 + Duration::from_millis(i))
                .unwrap();
        }
        let now = t0 + Duration::from_secs(1);
        assert!(
            sessions.get(&first.id, now).is_none(),
            "its own oldest went"
        );
        assert!(
            sessions.get(&other.id, now).is_some(),
            "another token's stayed"
        );
        assert_eq!(
            sessions
                .lock()
                .values()
                .filter(|s| s.token == "busy")
                .count(),
            PER_TOKEN
        );
        assert!(
            !format!("{first:?}").contains("busy"),
            "Debug hides the token"
        );
    }

    #[test]
    fn changes_from_another_site_are_refused() {
        let host = Some("127.0.0.1:8081");
        assert!(same_origin(
            Some("same-origin"),
            Some("http://127.0.0.1:8081"),
            host
        ));
        assert!(
            same_origin(None, None, host),
            "no claim: the csrf value decides"
        );
        assert!(!same_origin(Some("cross-site"), None, host));
        assert!(!same_origin(Some("same-site"), None, host));
        assert!(!same_origin(None, Some("http://evil.example"), host));
        assert!(!same_origin(None, Some("null"), host));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}

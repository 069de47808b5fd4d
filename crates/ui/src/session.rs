//! Sessions: a token, once it signed in, behind a random cookie.
//!
//! The token never reaches the browser again: the cookie holds a random
//! session id (HttpOnly, SameSite=Strict, `Secure` under TLS, path `/ui`),
//! and the token stays on the server, with the session's own anti-forgery
//! value and its expiry. Sign-out forgets the session. Under TLS the
//! cookie is `__Host-gust_session` (the browser keeps it to this exact
//! host, secure, path `/`). The data plane never hands these cookies to a
//! guest nor lets one set them (the gateway's `cookies.rs`): browsers
//! scope cookies by host, not port, and the two listeners may share a host.
//!
//! Where sessions are kept is the binary's choice, a [`SessionStore`]:
//! `gust up` keeps them in its metadata store, sealed with the key that
//! seals secrets, so a browser stays signed in across a restart and on
//! every node of a cluster behind one load balancer; [`MemorySessions`]
//! keeps them in this process. Keys are hashes, never a cookie's value or
//! a token: `uisession/id/<sha256(id)>` holds the session and
//! `uisession/token/<sha256(token)>/<sha256(id)>` its expiry, the index
//! that bounds a token's sessions and that the sweep walks. Expiry is wall
//! clock time (milliseconds since the epoch), the same on every node up
//! to their clocks' skew.
//!
//! A session is stored only once the API accepted its token. The store is
//! bounded: a token keeps at most [`PER_TOKEN`] sessions (at sign-in its
//! oldest go; two sign-ins of one token at the same moment on two nodes
//! may both see room, so the bound is `PER_TOKEN` plus the sign-ins that
//! raced, until the token's next sign-in), and [`Sessions::sweep`], run
//! by every node, removes expired sessions and, past the store's size,
//! those closest to expiry.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "gust_session";
/// The cookie's name under TLS: `__Host-` binds it to this host, `Secure`
/// and path `/`.
pub const SECURE_COOKIE: &str = "__Host-gust_session";
/// Sessions one token may hold at once.
pub const PER_TOKEN: usize = 32;

const BY_ID: &str = "uisession/id/";
const BY_TOKEN: &str = "uisession/token/";

/// The cookie's name for a listener with or without TLS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_COOKIE } else { COOKIE }
}

/// Where sessions are kept: a map of strings with prefix listing. An
/// implementation that writes them anywhere but this process's memory
/// must seal the values (they hold tokens).
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreFailed>;
    async fn put(&self, key: &str, value: String) -> Result<(), StoreFailed>;
    /// Deleting a key that is not there succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreFailed>;
    /// Every key under `prefix`, with its value.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreFailed>;
}

/// A [`SessionStore`] could not answer; its message says why.
#[derive(Debug, Clone)]
pub struct StoreFailed(pub String);

impl std::fmt::Display for StoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the session store failed: {}", self.0)
    }
}

impl std::error::Error for StoreFailed {}

/// Why no session could be made or read.
#[derive(Debug)]
pub enum SessionError {
    /// The system's random source failed: no session is better than a
    /// guessable one.
    Random,
    Store(StoreFailed),
}

impl From<StoreFailed> for SessionError {
    fn from(e: StoreFailed) -> Self {
        Self::Store(e)
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Random => {
                f.write_str("no session could be made: the system's random source failed")
            }
            Self::Store(e) => write!(f, "{e}; try again in a moment"),
        }
    }
}

/// Sessions in this process's memory: gone with it, seen by no other node.
#[derive(Debug, Default)]
pub struct MemorySessions(Mutex<BTreeMap<String, String>>);

impl MemorySessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreFailed> {
        Ok(self.lock().get(key).cloned())
    }
    async fn put(&self, key: &str, value: String) -> Result<(), StoreFailed> {
        self.lock().insert(key.to_string(), value);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreFailed> {
        self.lock().remove(key);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreFailed> {
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
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
    /// When it ends, in milliseconds since the epoch.
    expires_ms: u64,
}

#[cfg(test)]
impl Session {
    pub fn for_tests() -> Self {
        Self {
            id: "id".into(),
            token: "token".into(),
            csrf: "csrf".into(),
            viewing: None,
            expires_ms: 0,
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

/// A session as kept: everything but its id (the key holds its hash).
#[derive(Serialize, Deserialize)]
struct Record {
    token: String,
    csrf: String,
    #[serde(default)]
    viewing: Option<String>,
    expires_ms: u64,
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sessions, over a [`SessionStore`].
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    ttl: Duration,
    max: usize,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>, ttl: Duration, max: usize) -> Self {
        Self {
            store,
            ttl,
            max: max.max(1),
        }
    }

    /// A session for `token` that is not stored: to ask the API whether
    /// the token is good before anything is kept.
    pub fn trial(token: String) -> Session {
        Session {
            id: String::new(),
            token,
            csrf: String::new(),
            viewing: None,
            expires_ms: 0,
        }
    }

    /// Removes the session of hash `id_key` and its entry in the index
    /// of the token of hash `token_key`.
    async fn forget(&self, token_key: &str, id_key: &str) -> Result<(), StoreFailed> {
        self.store.delete(&format!("{BY_ID}{id_key}")).await?;
        self.store
            .delete(&format!("{BY_TOKEN}{token_key}/{id_key}"))
            .await
    }

    async fn write(&self, id: &str, record: &Record) -> Result<(), StoreFailed> {
        let value = serde_json::to_string(record).map_err(|e| StoreFailed(e.to_string()))?;
        self.store.put(&format!("{BY_ID}{}", hash(id)), value).await
    }

    /// Starts a session for `token` (which the API accepted).
    pub async fn create(&self, token: String, now_ms: u64) -> Result<Session, SessionError> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let session = Session {
            id: random_hex().ok_or(SessionError::Random)?,
            token,
            csrf: random_hex().ok_or(SessionError::Random)?,
            viewing: None,
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        let token_key = hash(&session.token);
        let index = format!("{BY_TOKEN}{token_key}/");
        // The token's expired sessions go, then its oldest make room.
        let mut own = Vec::new();
        for (key, expires) in self.store.list(&index).await? {
            let id_key = key[index.len()..].to_string();
            match expires.parse::<u64>() {
                Ok(expires) if expires > now_ms => own.push((expires, id_key)),
                _ => self.forget(&token_key, &id_key).await?,
            }
        }
        if own.len() >= PER_TOKEN {
            own.sort();
            for (_, id_key) in own.iter().take(own.len() + 1 - PER_TOKEN) {
                self.forget(&token_key, id_key).await?;
            }
        }
        // The index first: a session is never kept where the sweep and
        // the token's bound cannot see it.
        self.store
            .put(
                &format!("{index}{}", hash(&session.id)),
                session.expires_ms.to_string(),
            )
            .await?;
        self.write(
            &session.id,
            &Record {
                token: session.token.clone(),
                csrf: session.csrf.clone(),
                viewing: None,
                expires_ms: session.expires_ms,
            },
        )
        .await?;
        Ok(session)
    }

    /// The live session of `id`.
    pub async fn get(&self, id: &str, now_ms: u64) -> Result<Option<Session>, StoreFailed> {
        let id_key = hash(id);
        let Some(value) = self.store.get(&format!("{BY_ID}{id_key}")).await? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_str::<Record>(&value) else {
            // Not one of ours (or from a later version): not a session.
            return Ok(None);
        };
        if record.expires_ms <= now_ms {
            self.forget(&hash(&record.token), &id_key).await?;
            return Ok(None);
        }
        Ok(Some(Session {
            id: id.to_string(),
            token: record.token,
            csrf: record.csrf,
            viewing: record.viewing,
            expires_ms: record.expires_ms,
        }))
    }

    /// Changes the tenant a session looks at.
    pub async fn view(&self, session: &Session, tenant: Option<String>) -> Result<(), StoreFailed> {
        self.write(
            &session.id,
            &Record {
                token: session.token.clone(),
                csrf: session.csrf.clone(),
                viewing: tenant,
                expires_ms: session.expires_ms,
            },
        )
        .await
    }

    /// Ends a session (sign-out, or a token the API no longer accepts).
    pub async fn remove(&self, session: &Session) -> Result<(), StoreFailed> {
        self.forget(&hash(&session.token), &hash(&session.id)).await
    }

    /// Removes expired sessions and, past the store's size, those closest
    /// to expiry, and sessions whose index entry is gone; returns how many
    /// went.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, StoreFailed> {
        // Sessions before the index: a session's index entry is written
        // before it, so one listed here without an entry below had its
        // entry removed, not yet written.
        let sessions = self.store.list(BY_ID).await?;
        let mut live = Vec::new();
        let mut indexed = HashSet::new();
        let mut gone = 0;
        for (key, expires) in self.store.list(BY_TOKEN).await? {
            let Some((token_key, id_key)) = key[BY_TOKEN.len()..].split_once('/') else {
                continue;
            };
            indexed.insert(id_key.to_string());
            match expires.parse::<u64>() {
                Ok(expires) if expires > now_ms => {
                    live.push((expires, token_key.to_string(), id_key.to_string()));
                }
                _ => {
                    self.forget(token_key, id_key).await?;
                    gone += 1;
                }
            }
        }
        if live.len() > self.max {
            live.sort();
            for (_, token_key, id_key) in live.iter().take(live.len() - self.max) {
                self.forget(token_key, id_key).await?;
                gone += 1;
            }
        }
        for (key, _) in sessions {
            if !indexed.contains(&key[BY_ID.len()..]) {
                self.store.delete(&key).await?;
                gone += 1;
            }
        }
        Ok(gone)
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

    fn memory(ttl_secs: u64, max: usize) -> (Arc<MemorySessions>, Sessions) {
        let store = Arc::new(MemorySessions::default());
        let sessions = Sessions::new(store.clone(), Duration::from_secs(ttl_secs), max);
        (store, sessions)
    }

    #[tokio::test]
    async fn a_session_lives_until_it_expires_or_signs_out() {
        let (store, sessions) = memory(60, 10);
        let t0 = 1_000_000;
        let s = sessions.create("tok".into(), t0).await.unwrap();
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(sessions.get(&s.id, t0).await.unwrap().unwrap().token, "tok");
        assert!(sessions.get("nope", t0).await.unwrap().is_none());
        assert!(sessions.get(&s.id, t0 + 61_000).await.unwrap().is_none());
        assert!(
            store.lock().is_empty(),
            "an expired session is forgotten when read"
        );
        let s2 = sessions.create("tok".into(), t0).await.unwrap();
        sessions.view(&s2, Some("acme".into())).await.unwrap();
        let viewing = sessions.get(&s2.id, t0).await.unwrap().unwrap().viewing;
        assert_eq!(viewing.as_deref(), Some("acme"));
        sessions.remove(&s2).await.unwrap();
        assert!(sessions.get(&s2.id, t0).await.unwrap().is_none());
        assert!(store.lock().is_empty(), "sign-out leaves nothing behind");
    }

    #[tokio::test]
    async fn the_store_keeps_hashes_for_keys_and_never_a_cookie_in_the_clear() {
        let (store, sessions) = memory(60, 10);
        let s = sessions.create("gust_XYZ".into(), 0).await.unwrap();
        let all = store.lock().clone();
        assert_eq!(all.len(), 2, "{all:?}");
        for key in all.keys() {
            assert!(!key.contains(&s.id) && !key.contains("gust_XYZ"), "{key}");
        }
        assert!(all.values().all(|v| !v.contains(&s.id)));
    }

    #[tokio::test]
    async fn the_sweep_removes_expired_then_those_closest_to_expiry_past_the_size() {
        let (store, sessions) = memory(60, 2);
        let a = sessions.create("a".into(), 0).await.unwrap();
        let b = sessions.create("b".into(), 1_000).await.unwrap();
        let c = sessions.create("c".into(), 2_000).await.unwrap();
        let d = sessions.create("d".into(), 3_000).await.unwrap();
        // At 60.5 s the first has expired; of the three left, the store
        // keeps the two that last longest.
        assert_eq!(sessions.sweep(60_500).await.unwrap(), 2);
        let now = 60_500;
        assert!(sessions.get(&a.id, now).await.unwrap().is_none());
        assert!(sessions.get(&b.id, now).await.unwrap().is_none());
        assert!(sessions.get(&c.id, now).await.unwrap().is_some());
        assert!(sessions.get(&d.id, now).await.unwrap().is_some());
        assert_eq!(store.lock().len(), 4);
        // A session whose index entry is gone is swept as well.
        store
            .lock()
            .retain(|k, _| !k.starts_with(BY_TOKEN) || !k.ends_with(&hash(&c.id)));
        assert_eq!(sessions.sweep(now).await.unwrap(), 1);
        assert!(sessions.get(&c.id, now).await.unwrap().is_none());
        assert_eq!(store.lock().len(), 2);
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

    #[tokio::test]
    async fn a_token_holds_a_bounded_number_of_sessions() {
        let (store, sessions) = memory(60, 1000);
        let other = sessions.create("other".into(), 0).await.unwrap();
        let first = sessions.create("busy".into(), 0).await.unwrap();
        for i in 1..=PER_TOKEN as u64 {
            sessions.create("busy".into(), i).await.unwrap();
        }
        let now = 1_000;
        assert!(
            sessions.get(&first.id, now).await.unwrap().is_none(),
            "its own oldest went"
        );
        assert!(
            sessions.get(&other.id, now).await.unwrap().is_some(),
            "another token's stayed"
        );
        let busy = format!("{BY_TOKEN}{}/", hash("busy"));
        assert_eq!(sessions.store.list(&busy).await.unwrap().len(), PER_TOKEN);
        assert_eq!(store.lock().len(), 2 * (PER_TOKEN + 1));
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

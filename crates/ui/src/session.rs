//! Sessions: a token, once it signed in, behind a random cookie.
//!
//! The token never reaches the browser again: the cookie holds a random
//! secret (HttpOnly, SameSite=Strict, `Secure` under TLS, path `/ui`), and
//! the token stays on the server, with the session's own anti-forgery
//! value and its expiry. Sign-out ends the session. Under TLS the cookie
//! is `__Host-gust_session` (the browser keeps it to this exact host,
//! secure, path `/`). The data plane never hands these cookies to a guest
//! nor lets one set them (the gateway's `cookies.rs`): browsers scope
//! cookies by host, not port, and the two listeners may share a host.
//!
//! Where sessions are kept is the binary's choice, a [`SessionStore`]:
//! `gust up` keeps them in its metadata store, sealed with the key that
//! seals secrets, so a browser stays signed in across a restart and on
//! every node of a cluster behind one load balancer; [`MemorySessions`]
//! keeps them in this process.
//!
//! A token has [`PER_TOKEN`] slots, `uisession/<sha256(token)>/<slot>`,
//! and a sign-in takes one without a live session, picked at random (so
//! that sign-ins racing on several nodes seldom pick the same), else the
//! one closest to expiry (that session ends): the number of keys is bounded by
//! the tokens that signed in, never by how often, and no key is ever
//! deleted (a deleted key leaves a tombstone in a cluster's stream). A
//! slot holds the hash of its session's secret; the cookie is
//! `<sha256(token)>.<slot>.<secret>`, which names the slot. Every change
//! of a slot is a compare-and-set on what was read: two sign-ins racing
//! for one slot cannot both take it (the bound is exact, on every node),
//! and a change of view or a sign-out cannot bring back or end a session
//! that took the slot since. Sign-out and the sweep ([`Sessions::sweep`],
//! run by every node) leave a slot empty, its token gone. Expiry is wall
//! clock time (ms since the epoch), the same on every node up to their
//! clocks' skew.

use std::collections::BTreeMap;
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

const PREFIX: &str = "uisession/";
/// Compare-and-sets of one change before it gives up (others kept taking
/// the token's slots first).
const ATTEMPTS: usize = 8;

/// The cookie's name for a listener with or without TLS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_COOKIE } else { COOKIE }
}

/// Where sessions are kept: strings with revisions, compare-and-set and
/// prefix listing. An implementation that keeps them anywhere but this
/// process's memory must seal the values (they hold tokens).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The value and its revision.
    async fn get(&self, key: &str) -> Result<Option<(String, u64)>, StoreFailed>;
    /// Writes `value` if the key's revision is `expected` (`None`: the key
    /// must not exist): its new revision, or `None` if it was not.
    async fn compare_and_set(
        &self,
        key: &str,
        value: String,
        expected: Option<u64>,
    ) -> Result<Option<u64>, StoreFailed>;
    /// Every key under `prefix`, with its value and revision.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, StoreFailed>;
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

/// Why no session could be made or changed.
#[derive(Debug)]
pub enum SessionError {
    /// The system's random source failed: no session is better than a
    /// guessable one.
    Random,
    /// Other sign-ins of the token kept taking its slots first.
    Busy,
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
            Self::Busy => f.write_str(
                "this token is signing in on many browsers at once; try again in a moment",
            ),
            Self::Store(_) => f.write_str("sessions cannot be reached now; try again in a moment"),
        }
    }
}

/// Sessions in this process's memory: gone with it, seen by no other node.
#[derive(Debug, Default)]
pub struct MemorySessions {
    map: Mutex<Kept>,
}

/// Each key's value and revision; the last revision given.
type Kept = (BTreeMap<String, (String, u64)>, u64);

impl MemorySessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn get(&self, key: &str) -> Result<Option<(String, u64)>, StoreFailed> {
        Ok(self.lock().0.get(key).cloned())
    }
    async fn compare_and_set(
        &self,
        key: &str,
        value: String,
        expected: Option<u64>,
    ) -> Result<Option<u64>, StoreFailed> {
        let (map, last) = &mut *self.lock();
        if map.get(key).map(|(_, r)| *r) != expected {
            return Ok(None);
        }
        *last += 1;
        map.insert(key.to_string(), (value, *last));
        Ok(Some(*last))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, StoreFailed> {
        Ok(self
            .lock()
            .0
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| (k.clone(), v.clone(), *r))
            .collect())
    }
}

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The cookie's value: `<sha256(token)>.<slot>.<secret>`.
    pub id: String,
    /// The token it signed in with; every API call of its pages carries it.
    pub token: String,
    /// Sent back with every change (a form's hidden field), checked here.
    pub csrf: String,
    /// The tenant an admin looks at (`None`: the token's own).
    pub viewing: Option<String>,
    /// When it ends, in milliseconds since the epoch.
    expires_ms: u64,
    /// Its slot's key and the revision it was read at.
    key: String,
    revision: u64,
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
            key: String::new(),
            revision: 0,
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

/// A slot's session: everything but its secret, of which the hash.
#[derive(Serialize, Deserialize)]
struct Record {
    secret_hash: String,
    token: String,
    csrf: String,
    #[serde(default)]
    viewing: Option<String>,
    expires_ms: u64,
}

/// What an empty slot holds (a sign-out, a swept session).
const EMPTY: &str = "";

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn slot_key(token_hash: &str, slot: usize) -> String {
    format!("{PREFIX}{token_hash}/{slot}")
}

/// The slot's key and the secret a cookie names; `None` if it is not one
/// of ours.
fn parse_cookie(id: &str) -> Option<(String, &str)> {
    let mut parts = id.split('.');
    let (token_hash, slot, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let slot: usize = slot.parse().ok()?;
    (parts.next().is_none() && hex(token_hash) && hex(secret) && slot < PER_TOKEN)
        .then(|| (slot_key(token_hash, slot), secret))
}

/// The sessions, over a [`SessionStore`].
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    ttl: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>, ttl: Duration) -> Self {
        Self { store, ttl }
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
            key: String::new(),
            revision: 0,
        }
    }

    fn encode(record: &Record) -> Result<String, StoreFailed> {
        serde_json::to_string(record).map_err(|e| StoreFailed(e.to_string()))
    }

    /// Starts a session for `token` (which the API accepted), in a slot
    /// without a live session, else the one closest to expiry.
    pub async fn create(&self, token: String, now_ms: u64) -> Result<Session, SessionError> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let secret = random_hex().ok_or(SessionError::Random)?;
        let csrf = random_hex().ok_or(SessionError::Random)?;
        let token_hash = hash(&token);
        let record = Record {
            secret_hash: hash(&secret),
            token,
            csrf,
            viewing: None,
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        let value = Self::encode(&record)?;
        for _ in 0..ATTEMPTS {
            // Each slot's revision and when its session ends (0: empty).
            let mut slots: Vec<Option<(u64, u64)>> = vec![None; PER_TOKEN];
            let prefix = format!("{PREFIX}{token_hash}/");
            for (key, value, revision) in self.store.list(&prefix).await? {
                let Some(slot) = key[prefix.len()..]
                    .parse::<usize>()
                    .ok()
                    .filter(|s| *s < PER_TOKEN)
                else {
                    continue;
                };
                let ends = serde_json::from_str::<Record>(&value).map_or(0, |r| r.expires_ms);
                slots[slot] = Some((revision, ends));
            }
            // A slot that holds no live session (never used, emptied or
            // expired), one at random: sign-ins racing on other nodes, which
            // see the same slots, mostly take different ones.
            let open: Vec<(usize, Option<u64>)> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, slot)| match slot {
                    None => Some((i, None)),
                    Some((revision, ends)) if *ends <= now_ms => Some((i, Some(*revision))),
                    Some(_) => None,
                })
                .collect();
            let (slot, expected) = match open.get(random_below(open.len())) {
                Some(&open) => open,
                None => {
                    let (slot, revision) = slots
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| s.map(|(revision, ends)| (ends, i, revision)))
                        .min()
                        .map(|(_, i, revision)| (i, revision))
                        .unwrap_or((0, 0));
                    (slot, Some(revision))
                }
            };
            let key = slot_key(&token_hash, slot);
            if let Some(revision) = self
                .store
                .compare_and_set(&key, value.clone(), expected)
                .await?
            {
                return Ok(Session {
                    id: format!("{token_hash}.{slot}.{secret}"),
                    token: record.token,
                    csrf: record.csrf,
                    viewing: None,
                    expires_ms: record.expires_ms,
                    key,
                    revision,
                });
            }
        }
        Err(SessionError::Busy)
    }

    /// The live session of the cookie `id`.
    pub async fn get(&self, id: &str, now_ms: u64) -> Result<Option<Session>, StoreFailed> {
        let Some((key, secret)) = parse_cookie(id) else {
            return Ok(None);
        };
        let Some((value, revision)) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_str::<Record>(&value) else {
            // Empty, or not one of ours: no session.
            return Ok(None);
        };
        if !same(&record.secret_hash, &hash(secret)) || record.expires_ms <= now_ms {
            return Ok(None);
        }
        Ok(Some(Session {
            id: id.to_string(),
            token: record.token,
            csrf: record.csrf,
            viewing: record.viewing,
            expires_ms: record.expires_ms,
            key,
            revision,
        }))
    }

    /// Changes the tenant a session looks at; `false` if the session ended
    /// since it was read (signed out, or its slot taken).
    pub async fn view(
        &self,
        session: &Session,
        tenant: Option<String>,
    ) -> Result<bool, StoreFailed> {
        let Some((_, secret)) = parse_cookie(&session.id) else {
            return Ok(false);
        };
        let value = Self::encode(&Record {
            secret_hash: hash(secret),
            token: session.token.clone(),
            csrf: session.csrf.clone(),
            viewing: tenant,
            expires_ms: session.expires_ms,
        })?;
        Ok(self
            .store
            .compare_and_set(&session.key, value, Some(session.revision))
            .await?
            .is_some())
    }

    /// Ends a session (sign-out, or a token the API no longer accepts)
    /// unless its slot changed since it was read: then it was ended or
    /// changed by another request, which the caller reads again.
    pub async fn remove(&self, session: &Session) -> Result<(), StoreFailed> {
        let ended = self
            .store
            .compare_and_set(&session.key, EMPTY.to_string(), Some(session.revision))
            .await?
            .is_some();
        if ended {
            return Ok(());
        }
        // Changed since (a change of view): end what is there now, if it
        // is still this session.
        if let Some(now) = self.get(&session.id, 0).await? {
            self.store
                .compare_and_set(&now.key, EMPTY.to_string(), Some(now.revision))
                .await?;
        }
        Ok(())
    }

    /// Empties the slots of expired sessions (their tokens go); returns
    /// how many.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, StoreFailed> {
        let mut swept = 0;
        for (key, value, revision) in self.store.list(PREFIX).await? {
            let Ok(record) = serde_json::from_str::<Record>(&value) else {
                continue;
            };
            if record.expires_ms <= now_ms
                && self
                    .store
                    .compare_and_set(&key, EMPTY.to_string(), Some(revision))
                    .await?
                    .is_some()
            {
                swept += 1;
            }
        }
        Ok(swept)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// 32 random bytes, in hex.
/// A number below `n` (0 when `n` is 0, or the random source failed: the
/// caller only loses an even spread).
fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    if n == 0 || getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    (u64::from_le_bytes(bytes) % n as u64) as usize
}

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex(&bytes))
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

    fn memory(ttl_secs: u64) -> (Arc<MemorySessions>, Sessions) {
        let store = Arc::new(MemorySessions::default());
        let sessions = Sessions::new(store.clone(), Duration::from_secs(ttl_secs));
        (store, sessions)
    }

    /// The live sessions kept.
    fn live(store: &MemorySessions) -> usize {
        store
            .lock()
            .0
            .values()
            .filter(|(v, _)| !v.is_empty())
            .count()
    }

    #[tokio::test]
    async fn a_session_lives_until_it_expires_or_signs_out() {
        let (store, sessions) = memory(60);
        let t0 = 1_000_000;
        let s = sessions.create("tok".into(), t0).await.unwrap();
        assert_ne!(s.id, s.csrf);
        assert_eq!(sessions.get(&s.id, t0).await.unwrap().unwrap().token, "tok");
        assert!(sessions.get("nope", t0).await.unwrap().is_none());
        assert!(sessions.get(&s.id, t0 + 61_000).await.unwrap().is_none());
        // The slot with another secret is not the session.
        let (slot, _) = s.id.rsplit_once('.').unwrap();
        let forged = format!("{slot}.{}", "0".repeat(64));
        assert!(sessions.get(&forged, t0).await.unwrap().is_none());

        let s = sessions.get(&s.id, t0).await.unwrap().unwrap();
        assert!(sessions.view(&s, Some("acme".into())).await.unwrap());
        let s = sessions.get(&s.id, t0).await.unwrap().unwrap();
        assert_eq!(s.viewing.as_deref(), Some("acme"));
        sessions.remove(&s).await.unwrap();
        assert!(sessions.get(&s.id, t0).await.unwrap().is_none());
        assert_eq!(live(&store), 0, "sign-out leaves the slot empty");
        assert_eq!(store.lock().0.len(), 1, "and the slot in place");
    }

    #[tokio::test]
    async fn a_change_of_view_or_a_stale_sign_out_never_brings_back_or_ends_another() {
        let (store, sessions) = memory(60);
        let s = sessions.create("tok".into(), 0).await.unwrap();
        let read = sessions.get(&s.id, 0).await.unwrap().unwrap();
        // Signed out in another tab (or on another node) meanwhile.
        sessions.remove(&read).await.unwrap();
        assert!(!sessions.view(&read, Some("acme".into())).await.unwrap());
        assert!(sessions.get(&s.id, 0).await.unwrap().is_none());
        // A new sign-in takes the emptied slot; the old session's late
        // sign-out does not end it.
        let again = sessions.create("tok".into(), 0).await.unwrap();
        sessions.remove(&read).await.unwrap();
        assert!(sessions.get(&again.id, 0).await.unwrap().is_some());
        assert_eq!(live(&store), 1);
        // A sign-out after a change of view still ends the session.
        let seen = sessions.get(&again.id, 0).await.unwrap().unwrap();
        assert!(sessions.view(&seen, Some("acme".into())).await.unwrap());
        sessions.remove(&seen).await.unwrap();
        assert!(sessions.get(&again.id, 0).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_store_keeps_hashes_for_keys_and_never_a_cookie_in_the_clear() {
        let (store, sessions) = memory(60);
        let s = sessions.create("gust_XYZ".into(), 0).await.unwrap();
        let secret = s.id.rsplit('.').next().unwrap().to_string();
        let all = store.lock().0.clone();
        assert_eq!(all.len(), 1, "{all:?}");
        for (key, (value, _)) in &all {
            assert!(!key.contains(&secret) && !key.contains("gust_XYZ"), "{key}");
            assert!(!value.contains(&secret), "{value}");
        }
    }

    #[tokio::test]
    async fn the_sweep_empties_expired_sessions_only() {
        let (store, sessions) = memory(60);
        let a = sessions.create("a".into(), 0).await.unwrap();
        let b = sessions.create("b".into(), 30_000).await.unwrap();
        assert_eq!(sessions.sweep(60_500).await.unwrap(), 1);
        assert!(sessions.get(&a.id, 0).await.unwrap().is_none());
        assert!(sessions.get(&b.id, 60_500).await.unwrap().is_some());
        assert_eq!(live(&store), 1);
        assert_eq!(sessions.sweep(60_500).await.unwrap(), 0);
    }

    #[test]
    fn only_well_formed_cookies_name_a_slot() {
        let hex = "a".repeat(64);
        assert!(parse_cookie(&format!("{hex}.0.{hex}")).is_some());
        assert!(parse_cookie(&format!("{hex}.31.{hex}")).is_some());
        for bad in [
            format!("{hex}.32.{hex}"),
            format!("{hex}.-1.{hex}"),
            format!("{hex}.0.{hex}.x"),
            format!("{hex}.0"),
            format!("../{hex}.0.{hex}"),
            format!("{}.0.{hex}", "g".repeat(64)),
            String::new(),
        ] {
            assert!(parse_cookie(&bad).is_none(), "{bad}");
        }
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
        let (store, sessions) = memory(60);
        let other = sessions.create("other".into(), 0).await.unwrap();
        let first = sessions.create("busy".into(), 0).await.unwrap();
        let mut all = vec![first.clone()];
        for i in 1..PER_TOKEN as u64 {
            all.push(sessions.create("busy".into(), i).await.unwrap());
        }
        // Full: the next one ends the session closest to expiry.
        let next = sessions.create("busy".into(), 1_000).await.unwrap();
        assert!(
            sessions.get(&first.id, 1_000).await.unwrap().is_none(),
            "its own oldest went"
        );
        assert!(sessions.get(&next.id, 1_000).await.unwrap().is_some());
        assert!(
            sessions.get(&other.id, 1_000).await.unwrap().is_some(),
            "another token's stayed"
        );
        assert_eq!(
            store.lock().0.len(),
            PER_TOKEN + 1,
            "keys never grow past the slots"
        );
        // An expired session's slot goes before a live one's.
        let late = 60_500;
        let fresh = sessions.create("busy".into(), late).await.unwrap();
        assert!(sessions.get(&fresh.id, late).await.unwrap().is_some());
        assert!(sessions.get(&next.id, late).await.unwrap().is_some());
        assert_eq!(store.lock().0.len(), PER_TOKEN + 1);
        assert!(
            !format!("{first:?}").contains("busy"),
            "Debug hides the token"
        );
    }

    /// A shared store whose every call lets other tasks run first, as a
    /// store across the network does: sign-ins on two nodes interleave.
    struct Yielding(MemorySessions);

    #[async_trait]
    impl SessionStore for Yielding {
        async fn get(&self, key: &str) -> Result<Option<(String, u64)>, StoreFailed> {
            tokio::task::yield_now().await;
            self.0.get(key).await
        }
        async fn compare_and_set(
            &self,
            key: &str,
            value: String,
            expected: Option<u64>,
        ) -> Result<Option<u64>, StoreFailed> {
            tokio::task::yield_now().await;
            self.0.compare_and_set(key, value, expected).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, StoreFailed> {
            tokio::task::yield_now().await;
            self.0.list(prefix).await
        }
    }

    #[tokio::test]
    async fn racing_sign_ins_on_two_nodes_each_get_their_own_slot_within_the_bound() {
        let store = Arc::new(Yielding(MemorySessions::default()));
        let node = || Sessions::new(store.clone(), Duration::from_secs(60));
        let (a, b) = (node(), node());
        // Fewer sign-ins than slots, all at once on both nodes: every one
        // succeeds (a lost race reads again), each in a slot of its own.
        let half = PER_TOKEN / 2;
        let signins = (0..PER_TOKEN).map(|i| {
            let node = if i < half { &a } else { &b };
            node.create("shared".into(), 1_000)
        });
        let made: Vec<Session> = futures_join(signins.collect()).await;
        let mut keys: Vec<&str> = made.iter().map(|s| s.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), PER_TOKEN, "no two sign-ins share a slot");
        for s in &made {
            assert!(a.get(&s.id, 1_001).await.unwrap().is_some());
            assert!(b.get(&s.id, 1_001).await.unwrap().is_some());
        }
        // More at once than there are slots left: each still signs in, the
        // bound holds exactly, and only older sessions made way.
        let more = (0..8).map(|i| if i % 2 == 0 { &a } else { &b }.create("shared".into(), 2_000));
        let newer: Vec<Session> = futures_join(more.collect()).await;
        let live = store
            .0
            .lock()
            .0
            .values()
            .filter(|(v, _)| !v.is_empty())
            .count();
        assert_eq!(live, PER_TOKEN);
        for s in &newer {
            assert!(a.get(&s.id, 2_001).await.unwrap().is_some());
        }
    }

    /// Runs every future to its end, concurrently on this task.
    async fn futures_join<F>(futures: Vec<F>) -> Vec<Session>
    where
        F: std::future::Future<Output = Result<Session, SessionError>>,
    {
        let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
        let mut done: Vec<Option<Session>> = (0..futures.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            for (i, f) in futures.iter_mut().enumerate() {
                if done[i].is_none()
                    && let std::task::Poll::Ready(result) = f.as_mut().poll(cx)
                {
                    done[i] = Some(result.expect("a sign-in failed"));
                }
            }
            if done.iter().all(Option::is_some) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        done.into_iter().flatten().collect()
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

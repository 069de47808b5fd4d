//! Application records (`fn/<tenant>/~app/<name>`): kept beside the
//! function records, under the prefix the data plane already watches, so a
//! release reaches every catalog in the same ordered stream as the deploys
//! of its members, and its one compare-and-set is the one change that
//! moves them all.

use std::collections::BTreeMap;

use gust_core::app::{AppError, AppRecord};
use gust_core::config::Variables;

use super::*;

/// The segment that sets application keys apart from function keys (a
/// function name cannot contain `~`).
const APP_SEGMENT: &str = "~app";

fn app_key(tenant: &TenantId, name: &FunctionName) -> String {
    format!("fn/{tenant}/{APP_SEGMENT}/{name}")
}

/// How a release's new version takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseAs {
    /// All of it, every member at once.
    Live,
    /// This share (basis points) of every member's traffic.
    Split(u16),
    /// A share judged over a window, then promoted or rolled back.
    Canary { basis_points: u16, window_ms: u64 },
}

/// What a release made.
#[derive(Debug, Clone)]
pub struct AppRelease {
    pub app: AppRecord,
    /// The new application version.
    pub version: u64,
    /// The revision of the application record's change.
    pub revision: u64,
}

impl From<AppError> for RegistryError {
    fn from(e: AppError) -> Self {
        RegistryError::Refused(e.to_string())
    }
}

impl Registry {
    /// The tenant and name an application key stands for.
    pub fn parse_app_key(key: &str) -> Option<(TenantId, FunctionName)> {
        let rest = key.strip_prefix(FUNCTIONS_PREFIX)?;
        let (tenant, rest) = rest.split_once('/')?;
        let name = rest.strip_prefix(APP_SEGMENT)?.strip_prefix('/')?;
        Some((TenantId::new(tenant).ok()?, FunctionName::new(name).ok()?))
    }

    /// Decodes an application record seen by [`Registry::watch_functions`].
    pub fn decode_app(entry: &Entry) -> Result<AppRecord, StoreError> {
        decode(entry)
    }

    pub async fn app(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<AppRecord>, RegistryError> {
        let entry = self.kv.get(&app_key(tenant, name)).await?;
        Ok(entry.as_ref().map(decode).transpose()?)
    }

    pub async fn apps(&self, tenant: &TenantId) -> Result<Vec<AppRecord>, RegistryError> {
        let entries = self.kv.list(&format!("fn/{tenant}/{APP_SEGMENT}/")).await?;
        Ok(entries.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Releases a new version of application `name` (created on its first
    /// release) made of `members` (function → version, each function joining
    /// the application) and `vars` (`None`: the live release's), live or as
    /// a split as `how` says: one compare-and-set on the application's
    /// record, so every member moves at once. Each member's own variables
    /// are taken into the release. Everything is checked before any
    /// function joins: a function that belongs to another application, or
    /// a version that does not exist, changes nothing.
    pub async fn release_app(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        members: &BTreeMap<FunctionName, u64>,
        vars: Option<Variables>,
        how: ReleaseAs,
        now_ms: u64,
    ) -> Result<AppRelease, RegistryError> {
        gust_core::app::check_members(members.len())?;
        let mut functions = BTreeMap::new();
        for (function, version) in members {
            let active = self.servable(tenant, function, *version).await?;
            if let Some(record) = self.function(tenant, function).await?
                && let Some(other) = record.app.as_deref().filter(|o| *o != name.as_str())
            {
                return Err(RegistryError::Refused(format!(
                    "function `{function}` belongs to application `{other}`; remove it there first"
                )));
            }
            functions.insert(function.to_string(), active);
        }
        // Members join before the release names them, so that the data
        // plane has each one's record when the release arrives.
        let mut member_vars = BTreeMap::new();
        for function in members.keys() {
            let (record, (), _) = self
                .update(tenant, function, |record| match record.app.as_deref() {
                    Some(other) if other != name.as_str() => Err(RegistryError::Refused(format!(
                        "function `{function}` belongs to application `{other}`; remove it there first"
                    ))),
                    _ => {
                        record.app = Some(name.to_string());
                        Ok(())
                    }
                })
                .await?;
            member_vars.insert(function.to_string(), record.vars);
        }
        let (app, version, revision) = self
            .update_app(tenant, name, true, now_ms, |app| {
                let vars = match &vars {
                    Some(vars) => vars.clone(),
                    None => app
                        .live_version()
                        .map(|v| v.vars.clone())
                        .unwrap_or_default(),
                };
                let version =
                    app.add_version(functions.clone(), vars, member_vars.clone(), now_ms)?;
                match how {
                    ReleaseAs::Live => app.go_live(version, now_ms)?,
                    // The first release: there is nothing to compare with.
                    _ if app.live == 0 => app.go_live(version, now_ms)?,
                    ReleaseAs::Split(share) => app.split_to(version, share, now_ms)?,
                    ReleaseAs::Canary {
                        basis_points,
                        window_ms,
                    } => app.start_canary(
                        version,
                        basis_points,
                        window_ms,
                        Default::default(),
                        now_ms,
                    )?,
                }
                Ok(version)
            })
            .await?;
        Ok(AppRelease {
            app,
            version,
            revision,
        })
    }

    /// Applies `change` to the application's record with a compare-and-set,
    /// again on a race (`create`: start a new record if there is none);
    /// returns the record, `change`'s result and the revision.
    pub async fn update_app<T>(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        create: bool,
        now_ms: u64,
        mut change: impl FnMut(&mut AppRecord) -> Result<T, RegistryError>,
    ) -> Result<(AppRecord, T, u64), RegistryError> {
        let key = app_key(tenant, name);
        for _ in 0..MAX_CAS_RETRIES {
            let entry = self.kv.get(&key).await?;
            let (mut app, expected) = match &entry {
                Some(entry) => (decode::<AppRecord>(entry)?, Some(entry.revision)),
                None if create => (AppRecord::new(tenant.clone(), name.clone(), now_ms), None),
                None => return Err(RegistryError::NoSuchApp(name.clone())),
            };
            let before = app.clone();
            let out = change(&mut app)?;
            if app == before
                && let Some(entry) = &entry
            {
                return Ok((app, out, entry.revision));
            }
            match self.kv.compare_and_set(&key, encode(&app)?, expected).await {
                Ok(revision) => return Ok((app, out, revision)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Backend(format!(
            "application `{name}` kept changing under this update; try again"
        ))
        .into())
    }

    /// The functions that belong to an application (they joined it).
    pub async fn app_members(
        &self,
        tenant: &TenantId,
        app: &AppRecord,
    ) -> Result<Vec<FunctionName>, RegistryError> {
        Ok(self
            .functions(tenant)
            .await?
            .into_iter()
            .filter(|r| r.app.as_deref() == Some(app.name.as_str()))
            .map(|r| r.name)
            .collect())
    }

    /// Removes an application and every function that belongs to it
    /// ([`Registry::app_members`]). Returns the removed functions and the
    /// revision of the last change (`None`: no such application).
    pub async fn delete_app(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<(Vec<FunctionName>, u64)>, RegistryError> {
        let Some(app) = self.app(tenant, name).await? else {
            return Ok(None);
        };
        let mut removed = Vec::new();
        for member in self.app_members(tenant, &app).await? {
            if self.delete_function(tenant, &member).await?.is_some() {
                removed.push(member);
            }
        }
        let revision = self.kv.delete(&app_key(tenant, name)).await?;
        Ok(revision.map(|r| (removed, r)))
    }
}

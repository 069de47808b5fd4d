//! Applications in the catalog: a member's plain URL is served from its
//! application's live version (and split), not from its own `live` alias.
//! The catalog keeps each application's record and its members' records,
//! so a release (one change of the application's record) rebuilds every
//! member under one write lock: a request sees all members before it or
//! all after it. Every loaded version of a member carries the application
//! version it serves ([`AppTag`]); calls between members resolve at the
//! caller's application version ([`Served::at_app_version`]), so a request
//! that entered one release stays on it through its calls, even while a
//! release or rollback lands (the previous live version stays loaded).

use std::collections::HashMap;
use std::sync::Arc;

use gust_autoscale::canary::Snapshot;
use gust_core::FunctionRecord;
use gust_core::app::{self, AppRecord, AppVersion};
use gust_core::config::{self, Variable};
use gust_store::SecretBox;

use super::{Loaded, Served};

/// The application version a loaded version serves in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppTag {
    /// `<tenant>/<application>`.
    pub app: Arc<str>,
    pub version: u64,
}

/// Applications' records and their members' records, for rebuilding the
/// members when an application changes.
#[derive(Default)]
pub(super) struct Apps {
    /// `<tenant>/<application>` → its record.
    pub records: HashMap<String, Arc<AppRecord>>,
    /// `<tenant>/<function>` → the record of each function that belongs
    /// to an application.
    pub members: HashMap<String, FunctionRecord>,
}

impl Apps {
    /// The application `record` belongs to, if the catalog has it.
    pub fn of(&self, record: &FunctionRecord) -> Option<Arc<AppRecord>> {
        let name = record.app.as_deref()?;
        self.records
            .get(&super::route_key(record.tenant.as_str(), name))
            .cloned()
    }

    /// Keeps (or forgets) a function's record as a member's.
    pub fn note(&mut self, key: &str, record: Option<&FunctionRecord>) {
        match record.filter(|r| r.app.is_some()) {
            Some(record) => {
                self.members.insert(key.to_string(), record.clone());
            }
            None => {
                self.members.remove(key);
            }
        }
    }

    /// The members of application `<tenant>/<name>`: their keys and records.
    pub fn members_of(&self, tenant: &str, name: &str) -> Vec<(String, FunctionRecord)> {
        self.members
            .iter()
            .filter(|(_, r)| r.tenant.as_str() == tenant && r.app.as_deref() == Some(name))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }
}

/// A member's variables in one application version: the application's
/// shared ones, the function's own (as they were at the release) over
/// them; secrets opened (one that does not open is left out, and said so
/// in the log).
pub(super) fn opened_vars(
    record: &FunctionRecord,
    app: &AppRecord,
    version: &AppVersion,
    secrets: &SecretBox,
) -> Arc<[(String, String)]> {
    let mut vars = Vec::new();
    let own_vars = version
        .member_vars
        .get(record.name.as_str())
        .unwrap_or(&record.vars);
    let shared = version
        .vars
        .iter()
        .filter(|(name, _)| !own_vars.contains_key(*name))
        .map(|(name, value)| (name, value, true));
    let own = own_vars.iter().map(|(name, value)| (name, value, false));
    let mut all: Vec<_> = shared.chain(own).collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value, from_app) in all {
        match value {
            Variable::Plain { value } => vars.push((name.clone(), value.clone())),
            Variable::Secret { sealed } => {
                let context = if from_app {
                    app::secret_context(record.tenant.as_str(), app.name.as_str(), name)
                } else {
                    config::secret_context(record.tenant.as_str(), record.name.as_str(), None, name)
                };
                match secrets.open(&context, sealed) {
                    Ok(value) => vars.push((name.clone(), value)),
                    Err(e) => tracing::error!(
                        function = %record.name, variable = %name, error = %e,
                        "a secret cannot be opened; the function runs without it"
                    ),
                }
            }
        }
    }
    vars.into()
}

/// A canary release's figures on this node: every member's on the live
/// release summed, and on the canary's.
pub(crate) struct AppCanaryFigures {
    pub app: Arc<AppRecord>,
    pub stable: Snapshot,
    pub canary: Snapshot,
}

impl super::Catalog {
    /// Every application running a canary release, with its figures now.
    pub fn app_canaries(&self) -> Vec<AppCanaryFigures> {
        let functions = self.functions.read().unwrap_or_else(|p| p.into_inner());
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (key, app) in &apps.records {
            let Some(split) = app.split.filter(|s| s.canary.is_some()) else {
                continue;
            };
            let mut figures = AppCanaryFigures {
                app: app.clone(),
                stable: Snapshot::default(),
                canary: Snapshot::default(),
            };
            for (member, _) in apps.members_of(app.tenant.as_str(), app.name.as_str()) {
                let Some(served) = functions.get(&member) else {
                    continue;
                };
                // Only a function in both releases is compared.
                let in_both = [app.live, split.version].iter().all(|v| {
                    served
                        .app_versions
                        .iter()
                        .any(|l| l.app.as_ref().is_some_and(|t| t.version == *v))
                });
                if !in_both {
                    continue;
                }
                for loaded in &served.app_versions {
                    let Some(tag) = loaded.app.as_ref().filter(|t| *t.app == **key) else {
                        continue;
                    };
                    let now = loaded.health.snapshot();
                    if tag.version == app.live {
                        figures.stable = figures.stable.plus(&now);
                    } else if tag.version == split.version {
                        figures.canary = figures.canary.plus(&now);
                    }
                }
            }
            out.push(figures);
        }
        out
    }
}

impl Served {
    /// The loaded version that serves application version `version` of
    /// the application `app` (`<tenant>/<name>`), if this function is its
    /// member and that version is still loaded.
    pub fn at_app_version(&self, tag: &AppTag) -> Option<&Arc<Loaded>> {
        self.app_versions
            .iter()
            .find(|l| l.app.as_ref() == Some(tag))
    }
}

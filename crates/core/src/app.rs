//! Applications: several functions of one tenant released as one unit.
//!
//! An application's record names, for each of its versions, the function
//! version each member serves and the variables they share. Making a
//! version live (or splitting traffic towards one, or rolling back) is one
//! change to that one record, so every member moves at once: the data
//! plane serves a member's plain URL from the application's live version,
//! not from the member's own `live` alias. A request that entered one
//! version of the application stays on it through its calls to the other
//! members (the gateway resolves them at the caller's application
//! version). Pure data and the rules of moving between versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Variables;
use crate::deploy::{CANARY_HISTORY, CanaryOutcome, CanaryPolicy, CanaryReport, WHOLE};
use crate::records::ActiveVersion;
use crate::{FunctionName, TenantId};

/// Application versions a record keeps, newest last (the live one, a
/// split's and the one before the last move are kept beyond this).
pub const APP_HISTORY: usize = 20;
/// Functions an application may have, at most.
pub const MAX_MEMBERS: usize = 64;

/// An application as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppRecord {
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its name (a function name's rules).
    #[schema(value_type = String)]
    pub name: FunctionName,
    pub created_at_ms: u64,
    /// The highest version number ever made; numbers are never reused.
    pub latest_version: u64,
    /// Its versions, oldest first (at most [`APP_HISTORY`] and those still referred to).
    pub versions: Vec<AppVersion>,
    /// The version its members serve (0: none yet).
    pub live: u64,
    /// Another version taking a share of every member's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<AppSplit>,
    /// The version live before the last move (`gust app rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// How its last canary releases ended, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<CanaryReport>,
    pub updated_at_ms: u64,
}

/// One release of an application: which version of each member, and the
/// variables every member sees (under the member's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppVersion {
    pub version: u64,
    /// Member name → the version it serves in this release.
    pub functions: BTreeMap<String, ActiveVersion>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub vars: Variables,
    /// Each member's own variables as they were at the release (a
    /// release is a snapshot: a rollback brings them back too).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub member_vars: BTreeMap<String, Variables>,
    pub created_at_ms: u64,
}

/// A share of traffic going to another application version: the same
/// share for every member, so one client (one sticky key) is on one side
/// everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppSplit {
    pub version: u64,
    /// Basis points (1–9999).
    pub basis_points: u16,
    /// Judged by the figures of all members together, then promoted or
    /// rolled back by the data plane (`None`: until told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<AppCanary>,
}

/// A canary release: its split is judged over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppCanary {
    pub started_at_ms: u64,
    pub window_ms: u64,
    pub policy: CanaryPolicy,
}

/// What a secret shared by an application's members is bound to: no
/// function's context (a function name cannot contain `~`).
pub fn secret_context(tenant: &str, app: &str, name: &str) -> String {
    crate::config::secret_context(tenant, &format!("~app/{app}"), None, name)
}

/// Why an application cannot change as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("application `{app}` has no version {version}; `gust app versions {app}` lists them")]
    NoSuchVersion { app: String, version: u64 },
    #[error("application `{0}` has no earlier version to roll back to")]
    NothingToRollBack(String),
    #[error("an application version needs at least one function")]
    Empty,
    #[error("an application has at most {MAX_MEMBERS} functions (this one would have {0})")]
    TooManyMembers(usize),
    #[error("a split's share must be between 0.01% and 99.99% (got {0} basis points)")]
    BadShare(u16),
    #[error("application `{0}` has no split in progress")]
    NoSplit(String),
}

impl AppRecord {
    pub fn new(tenant: TenantId, name: FunctionName, now_ms: u64) -> Self {
        Self {
            tenant,
            name,
            created_at_ms: now_ms,
            latest_version: 0,
            versions: Vec::new(),
            live: 0,
            split: None,
            previous: None,
            canaries: Vec::new(),
            updated_at_ms: now_ms,
        }
    }

    pub fn version(&self, version: u64) -> Option<&AppVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The live version (`None` before the first release).
    pub fn live_version(&self) -> Option<&AppVersion> {
        self.version(self.live)
    }

    /// The split's version and share, if one is in progress.
    pub fn split_version(&self) -> Option<(&AppVersion, u16)> {
        let split = self.split?;
        Some((self.version(split.version)?, split.basis_points))
    }

    /// The versions the data plane keeps ready: live, the split's, and the
    /// previous live one (requests that entered it finish their calls on it).
    pub fn served_versions(&self) -> Vec<&AppVersion> {
        let mut out: Vec<&AppVersion> = Vec::new();
        for v in [
            Some(self.live),
            self.split.map(|s| s.version),
            self.previous,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(found) = self.version(v)
                && !out.iter().any(|o| o.version == v)
            {
                out.push(found);
            }
        }
        out
    }

    /// Every function any kept version names.
    pub fn members(&self) -> std::collections::BTreeSet<&str> {
        self.versions
            .iter()
            .flat_map(|v| v.functions.keys().map(String::as_str))
            .collect()
    }

    /// Whether `function`'s URL serves this application's live release or
    /// its split's (a function only in the release before is not served).
    pub fn releases(&self, function: &str) -> bool {
        self.live_version()
            .into_iter()
            .chain(self.split_version().map(|(v, _)| v))
            .any(|v| v.functions.contains_key(function))
    }

    /// Records a new version (not live yet); returns its number.
    pub fn add_version(
        &mut self,
        functions: BTreeMap<String, ActiveVersion>,
        vars: Variables,
        member_vars: BTreeMap<String, Variables>,
        now_ms: u64,
    ) -> Result<u64, AppError> {
        check_members(functions.len())?;
        self.latest_version += 1;
        self.versions.push(AppVersion {
            version: self.latest_version,
            functions,
            vars,
            member_vars,
            created_at_ms: now_ms,
        });
        self.updated_at_ms = now_ms;
        self.trim();
        Ok(self.latest_version)
    }

    /// Makes `version` live for every member at once; ends a split (a
    /// canary's is recorded as superseded).
    pub fn go_live(&mut self, version: u64, now_ms: u64) -> Result<(), AppError> {
        self.check(version)?;
        self.supersede("the application moved before it was judged", now_ms);
        if version != self.live && self.live != 0 {
            self.previous = Some(self.live);
        }
        self.live = version;
        self.split = None;
        self.updated_at_ms = now_ms;
        self.trim();
        Ok(())
    }

    /// Sends `basis_points` of every member's traffic to `version`.
    pub fn split_to(
        &mut self,
        version: u64,
        basis_points: u16,
        now_ms: u64,
    ) -> Result<(), AppError> {
        self.check(version)?;
        if !(1..WHOLE).contains(&basis_points) {
            return Err(AppError::BadShare(basis_points));
        }
        self.supersede("another split replaced it", now_ms);
        self.split = (version != self.live).then_some(AppSplit {
            version,
            basis_points,
            canary: None,
        });
        self.updated_at_ms = now_ms;
        Ok(())
    }

    /// Sends `basis_points` of every member's traffic to `version` as a
    /// canary: judged over `window_ms`, then promoted or rolled back.
    pub fn start_canary(
        &mut self,
        version: u64,
        basis_points: u16,
        window_ms: u64,
        policy: CanaryPolicy,
        now_ms: u64,
    ) -> Result<(), AppError> {
        self.split_to(version, basis_points, now_ms)?;
        if let Some(split) = &mut self.split {
            split.canary = Some(AppCanary {
                started_at_ms: now_ms,
                window_ms,
                policy,
            });
        }
        Ok(())
    }

    /// Ends the canary of `version` started at `started_at_ms` as judged:
    /// promoted (it goes live) or rolled back (live keeps all traffic),
    /// with the reason kept. False: no such canary runs any more (a move,
    /// or a new canary of the same version, raced the verdict).
    pub fn end_canary(
        &mut self,
        version: u64,
        started_at_ms: u64,
        promote: bool,
        reason: &str,
        now_ms: u64,
    ) -> bool {
        let Some(split) = self.split.filter(|s| {
            s.version == version && s.canary.is_some_and(|c| c.started_at_ms == started_at_ms)
        }) else {
            return false;
        };
        self.record_canary(split.version, promote_outcome(promote), reason, now_ms);
        self.split = None;
        if promote {
            self.previous = Some(self.live);
            self.live = split.version;
        }
        self.updated_at_ms = now_ms;
        self.trim();
        true
    }

    fn supersede(&mut self, reason: &str, now_ms: u64) {
        if let Some(split) = self.split.filter(|s| s.canary.is_some()) {
            self.record_canary(split.version, CanaryOutcome::Superseded, reason, now_ms);
        }
    }

    fn record_canary(&mut self, version: u64, outcome: CanaryOutcome, reason: &str, now_ms: u64) {
        self.canaries.push(CanaryReport {
            version,
            stable: self.live,
            outcome,
            reason: reason.to_string(),
            ended_at_ms: now_ms,
        });
        if self.canaries.len() > CANARY_HISTORY {
            self.canaries.remove(0);
        }
    }

    /// Makes the split's version live (all traffic).
    pub fn promote(&mut self, now_ms: u64) -> Result<u64, AppError> {
        let split = self
            .split
            .ok_or_else(|| AppError::NoSplit(self.name.to_string()))?;
        if let Some(canary) = split.canary {
            let started = canary.started_at_ms;
            self.end_canary(split.version, started, true, "promoted by hand", now_ms);
            return Ok(split.version);
        }
        self.go_live(split.version, now_ms)?;
        Ok(split.version)
    }

    /// Ends a split (its share back to live) or, with none, moves live back
    /// to `to` (default: the version before the last move). Returns the
    /// version now live.
    pub fn rollback(&mut self, to: Option<u64>, now_ms: u64) -> Result<u64, AppError> {
        if to.is_none()
            && let Some(split) = self.split
        {
            if let Some(canary) = split.canary {
                let started = canary.started_at_ms;
                self.end_canary(split.version, started, false, "rolled back by hand", now_ms);
            } else {
                self.split = None;
                self.updated_at_ms = now_ms;
            }
            return Ok(self.live);
        }
        let target = match to {
            Some(v) => v,
            None => self
                .previous
                .filter(|p| self.version(*p).is_some())
                .ok_or_else(|| AppError::NothingToRollBack(self.name.to_string()))?,
        };
        self.go_live(target, now_ms)?;
        Ok(target)
    }

    fn check(&self, version: u64) -> Result<(), AppError> {
        match self.version(version) {
            Some(_) => Ok(()),
            None => Err(AppError::NoSuchVersion {
                app: self.name.to_string(),
                version,
            }),
        }
    }

    /// Drops the oldest versions past [`APP_HISTORY`], never one still
    /// referred to (live, split, previous).
    fn trim(&mut self) {
        let keep: Vec<u64> = [
            Some(self.live),
            self.split.map(|s| s.version),
            self.previous,
        ]
        .into_iter()
        .flatten()
        .collect();
        while self.versions.len() > APP_HISTORY {
            let Some(pos) = self
                .versions
                .iter()
                .position(|v| !keep.contains(&v.version))
            else {
                break;
            };
            self.versions.remove(pos);
        }
    }

    /// Every (function, version) a kept application version needs: retention
    /// must not remove them, or a rollback would find nothing to serve.
    pub fn referenced(&self) -> impl Iterator<Item = (&str, u64)> {
        self.versions.iter().flat_map(|v| {
            v.functions
                .iter()
                .map(|(name, active)| (name.as_str(), active.version))
        })
    }
}

/// An application version names between one and [`MAX_MEMBERS`] functions.
pub fn check_members(count: usize) -> Result<(), AppError> {
    match count {
        0 => Err(AppError::Empty),
        n if n > MAX_MEMBERS => Err(AppError::TooManyMembers(n)),
        _ => Ok(()),
    }
}

fn promote_outcome(promote: bool) -> CanaryOutcome {
    if promote {
        CanaryOutcome::Promoted
    } else {
        CanaryOutcome::RolledBack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(version: u64) -> ActiveVersion {
        ActiveVersion {
            version,
            digest: format!("sha256:{version}"),
            limits: Default::default(),
            delivery: Default::default(),
        }
    }

    fn release(app: &mut AppRecord, a: u64, b: u64, now: u64) -> u64 {
        let functions = [("a".to_string(), active(a)), ("b".to_string(), active(b))]
            .into_iter()
            .collect();
        let v = app
            .add_version(functions, Variables::new(), BTreeMap::new(), now)
            .unwrap();
        app.go_live(v, now).unwrap();
        v
    }

    fn app() -> AppRecord {
        AppRecord::new(
            TenantId::new("t").unwrap(),
            FunctionName::new("shop").unwrap(),
            0,
        )
    }

    #[test]
    fn releases_move_every_member_and_roll_back_together() {
        let mut app = app();
        assert_eq!(release(&mut app, 1, 1, 1), 1);
        assert_eq!(release(&mut app, 2, 1, 2), 2);
        assert_eq!(app.live_version().unwrap().functions["a"].version, 2);
        assert_eq!(app.previous, Some(1));
        assert_eq!(app.rollback(None, 3).unwrap(), 1);
        assert_eq!(app.live_version().unwrap().functions["a"].version, 1);
        // Rolling back again goes forward to what was live: a toggle.
        assert_eq!(app.rollback(None, 4).unwrap(), 2);
        assert_eq!(app.rollback(Some(1), 5).unwrap(), 1);
        assert!(matches!(
            app.rollback(Some(9), 6),
            Err(AppError::NoSuchVersion { version: 9, .. })
        ));
    }

    #[test]
    fn a_split_is_one_share_for_all_members_and_ends_either_way() {
        let mut app = app();
        release(&mut app, 1, 1, 1);
        let functions = [("a".to_string(), active(2))].into_iter().collect();
        let next = app
            .add_version(functions, Variables::new(), BTreeMap::new(), 2)
            .unwrap();
        app.split_to(next, 1000, 2).unwrap();
        assert_eq!(
            app.split_version().map(|(v, s)| (v.version, s)),
            Some((2, 1000))
        );
        // The member absent from the new version stays served through the app.
        assert!(app.releases("b"));
        assert_eq!(
            app.rollback(None, 3).unwrap(),
            1,
            "a rollback ends the split"
        );
        assert!(app.split.is_none());
        app.split_to(next, 1000, 4).unwrap();
        assert_eq!(app.promote(5).unwrap(), 2);
        assert_eq!((app.live, app.previous, app.split), (2, Some(1), None));
        assert!(!app.releases("c"));
        assert_eq!(app.split_to(1, 0, 6), Err(AppError::BadShare(0)));
        assert_eq!(app.promote(6), Err(AppError::NoSplit("shop".into())));
    }

    #[test]
    fn a_canary_release_ends_once_as_judged_and_a_move_supersedes_it() {
        let mut app = app();
        release(&mut app, 1, 1, 1);
        let functions = [("a".to_string(), active(2))].into_iter().collect();
        let next = app
            .add_version(functions, Variables::new(), BTreeMap::new(), 2)
            .unwrap();
        app.start_canary(next, 1000, 60_000, CanaryPolicy::default(), 2)
            .unwrap();
        assert!(!app.end_canary(9, 2, true, "not this one", 3));
        assert!(!app.end_canary(next, 1, true, "an earlier run's verdict", 3));
        assert!(app.end_canary(next, 2, false, "errors", 3));
        assert!(
            !app.end_canary(next, 2, true, "judged twice", 4),
            "ends once"
        );
        assert_eq!((app.live, app.split), (1, None));
        assert_eq!(app.canaries[0].outcome, CanaryOutcome::RolledBack);
        app.start_canary(next, 1000, 60_000, CanaryPolicy::default(), 5)
            .unwrap();
        assert!(app.end_canary(next, 5, true, "healthy", 6));
        assert_eq!((app.live, app.previous), (2, Some(1)));
        app.start_canary(1, 5000, 60_000, CanaryPolicy::default(), 7)
            .unwrap();
        app.go_live(2, 8).unwrap();
        assert_eq!(
            app.canaries.last().unwrap().outcome,
            CanaryOutcome::Superseded
        );
        assert!(app.split.is_none());
    }

    #[test]
    fn history_is_bounded_but_keeps_what_is_referred_to() {
        let mut app = app();
        release(&mut app, 1, 1, 0);
        app.go_live(1, 0).unwrap();
        for n in 2..=(APP_HISTORY as u64 + 10) {
            let functions = [("a".to_string(), active(n))].into_iter().collect();
            app.add_version(functions, Variables::new(), BTreeMap::new(), n)
                .unwrap();
        }
        assert_eq!(app.versions.len(), APP_HISTORY);
        assert!(app.version(1).is_some(), "the live version is kept");
        assert_eq!(
            app.versions.last().unwrap().version,
            APP_HISTORY as u64 + 10
        );
        assert_eq!(
            app.add_version(BTreeMap::new(), Variables::new(), BTreeMap::new(), 1),
            Err(AppError::Empty)
        );
    }
}

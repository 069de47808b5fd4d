//! What a NATS cluster must be before Gust trusts it with acknowledged
//! writes, as pure decisions over what each server reports of itself
//! (its monitoring endpoint's `/varz`): the binary fetches the reports,
//! this module judges them.
//!
//! - NATS 2.12 or newer: older servers lose acknowledged writes after
//!   process kills and peer changes that later releases fixed.
//! - JetStream syncing every write to disk before acknowledging it
//!   (`sync_interval: always`): with the default (every 2 minutes) a
//!   power loss or an OS crash of several nodes loses writes that were
//!   acknowledged (Jepsen's NATS 2.12.1 analysis).
//! - At least 3 replicas of every stream (a majority survives one lost
//!   node), and as many servers; 1 replica only for development.

/// The oldest NATS server Gust runs on.
pub const MIN_VERSION: (u64, u64, u64) = (2, 12, 0);
/// Replicas of every stream unless `--dev` says otherwise.
pub const MIN_REPLICAS: usize = 3;

/// One server, as its `/varz` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerReport {
    /// Where the report came from.
    pub url: String,
    pub name: String,
    pub version: String,
    pub jetstream: bool,
    pub sync_always: bool,
}

impl ServerReport {
    /// Reads a server's `/varz` document.
    pub fn from_varz(url: &str, varz: &serde_json::Value) -> Self {
        let config = &varz["jetstream"]["config"];
        Self {
            url: url.to_string(),
            name: varz["server_name"].as_str().unwrap_or_default().to_string(),
            version: varz["version"].as_str().unwrap_or_default().to_string(),
            jetstream: config.is_object(),
            sync_always: config["sync_always"].as_bool().unwrap_or(false),
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCheck {
    pub replicas: usize,
    /// A development cluster: fewer replicas are allowed.
    pub dev: bool,
}

/// `major.minor.patch` of a version string (`v2.14.6`, `2.12.0-beta.1`).
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let version = version.trim().trim_start_matches('v');
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

impl ClusterCheck {
    /// Every reason the servers are not fit, each a sentence that says
    /// what to change; empty when they are.
    pub fn problems(&self, servers: &[ServerReport]) -> Vec<String> {
        let mut out = Vec::new();
        if self.replicas == 0 {
            out.push("--cluster-replicas must be at least 1".to_string());
        } else if self.replicas < MIN_REPLICAS && !self.dev {
            out.push(format!(
                "--cluster-replicas {} keeps fewer than {MIN_REPLICAS} copies of each write: one lost server loses acknowledged data; use {MIN_REPLICAS} or more, or add --dev for a development cluster",
                self.replicas
            ));
        }
        if servers.is_empty() {
            out.push("no NATS server reported itself".to_string());
        }
        for s in servers {
            let who = if s.name.is_empty() {
                s.url.clone()
            } else {
                format!("{} ({})", s.name, s.url)
            };
            match parse_version(&s.version) {
                Some(v) if v >= MIN_VERSION => {}
                Some(_) => out.push(format!(
                    "NATS server {who} runs {}; Gust needs {}.{}.{} or newer (older servers can lose acknowledged writes): upgrade it",
                    s.version, MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
                )),
                None => out.push(format!("NATS server {who} reports no version Gust can read (`{}`)", s.version)),
            }
            if !s.jetstream {
                out.push(format!("NATS server {who} does not run JetStream: start it with a `jetstream {{ … }}` block"));
            } else if !s.sync_always {
                out.push(format!(
                    "NATS server {who} does not report `sync_interval: always`: it acknowledges writes before they are on disk, and a crash can lose them; set `sync_interval: always` in its jetstream block"
                ));
            }
        }
        if !servers.is_empty() && servers.len() < self.replicas {
            out.push(format!(
                "{} replicas need at least {} NATS servers; {} reported",
                self.replicas,
                self.replicas,
                servers.len()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(version: &str, sync_always: bool) -> ServerReport {
        ServerReport {
            url: "http://n1:8222".into(),
            name: "n1".into(),
            version: version.into(),
            jetstream: true,
            sync_always,
        }
    }

    const THREE: ClusterCheck = ClusterCheck {
        replicas: 3,
        dev: false,
    };

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.14.6"), Some((2, 14, 6)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_current_cluster_that_syncs_every_write_passes() {
        let servers = vec![
            server("2.14.6", true),
            server("2.12.0", true),
            server("2.15.1", true),
        ];
        assert_eq!(THREE.problems(&servers), Vec::<String>::new());
    }

    #[test]
    fn an_old_server_is_refused() {
        let servers = vec![
            server("2.14.6", true),
            server("2.9.10", true),
            server("2.11.9", true),
        ];
        let problems = THREE.problems(&servers);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("2.9.10") && problems[0].contains("2.12.0 or newer"));
    }

    #[test]
    fn a_server_that_syncs_late_or_lacks_jetstream_is_refused() {
        let mut no_js = server("2.14.6", false);
        no_js.jetstream = false;
        let problems = THREE.problems(&[server("2.14.6", false), no_js, server("2.14.6", true)]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("sync_interval: always"));
        assert!(problems[1].contains("JetStream"));
    }

    #[test]
    fn fewer_than_three_replicas_need_dev() {
        let one = vec![server("2.14.6", true)];
        let problems = ClusterCheck {
            replicas: 1,
            dev: false,
        }
        .problems(&one);
        assert!(problems[0].contains("--dev"), "{problems:?}");
        assert!(
            ClusterCheck {
                replicas: 1,
                dev: true
            }
            .problems(&one)
            .is_empty()
        );
        // Three replicas on one server cannot be placed.
        assert!(THREE.problems(&one)[0].contains("at least 3 NATS servers"));
    }

    #[test]
    fn varz_is_read() {
        let varz = serde_json::json!({
            "server_name": "n2", "version": "2.14.6",
            "jetstream": {"config": {"sync_always": true, "store_dir": "/x"}}
        });
        let report = ServerReport::from_varz("http://h:8222", &varz);
        assert_eq!(
            report,
            ServerReport {
                url: "http://h:8222".into(),
                name: "n2".into(),
                version: "2.14.6".into(),
                jetstream: true,
                sync_always: true
            }
        );
        let old = ServerReport::from_varz(
            "u",
            &serde_json::json!({"version": "2.9.10", "jetstream": {"config": {}}}),
        );
        assert!(old.jetstream && !old.sync_always);
    }
}

//! `gust.toml`, a project's manifest: the function's name and language, how
//! it is built, its limits, event delivery, environment, schedules and
//! triggers. Parsing and validation only (the CLI reads the file and acts
//! on it); an unknown key is an error that names it and where it is.
//!
//! ```toml
//! [function]
//! name = "hello"
//! lang = "rust"          # rust | js | python
//! public = true
//!
//! [build]                # defaults by language
//! command = "cargo build --release --target wasm32-wasip2"
//! wasm = "target/wasm32-wasip2/release/hello.wasm"
//! watch = ["src", "Cargo.toml"]
//!
//! [limits]
//! memory_mb = 64
//! timeout_ms = 5000
//! allowed_hosts = ["api.github.com"]
//! keep_alive = "5m"
//!
//! [env]
//! GREETING = "Hello"
//!
//! [[schedules]]
//! expr = "@every 1m"
//! path = "/tick"
//!
//! [[triggers]]
//! bucket = "orders"
//! path = "/on-order"
//!
//! [[sources]]            # fields as in `gust source add --help`
//! kind = "redis"
//! url = "redis://:${REDIS_PASSWORD}@cache:6379"   # ${NAME}: from the environment at deploy
//! stream = "orders"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::FunctionName;

/// The manifest's file name, in a project's root folder.
pub const FILE_NAME: &str = "gust.toml";

/// A parsed, validated `gust.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub function: FunctionSection,
    #[serde(default)]
    pub build: BuildSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub events: EventsSection,
    /// Environment variables the function sees (and `wasi:config` keys).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub schedules: Vec<ScheduleSection>,
    #[serde(default)]
    pub triggers: Vec<TriggerSection>,
    #[serde(default)]
    pub sources: Vec<crate::source::SourceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSection {
    pub name: String,
    pub lang: Lang,
    /// Anyone with the URL may call it (absent: as it is; new: private).
    pub public: Option<bool>,
    /// Host names and path prefixes it claims (`api.example.com/v1`,
    /// `/shop`, `:alias` after); absent: as they are.
    pub routes: Option<Vec<String>>,
}

/// The languages `gust new` has templates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
        }
    }
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "rust" => Ok(Lang::Rust),
            "js" | "javascript" => Ok(Lang::Js),
            "python" | "py" => Ok(Lang::Python),
            _ => Err(format!(
                "`{text}` is not a language Gust has a template for: rust, js or python"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Run by `sh -c` in the project folder.
    pub command: Option<String>,
    /// The component the build makes, relative to the project folder.
    pub wasm: Option<String>,
    /// Files and folders `gust dev` watches.
    pub watch: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub stream_idle_ms: Option<u64>,
    pub stream_max_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Internal hosts the function may call; a deploy with any needs an
    /// admin token.
    #[serde(default)]
    pub allow_internal_hosts: Vec<String>,
    pub monthly_budget_micros: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub reserved_concurrency: Option<u32>,
    pub queue_depth: Option<u32>,
    pub queue_wait_ms: Option<u64>,
    pub keep_alive: Option<String>,
    pub provisioned: Option<String>,
    /// Outbound requests outside Gust carry the trace context.
    #[serde(default)]
    pub trace_outbound: bool,
    /// Its URLs accept WebSocket upgrades.
    #[serde(default)]
    pub websocket: bool,
    pub ws_max_connections: Option<u32>,
    pub ws_max_message_bytes: Option<u64>,
    pub ws_idle_ms: Option<u64>,
    pub ws_messages_per_second: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub max_event_age_ms: Option<u64>,
    pub concurrency: Option<u32>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    pub expr: String,
    pub tz: Option<String>,
    pub path: Option<String>,
    pub catch_up: Option<u32>,
    /// Default: `toml-<n>`, its place in the file (from 1).
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSection {
    pub bucket: String,
    pub prefix: Option<String>,
    pub path: Option<String>,
    /// Default: `toml-<n>`, its place in the file (from 1).
    pub id: Option<String>,
}

/// Ids the manifest gives schedules and triggers that name none; a
/// deploy replaces what carries such an id and is no longer in the file.
pub const MANAGED_PREFIX: &str = "toml-";

/// The id of the `index`-th (from 0) schedule or trigger.
pub fn managed_id(explicit: Option<&str>, index: usize) -> String {
    explicit.map_or_else(|| format!("{MANAGED_PREFIX}{}", index + 1), str::to_string)
}

/// `gust.toml` of an application: several functions released together,
/// each with what a function's own manifest holds, in its own folder
/// (`dir`, default its name); `[env]` here is shared by all of them and
/// versioned with each release.
///
/// ```toml
/// [app]
/// name = "shop"
///
/// [env]
/// CURRENCY = "EUR"
///
/// [secrets]              # sealed; ${NAME}: from the environment at deploy
/// PAYMENTS_KEY = "${PAYMENTS_KEY}"
///
/// [[functions]]
/// name = "front"
/// lang = "rust"
/// public = true
///
/// [[functions]]
/// name = "prices"
/// lang = "rust"
/// dir = "services/prices"
/// [functions.limits]
/// memory_mb = 64
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppManifest {
    pub app: AppSection,
    /// Variables every function sees (under its own).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secrets every function sees, sealed at rest and never shown; a
    /// value's `${NAME}` is taken from the environment at deploy (so the
    /// file need not hold it).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    pub functions: Vec<MemberSection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub name: String,
}

/// One function of an application: a function manifest's sections, and
/// the folder that holds its sources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub name: String,
    pub lang: Lang,
    /// Its folder, relative to the application's (default: its name).
    pub dir: Option<String>,
    pub public: Option<bool>,
    pub routes: Option<Vec<String>>,
    #[serde(default)]
    pub build: BuildSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub schedules: Vec<ScheduleSection>,
    #[serde(default)]
    pub triggers: Vec<TriggerSection>,
    #[serde(default)]
    pub sources: Vec<crate::source::SourceSpec>,
}

impl MemberSection {
    /// Its folder, relative to the application's.
    pub fn dir(&self) -> &str {
        self.dir.as_deref().unwrap_or(&self.name)
    }

    /// The function's manifest, as if it had a `gust.toml` of its own.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            function: FunctionSection {
                name: self.name.clone(),
                lang: self.lang,
                public: self.public,
                routes: self.routes.clone(),
            },
            build: self.build.clone(),
            limits: self.limits.clone(),
            events: self.events.clone(),
            env: self.env.clone(),
            schedules: self.schedules.clone(),
            triggers: self.triggers.clone(),
            sources: self.sources.clone(),
        }
    }
}

/// A `gust.toml`: one function's, or an application's (it has `[app]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectManifest {
    Function(Box<Manifest>),
    App(AppManifest),
}

impl ProjectManifest {
    pub fn parse(text: &str) -> Result<ProjectManifest, ManifestError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ManifestError(e.to_string().trim_end().to_string()))?;
        if !table.contains_key("app") {
            return Manifest::parse(text).map(|m| ProjectManifest::Function(Box::new(m)));
        }
        let app: AppManifest = toml::from_str(text)
            .map_err(|e| ManifestError(e.to_string().trim_end().to_string()))?;
        FunctionName::new(app.app.name.as_str())
            .map_err(|e| ManifestError(format!("[app] name: {e}")))?;
        if app.functions.is_empty() {
            return Err(ManifestError(
                "an application names its functions: add a [[functions]] table with name and lang"
                    .into(),
            ));
        }
        if app.functions.len() > crate::app::MAX_MEMBERS {
            return Err(ManifestError(format!(
                "an application has at most {} functions",
                crate::app::MAX_MEMBERS
            )));
        }
        for name in app.env.keys() {
            crate::config::check_name(name).map_err(|e| ManifestError(format!("[env] {e}")))?;
        }
        for name in app.secrets.keys() {
            crate::config::check_name(name).map_err(|e| ManifestError(format!("[secrets] {e}")))?;
            if app.env.contains_key(name) {
                return Err(ManifestError(format!(
                    "`{name}` is both in [env] and in [secrets]: keep one"
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, member) in app.functions.iter().enumerate() {
            if !seen.insert(member.name.as_str()) {
                return Err(ManifestError(format!(
                    "[[functions]] number {}: `{}` is named twice",
                    i + 1,
                    member.name
                )));
            }
            let dir = member.dir();
            if dir.is_empty()
                || std::path::Path::new(dir).is_absolute()
                || dir.split(['/', '\\']).any(|p| p == "..")
            {
                return Err(ManifestError(format!(
                    "[[functions]] `{}`: dir must be a folder inside the application's",
                    member.name
                )));
            }
            member
                .manifest()
                .validate()
                .map_err(|e| ManifestError(format!("[[functions]] `{}`: {e}", member.name)))?;
        }
        Ok(ProjectManifest::App(app))
    }
}

/// Why a manifest was refused: the message names the key and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Parses and validates `gust.toml`'s text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError(e.to_string().trim_end().to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        FunctionName::new(self.function.name.as_str())
            .map_err(|e| ManifestError(format!("[function] name: {e}")))?;
        for route in self.function.routes.iter().flatten() {
            route
                .parse::<crate::route::RouteClaim>()
                .map_err(|e| ManifestError(format!("[function] routes: {e}")))?;
        }
        for key in self.env.keys() {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ManifestError(format!(
                    "[env] `{key}` is not a valid variable name: use letters, digits and `_`, not starting with a digit"
                )));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            if !ids.insert(managed_id(s.id.as_deref(), i)) {
                return Err(ManifestError(format!(
                    "[[schedules]] number {}: its id is used twice",
                    i + 1
                )));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = |e: String| ManifestError(format!("[[sources]] number {}: {e}", i + 1));
            if !ids.insert(managed_id(s.id.as_deref(), i)) {
                return Err(at("its id is used twice".into()));
            }
            // Checked with stand-ins for `${NAME}`s, which are read at deploy.
            let kind: crate::source::SourceKind = s.kind.parse().map_err(at)?;
            let stand_in = |_: &str| Some(String::new());
            let mut checked = s.expand(stand_in).map_err(at)?;
            if s.url.as_deref().is_some_and(|u| u.contains("${")) {
                checked.url = Some(kind.example_url().to_string());
            }
            if s.secret.as_deref().is_some_and(|u| u.contains("${")) {
                checked.secret = Some("stand-in".to_string());
            }
            // A `ca` that is not PEM names a file, read at deploy.
            if s.ca.as_deref().is_some_and(|c| !c.contains("-----BEGIN")) {
                checked.ca = Some("-----BEGIN CERTIFICATE-----".to_string());
            }
            checked.validate().map_err(at)?;
        }
        let mut ids = std::collections::HashSet::new();
        for (i, t) in self.triggers.iter().enumerate() {
            if !ids.insert(managed_id(t.id.as_deref(), i)) {
                return Err(ManifestError(format!(
                    "[[triggers]] number {}: its id is used twice",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// The build command: the manifest's, or the language's usual one.
    pub fn build_command(&self) -> String {
        if let Some(command) = &self.build.command {
            return command.clone();
        }
        match self.function.lang {
            Lang::Rust => "cargo build --release --target wasm32-wasip2".into(),
            Lang::Js => "npm run build".into(),
            Lang::Python => {
                "componentize-py -d wit -w wasi:http/proxy@0.2.0 componentize app -o app.wasm"
                    .into()
            }
        }
    }

    /// Where the build leaves the component, relative to the project.
    pub fn wasm_path(&self) -> String {
        if let Some(wasm) = &self.build.wasm {
            return wasm.clone();
        }
        match self.function.lang {
            Lang::Rust => format!(
                "target/wasm32-wasip2/release/{}.wasm",
                self.function.name.replace('-', "_")
            ),
            Lang::Js => format!("dist/{}.wasm", self.function.name),
            Lang::Python => "app.wasm".into(),
        }
    }

    /// What `gust dev` watches, relative to the project.
    pub fn watch(&self) -> Vec<String> {
        if let Some(watch) = &self.build.watch {
            return watch.clone();
        }
        let files: &[&str] = match self.function.lang {
            Lang::Rust => &["src", "Cargo.toml"],
            Lang::Js => &["src", "package.json"],
            Lang::Python => &["app.py"],
        };
        files.iter().map(|f| f.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_checked_with_their_variables_left_for_the_deploy() {
        let base = "[function]\nname = \"sync\"\nlang = \"rust\"\n";
        let m = Manifest::parse(&format!(
            "{base}[[sources]]\nkind = \"postgres\"\nurl = \"${{PG_URL}}\"\npublication = \"shop\"\n\n[[sources]]\nkind = \"webhook\"\nsecret = \"${{HOOK}}\"\nid = \"gh\"\n"
        ))
        .unwrap();
        assert_eq!(m.sources.len(), 2);
        assert_eq!(managed_id(m.sources[0].id.as_deref(), 0), "toml-1");
        let expanded = m.sources[0]
            .expand(|name| (name == "PG_URL").then(|| "postgres://app@db/shop".into()))
            .unwrap();
        assert_eq!(expanded.url.as_deref(), Some("postgres://app@db/shop"));
        let refused = Manifest::parse(&format!(
            "{base}[[sources]]\nkind = \"redis\"\nurl = \"redis://h\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            refused.0,
            "[[sources]] number 1: a redis source needs `stream`"
        );
        assert!(Manifest::parse(&format!("{base}[[sources]]\nkind = \"kafka\"\n")).is_err());
        // A `ca` that is a file's name is read at deploy.
        let m = Manifest::parse(&format!(
            "{base}[[sources]]\nkind = \"mqtt\"\nurl = \"mqtts://broker\"\ntopics = [\"a/#\"]\nca = \"certs/ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(m.sources[0].ca.as_deref(), Some("certs/ca.pem"));
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = Manifest::parse(
            r#"
[function]
name = "hello"
lang = "rust"
public = true

[limits]
memory_mb = 64
allowed_hosts = ["api.github.com"]
allow_internal_hosts = ["10.0.0.5"]
keep_alive = "5m"

[events]
max_attempts = 5

[env]
GREETING = "Hi"

[[schedules]]
expr = "@every 1m"
path = "/tick"

[[schedules]]
expr = "0 9 * * *"
id = "morning"

[[triggers]]
bucket = "orders"
"#,
        )
        .unwrap();
        assert_eq!(m.function.name, "hello");
        assert_eq!(m.limits.memory_mb, Some(64));
        assert_eq!(m.limits.allow_internal_hosts, ["10.0.0.5"]);
        assert_eq!(m.env["GREETING"], "Hi");
        assert_eq!(m.wasm_path(), "target/wasm32-wasip2/release/hello.wasm");
        assert_eq!(managed_id(m.schedules[0].id.as_deref(), 0), "toml-1");
        assert_eq!(managed_id(m.schedules[1].id.as_deref(), 1), "morning");
        assert_eq!(m.events.max_attempts, Some(5));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e =
            Manifest::parse("[function]\nname = \"a\"\nlang = \"rust\"\nmemory = 3\n").unwrap_err();
        assert!(e.0.contains("unknown field `memory`"), "{e}");
        let e =
            Manifest::parse("[function]\nname = \"a\"\nlang = \"rust\"\n[limits]\nmemory_gb = 1\n")
                .unwrap_err();
        assert!(e.0.contains("`memory_gb`") && e.0.contains("line 5"), "{e}");
        let e =
            Manifest::parse("[function]\nname = \"a\"\nlang = \"rust\"\n[limit]\n").unwrap_err();
        assert!(e.0.contains("`limit`"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let e = Manifest::parse("[function]\nname = \"Bad\"\nlang = \"rust\"\n").unwrap_err();
        assert!(e.0.contains("name"), "{e}");
        let e = Manifest::parse("[function]\nname = \"a\"\nlang = \"cobol\"\n").unwrap_err();
        assert!(e.0.contains("cobol"), "{e}");
        let e = Manifest::parse("[function]\nname = \"a\"\nlang = \"js\"\n[env]\n\"1X\" = \"v\"\n")
            .unwrap_err();
        assert!(e.0.contains("1X"), "{e}");
        let dup = "[function]\nname = \"a\"\nlang = \"js\"\n[[schedules]]\nexpr = \"@every 1m\"\nid = \"toml-2\"\n[[schedules]]\nexpr = \"@every 2m\"\n";
        assert!(Manifest::parse(dup).is_err());
        assert!(Manifest::parse("").is_err());
    }

    #[test]
    fn languages_have_build_defaults() {
        let m = Manifest::parse("[function]\nname = \"my-fn\"\nlang = \"rust\"\n").unwrap();
        assert_eq!(m.wasm_path(), "target/wasm32-wasip2/release/my_fn.wasm");
        assert_eq!(m.watch(), ["src", "Cargo.toml"]);
        let m = Manifest::parse(
            "[function]\nname = \"f\"\nlang = \"python\"\n[build]\nwasm = \"out.wasm\"\n",
        )
        .unwrap();
        assert_eq!(m.wasm_path(), "out.wasm");
        assert!(m.build_command().starts_with("componentize-py"));
    }

    #[test]
    fn an_application_names_its_functions_each_checked_like_a_manifest() {
        let text = r#"
            [app]
            name = "shop"
            [env]
            CURRENCY = "EUR"
            [[functions]]
            name = "front"
            lang = "rust"
            public = true
            [[functions]]
            name = "prices"
            lang = "rust"
            dir = "services/prices"
            [functions.limits]
            memory_mb = 64
        "#;
        let ProjectManifest::App(app) = ProjectManifest::parse(text).unwrap() else {
            panic!("an application");
        };
        assert_eq!(app.functions.len(), 2);
        assert_eq!(app.functions[0].dir(), "front");
        assert_eq!(app.functions[1].dir(), "services/prices");
        assert_eq!(app.functions[1].manifest().limits.memory_mb, Some(64));
        let single = "[function]\nname = \"a\"\nlang = \"rust\"\n";
        assert!(matches!(
            ProjectManifest::parse(single),
            Ok(ProjectManifest::Function(_))
        ));
        for (bad, says) in [
            (
                "functions = []\n[app]\nname = \"shop\"\n",
                "names its functions",
            ),
            (
                "[app]\nname = \"shop\"\n[[functions]]\nname = \"a\"\nlang = \"rust\"\n[[functions]]\nname = \"a\"\nlang = \"rust\"\n",
                "named twice",
            ),
            (
                "[app]\nname = \"shop\"\n[[functions]]\nname = \"a\"\nlang = \"rust\"\ndir = \"../x\"\n",
                "inside",
            ),
            (
                "[app]\nname = \"shop\"\n[[functions]]\nname = \"a\"\nlang = \"rust\"\nmemory = 1\n",
                "memory",
            ),
        ] {
            let error = ProjectManifest::parse(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }
}

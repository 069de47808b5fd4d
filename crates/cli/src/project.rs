//! Projects: `gust new` (a working function from a template), `gust build`
//! (its `gust.toml`'s build), `gust deploy` without a file (build, deploy,
//! then its schedules and triggers as the manifest says) and `gust dev`
//! (all of that again on every change).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use gust_core::manifest::{self, Lang, Manifest};

use crate::functions::DeployArgs;
use crate::http::{Api, ApiArgs};
use crate::output;

/// A project folder and its manifest.
#[derive(Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Project {
    pub fn load(dir: &Path) -> anyhow::Result<Project> {
        let path = dir.join(manifest::FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(output::Usage(format!(
                    "no {} in {}: deploy a file with `gust deploy NAME FILE.wasm`, or start a project with `gust new NAME`",
                    manifest::FILE_NAME,
                    dir.display()
                ))
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let manifest = match manifest::ProjectManifest::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        {
            manifest::ProjectManifest::Function(manifest) => *manifest,
            manifest::ProjectManifest::App(app) => {
                return Err(output::Usage(format!(
                    "{} describes application `{}`: `gust deploy` there deploys it whole; build or run one of its functions with `gust deploy --app {} NAME FILE.wasm`",
                    path.display(),
                    app.app.name,
                    app.app.name
                ))
                .into());
            }
        };
        Ok(Project {
            dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            manifest,
        })
    }

    /// Fills what the command line left out from the manifest.
    pub fn fill_in(&self, args: &mut DeployArgs) {
        let m = &self.manifest;
        let l = &m.limits;
        args.name.get_or_insert_with(|| m.function.name.clone());
        fill(&mut args.memory_mb, l.memory_mb);
        fill(&mut args.timeout_ms, l.timeout_ms);
        fill(&mut args.stream_idle_ms, l.stream_idle_ms);
        fill(&mut args.stream_max_ms, l.stream_max_ms);
        args.websocket |= l.websocket;
        fill(&mut args.ws_max_connections, l.ws_max_connections);
        fill(&mut args.ws_max_message_bytes, l.ws_max_message_bytes);
        fill(&mut args.ws_idle_ms, l.ws_idle_ms);
        fill(&mut args.ws_messages_per_second, l.ws_messages_per_second);
        fill(&mut args.max_body_bytes, l.max_body_bytes);
        fill(&mut args.max_output_bytes, l.max_output_bytes);
        if args.allow_hosts.is_empty() {
            args.allow_hosts.clone_from(&l.allowed_hosts);
        }
        if args.allow_internal_hosts.is_empty() {
            args.allow_internal_hosts
                .clone_from(&l.allow_internal_hosts);
        }
        fill(&mut args.monthly_budget_micros, l.monthly_budget_micros);
        fill(&mut args.max_concurrency, l.max_concurrency);
        fill(&mut args.reserved_concurrency, l.reserved_concurrency);
        fill(&mut args.queue_depth, l.queue_depth);
        fill(&mut args.queue_wait_ms, l.queue_wait_ms);
        if args.keep_alive.is_none() {
            args.keep_alive = l.keep_alive.as_deref().and_then(|k| k.parse().ok());
        }
        if args.provisioned.is_none() {
            args.provisioned = l.provisioned.as_deref().and_then(|p| p.parse().ok());
        }
        args.trace_outbound |= l.trace_outbound;
        if args.routes.is_empty()
            && let Some(routes) = &m.function.routes
        {
            args.routes.clone_from(routes);
        }
        if !args.public && !args.private {
            match m.function.public {
                Some(true) => args.public = true,
                Some(false) => args.private = true,
                None => {}
            }
        }
        let e = &m.events;
        fill(&mut args.max_attempts, e.max_attempts);
        fill(&mut args.backoff_ms, e.backoff_ms);
        fill(&mut args.max_backoff_ms, e.max_backoff_ms);
        fill(&mut args.max_event_age_ms, e.max_event_age_ms);
        fill(&mut args.concurrency, e.concurrency);
        if args.on_success.is_none() {
            args.on_success.clone_from(&e.on_success);
        }
        if args.on_failure.is_none() {
            args.on_failure.clone_from(&e.on_failure);
        }
    }

    /// Checks settings the manifest holds as text (so that a bad one is an
    /// error, not silently left out).
    fn check(&self) -> anyhow::Result<()> {
        let l = &self.manifest.limits;
        if let Some(k) = &l.keep_alive {
            k.parse::<gust_core::scaling::KeepAlive>()
                .map_err(|e| anyhow::anyhow!("[limits] keep_alive: {e}"))?;
        }
        if let Some(p) = &l.provisioned {
            p.parse::<gust_core::scaling::Provisioned>()
                .map_err(|e| anyhow::anyhow!("[limits] provisioned: {e}"))?;
        }
        Ok(())
    }

    /// Runs the build; returns the component it made. Each phase (a
    /// JavaScript project's `npm install` when it has no `node_modules`,
    /// then the build command) ends with a line saying how long it took,
    /// unless `quiet`.
    pub async fn build(&self, quiet: bool) -> anyhow::Result<PathBuf> {
        self.check()?;
        if self.needs_node_modules() {
            let doing = format!("installing the build tools ({NPM_INSTALL})");
            let took = self.run(NPM_INSTALL, doing, quiet).await?;
            if !quiet {
                eprintln!(
                    "installed the build tools (npm install) in {:.1} s",
                    took.as_secs_f64()
                );
            }
        }
        let command = self.manifest.build_command();
        let took = self
            .run(&command, format!("building ({command})"), quiet)
            .await?;
        let wasm = self.dir.join(self.manifest.wasm_path());
        let size = std::fs::metadata(&wasm)
            .with_context(|| {
                format!(
                    "the build succeeded but left no {}; set [build] wasm in {} to where it writes the component",
                    wasm.display(),
                    manifest::FILE_NAME
                )
            })?
            .len();
        if !quiet {
            eprintln!(
                "built {} ({:.1} KB) in {:.1} s",
                wasm.display(),
                size as f64 / 1e3,
                took.as_secs_f64()
            );
        }
        Ok(wasm)
    }

    /// A JavaScript project whose build tools are not installed yet: its
    /// `package.json` names them, `npm install` fetches them.
    fn needs_node_modules(&self) -> bool {
        self.manifest.function.lang == Lang::Js
            && self.dir.join("package.json").is_file()
            && !self.dir.join("node_modules").exists()
    }

    /// Runs one phase of the build (`sh -c command` in the project
    /// folder), with a spinner saying what it is `doing` on a terminal
    /// unless `quiet`; returns how long it took. Its output is shown only
    /// if it fails, with how to install a build tool that is missing.
    async fn run(&self, command: &str, doing: String, quiet: bool) -> anyhow::Result<Duration> {
        let progress = (!quiet).then(|| output::Progress::start(doing));
        let started = Instant::now();
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run the build `{command}`"))?;
        drop(progress);
        if out.status.success() {
            return Ok(started.elapsed());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{stderr}");
        let next = diagnose(self.manifest.function.lang, out.status.code(), &stderr)
            .unwrap_or_else(|| {
                format!(
                    "fix the errors above, or the [build] command in {}",
                    manifest::FILE_NAME
                )
            });
        bail!("the build `{command}` failed ({}); {next}", out.status)
    }

    /// Makes the function's schedules, triggers and sources those of the manifest:
    /// each is written under its id; one with a manifest-made id
    /// (`toml-N`) that the manifest no longer has is removed. Others, added
    /// by hand, are left alone.
    pub async fn reconcile(&self, api: &Api, name: &str, quiet: bool) -> anyhow::Result<()> {
        let m = &self.manifest;
        let schedules: Vec<(String, serde_json::Value)> = m
            .schedules
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let id = manifest::managed_id(s.id.as_deref(), i);
                let body = serde_json::json!({
                    "expr": s.expr, "tz": s.tz, "path": s.path, "catch_up": s.catch_up, "id": id,
                });
                (id, body)
            })
            .collect();
        let triggers: Vec<(String, serde_json::Value)> = m
            .triggers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let id = manifest::managed_id(t.id.as_deref(), i);
                let body = serde_json::json!({
                    "bucket": t.bucket, "prefix": t.prefix, "path": t.path, "id": id,
                });
                (id, body)
            })
            .collect();
        let mut sources = Vec::new();
        for (i, s) in m.sources.iter().enumerate() {
            let id = manifest::managed_id(s.id.as_deref(), i);
            let mut spec = s
                .expand(|name| std::env::var(name).ok())
                .map_err(|e| anyhow::anyhow!("[[sources]] number {}: {e}", i + 1))?;
            spec.id = Some(id.clone());
            // `ca` names a PEM file beside gust.toml, unless it is the PEM itself.
            if let Some(file) = spec.ca.clone().filter(|c| !c.contains("-----BEGIN")) {
                let path = self.dir.join(&file);
                spec.ca = Some(std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!(
                        "[[sources]] number {}: cannot read its `ca` file {}: {e}",
                        i + 1,
                        path.display()
                    )
                })?);
            }
            sources.push((id, serde_json::to_value(&spec)?));
        }
        for (kind, wanted) in [
            ("schedules", schedules),
            ("triggers", triggers),
            ("sources", sources),
        ] {
            let path = format!("/v1/functions/{name}/{kind}");
            let existing: Vec<serde_json::Value> =
                api.send(api.request(reqwest::Method::GET, &path)).await?;
            for old in &existing {
                let Some(id) = old["id"].as_str() else {
                    continue;
                };
                let stale = id.starts_with(manifest::MANAGED_PREFIX)
                    && !wanted.iter().any(|(w, _)| w == id);
                let replaced = wanted.iter().any(|(w, _)| w == id);
                if stale || replaced {
                    api.send_raw(api.request(reqwest::Method::DELETE, &format!("{path}/{id}")))
                        .await?;
                }
            }
            for (_, body) in &wanted {
                api.send_raw(api.request(reqwest::Method::POST, &path).json(body))
                    .await?;
            }
            if !quiet && !wanted.is_empty() {
                eprintln!("{kind}: {}", wanted.len());
            }
        }
        Ok(())
    }

    /// Sets the manifest's `[env]` variables on the function (or on
    /// `alias`), before the new version serves if the function exists
    /// (others, set by hand, stay). Refuses to overwrite a secret with a
    /// plain value. False: the function does not exist yet.
    pub async fn apply_env(
        &self,
        api: &Api,
        name: &str,
        alias: Option<&str>,
    ) -> anyhow::Result<bool> {
        let env = &self.manifest.env;
        if env.is_empty() {
            return Ok(true);
        }
        let path = format!("/v1/functions/{name}/vars");
        let (_, body) = match api.send_raw(api.request(reqwest::Method::GET, &path)).await {
            Ok(answer) => answer,
            Err(e) if e.to_string().contains("does not exist") => return Ok(false),
            Err(e) => return Err(e),
        };
        let existing: Vec<gust_api::VarInfo> = serde_json::from_slice(&body)?;
        if let Some(secret) = existing
            .iter()
            .find(|v| v.secret && v.alias.as_deref() == alias && env.contains_key(&v.name))
        {
            bail!(
                "[env] {} would replace a secret of `{name}` with a plain value; remove it from [env], or the secret with `gust secret rm {name} {}`",
                secret.name,
                secret.name
            );
        }
        let set: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!({ "value": v })))
            .collect();
        crate::vars::patch(api, name, serde_json::json!({ "alias": alias, "set": set })).await?;
        Ok(true)
    }

    /// The newest modification time among the watched files.
    fn newest_change(&self) -> SystemTime {
        let mut newest = SystemTime::UNIX_EPOCH;
        for entry in self.manifest.watch() {
            newest = newest.max(newest_in(&self.dir.join(entry)));
        }
        newest.max(newest_in(&self.dir.join(manifest::FILE_NAME)))
    }
}

/// How a JavaScript project's build tools are installed.
const NPM_INSTALL: &str = "npm install --no-audit --no-fund --loglevel=error";

/// The componentize-py version the Python template pins in its
/// `requirements.txt` (the one CI installs).
fn componentize_py_version() -> &'static str {
    include_str!("../templates/python/requirements.txt")
        .lines()
        .find_map(|line| line.trim().strip_prefix("componentize-py=="))
        .unwrap_or("")
}

/// What to do about a failed build whose cause is a missing tool (the
/// shell's `X: not found`, exit status 127) or a missing Rust target;
/// `None` when it failed for another reason.
fn diagnose(lang: Lang, code: Option<i32>, stderr: &str) -> Option<String> {
    if stderr.contains("target may not be installed") {
        return Some(
            "the `wasm32-wasip2` target is not installed: `rustup target add wasm32-wasip2`".into(),
        );
    }
    let tool = missing_tool(stderr);
    if tool.is_none() && code != Some(127) {
        return None;
    }
    let install = install_hint(tool.unwrap_or(""), lang);
    Some(match tool {
        Some(tool) => format!("`{tool}` is not installed (or not on PATH): {install}"),
        None => format!("a build tool is not installed (or not on PATH): {install}"),
    })
}

/// The command a shell could not find, from its complaint
/// (`sh: 1: componentize-py: not found`, `sh: line 1: jco: command not found`).
fn missing_tool(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|line| {
        let line = line.trim_end();
        let before = line
            .strip_suffix(": command not found")
            .or_else(|| line.strip_suffix(": not found"))?;
        let tool = before.rsplit(": ").next()?.trim();
        (!tool.is_empty() && !tool.contains(' ')).then_some(tool)
    })
}

/// How to install `tool` (or, when it is not known, the tools a project
/// in `lang` builds with).
fn install_hint(tool: &str, lang: Lang) -> String {
    let python = || {
        format!(
            "`pip install componentize-py=={}` (or `pip install -r requirements.txt` in the project)",
            componentize_py_version()
        )
    };
    match (tool, lang) {
        ("componentize-py", _) => python(),
        ("componentize-js" | "jco", _) => {
            "run `npm install` in the project (its package.json names the build tools)".into()
        }
        ("npm" | "node" | "npx", _) => "install Node.js 20 or newer, with npm".into(),
        ("cargo" | "rustup" | "rustc", _) => {
            "install Rust with rustup (https://rustup.rs), then `rustup target add wasm32-wasip2`"
                .into()
        }
        ("pip" | "pip3" | "python" | "python3", _) => {
            format!("install Python 3 with pip, then {}", python())
        }
        ("", Lang::Python) => python(),
        ("", Lang::Js) => {
            "install Node.js 20 or newer, then run `npm install` in the project".into()
        }
        ("", Lang::Rust) => {
            "install Rust with rustup, then `rustup target add wasm32-wasip2`".into()
        }
        (tool, _) => format!(
            "install `{tool}`, or change the [build] command in {}",
            manifest::FILE_NAME
        ),
    }
}

fn fill<T: Copy>(arg: &mut Option<T>, value: Option<T>) {
    if arg.is_none() {
        *arg = value;
    }
}

/// The newest modification time in `path` (a file, or a folder walked).
fn newest_in(path: &Path) -> SystemTime {
    let Ok(meta) = std::fs::metadata(path) else {
        return SystemTime::UNIX_EPOCH;
    };
    let mut newest = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            newest = newest.max(newest_in(&entry.path()));
        }
    }
    newest
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust new hello                      a Rust function in ./hello
  gust new hello --lang js
  gust new hello --lang python --dir services/hello
  gust new shop --template app        an application: shop-front calls shop-back
  cd hello && gust deploy             build it and deploy it")]
pub struct NewArgs {
    /// Function (or application) name: lowercase letters, digits and `-`.
    name: String,
    /// The language of the template.
    #[arg(long, value_enum, default_value_t = Template::Rust)]
    lang: Template,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `app`: an application of two Rust functions that call each other
    /// (NAME-front, public, and NAME-back), released together.
    #[arg(long, value_enum)]
    template: Option<Kind>,
}

/// What `gust new` makes besides one function.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// Two Rust functions released as one application
    App,
}

/// The application template's files.
const APP_TEMPLATE: &[(&str, &str)] = &[
    ("gust.toml", include_str!("../templates/app/gust.toml")),
    (
        "Cargo.toml",
        include_str!("../templates/app/Cargo.toml.tmpl"),
    ),
    (".gitignore", include_str!("../templates/app/gitignore")),
    (
        "front/Cargo.toml",
        include_str!("../templates/app/front/Cargo.toml.tmpl"),
    ),
    (
        "front/src/lib.rs",
        include_str!("../templates/app/front/src/lib.rs"),
    ),
    (
        "back/Cargo.toml",
        include_str!("../templates/app/back/Cargo.toml.tmpl"),
    ),
    (
        "back/src/lib.rs",
        include_str!("../templates/app/back/src/lib.rs"),
    ),
];

/// The templates `gust new` starts from.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Template {
    /// Rust, built by cargo for wasm32-wasip2
    Rust,
    /// JavaScript, built by componentize-js (needs Node.js 20+)
    #[value(alias = "javascript")]
    Js,
    /// Python, built by componentize-py
    #[value(alias = "py")]
    Python,
}

impl From<Template> for Lang {
    fn from(template: Template) -> Lang {
        match template {
            Template::Rust => Lang::Rust,
            Template::Js => Lang::Js,
            Template::Python => Lang::Python,
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust build
  gust build --project services/hello")]
pub struct BuildArgs {
    /// The project folder (holding gust.toml).
    #[arg(long, default_value = ".")]
    project: PathBuf,
    /// Print the component's path as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust dev                      build and deploy, then again on every change (Ctrl-C stops)
  gust dev --alias dev          to hello:dev, leaving live alone")]
pub struct DevArgs {
    /// The project folder (holding gust.toml).
    #[arg(long, default_value = ".")]
    project: PathBuf,
    /// Deploy to this alias (default `live`).
    #[arg(long)]
    alias: Option<String>,
    /// How often the sources are checked for changes, in ms.
    #[arg(long, default_value_t = 300)]
    poll_ms: u64,
    #[command(flatten)]
    api: ApiArgs,
}

/// A template's files: path (with `{{name}}` placeholders) and text.
fn template(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("../templates/rust/Cargo.toml.tmpl"),
            ),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
            ("gust.toml", include_str!("../templates/rust/gust.toml")),
            (".gitignore", include_str!("../templates/rust/gitignore")),
        ],
        Lang::Js => &[
            ("package.json", include_str!("../templates/js/package.json")),
            ("src/index.js", include_str!("../templates/js/src/index.js")),
            (
                "wit/world.wit",
                include_str!("../templates/js/wit/world.wit"),
            ),
            ("gust.toml", include_str!("../templates/js/gust.toml")),
            (".gitignore", include_str!("../templates/js/gitignore")),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../templates/python/app.py")),
            (
                "wit/world.wit",
                include_str!("../templates/python/wit/world.wit"),
            ),
            (
                "requirements.txt",
                include_str!("../templates/python/requirements.txt"),
            ),
            ("gust.toml", include_str!("../templates/python/gust.toml")),
            (".gitignore", include_str!("../templates/python/gitignore")),
        ],
    }
}

/// The WASI interfaces the host links, as a JavaScript or Python project
/// needs them in `wit/deps` (none for Rust: its bindings crate has them).
/// componentize-js 0.23 exports exactly `wasi:http@0.2.10`, so its copy
/// is labelled 0.2.10: the host's 0.2.12 differs only by additions, and
/// the host links any 0.2 version at or below its own.
fn wit_deps(lang: Lang) -> Vec<(String, String)> {
    let relabel = |text: &str| match lang {
        Lang::Js => text.replace("0.2.12", "0.2.10"),
        _ => text.to_string(),
    };
    match lang {
        Lang::Rust => Vec::new(),
        Lang::Js | Lang::Python => gust_runtime::wit::HOST_WIT
            .iter()
            .map(|(file, text)| (format!("wit/deps/{file}"), relabel(text)))
            .collect(),
    }
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    gust_core::FunctionName::new(args.name.as_str())?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
        bail!(
            "{} already exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let lang = Lang::from(args.lang);
    let app = args.template == Some(Kind::App);
    if app && lang != Lang::Rust {
        return Err(output::Usage(
            "the application template is Rust only: leave out --lang".into(),
        )
        .into());
    }
    let crate_name = args.name.replace('-', "_");
    let files: Vec<(String, String)> = if app {
        APP_TEMPLATE
            .iter()
            .map(|(path, text)| (path.to_string(), text.to_string()))
            .collect()
    } else {
        template(lang)
            .iter()
            .map(|(path, text)| (path.to_string(), text.to_string()))
            .chain(wit_deps(lang))
            .collect()
    };
    for (path, text) in files {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", &args.name)
            .replace("{{crate_name}}", &crate_name);
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    if app {
        println!(
            "created application {} ({0}-front calls {0}-back) in {}",
            args.name,
            dir.display()
        );
    } else {
        println!(
            "created {} ({}) in {}",
            args.name,
            lang.as_str(),
            dir.display()
        );
    }
    println!("next: cd {} && gust deploy", dir.display());
    println!("needs: {}", toolchain_hint(lang));
    Ok(ExitCode::SUCCESS)
}

/// What a template's build needs installed.
fn toolchain_hint(lang: Lang) -> String {
    match lang {
        Lang::Rust => "rustup target add wasm32-wasip2".into(),
        Lang::Js => {
            "Node.js 20+ (the first build runs `npm install`, which fetches the build tools)".into()
        }
        Lang::Python => format!(
            "pip install componentize-py=={} (as requirements.txt pins it)",
            componentize_py_version()
        ),
    }
}

pub async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let project = Project::load(&args.project)?;
    let wasm = project.build(args.json).await?;
    if args.json {
        output::print_json(&serde_json::json!({
            "name": project.manifest.function.name,
            "wasm": wasm,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut deploy = DeployArgs::for_project(args.project.clone(), args.api.clone());
    deploy.alias = args.alias.clone();
    let mut seen = SystemTime::UNIX_EPOCH;
    loop {
        let project = match Project::load(&args.project) {
            Ok(project) => project,
            Err(e) => {
                output::error(&format!("{e:#}"));
                wait_for_change(&args, seen).await;
                continue;
            }
        };
        let changed = project.newest_change();
        if changed > seen {
            seen = changed;
            match crate::functions::deploy_version(deploy.clone()).await {
                Ok(_) => eprintln!("watching for changes (Ctrl-C stops)"),
                Err(e) => output::error(&format!("{e:#}")),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.poll_ms)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn wait_for_change(args: &DevArgs, seen: SystemTime) {
    loop {
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        if newest_in(&args.project.join(manifest::FILE_NAME)) > seen {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_template_pins_the_componentize_py_that_ci_installs() {
        let version = componentize_py_version();
        assert!(!version.is_empty());
        let ci = include_str!("../../../.ci/run");
        assert!(
            ci.contains(&format!("componentize-py=={version}")),
            ".ci/run installs another componentize-py than the template's {version}"
        );
        assert!(toolchain_hint(Lang::Python).contains(&format!("componentize-py=={version}")));
    }

    #[test]
    fn a_missing_tool_is_named_from_the_shell_complaint() {
        let dash = "sh: 1: componentize-py: not found\n";
        assert_eq!(missing_tool(dash), Some("componentize-py"));
        let bash = "npm error\nsh: line 1: jco: command not found\n";
        assert_eq!(missing_tool(bash), Some("jco"));
        assert_eq!(missing_tool("sh: npm: not found"), Some("npm"));
        assert_eq!(missing_tool("error: file not found"), None);
        assert_eq!(missing_tool("error[E0425]: cannot find value `x`"), None);
    }

    #[test]
    fn a_missing_tool_is_told_how_to_install() {
        let python = diagnose(Lang::Python, Some(127), "sh: 1: componentize-py: not found")
            .unwrap_or_default();
        assert!(
            python.contains(&format!(
                "pip install componentize-py=={}",
                componentize_py_version()
            )),
            "{python}"
        );
        let js =
            diagnose(Lang::Js, Some(1), "sh: 1: componentize-js: not found").unwrap_or_default();
        assert!(js.contains("npm install"), "{js}");
        let rust = diagnose(
            Lang::Rust,
            Some(101),
            "note: the `wasm32-wasip2` target may not be installed",
        )
        .unwrap_or_default();
        assert!(rust.contains("rustup target add wasm32-wasip2"), "{rust}");
        let unknown =
            diagnose(Lang::Rust, Some(127), "sh: 1: frobnicate: not found").unwrap_or_default();
        assert!(unknown.contains("install `frobnicate`"), "{unknown}");
        // Exit status 127 without a complaint to read: the language's tools.
        let silent = diagnose(Lang::Js, Some(127), "").unwrap_or_default();
        assert!(silent.contains("npm install"), "{silent}");
        // Another failure is the build's own.
        assert_eq!(diagnose(Lang::Rust, Some(101), "error: expected `;`"), None);
    }
}

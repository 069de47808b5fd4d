//! What a newcomer meets first, through the real binary: one message for a
//! function that does not exist (with a near name among the tenant's own
//! functions only), tokens refused with what to do, a missing build tool
//! named with how to install it, the phases of a build and a deploy with
//! their times, and the help that lists `--lang`'s values and deploys
//! `--public`.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{Server, guests};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `gust ARGS` without a server, in `dir`, with only `path` on PATH
/// (`None`: the test's own PATH).
fn gust_offline(dir: &Path, path: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gust"));
    command.args(args).current_dir(dir);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command.output().expect("run gust")
}

/// A folder for PATH holding `sh` and the given scripts, and nothing else:
/// any other tool the build names is missing.
fn bare_path(root: &Path, scripts: &[(&str, &str)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/bin/sh", bin.join("sh")).unwrap();
    for (name, text) in scripts {
        let file = bin.join(name);
        std::fs::write(&file, format!("#!/bin/sh\n{text}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn project(dir: &Path, lang: &str, command: &str) {
    std::fs::write(
        dir.join("gust.toml"),
        format!(
            "[function]\nname = \"tool\"\nlang = \"{lang}\"\n\n[build]\ncommand = \"{command}\"\nwasm = \"app.wasm\"\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_that_does_not_exist_reads_the_same_in_every_command_with_a_near_name() {
    let server = Server::start();
    server.deploy("hello", &guests().hello, &[]);
    let commands: [&[&str]; 6] = [
        &["invoke", "helo"],
        &["scale", "helo"],
        &["versions", "helo"],
        &["logs", "helo"],
        &["rm", "helo"],
        &["schedule", "ls", "helo"],
    ];
    for args in commands {
        let out = server.gust(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out)
                .contains("function `helo` does not exist: did you mean `hello`? (see `gust ls`)"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for args in [&["invoke", "nosuch"][..], &["scale", "nosuch"]] {
        let out = server.gust(args);
        assert!(
            stderr(&out).contains("function `nosuch` does not exist (see `gust ls`)"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // Another tenant's near names are never suggested.
    server.gust_json(&["tenant", "create", "globex"]);
    let globex = server.token_for("globex", "deployer", &[]);
    for args in [&["scale", "helo"][..], &["invoke", "helo"]] {
        let out = server.gust_as(&globex, args);
        assert!(
            stderr(&out).contains("function `helo` does not exist (see `gust ls`)"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("hello"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // A deploy's upload and compile phase ends with its time (but not with --json).
    let hello = guests().hello.to_str().unwrap();
    let out = server.gust(&["deploy", "again", hello]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("uploaded and compiled in "),
        "{}",
        stderr(&out)
    );
    let out = server.gust(&["deploy", "again", hello, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_cut_short_is_called_incomplete_and_a_wrong_one_points_to_a_new_admin_token() {
    let server = Server::start();
    let cut = &server.token[..server.token.len() - 10];
    let out = server.gust_as(cut, &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("incomplete or mistyped"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not a Gust token"),
        "{}",
        stderr(&out)
    );

    let mut wrong = server.token.clone();
    let last = if wrong.ends_with('a') { "b" } else { "a" };
    wrong.replace_range(wrong.len() - 1.., last);
    let out = server.gust_as(&wrong, &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gust up --new-admin-token"),
        "{}",
        stderr(&out)
    );

    let out = server.gust_as("", &["ls"]);
    assert!(
        stderr(&out).contains("gust up --new-admin-token"),
        "{}",
        stderr(&out)
    );
    let out = server.gust_as("gust_nope", &["ls"]);
    assert!(
        stderr(&out).contains("not a Gust token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_build_tool_is_named_with_how_to_install_it() {
    let pinned = include_str!("../../templates/python/requirements.txt")
        .lines()
        .find_map(|line| line.trim().strip_prefix("componentize-py=="))
        .expect("requirements.txt pins componentize-py");

    let tmp = tempfile::tempdir().unwrap();
    let bin = bare_path(tmp.path(), &[]);
    let python = tmp.path().join("python");
    std::fs::create_dir(&python).unwrap();
    project(
        &python,
        "python",
        "componentize-py componentize app -o app.wasm",
    );
    let out = gust_offline(&python, Some(&bin), &["build"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`componentize-py` is not installed"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("pip install componentize-py=={pinned}")),
        "{}",
        stderr(&out)
    );

    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    project(&other, "rust", "gust-no-such-tool --release");
    let out = gust_offline(&other, Some(&bin), &["build"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("install `gust-no-such-tool`, or change the [build] command"),
        "{}",
        stderr(&out)
    );

    // `gust new` names the pinned version up front.
    let out = gust_offline(tmp.path(), None, &["new", "py-app", "--lang", "python"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("componentize-py=={pinned}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_build_tells_each_phase_with_its_time_and_json_keeps_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    // A stand-in npm: `install` makes node_modules, `run` the component.
    let bin = bare_path(
        tmp.path(),
        &[(
            "npm",
            "PATH=/usr/bin:/bin\ncase \"$1\" in install) mkdir node_modules ;; run) printf '\\000asm' > app.wasm ;; esac",
        )],
    );
    let dir = tmp.path().join("js");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("package.json"), "{}").unwrap();
    project(&dir, "js", "npm run --silent build");
    let out = gust_offline(&dir, Some(&bin), &["build"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    let install = said
        .find("installed the build tools (npm install) in ")
        .unwrap_or_else(|| panic!("no install phase: {said}"));
    let built = said
        .find("built ")
        .unwrap_or_else(|| panic!("no build phase: {said}"));
    assert!(install < built, "{said}");
    assert!(said.contains(" s\n"), "{said}");

    // Installed now: no install phase; with --json, only the JSON.
    std::fs::remove_file(dir.join("app.wasm")).unwrap();
    let out = gust_offline(&dir, Some(&bin), &["build", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "tool");
}

#[test]
fn the_help_lists_the_languages_and_deploys_public_from_the_readme_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gust_offline(tmp.path(), None, &["new", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for lang in ["rust", "js", "python"] {
        assert!(help.contains(&format!("- {lang}:")), "{help}");
    }
    let out = gust_offline(tmp.path(), None, &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains(
            "gust deploy hello examples/target/wasm32-wasip2/release/hello.wasm --public"
        ),
        "{help}"
    );
    let readme = include_str!("../../../../README.md");
    assert!(readme.contains("examples/target/wasm32-wasip2/release/hello.wasm --public"));
}

//! Embeds the WASI WIT the host implements (wasmtime-wasi-http's own
//! `wit/deps`, found through `cargo metadata`), so that `gust new` can
//! give JavaScript and Python projects the exact interfaces their
//! component will be linked against.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let deps = match wit_deps() {
        Ok(deps) => deps,
        Err(e) => panic!("cannot find wasmtime-wasi-http's WIT: {e}"),
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&deps) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wit"))
            .collect(),
        Err(e) => panic!("cannot read {}: {e}", deps.display()),
    };
    files.sort();
    let mut code = String::from(
        "/// The WASI packages the host links, as WIT files: (file name, text).\npub const HOST_WIT: &[(&str, &str)] = &[\n",
    );
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            file.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = match std::env::var("OUT_DIR") {
        Ok(out) => PathBuf::from(out),
        Err(e) => panic!("OUT_DIR: {e}"),
    };
    if let Err(e) = std::fs::write(out.join("host_wit.rs"), code) {
        panic!("cannot write host_wit.rs: {e}");
    }
}

/// `<wasmtime-wasi-http's folder>/wit/deps`, from `cargo metadata`.
fn wit_deps() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").map_err(|e| e.to_string())?;
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let target = std::env::var("TARGET").map_err(|e| e.to_string())?;
    // Offline first (everything this build needs is downloaded already);
    // if metadata wants a package the build did not fetch, online.
    let mut failure = String::new();
    let mut found = None;
    for offline in [true, false] {
        let mut command = Command::new(&cargo);
        command.args(["metadata", "--format-version", "1"]);
        if offline {
            command.arg("--offline");
        }
        let output = command
            .args(["--filter-platform", &target, "--manifest-path"])
            .arg(Path::new(&manifest).join("Cargo.toml"))
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            found = Some(output.stdout);
            break;
        }
        failure = String::from_utf8_lossy(&output.stderr).into_owned();
    }
    let output = found.ok_or(failure)?;
    let metadata: serde_json::Value = serde_json::from_slice(&output).map_err(|e| e.to_string())?;
    let packages = metadata["packages"].as_array().ok_or("no packages")?;
    let package = packages
        .iter()
        .find(|p| p["name"] == "wasmtime-wasi-http")
        .ok_or("no wasmtime-wasi-http package")?;
    let manifest_path = package["manifest_path"]
        .as_str()
        .ok_or("no manifest_path")?;
    let dir = Path::new(manifest_path)
        .parent()
        .ok_or("manifest_path has no parent")?;
    Ok(dir.join("wit").join("deps"))
}

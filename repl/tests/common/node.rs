//! The Node.js the end-to-end tests run JavaScript clients with: the packages of
//! `tests/e2e/package.json` (the AWS SDK for JavaScript v3), installed with npm on first use into
//! `e2e-node` beside the tests' Python environment, and reused until `package.json` changes. A
//! machine without Node.js or without the npm registry fails the tests that need them, with the
//! reason, rather than passing without testing anything.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The folder holding `node_modules`, provisioned once per test binary.
pub fn modules() -> PathBuf {
    static MODULES: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = MODULES.get_or_init(|| {
        let dir = super::python::venv_dir().with_file_name("e2e-node");
        provision(&dir, &super::e2e_script("package.json")).map(|()| dir)
    });
    match made {
        Ok(dir) => dir.clone(),
        Err(reason) => panic!("the JavaScript end-to-end tests cannot run: {reason}"),
    }
}

fn provision(dir: &Path, package: &Path) -> Result<(), String> {
    let wanted = fs::read_to_string(package)
        .map_err(|e| format!("cannot read {}: {e}", package.display()))?;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = dir.with_extension("lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let stamp = dir.join("sluice-package.json");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(());
    }
    fs::write(dir.join("package.json"), &wanted)
        .map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    eprintln!(
        "installing the end-to-end tests' JavaScript clients into {} (once)",
        dir.display()
    );
    let installed = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-package-lock",
            "--loglevel=error",
        ])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run npm (install Node.js 18 or later with npm): {e}"))?;
    if !installed.status.success() {
        return Err(format!(
            "npm could not install the packages of {}; is the npm registry reachable? npm said:\n{}",
            package.display(),
            String::from_utf8_lossy(&installed.stderr).trim()
        ));
    }
    fs::write(&stamp, &wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

/// Runs end-to-end script `script` with `args` under Node.js, its packages found in
/// [`modules`]; its standard output.
pub fn script(script: &str, args: &[String]) -> Result<String, String> {
    let mut node = Command::new("node");
    node.env("NODE_PATH", modules().join("node_modules"));
    super::server::run_script(node, script, args)
}

//! The Python the end-to-end tests run their clients with: one virtual environment, created on
//! first use under the cargo target folder with the pinned clients of
//! `tests/e2e/requirements.txt` (pyarrow, DuckDB, ADBC's Flight SQL driver, boto3, aws-cli,
//! cbor2), and reused afterwards. `cargo test --workspace` on a fresh machine needs nothing
//! else: no `pip install` by hand, and no test passes by skipping because a client is missing.
//!
//! If the environment cannot be made (no network to PyPI, a package that does not resolve, a
//! Python without `venv`), every test that needs it fails with one message naming the package
//! and what pip said, rather than passing without testing anything.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What [`provision`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// Made the environment and installed the requirements.
    Created,
    /// Found it made with the same requirements and left it as it was.
    Reused,
}

/// The virtual environment's Python, made (once per test binary, and once per machine until
/// `requirements.txt` changes) on first use. Panics with the reason if it cannot be made.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = PYTHON.get_or_init(|| {
        let venv = venv_dir();
        let requirements = super::e2e_script("requirements.txt");
        provision(&venv, &requirements).map(|_| interpreter(&venv))
    });
    match made {
        Ok(python) => python.clone(),
        Err(reason) => panic!("the end-to-end tests cannot run: {reason}"),
    }
}

/// Where the shared environment lives: `SLUICE_E2E_VENV`, or `e2e-python` in the cargo target
/// folder this test binary was built into (`<target>/debug/deps/<test>`).
pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_E2E_VENV") {
        return PathBuf::from(dir);
    }
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("e2e-python")
}

/// The interpreter inside the environment at `venv`.
pub fn interpreter(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Makes the virtual environment at `venv` with the packages of `requirements` installed, or
/// finds it already made with exactly these requirements. Safe to call from several processes
/// at once: they take turns under a lock file beside the environment.
pub fn provision(venv: &Path, requirements: &Path) -> Result<Provisioned, String> {
    let wanted = fs::read_to_string(requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    if let Some(parent) = venv.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let lock_path = venv.with_extension("lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;

    let stamp = venv.join("sluice-requirements.txt");
    if interpreter(venv).exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(Provisioned::Reused);
    }
    if !interpreter(venv).exists() {
        let base = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let made = Command::new(&base)
            .args(["-m", "venv"])
            .arg(venv)
            .output()
            .map_err(|e| {
                format!("cannot run '{base}' to make a virtual environment (install Python 3, or set SLUICE_PYTHON): {e}")
            })?;
        if !made.status.success() {
            return Err(format!(
                "'{base} -m venv {}' failed (on Debian and Ubuntu, install python3-venv): {}",
                venv.display(),
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
    }
    eprintln!(
        "installing the end-to-end tests' Python clients into {} (once)",
        venv.display()
    );
    let installed = Command::new(interpreter(venv))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r",
        ])
        .arg(requirements)
        .output()
        .map_err(|e| format!("cannot run pip in {}: {e}", venv.display()))?;
    if !installed.status.success() {
        let said = String::from_utf8_lossy(&installed.stderr);
        return Err(install_failure(&said, requirements));
    }
    fs::write(&stamp, &wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(Provisioned::Created)
}

/// What to tell a person when pip failed: the package it could not get, and pip's own words.
fn install_failure(pip_said: &str, requirements: &Path) -> String {
    let package = pip_said.lines().find_map(|line| {
        [
            "No matching distribution found for ",
            "Could not find a version that satisfies the requirement ",
        ]
        .iter()
        .find_map(|marker| line.split_once(marker).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
    });
    let tail: Vec<&str> = pip_said.lines().rev().take(6).collect();
    let said: Vec<&str> = tail.into_iter().rev().collect();
    match package {
        Some(package) => format!(
            "pip could not install the Python package {package} (from {}); is the package registry (PyPI, or PIP_INDEX_URL) reachable? pip said:\n{}",
            requirements.display(),
            said.join("\n")
        ),
        None => format!(
            "pip could not install the packages of {}; is the package registry (PyPI, or PIP_INDEX_URL) reachable? pip said:\n{}",
            requirements.display(),
            said.join("\n")
        ),
    }
}

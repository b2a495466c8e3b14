//! What the end-to-end tests share.

use std::path::PathBuf;

/// The end-to-end script `name` under `tests/e2e/`, found from this package's folder as cargo
/// gives it at run time: a test binary built from another checkout sharing the target folder
/// carries that checkout's path in `env!("CARGO_MANIFEST_DIR")`.
pub fn e2e_script(name: &str) -> PathBuf {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(manifest_dir).join("../tests/e2e").join(name)
}

pub mod node;
pub mod python;
pub mod server;

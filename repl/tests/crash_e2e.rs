//! Crash safety end to end: `tests/e2e/crash.py` runs the real `sluice serve` under concurrent
//! Kinesis API and Flight SQL producers, kills it with SIGKILL at random moments, restarts it,
//! and checks that every acknowledged record survived exactly once where it was acknowledged.

mod common;

use std::process::Command;

#[test]
fn acknowledged_records_survive_sigkill_under_load() -> Result<(), Box<dyn std::error::Error>> {
    let script = common::e2e_script("crash.py");
    let run = Command::new(common::python::python())
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg("4")
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("crash checks passed"), "{stdout}");
    println!("{stdout}");
    Ok(())
}

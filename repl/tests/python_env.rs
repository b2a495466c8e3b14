//! The end-to-end tests' own Python set-up (`common/python.rs`), on environments of its own:
//! the first use makes the environment and installs the requirements, the second finds it and
//! changes nothing, a changed requirements file brings it up to date, and a package that cannot
//! be installed gives a message naming it.

mod common;

use std::process::Command;

use common::python::{Provisioned, interpreter, provision};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn first_use_creates_the_environment_and_the_second_reuses_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let venv = dir.path().join("fresh").join("venv");
    let requirements = dir.path().join("requirements.txt");
    std::fs::write(&requirements, "cbor2==6.3.0\n")?;
    assert!(!venv.exists());

    assert_eq!(provision(&venv, &requirements)?, Provisioned::Created);
    let imported = Command::new(interpreter(&venv))
        .args(["-c", "import cbor2; print(cbor2.dumps(1).hex())"])
        .output()?;
    assert!(imported.status.success(), "{imported:?}");
    assert_eq!(String::from_utf8_lossy(&imported.stdout).trim(), "01");

    let installed_at = std::fs::metadata(venv.join("sluice-requirements.txt"))?.modified()?;
    assert_eq!(provision(&venv, &requirements)?, Provisioned::Reused);
    let still = std::fs::metadata(venv.join("sluice-requirements.txt"))?.modified()?;
    assert_eq!(
        installed_at, still,
        "a reused environment is left as it was"
    );

    // A new pin is installed into the same environment on the next use.
    std::fs::write(&requirements, "cbor2==6.3.0\nsix==1.17.0\n")?;
    assert_eq!(provision(&venv, &requirements)?, Provisioned::Created);
    let imported = Command::new(interpreter(&venv))
        .args(["-c", "import six, cbor2"])
        .status()?;
    assert!(imported.success());
    Ok(())
}

#[test]
fn a_package_that_cannot_be_installed_is_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let venv = dir.path().join("venv");
    let requirements = dir.path().join("requirements.txt");
    std::fs::write(&requirements, "sluice-no-such-package-7f3a==0.0.1\n")?;
    let Err(message) = provision(&venv, &requirements) else {
        panic!("installing a package that does not exist succeeded");
    };
    assert!(
        message.contains("sluice-no-such-package-7f3a"),
        "the message names the package: {message}"
    );
    assert!(message.contains("pip said"), "{message}");
    // Nothing is marked installed, so the next use tries again.
    assert!(!venv.join("sluice-requirements.txt").exists());
    Ok(())
}

//! A real etcd for the cluster tests, on 127.0.0.1 (`#[path = …] mod etcd;`).
//!
//! The binary is `SLUICE_ETCD` if set, else `etcd` on `PATH`, else Debian's `etcd-server`
//! package unpacked once under the cargo target folder (`apt-get download` and `dpkg-deb -x`:
//! no root, no installation), so a fresh machine needs nothing set up. Each server gets its
//! own data folder and free ports, and is killed when dropped.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The etcd binary, found or unpacked on first use. Panics saying why when there is none.
pub fn etcd_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(find_or_unpack) {
        Ok(path) => path.clone(),
        Err(reason) => panic!("the cluster tests need etcd: {reason}"),
    }
}

fn find_or_unpack() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SLUICE_ETCD") {
        return Ok(PathBuf::from(path));
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(found);
    }
    // A test binary is `<target>/<profile>/deps/<name>`; any other binary (a benchmark)
    // `<target>/<profile>/<name>`.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let in_deps = exe
                .parent()
                .is_some_and(|p| p.file_name().is_some_and(|n| n == "deps"));
            exe.ancestors()
                .nth(if in_deps { 3 } else { 2 })
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    let root = target.join("etcd-server");
    let binary = root.join("usr/bin/etcd");
    fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    // Test binaries run in parallel: one unpacks, the others wait for it.
    let lock_path = root.with_extension("lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if binary.is_file() {
        return Ok(binary);
    }
    eprintln!(
        "fetching Debian's etcd-server package into {} (once)",
        root.display()
    );
    let download = root.join("download");
    fs::create_dir_all(&download).map_err(|e| e.to_string())?;
    let fetch = || {
        Command::new("apt-get")
            .args(["download", "etcd-server"])
            .current_dir(&download)
            .output()
            .map_err(|e| format!("cannot run apt-get (install etcd, or set SLUICE_ETCD): {e}"))
    };
    let mut fetched = fetch()?;
    if !fetched.status.success() {
        // Package lists not fetched yet on this machine: fetch them (works as root) and retry.
        let _ = Command::new("apt-get").args(["update", "-qq"]).output();
        fetched = fetch()?;
    }
    if !fetched.status.success() {
        return Err(format!(
            "`apt-get download etcd-server` failed (install etcd, or set SLUICE_ETCD): {}",
            String::from_utf8_lossy(&fetched.stderr).trim()
        ));
    }
    let package = fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|ext| ext == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&package)
        .arg(&root)
        .output()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !unpacked.status.success() || !binary.is_file() {
        return Err(format!(
            "`dpkg-deb -x {}` did not give {}: {}",
            package.display(),
            binary.display(),
            String::from_utf8_lossy(&unpacked.stderr).trim()
        ));
    }
    Ok(binary)
}

/// A free port on 127.0.0.1 (as free as the kernel says at the moment of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One etcd member serving clients on 127.0.0.1.
pub struct EtcdServer {
    child: Child,
    /// `127.0.0.1:port`.
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl EtcdServer {
    /// A single-member cluster, ready to answer.
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("a data folder for etcd");
        let client = free_port();
        let peer = free_port();
        let endpoint = format!("127.0.0.1:{client}");
        let child = Command::new(etcd_binary())
            .arg("--name=sluice-test")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls=http://{endpoint}"))
            .arg(format!("--advertise-client-urls=http://{endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!(
                "--initial-cluster=sluice-test=http://127.0.0.1:{peer}"
            ))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        let server = Self {
            child,
            endpoint,
            _data: data,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.endpoint).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not listen on {} within 20 s", self.endpoint);
    }

    /// Stops the member (SIGSTOP): it neither answers nor lets leases expire on its own clock
    /// until [`EtcdServer::resume`].
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let _ = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status();
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

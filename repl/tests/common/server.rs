//! `sluice serve` as a child process, reading and writing S3-compatible storage at a given
//! address, killed (like `kill -9`) when dropped so a failing test leaves none behind.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A server process, killed with SIGKILL when dropped.
pub struct Server(Child);

impl Server {
    /// Stops the server as `kill` (SIGTERM) would and waits for it to exit.
    pub fn terminate(&mut self) -> std::io::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()?;
        self.0.wait().map(|_| ())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice serve` on data folder `data` with credentials `test`/`test`, its S3 settings
/// pointing at `s3` with `key`/`secret`; its Flight and Kinesis addresses.
pub fn serve(
    binary: &Path,
    data: &Path,
    s3: SocketAddr,
    credentials: (&str, &str),
) -> Result<(Server, String, String), Box<dyn std::error::Error>> {
    serve_with(binary, data, s3, credentials, &[])
}

/// [`serve`] with `extra` arguments for `sluice serve`.
pub fn serve_with(
    binary: &Path,
    data: &Path,
    s3: SocketAddr,
    (key, secret): (&str, &str),
    extra: &[&str],
) -> Result<(Server, String, String), Box<dyn std::error::Error>> {
    let mut child = Command::new(binary)
        .arg("--data-dir")
        .arg(data)
        .args([
            "serve",
            "--flight-port",
            "0",
            "--kinesis-port",
            "0",
            "--aws-access-key-id",
            "test",
            "--aws-secret-access-key",
            "test",
        ])
        .args(extra)
        .env("AWS_ENDPOINT_URL", format!("http://{s3}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let child = Server(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let find = |scheme: &str| {
        first
            .split_whitespace()
            .find(|w| w.starts_with(scheme))
            .map(str::to_string)
            .ok_or_else(|| format!("no {scheme} address in {first:?}"))
    };
    let flight = find("grpc://")?;
    let kinesis = find("http://")?;
    Ok((child, flight, kinesis))
}

/// Runs end-to-end script `script` with `args` in the tests' Python; its standard output.
pub fn python_script(script: &str, args: &[String]) -> Result<String, String> {
    run_script(Command::new(super::python::python()), script, args)
}

/// Runs `interpreter` on end-to-end script `script` with `args`, without the caller's AWS
/// profile; its standard output, or both outputs in the error.
pub fn run_script(
    mut interpreter: Command,
    script: &str,
    args: &[String],
) -> Result<String, String> {
    let run = interpreter
        .arg(super::e2e_script(script))
        .args(args)
        .env_remove("AWS_PROFILE")
        .output()
        .map_err(|e| e.to_string())?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if run.status.success() {
        Ok(text(&run.stdout))
    } else {
        Err(format!(
            "{script} {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            text(&run.stdout),
            text(&run.stderr)
        ))
    }
}

/// Runs `sql` with `sluice --connect flight -c`; its output, or its error output.
pub fn sql(binary: &Path, flight: &str, sql: &str) -> Result<String, String> {
    // The server's one authorizer takes its AWS key as Basic credentials on Flight too.
    let out = Command::new(binary)
        .args([
            "--connect",
            flight,
            "--user",
            "test",
            "--password",
            "test",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `binary` as node `id` of a cluster: etcd at `etcd`, the shared storage
/// `s3://lake/cluster` on the S3 server at `s3` (with `credentials`), advertised on 127.0.0.1;
/// the server, its Flight SQL URL and its Kinesis endpoint.
pub fn serve_cluster_node(
    binary: &Path,
    data: &Path,
    s3: SocketAddr,
    credentials: (&str, &str),
    etcd: &str,
    id: &str,
) -> Result<(Server, String, String), Box<dyn std::error::Error>> {
    let cluster = format!("etcd://{etcd}");
    serve_with(
        binary,
        data,
        s3,
        credentials,
        &[
            "--cluster",
            &cluster,
            "--node-id",
            id,
            "--storage",
            "s3://lake/cluster",
            "--advertise",
            "127.0.0.1",
        ],
    )
}

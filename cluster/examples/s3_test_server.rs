//! An S3-compatible server (s3s-fs) for the multi-node test bed (`tests/cluster/run`), which
//! runs it inside a network namespace of its own: `s3_test_server ADDR FOLDER KEY SECRET`
//! serves FOLDER (one sub-folder per bucket) on ADDR until killed.

#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, folder, key, secret] = args.as_slice() else {
        return Err("usage: s3_test_server ADDR FOLDER KEY SECRET".into());
    };
    let (server, local) = s3_server::serve(folder.as_ref(), addr.parse()?, (key, secret)).await?;
    println!("s3 on {local}");
    server.await?;
    Ok(())
}

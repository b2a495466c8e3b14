//! The shared durable tier: a shard's log in object storage, handed from owner to owner.
//!
//! Each test plays owners one after another (claiming the owner key, opening the log, writing),
//! including a zombie that keeps writing after it lost the shard, and checks what the next
//! owner rebuilds: every acknowledged record, once, in order, with sequence numbers that go on
//! increasing. One test runs on a real S3 server (s3s-fs on 127.0.0.1) so `PutMode::Create`
//! is the S3 conditional put, not the in-memory store's.

#[path = "../../tests/support/s3_server.rs"]
mod s3_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice_cluster::memory::MemoryCoordinator;
use sluice_cluster::shard_log::follow::Follower;
use sluice_cluster::shard_log::{
    LogError, LogKey, LogOptions, Manifest, NewRecord, ShardLog, SharedStorage, chunk,
};
use sluice_cluster::{Claim, Coordinator, Fence, ShardKey, keys};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The log of `shard` in the stream's incarnation the tests use.
fn log_of(shard: &ShardKey) -> LogKey {
    LogKey::new(shard.clone(), 7)
}

fn record(i: usize) -> NewRecord {
    NewRecord {
        partition_key: format!("key-{i}"),
        data: format!("{{\"n\":{i}}}").into_bytes(),
        // A year ago: the log keeps whatever arrival time its writer gives.
        arrival_ms: 1_733_500_000_000 + i as i64,
    }
}

/// Claims the shard for a new owner (its own lease) and returns the fence and the lease.
async fn claim(
    etcd: &MemoryCoordinator,
    shard: &ShardKey,
    node: &str,
) -> Result<(Fence, sluice_cluster::LeaseId), Box<dyn std::error::Error>> {
    let lease = etcd.grant(Duration::from_secs(10)).await?;
    let key = shard.key(keys::OWNER);
    match etcd
        .create(&key, node.as_bytes().to_vec(), Some(lease))
        .await?
    {
        Claim::Won(epoch) => Ok((Fence { key, epoch }, lease)),
        Claim::Held(kv) => Err(format!("held by {kv:?}").into()),
    }
}

fn assert_numbered_from_one(recovered: &sluice_cluster::shard_log::Recovered) {
    let seqs: Vec<u64> = recovered.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..recovered.next_seq).collect::<Vec<u64>>());
}

/// What a node that follows the shard afresh reads from `next_seq` on.
async fn read_settled(
    etcd: &MemoryCoordinator,
    storage: &SharedStorage,
    shard: &ShardKey,
    next_seq: u64,
) -> Result<Vec<chunk::LogRecord>, LogError> {
    Follower::new(log_of(shard))
        .read(etcd, storage, next_seq)
        .await
}

fn seqs_of(records: &[chunk::LogRecord]) -> std::ops::RangeInclusive<u64> {
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let range = match (seqs.first(), seqs.last()) {
        (Some(&first), Some(&last)) => first..=last,
        _ => panic!("expected records, read none"),
    };
    assert_eq!(
        seqs,
        range.clone().collect::<Vec<u64>>(),
        "in order, once each"
    );
    range
}

/// An etcd and an object store, both in memory.
fn in_memory() -> (MemoryCoordinator, SharedStorage) {
    let storage = SharedStorage {
        store: Arc::new(InMemory::new()),
        prefix: Path::from("p"),
    };
    (MemoryCoordinator::new(), storage)
}

/// Opens `shard`'s log (default options, always live) for the owner holding `fence`.
async fn open(
    etcd: &MemoryCoordinator,
    storage: &SharedStorage,
    shard: &ShardKey,
    fence: &Fence,
    from_seq: u64,
) -> Result<(ShardLog, sluice_cluster::shard_log::Recovered), LogError> {
    ShardLog::open(
        etcd,
        storage,
        &log_of(shard),
        fence,
        from_seq,
        LogOptions::default(),
        always(),
        nothing(),
    )
    .await
}

fn nothing() -> sluice_cluster::shard_log::Apply {
    Arc::new(|_| Ok(()))
}

fn always() -> sluice_cluster::shard_log::Liveness {
    Arc::new(|| true)
}

async fn chunks(store: &dyn ObjectStore) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let listed: Vec<_> = store.list(None).try_collect().await?;
    let mut names: Vec<String> = listed.into_iter().map(|m| m.location.to_string()).collect();
    names.sort();
    Ok(names)
}

/// Owner after owner, with a zombie between them: `storage` is in memory or on S3.
async fn owners_hand_the_log_on(storage: SharedStorage) -> TestResult {
    let etcd = MemoryCoordinator::new();
    let shard = ShardKey::new("orders", 2);
    let options = LogOptions::default();

    // n1 owns the shard first and logs 100 records from 10 concurrent writers.
    let (fence1, lease1) = claim(&etcd, &shard, "n1").await?;
    let n1_live = Arc::new(AtomicBool::new(true));
    let live = n1_live.clone();
    let (log1, recovered) = ShardLog::open(
        &etcd,
        &storage,
        &log_of(&shard),
        &fence1,
        0,
        options,
        Arc::new(move || live.load(Ordering::SeqCst)),
        nothing(),
    )
    .await?;
    assert_eq!((recovered.records.len(), recovered.next_seq), (0, 1));
    let log1 = Arc::new(log1);
    let mut writers = Vec::new();
    for w in 0..10 {
        let log = log1.clone();
        writers.push(tokio::spawn(async move {
            log.append((0..10).map(|i| record(w * 10 + i)).collect())
                .await
        }));
    }
    let mut seqs = Vec::new();
    for writer in writers {
        let logged = writer.await??;
        // One call's records are numbered together and in order.
        assert!(logged.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        seqs.extend(logged.iter().map(|l| l.seq));
    }
    seqs.sort();
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    let written = chunks(storage.store.as_ref()).await?;
    assert!(
        written.len() < 10,
        "concurrent appends share chunks (group commit): {written:?}"
    );
    // Another node follows the shard: from the start, from the end (nothing), and from inside
    // a chunk.
    assert_eq!(
        seqs_of(&read_settled(&etcd, &storage, &shard, 1).await?),
        1..=100
    );
    assert!(read_settled(&etcd, &storage, &shard, 101).await?.is_empty());
    assert_eq!(
        seqs_of(&read_settled(&etcd, &storage, &shard, 57).await?),
        57..=100
    );
    // A follower that goes on reading, from where it got to.
    let mut follower = Follower::new(log_of(&shard));
    assert_eq!(seqs_of(&follower.read(&etcd, &storage, 1).await?), 1..=100);
    assert!(follower.read(&etcd, &storage, 101).await?.is_empty());

    // n1 is cut off: past its session's deadline it refuses to acknowledge, saying why.
    n1_live.store(false, Ordering::SeqCst);
    let refused = log1.append(vec![record(100)]).await;
    assert!(
        matches!(&refused, Err(LogError::NotOwner(s)) if s.contains("orders/shardId-000000000002")),
        "{refused:?}"
    );
    // Its lease expires; n2 claims at a higher epoch and rebuilds all 100 records.
    etcd.revoke(lease1).await?;
    // Nobody owns the shard: whoever claims it next lists these chunks, so they are settled.
    assert_eq!(
        seqs_of(&read_settled(&etcd, &storage, &shard, 1).await?),
        1..=100
    );
    let (fence2, _) = claim(&etcd, &shard, "n2").await?;
    assert!(fence2.epoch > fence1.epoch);
    // n2 has claimed it but not said where its epoch begins: a chunk of n1's landing now
    // could be one n2 never reads, so a follower waits, and says it does (a query's catch-up
    // reads again rather than miss records acknowledged before the claim).
    let mut in_window = Follower::new(log_of(&shard));
    assert!(in_window.read(&etcd, &storage, 1).await?.is_empty());
    assert!(in_window.waiting());
    assert!(!follower.waiting());
    let (log2, recovered) = open(&etcd, &storage, &shard, &fence2, 0).await?;
    // Once n2 has said where its epoch begins, the held-back chunks are settled.
    assert_eq!(seqs_of(&in_window.read(&etcd, &storage, 1).await?), 1..=100);
    assert!(!in_window.waiting());
    assert_eq!(recovered.next_seq, 101);
    let data: Vec<Vec<u8>> = recovered.records.iter().map(|r| r.data.clone()).collect();
    assert_eq!(data.len(), 100);
    assert_numbered_from_one(&recovered);
    assert_eq!(recovered.records[0].arrival_ms, 1_733_500_000_000);

    // A zombie: n1's upload that was in flight lands now, under its old epoch, at the
    // sequence numbers n2 continues from. n2 writes on.
    let zombie = chunk::encode(
        &[chunk::LogRecord {
            seq: 101,
            arrival_ms: 0,
            partition_key: "zombie".into(),
            data: b"never acknowledged".to_vec(),
        }],
        &chunk::Producers::new(),
    )?;
    let folder = log_of(&shard).folder(&storage.prefix);
    storage
        .store
        .put(
            &chunk::chunk_path(&folder, 101, fence1.epoch),
            PutPayload::from(zombie),
        )
        .await?;
    let logged = log2.append((100..150).map(record).collect()).await?;
    assert_eq!(logged.first().map(|l| l.seq), Some(101));
    // A follower reads n2's records after n1's, and never the zombie's.
    let followed = read_settled(&etcd, &storage, &shard, 1).await?;
    assert_eq!(seqs_of(&followed), 1..=150);
    assert!(followed.iter().all(|r| r.partition_key != "zombie"));
    let followed = follower.read(&etcd, &storage, 101).await?;
    assert_eq!(seqs_of(&followed), 101..=150);
    assert_eq!(followed[0].partition_key, "key-100");
    drop(log2);

    // n3 takes over (n2 handed off): 150 records, none of them the zombie's.
    etcd.release(&fence2).await?;
    let (fence3, _) = claim(&etcd, &shard, "n3").await?;
    let (_log3, recovered) = open(&etcd, &storage, &shard, &fence3, 0).await?;
    assert_eq!(recovered.next_seq, 151);
    assert!(
        recovered
            .records
            .iter()
            .all(|r| r.partition_key != "zombie")
    );
    assert_numbered_from_one(&recovered);
    // Asked from 121 on (it holds the rest already), it gets just those.
    let (fence4, _) = {
        etcd.release(&fence3).await?;
        claim(&etcd, &shard, "n4").await?
    };
    let (_log4, tail) = open(&etcd, &storage, &shard, &fence4, 121).await?;
    assert_eq!(tail.records.first().map(|r| r.seq), Some(121));
    assert_eq!((tail.records.len(), tail.next_seq), (30, 151));

    let manifest: Manifest = serde_json::from_slice(
        &etcd
            .get(&log_of(&shard).manifest_key())
            .await?
            .ok_or("a manifest")?
            .value,
    )?;
    let starts: Vec<(i64, u64)> = manifest
        .epochs
        .iter()
        .map(|e| (e.epoch, e.first_seq))
        .collect();
    assert_eq!(
        starts,
        [
            (fence1.epoch, 1),
            (fence2.epoch, 101),
            (fence3.epoch, 151),
            (fence4.epoch, 151)
        ]
    );
    Ok(())
}

#[tokio::test]
async fn owners_hand_the_log_on_in_memory() -> TestResult {
    owners_hand_the_log_on(SharedStorage {
        store: Arc::new(InMemory::new()),
        prefix: Path::from("sluice/test"),
    })
    .await
}

#[tokio::test]
async fn owners_hand_the_log_on_over_s3() -> TestResult {
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("lake"))?;
    let (server, addr) = s3_server::serve(
        root.path(),
        "127.0.0.1:0".parse()?,
        ("test-key", "test-secret"),
    )
    .await?;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://{addr}"))
        .with_allow_http(true)
        .with_bucket_name("lake")
        .with_region("us-east-1")
        .with_access_key_id("test-key")
        .with_secret_access_key("test-secret")
        .build()?;
    let result = owners_hand_the_log_on(SharedStorage {
        store: Arc::new(store),
        prefix: Path::from("sluice/prod"),
    })
    .await;
    server.abort();
    result
}

#[tokio::test]
async fn a_stale_owner_cannot_open_the_log() -> TestResult {
    let (etcd, storage) = in_memory();
    let shard = ShardKey::new("s", 0);
    let (fence1, lease1) = claim(&etcd, &shard, "n1").await?;
    etcd.revoke(lease1).await?;
    let (_fence2, _) = claim(&etcd, &shard, "n2").await?;
    let opened = open(&etcd, &storage, &shard, &fence1, 0).await;
    assert!(
        matches!(opened, Err(LogError::NotOwner(_))),
        "{:?}",
        opened.err()
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_write_stops_the_log_and_nothing_after_it_is_acknowledged() -> TestResult {
    let etcd = MemoryCoordinator::new();
    let store = Arc::new(InMemory::new());
    let storage = SharedStorage {
        store: store.clone(),
        prefix: Path::from("p"),
    };
    let shard = ShardKey::new("s", 0);
    let (fence, _) = claim(&etcd, &shard, "n1").await?;
    let (log, _) = open(&etcd, &storage, &shard, &fence, 0).await?;
    log.append(vec![record(0)]).await?;
    // Something already sits where the next chunk goes: the create fails, as it would if a
    // write's answer had been lost and the object were there after all.
    let folder = log_of(&shard).folder(&storage.prefix);
    store
        .put(
            &chunk::chunk_path(&folder, 2, fence.epoch),
            PutPayload::from_static(b"x"),
        )
        .await?;
    let failed = log.append(vec![record(1)]).await;
    assert!(
        matches!(&failed, Err(LogError::Storage(m)) if m.contains("cannot write")),
        "{failed:?}"
    );
    let after = log.append(vec![record(2)]).await;
    assert!(after.is_err(), "{after:?}");
    Ok(())
}

#[tokio::test]
async fn an_idle_shard_writes_at_once_and_a_busy_one_at_most_once_a_window() -> TestResult {
    let (etcd, storage) = in_memory();
    let shard = ShardKey::new("s", 0);
    let (fence, _) = claim(&etcd, &shard, "n1").await?;
    let window = Duration::from_secs(3);
    let (log, _) = ShardLog::open(
        &etcd,
        &storage,
        &log_of(&shard),
        &fence,
        0,
        LogOptions {
            commit_every: window,
            ..LogOptions::default()
        },
        always(),
        nothing(),
    )
    .await?;
    let log = Arc::new(log);
    // Idle: written without waiting for the window.
    let started = std::time::Instant::now();
    log.append(vec![record(0)]).await?;
    assert!(started.elapsed() < window / 2, "{:?}", started.elapsed());
    // Busy: the next two wait until a window after the first chunk began, and share a chunk.
    let (a, b) = tokio::join!(log.append(vec![record(1)]), log.append(vec![record(2)]));
    assert_eq!((a?[0].seq.min(b?[0].seq)), 2);
    assert!(
        started.elapsed() >= window - Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(chunks(storage.store.as_ref()).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_stream_created_again_under_its_name_starts_a_new_log() -> TestResult {
    let (etcd, storage) = in_memory();
    let shard = ShardKey::new("orders", 0);
    let (fence, lease) = claim(&etcd, &shard, "n1").await?;
    let first_epoch = fence.epoch;
    // Incarnation 7 (`log_of`).
    let (log, _) = open(&etcd, &storage, &shard, &fence, 0).await?;
    log.append((0..5).map(record).collect()).await?;
    drop(log);
    // Deleted, then created again (another create revision of its `streams/` key): the new
    // incarnation's shard begins at 1 with nothing in it, and a follower reads nothing.
    etcd.revoke(lease).await?;
    let (fence, _) = claim(&etcd, &shard, "n2").await?;
    let second_epoch = fence.epoch;
    let again = LogKey::new(shard.clone(), 42);
    let (log, recovered) = ShardLog::open(
        &etcd,
        &storage,
        &again,
        &fence,
        0,
        LogOptions::default(),
        always(),
        nothing(),
    )
    .await?;
    assert_eq!((recovered.records.len(), recovered.next_seq), (0, 1));
    assert_eq!(log.append(vec![record(9)]).await?[0].seq, 1);
    let followed = Follower::new(again).read(&etcd, &storage, 1).await?;
    assert_eq!(
        followed
            .iter()
            .map(|r| r.partition_key.as_str())
            .collect::<Vec<_>>(),
        ["key-9"]
    );
    // Each incarnation's chunks live in a folder of its own.
    let names = chunks(storage.store.as_ref()).await?;
    assert_eq!(
        names,
        [
            format!("p/orders@42/000000/00000000000000000001-{second_epoch:020}.arrow"),
            format!("p/orders@7/000000/00000000000000000001-{first_epoch:020}.arrow"),
        ],
        "{names:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_new_owner_holding_the_records_lists_only_from_the_recorded_base() -> TestResult {
    let (etcd, storage) = in_memory();
    let shard = ShardKey::new("s", 0);
    let (fence1, lease1) = claim(&etcd, &shard, "n1").await?;
    let (log1, _) = open(&etcd, &storage, &shard, &fence1, 0).await?;
    for i in 0..3 {
        log1.append((i * 10..i * 10 + 10).map(record).collect())
            .await?;
    }
    // n1 records where its chain ends (31) as the manifest's base, then writes on.
    assert!(log1.commit_base(&etcd, &fence1).await?);
    log1.append((30..40).map(record).collect()).await?;
    drop(log1);
    let manifest: Manifest = serde_json::from_slice(
        &etcd
            .get(&log_of(&shard).manifest_key())
            .await?
            .ok_or("a manifest")?
            .value,
    )?;
    assert_eq!(manifest.base, 31);

    // The chunks before the base are gone from storage (as merged or expired ones will be): a
    // new owner that holds records 1..=30 does not need them, and reads 31..=40.
    let folder = log_of(&shard).folder(&storage.prefix);
    for first in [1, 11, 21] {
        let path = chunk::chunk_path(&folder, first, fence1.epoch);
        storage.store.delete(&path).await?;
    }
    etcd.revoke(lease1).await?;
    let (fence2, _) = claim(&etcd, &shard, "n2").await?;
    let (log2, recovered) = open(&etcd, &storage, &shard, &fence2, 31).await?;
    assert_eq!(recovered.next_seq, 41);
    assert_eq!(
        recovered.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (31..=40).collect::<Vec<u64>>()
    );
    // A follower that holds records up to the base reads on from there too.
    assert_eq!(
        seqs_of(&read_settled(&etcd, &storage, &shard, 31).await?),
        31..=40
    );
    assert_eq!(log2.append(vec![record(40)]).await?[0].seq, 41);
    Ok(())
}

/// A pump moving between nodes sends its last batch again; each shard's log takes a batch of a
/// writer once, whoever owns the shard by then and wherever its listing of the chain starts.
#[tokio::test]
async fn a_numbered_batch_is_taken_once_across_owners() -> TestResult {
    let (etcd, storage) = in_memory();
    let shard = ShardKey::new("totals", 1);
    let batch = |from: usize| (from..from + 3).map(record).collect::<Vec<_>>();
    let (fence1, lease1) = claim(&etcd, &shard, "n1").await?;
    let (log1, _) = open(&etcd, &storage, &shard, &fence1, 0).await?;
    assert_eq!(log1.append_once("pump", 1, batch(0)).await?.len(), 3);
    // Sent again, or an older batch: not taken; a later one, or another writer's, is.
    assert!(log1.append_once("pump", 1, batch(0)).await?.is_empty());
    assert_eq!(log1.append_once("pump", 2, batch(3)).await?.len(), 3);
    assert!(log1.append_once("pump", 1, batch(0)).await?.is_empty());
    assert_eq!(log1.append_once("other", 1, batch(6)).await?.len(), 3);
    // Plain appends are never held back.
    assert_eq!(log1.append(batch(9)).await?.len(), 3);
    drop(log1);

    // A new owner reads the writers' batches from the chain's last chunk.
    etcd.revoke(lease1).await?;
    let (fence2, lease2) = claim(&etcd, &shard, "n2").await?;
    let (log2, recovered) = open(&etcd, &storage, &shard, &fence2, 0).await?;
    assert_eq!(recovered.next_seq, 13);
    assert_eq!(
        recovered.producers,
        chunk::Producers::from([("other".to_string(), 1), ("pump".to_string(), 2)])
    );
    assert!(log2.append_once("pump", 2, batch(3)).await?.is_empty());
    // It writes nothing itself: the next owner, holding every record, lists from where n2's
    // epoch began (no chunk there), and knows the batches from the manifest.
    drop(log2);
    etcd.revoke(lease2).await?;
    let (fence3, lease3) = claim(&etcd, &shard, "n3").await?;
    let (log3, recovered) = open(&etcd, &storage, &shard, &fence3, 13).await?;
    assert!(recovered.records.is_empty());
    assert!(log3.append_once("pump", 2, batch(3)).await?.is_empty());
    assert_eq!(log3.append_once("pump", 3, batch(12)).await?[0].seq, 13);
    // A base recorded at the chain's end carries them too.
    assert!(log3.commit_base(&etcd, &fence3).await?);
    drop(log3);
    etcd.revoke(lease3).await?;
    let (fence4, _) = claim(&etcd, &shard, "n4").await?;
    let (log4, recovered) = open(&etcd, &storage, &shard, &fence4, 16).await?;
    assert!(recovered.records.is_empty());
    assert_eq!(recovered.producers.get("pump"), Some(&3));
    assert!(log4.append_once("pump", 3, batch(12)).await?.is_empty());
    assert!(log4.append_once("other", 1, batch(6)).await?.is_empty());
    assert_eq!(log4.append_once("pump", 4, batch(15)).await?[0].seq, 16);
    Ok(())
}

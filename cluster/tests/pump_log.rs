//! A pump's output log: batches committed once under the owner's epoch, a zombie's never read,
//! and a new owner resuming from the last committed batch.

use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;
use object_store::path::Path;
use sluice_cluster::memory::MemoryCoordinator;
use sluice_cluster::pump_log::{self, PumpLog, PumpLogKey, PumpRecord};
use sluice_cluster::shard_log::{LogError, SharedStorage};
use sluice_cluster::{Claim, Coordinator, Fence, LeaseId, ShardKey, keys};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Claims `unit` (the pump, or a target shard) for `node`: its fence and lease.
async fn claim(
    etcd: &MemoryCoordinator,
    unit: &ShardKey,
    node: &str,
) -> Result<(Fence, LeaseId), Box<dyn std::error::Error>> {
    let lease = etcd.grant(Duration::from_secs(10)).await?;
    let key = unit.key(keys::OWNER);
    match etcd
        .create(&key, node.as_bytes().to_vec(), Some(lease))
        .await?
    {
        Claim::Won(epoch) => Ok((Fence { key, epoch }, lease)),
        Claim::Held(kv) => Err(format!("held by {kv:?}").into()),
    }
}

fn output(batch: u64) -> Vec<PumpRecord> {
    (0..4)
        .map(|shard| PumpRecord {
            shard,
            // Event times a year back: the log keeps what the pump gives.
            arrival_ms: 1_733_500_000_000 + batch as i64,
            partition_key: format!("window-{batch}"),
            data: format!("{{\"batch\":{batch},\"shard\":{shard}}}").into_bytes(),
        })
        .collect()
}

fn checkpoint(batch: u64) -> Vec<u8> {
    format!("{{\"read_to\":{}}}", batch * 100).into_bytes()
}

#[tokio::test]
async fn batches_are_committed_once_and_a_new_owner_resumes_after_the_last() -> TestResult {
    let etcd = MemoryCoordinator::new();
    let storage = SharedStorage {
        store: Arc::new(InMemory::new()),
        prefix: Path::from("p"),
    };
    let key = PumpLogKey::new("totals", 42);

    let (fence1, lease1) = claim(&etcd, &ShardKey::pump("totals"), "n1").await?;
    let (mut log1, last) = PumpLog::open(&etcd, &storage, &key, &fence1).await?;
    assert!(last.is_none());
    for batch in 1..=3 {
        assert_eq!(
            log1.commit(&etcd, &output(batch), &checkpoint(batch))
                .await?,
            batch
        );
    }
    let read = pump_log::read_batches(&etcd, &storage, &key, 1, 10).await?;
    assert_eq!(read.iter().map(|b| b.batch).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(read[1].records, output(3));
    assert_eq!(read[1].checkpoint, checkpoint(3));
    assert_eq!(
        pump_log::records_for(&read[0], 2)
            .map(|r| r.data.clone())
            .collect::<Vec<_>>(),
        [b"{\"batch\":2,\"shard\":2}".to_vec()]
    );

    // n1's lease ends; n2 claims the pump and resumes after batch 3.
    etcd.revoke(lease1).await?;
    let (fence2, _) = claim(&etcd, &ShardKey::pump("totals"), "n2").await?;
    let (mut log2, last) = PumpLog::open(&etcd, &storage, &key, &fence2).await?;
    let last = last.ok_or("the last committed batch")?;
    assert_eq!((last.batch, last.checkpoint), (3, checkpoint(3)));
    // n1, a zombie, computes batch 4: its object may land, its commit does not.
    let refused = log1.commit(&etcd, &output(99), &checkpoint(99)).await;
    assert!(matches!(refused, Err(LogError::NotOwner(_))), "{refused:?}");
    assert_eq!(log2.next_batch(), 4);
    assert_eq!(log2.commit(&etcd, &output(4), &checkpoint(4)).await?, 4);
    // Readers get n2's batch 4, never the zombie's.
    let read = pump_log::read_batches(&etcd, &storage, &key, 3, 10).await?;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].records, output(4));
    assert_eq!(pump_log::last_batch(&etcd, &key).await?, 4);

    // The target shards' owners record how far they have gone; the batches all of them went
    // through go, but never the last committed one.
    let shards = [0, 1, 2, 3];
    for (shard, through) in [(0, 4), (1, 3), (2, 4), (3, 4)] {
        let (fence, _) = claim(&etcd, &ShardKey::new("copies", shard), "n2").await?;
        assert!(pump_log::record_taken(&etcd, &key, shard, through, &fence).await?);
        assert_eq!(pump_log::taken(&etcd, &key, shard).await?, through);
    }
    // Shard 1 has gone through batch 3: batches 1 and 2 go, 3 and 4 stay.
    assert_eq!(
        pump_log::delete_taken(&etcd, &storage, &key, &shards).await?,
        2
    );
    let read = pump_log::read_batches(&etcd, &storage, &key, 2, 10).await?;
    assert_eq!(read.iter().map(|b| b.batch).collect::<Vec<_>>(), [3, 4]);
    assert!(
        pump_log::read_batches(&etcd, &storage, &key, 0, 10)
            .await
            .is_err()
    );
    // A shard that has gone through none keeps them all.
    assert_eq!(
        pump_log::delete_taken(&etcd, &storage, &key, &[0, 1, 2, 3, 4]).await?,
        0
    );

    // Dropped: its state and batches go.
    pump_log::remove(&etcd, &storage, &key).await?;
    assert_eq!(pump_log::last_batch(&etcd, &key).await?, 0);
    assert_eq!(pump_log::taken(&etcd, &key, 0).await?, 0);
    assert!(
        pump_log::read_batches(&etcd, &storage, &key, 0, 10)
            .await?
            .is_empty()
    );
    Ok(())
}

//! One contract, two coordinators: every check runs against a real etcd on 127.0.0.1 and
//! against [`MemoryCoordinator`], so the in-memory one the state-machine tests use cannot drift
//! from what etcd does.

#[path = "../../tests/support/etcd.rs"]
mod etcd;

use std::time::Duration;

use sluice_cluster::etcd::EtcdCoordinator;
use sluice_cluster::memory::MemoryCoordinator;
use sluice_cluster::{Claim, Coordinator, CoordinatorError, Fence, WatchEvent};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const OWNER: &str = "/sluice/v1/owner/orders/0";
const MANIFEST: &str = "/sluice/v1/manifest/orders/0";

async fn claims_epochs_and_fencing(c: &dyn Coordinator) -> TestResult {
    let first = c.grant(Duration::from_secs(5)).await?;
    let Claim::Won(epoch1) = c.create(OWNER, b"n1".to_vec(), Some(first)).await? else {
        panic!("the first claim wins");
    };
    let held = c.get(OWNER).await?.expect("the owner key");
    assert_eq!((held.create_revision, held.lease), (epoch1, Some(first)));
    assert_eq!(held.value, b"n1");

    let second = c.grant(Duration::from_secs(5)).await?;
    match c.create(OWNER, b"n2".to_vec(), Some(second)).await? {
        Claim::Held(kv) => assert_eq!(
            (kv.value.as_slice(), kv.create_revision),
            (&b"n1"[..], epoch1)
        ),
        other => panic!("a held key cannot be claimed: {other:?}"),
    }
    let zombie = Fence {
        key: OWNER.into(),
        epoch: epoch1,
    };
    assert!(c.put_fenced(&zombie, MANIFEST, b"v1".to_vec()).await?);
    let manifest = c.get(MANIFEST).await?.expect("a manifest");
    assert_eq!(
        (manifest.value.as_slice(), manifest.lease),
        (&b"v1"[..], None)
    );

    // The first owner's lease ends (here revoked; expiry is checked below): its key goes, the
    // second claims at a higher epoch, and the first one's fence no longer holds.
    c.revoke(first).await?;
    assert_eq!(c.get(OWNER).await?, None);
    assert!(matches!(
        c.keep_alive(first).await,
        Err(CoordinatorError::LeaseExpired(_))
    ));
    let Claim::Won(epoch2) = c.create(OWNER, b"n2".to_vec(), Some(second)).await? else {
        panic!("the revoked owner's key is gone");
    };
    assert!(epoch2 > epoch1);
    assert!(!c.put_fenced(&zombie, MANIFEST, b"zombie".to_vec()).await?);
    assert!(!c.release(&zombie).await?);
    let owner = Fence {
        key: OWNER.into(),
        epoch: epoch2,
    };
    assert!(c.put_fenced(&owner, MANIFEST, b"v2".to_vec()).await?);
    assert_eq!(
        c.get(MANIFEST).await?.map(|kv| kv.value),
        Some(b"v2".to_vec())
    );
    assert!(c.release(&owner).await?);
    assert_eq!(c.get(OWNER).await?, None);
    // A claim under a lease that is gone is refused, saying so.
    assert!(matches!(
        c.create(OWNER, b"n1".to_vec(), Some(first)).await,
        Err(CoordinatorError::LeaseExpired(_))
    ));
    c.revoke(second).await?;
    Ok(())
}

async fn leases_expire_unless_kept_alive_and_watchers_see_it(c: &dyn Coordinator) -> TestResult {
    let prefix = "/sluice/v1/nodes/";
    let mut events = c.watch(prefix).await?;
    let kept = c.grant(Duration::from_secs(1)).await?;
    let left = c.grant(Duration::from_secs(1)).await?;
    c.create("/sluice/v1/nodes/kept", b"a".to_vec(), Some(kept))
        .await?;
    c.create("/sluice/v1/nodes/left", b"b".to_vec(), Some(left))
        .await?;
    c.create("/sluice/v1/other", b"c".to_vec(), None).await?;
    // etcd raises TTLs under 1.5 s to that and checks expiry on its own schedule (up to about
    // a second late): give it time, renewing the kept lease meanwhile.
    let mut listed = Vec::new();
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.keep_alive(kept).await?;
        listed = c.list(prefix).await?.into_iter().map(|kv| kv.key).collect();
        if listed.len() == 1 {
            break;
        }
    }
    assert_eq!(listed, ["/sluice/v1/nodes/kept"]);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await?
            .expect("the watch stays open");
        seen.push(match event {
            WatchEvent::Put(kv) => format!("put {}", kv.key),
            WatchEvent::Delete { key, .. } => format!("delete {key}"),
        });
    }
    assert_eq!(
        seen,
        [
            "put /sluice/v1/nodes/kept",
            "put /sluice/v1/nodes/left",
            "delete /sluice/v1/nodes/left"
        ]
    );
    c.revoke(kept).await?;
    Ok(())
}

#[tokio::test]
async fn memory_claims_epochs_and_fencing() -> TestResult {
    claims_epochs_and_fencing(&MemoryCoordinator::new()).await
}

#[tokio::test]
async fn etcd_claims_epochs_and_fencing() -> TestResult {
    let server = etcd::EtcdServer::start();
    let etcd = EtcdCoordinator::connect(&[&server.endpoint])?;
    claims_epochs_and_fencing(&etcd).await
}

#[tokio::test]
async fn memory_leases_and_watches() -> TestResult {
    leases_expire_unless_kept_alive_and_watchers_see_it(&MemoryCoordinator::new()).await
}

#[tokio::test]
async fn etcd_leases_and_watches() -> TestResult {
    let server = etcd::EtcdServer::start();
    let etcd = EtcdCoordinator::from_url(&format!("etcd://{}", server.endpoint))?;
    leases_expire_unless_kept_alive_and_watchers_see_it(&etcd).await
}

#[tokio::test]
async fn an_unreachable_etcd_is_an_error_within_the_call_timeout() -> TestResult {
    let server = etcd::EtcdServer::start();
    let etcd = EtcdCoordinator::connect(&[&server.endpoint])?;
    let lease = etcd.grant(Duration::from_secs(5)).await?;
    server.pause();
    let started = std::time::Instant::now();
    let answer = etcd.keep_alive(lease).await;
    server.resume();
    assert!(
        matches!(answer, Err(CoordinatorError::Unavailable(_))),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // And it answers again once etcd is back (the client may first have to connect again:
    // a call made while it does can still fail, as the session's next renewal would retry).
    let back = std::time::Instant::now();
    loop {
        match etcd.keep_alive(lease).await {
            Ok(()) => break,
            Err(CoordinatorError::Unavailable(e)) if back.elapsed() < Duration::from_secs(3) => {
                eprintln!("not yet back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

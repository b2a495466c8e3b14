//! [`EtcdCoordinator`]: the [`Coordinator`] contract on a real etcd cluster, over its v3 gRPC API
//! (tonic and prost, the versions the rest of Sluice uses).
//!
//! Each operation is one etcd call: a claim is a transaction comparing the key's
//! `create_revision` with 0, a fenced put or release one comparing the fence key's
//! `create_revision` with the holder's epoch. Calls go to any of the given endpoints (tonic
//! balances over them and skips one that is down); a unary call that takes longer than
//! [`CALL_TIMEOUT`] fails as `Unavailable`, so an owner counting down to its lease's end never
//! waits on a hung member. A watch follows the cluster across member failures, resuming after
//! the last revision it delivered; its channel closes only when etcd has compacted past that
//! revision (the watcher must list again) or its receiver is dropped.

mod proto;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use http::uri::PathAndQuery;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use crate::{
    Claim, Coordinator, CoordinatorError, CoordinatorFuture, Fence, KeyValue, LeaseId, Result,
    WatchEvent,
};
use proto::{
    COMPARE_EQUAL, Compare, CompareWith, DeleteRangeRequest, EVENT_DELETE, LeaseGrantRequest,
    LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, RangeRequest, RangeResponse, Request, RequestOp, Response,
    TARGET_CREATE, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchRequestUnion,
    WatchResponse,
};

/// The longest a unary etcd call may take before it counts as the cluster being unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broken watch waits before it tries again.
const WATCH_RETRY: Duration = Duration::from_millis(200);

/// A connection to an etcd cluster: one channel per member. A call goes to the member that
/// last answered and moves on to the next when a member does not answer within
/// [`TRY_TIMEOUT`] (a member cut off from the others, or from us, answers nothing, and a lease
/// must not run out while we wait on it); a keep-alive goes to every member at once.
#[derive(Clone, Debug)]
pub struct EtcdCoordinator {
    members: Arc<[Channel]>,
    preferred: Arc<AtomicUsize>,
}

/// How long one member may take to answer before the call tries the next.
pub const TRY_TIMEOUT: Duration = Duration::from_millis(700);

/// Whether a failed call may succeed on another member (the member is down, cut off, or has
/// no leader), rather than being etcd's answer.
fn try_another(err: &CoordinatorError) -> bool {
    matches!(err, CoordinatorError::Unavailable(m) if !m.contains("lease not found"))
}

impl EtcdCoordinator {
    /// Connects (lazily: the first call dials) to the members at `endpoints`, each
    /// `host:port` or `http://host:port`.
    pub fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(CoordinatorError::Unavailable(
                "no etcd endpoints were given".into(),
            ));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.as_ref().trim();
                let uri = if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                };
                Endpoint::from_shared(uri.clone())
                    .map(|e| {
                        e.connect_timeout(CALL_TIMEOUT)
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(Duration::from_secs(1))
                            .keep_alive_timeout(CALL_TIMEOUT)
                            .keep_alive_while_idle(true)
                    })
                    .map_err(|err| {
                        CoordinatorError::Unavailable(format!(
                            "`{uri}` is not an etcd endpoint address: {err}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            members: endpoints.iter().map(Endpoint::connect_lazy).collect(),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Connects to the members an `etcd://host:port,host:port` address names.
    pub fn from_url(url: &str) -> Result<Self> {
        let Some(members) = url.strip_prefix("etcd://") else {
            return Err(CoordinatorError::Unavailable(format!(
                "`{url}` is not an etcd address: write etcd://host:port[,host:port…]"
            )));
        };
        let members: Vec<&str> = members
            .trim_end_matches('/')
            .split(',')
            .filter(|m| !m.is_empty())
            .collect();
        Self::connect(&members)
    }

    async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let call = async {
            let first = self.preferred.load(Ordering::Relaxed);
            let mut last = None;
            for attempt in 0..self.members.len() {
                let at = (first + attempt) % self.members.len();
                // The last member left to try gets what remains of the call's time.
                let patience = if attempt + 1 == self.members.len() {
                    CALL_TIMEOUT
                } else {
                    TRY_TIMEOUT
                };
                let tried = tokio::time::timeout(
                    patience,
                    unary_on(self.members[at].clone(), path, request.clone()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(CoordinatorError::Unavailable(format!(
                        "etcd member {at} did not answer {path} within {patience:?}"
                    )))
                });
                match tried {
                    Err(err) if try_another(&err) => last = Some(err),
                    answered => {
                        self.preferred.store(at, Ordering::Relaxed);
                        return answered;
                    }
                }
            }
            Err(last.unwrap_or_else(|| CoordinatorError::Unavailable("no etcd members".into())))
        };
        within(&format!("answer {path}"), call).await
    }

    async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse> {
        self.unary("/etcdserverpb.KV/Txn", txn).await
    }

    async fn range(&self, key: Vec<u8>, range_end: Vec<u8>) -> Result<RangeResponse> {
        self.unary("/etcdserverpb.KV/Range", RangeRequest { key, range_end })
            .await
    }

    /// Renews `lease` through every member at once: renewed if any renews it, gone if any
    /// says so and none renews it.
    async fn keep_alive_once(&self, lease: LeaseId) -> Result<()> {
        let mut tries: futures::stream::FuturesUnordered<_> = self
            .members
            .iter()
            .map(|member| keep_alive_on(member.clone(), lease))
            .collect();
        let mut last = None;
        let call = async {
            while let Some(answer) = tries.next().await {
                match answer.map_err(|e| lease_error(lease, e)) {
                    Ok(()) => return Ok(()),
                    Err(err @ CoordinatorError::LeaseExpired(_)) => last = Some(err),
                    Err(err) => {
                        if !matches!(last, Some(CoordinatorError::LeaseExpired(_))) {
                            last = Some(err);
                        }
                    }
                }
            }
            Err(last
                .clone()
                .unwrap_or_else(|| CoordinatorError::Unavailable("no etcd members".into())))
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(answer) => answer,
            Err(_) => Err(last.unwrap_or_else(|| {
                CoordinatorError::Unavailable(format!(
                    "no etcd member renewed the lease within {CALL_TIMEOUT:?}"
                ))
            })),
        }
    }

    /// One watch stream from `start_revision`: forwards its events until the stream breaks
    /// (`Err`, to be resumed), etcd compacted past the start (`Ok(None)`), or the receiver is
    /// gone (`Ok(None)`). Returns the next revision to resume from.
    async fn watch_once(
        &self,
        member: usize,
        prefix: &[u8],
        start_revision: i64,
        tx: &UnboundedSender<WatchEvent>,
    ) -> std::result::Result<Option<i64>, (i64, String)> {
        let mut next = start_revision;
        let channel = self.members[member % self.members.len()].clone();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| (next, e.to_string()))?;
        let create = WatchRequest {
            request: Some(WatchRequestUnion::Create(WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision,
            })),
        };
        // The request stream stays open for as long as the watch runs: etcd cancels a watch
        // whose client closes its side.
        let requests =
            futures::stream::once(std::future::ready(create)).chain(futures::stream::pending());
        let codec = ProstCodec::<WatchRequest, WatchResponse>::default();
        // A member that loses its leader (cut off from the others) cancels the watch rather
        // than going quiet: then it is resumed on another member.
        let mut request = tonic::Request::new(requests);
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut answers = grpc
            .streaming(
                request,
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                codec,
            )
            .await
            .map_err(|s| (next, s.to_string()))?
            .into_inner();
        loop {
            let answer = tokio::select! {
                answer = answers.message() => answer,
                () = tx.closed() => return Ok(None),
            };
            let answer = match answer {
                Ok(Some(answer)) => answer,
                Ok(None) => return Err((next, "etcd ended the watch".into())),
                Err(status) => return Err((next, status.to_string())),
            };
            if answer.compact_revision > 0 {
                // Compacted past where we resume: the watcher must list again.
                return Ok(None);
            }
            if answer.canceled {
                return Err((
                    next,
                    format!("etcd cancelled the watch: {}", answer.cancel_reason),
                ));
            }
            if answer.created && next == 0 {
                next = answer.header.as_ref().map_or(0, |h| h.revision) + 1;
            }
            for event in answer.events {
                let Some(kv) = event.kv else { continue };
                next = next.max(kv.mod_revision + 1);
                let event = if event.kind == EVENT_DELETE {
                    WatchEvent::Delete {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        revision: kv.mod_revision,
                    }
                } else {
                    WatchEvent::Put(key_value(kv))
                };
                if tx.send(event).is_err() {
                    return Ok(None);
                }
            }
        }
    }
}

/// One unary call on one member.
async fn unary_on<Req, Resp>(channel: Channel, path: &'static str, request: Req) -> Result<Resp>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("etcd is not reachable: {e}")))?;
    let codec = ProstCodec::<Req, Resp>::default();
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(status_error)
}

/// One keep-alive on one member.
async fn keep_alive_on(channel: Channel, lease: LeaseId) -> Result<()> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("etcd is not reachable: {e}")))?;
    let codec = ProstCodec::<LeaseKeepAliveRequest, LeaseKeepAliveResponse>::default();
    let requests = futures::stream::once(std::future::ready(LeaseKeepAliveRequest { id: lease.0 }));
    let mut answers = grpc
        .streaming(
            tonic::Request::new(requests),
            PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive"),
            codec,
        )
        .await
        .map_err(status_error)?
        .into_inner();
    match answers.message().await.map_err(status_error)? {
        Some(answer) if answer.ttl > 0 => Ok(()),
        Some(_) => Err(CoordinatorError::LeaseExpired(lease)),
        None => Err(CoordinatorError::Unavailable(
            "etcd ended a lease keep-alive without an answer".into(),
        )),
    }
}

/// `call`, or `Unavailable` saying etcd did not `what` once [`CALL_TIMEOUT`] has passed.
async fn within<T>(what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            CoordinatorError::Unavailable(format!("etcd did not {what} within {CALL_TIMEOUT:?}"))
        })?
}

/// The end of the key range holding every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte that is not 0xff increased.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or no prefix): to the end of the key space.
    vec![0]
}

fn status_error(status: tonic::Status) -> CoordinatorError {
    CoordinatorError::Unavailable(format!(
        "etcd answered {:?}: {}",
        status.code(),
        status.message()
    ))
}

/// etcd's answer for a lease that is gone, as a typed error.
fn lease_error(lease: LeaseId, err: CoordinatorError) -> CoordinatorError {
    match err {
        CoordinatorError::Unavailable(message) if message.contains("lease not found") => {
            CoordinatorError::LeaseExpired(lease)
        }
        other => other,
    }
}

fn key_value(kv: proto::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
    }
}

fn create_revision_is(key: &str, revision: i64) -> Compare {
    Compare {
        result: COMPARE_EQUAL,
        target: TARGET_CREATE,
        key: key.as_bytes().to_vec(),
        with: Some(CompareWith::CreateRevision(revision)),
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

impl Coordinator for EtcdCoordinator {
    fn grant(&self, ttl: Duration) -> CoordinatorFuture<'_, LeaseId> {
        Box::pin(async move {
            // etcd counts whole seconds; round up so a lease never lives shorter than asked.
            let seconds = ttl.as_millis().div_ceil(1000).max(1) as i64;
            let answer: LeaseGrantResponse = self
                .unary(
                    "/etcdserverpb.Lease/LeaseGrant",
                    LeaseGrantRequest {
                        ttl: seconds,
                        id: 0,
                    },
                )
                .await?;
            if !answer.error.is_empty() {
                return Err(CoordinatorError::Unavailable(format!(
                    "etcd refused a lease: {}",
                    answer.error
                )));
            }
            Ok(LeaseId(answer.id))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()> {
        Box::pin(async move {
            self.keep_alive_once(lease)
                .await
                .map_err(|e| lease_error(lease, e))
        })
    }

    fn revoke(&self, lease: LeaseId) -> CoordinatorFuture<'_, ()> {
        Box::pin(async move {
            let revoked: Result<LeaseRevokeResponse> = self
                .unary(
                    "/etcdserverpb.Lease/LeaseRevoke",
                    LeaseRevokeRequest { id: lease.0 },
                )
                .await;
            // Revoking a lease that is already gone leaves the same state: done.
            match revoked.map_err(|e| lease_error(lease, e)) {
                Ok(_) | Err(CoordinatorError::LeaseExpired(_)) => Ok(()),
                Err(other) => Err(other),
            }
        })
    }

    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> CoordinatorFuture<'_, Claim> {
        let key = key.to_string();
        Box::pin(async move {
            let txn = TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![op(Request::Put(PutRequest {
                    key: key.clone().into_bytes(),
                    value,
                    lease: lease.map_or(0, |l| l.0),
                }))],
                failure: vec![op(Request::Range(RangeRequest {
                    key: key.clone().into_bytes(),
                    range_end: Vec::new(),
                }))],
            };
            let answer = self.txn(txn).await.map_err(|e| match lease {
                Some(lease) => lease_error(lease, e),
                None => e,
            })?;
            if answer.succeeded {
                // The put is the transaction's only change: its revision creates the key.
                let revision = answer.header.map_or(0, |h| h.revision);
                return Ok(Claim::Won(revision));
            }
            let held = answer.responses.into_iter().find_map(|r| match r.response {
                Some(Response::Range(range)) => range.kvs.into_iter().next(),
                _ => None,
            });
            match held {
                Some(kv) => Ok(Claim::Held(key_value(kv))),
                // Deleted between the compare and the read cannot happen inside one
                // transaction; an empty answer means etcd answered something else.
                None => Err(CoordinatorError::Unavailable(format!(
                    "etcd refused to create `{key}` but did not show who holds it"
                ))),
            }
        })
    }

    fn get(&self, key: &str) -> CoordinatorFuture<'_, Option<KeyValue>> {
        let key = key.as_bytes().to_vec();
        Box::pin(async move {
            let answer = self.range(key, Vec::new()).await?;
            Ok(answer.kvs.into_iter().next().map(key_value))
        })
    }

    fn list(&self, prefix: &str) -> CoordinatorFuture<'_, Vec<KeyValue>> {
        let prefix = prefix.as_bytes().to_vec();
        Box::pin(async move {
            let end = prefix_end(&prefix);
            let answer = self.range(prefix, end).await?;
            Ok(answer.kvs.into_iter().map(key_value).collect())
        })
    }

    fn put_fenced(&self, fence: &Fence, key: &str, value: Vec<u8>) -> CoordinatorFuture<'_, bool> {
        let txn = TxnRequest {
            compare: vec![create_revision_is(&fence.key, fence.epoch)],
            success: vec![op(Request::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value,
                lease: 0,
            }))],
            failure: Vec::new(),
        };
        Box::pin(async move { Ok(self.txn(txn).await?.succeeded) })
    }

    fn delete_fenced(&self, fence: &Fence, key: &str) -> CoordinatorFuture<'_, bool> {
        let txn = TxnRequest {
            compare: vec![create_revision_is(&fence.key, fence.epoch)],
            success: vec![op(Request::DeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: Vec::new(),
            }))],
            failure: Vec::new(),
        };
        Box::pin(async move {
            let answer = self.txn(txn).await?;
            let deleted = answer
                .responses
                .iter()
                .any(|r| matches!(&r.response, Some(Response::DeleteRange(d)) if d.deleted > 0));
            Ok(answer.succeeded && deleted)
        })
    }

    fn watch(&self, prefix: &str) -> CoordinatorFuture<'_, UnboundedReceiver<WatchEvent>> {
        let prefix = prefix.as_bytes().to_vec();
        Box::pin(async move {
            // Start at the current revision, read now, so nothing after this call is missed
            // even if the stream is established later.
            let now = self.range(prefix.clone(), prefix_end(&prefix)).await?;
            let start = now.header.map_or(0, |h| h.revision) + 1;
            let (tx, rx) = unbounded_channel();
            let etcd = self.clone();
            tokio::spawn(async move {
                let mut start = start;
                let mut member = etcd.preferred.load(Ordering::Relaxed);
                loop {
                    match etcd.watch_once(member, &prefix, start, &tx).await {
                        Ok(_) => return,
                        Err((next, reason)) => {
                            log::debug!("etcd watch broke ({reason}); resuming at {next}");
                            start = next;
                            member += 1;
                            tokio::select! {
                                () = tokio::time::sleep(WATCH_RETRY) => {}
                                () = tx.closed() => return,
                            }
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/sluice/v1/owner/"), b"/sluice/v1/owner0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn addresses_name_what_is_wrong() {
        let err = EtcdCoordinator::from_url("http://127.0.0.1:2379").expect_err("not etcd://");
        assert!(err.to_string().contains("etcd://host:port"), "{err}");
    }
}

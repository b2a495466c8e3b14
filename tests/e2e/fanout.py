"""Enhanced fan-out against `sluice serve`, as boto3 users consume with it: consumers registered,
described (CREATING, then ACTIVE), listed and deregistered; SubscribeToShard from TRIM_HORIZON
receiving the records put before and after it subscribed, pushed as they arrive; one
subscription per consumer and shard; AFTER_SEQUENCE_NUMBER with the ContinuationSequenceNumber
resuming without duplicates; LATEST; a split while subscribed ending the subscription with the
children in ChildShards; a deregistered consumer no longer found. Then an ON_DEMAND stream
growing from 4 shards as boto3 writes to it, losing nothing.

Usage: fanout.py KINESIS_ENDPOINT
"""

import queue
import sys
import threading
import time

from aws_clients import check, client, refused, shard_records, wait_for

ENDPOINT = sys.argv[1]
kinesis = client("kinesis", ENDPOINT)

kinesis.create_stream(StreamName="fan", ShardCount=1)
stream_arn = kinesis.describe_stream_summary(StreamName="fan")["StreamDescriptionSummary"]["StreamARN"]
shard = kinesis.list_shards(StreamName="fan")["Shards"][0]["ShardId"]

# --- Consumers -------------------------------------------------------------------------------
consumer = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="app")["Consumer"]
check(consumer["ConsumerStatus"] == "CREATING", consumer)
check(consumer["ConsumerARN"].startswith(stream_arn + "/consumer/app:"), consumer)
consumer_arn = consumer["ConsumerARN"]
wait_for(
    "the consumer to be ACTIVE",
    lambda: kinesis.describe_stream_consumer(ConsumerARN=consumer_arn)["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE",
)
described = kinesis.describe_stream_consumer(StreamARN=stream_arn, ConsumerName="app")["ConsumerDescription"]
check(described["ConsumerARN"] == consumer_arn and described["StreamARN"] == stream_arn, described)
refused(
    lambda: kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="app"),
    "ResourceInUseException",
    "Consumer app under stream fan already exists",
)
kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="other")
listed = kinesis.list_stream_consumers(StreamARN=stream_arn, MaxResults=1)
check([c["ConsumerName"] for c in listed["Consumers"]] == ["app"], listed)
rest = kinesis.list_stream_consumers(StreamARN=stream_arn, NextToken=listed["NextToken"])
check([c["ConsumerName"] for c in rest["Consumers"]] == ["other"], rest)
refused(
    lambda: kinesis.describe_stream_consumer(StreamARN=stream_arn, ConsumerName="nobody"),
    "ResourceNotFoundException",
    "nobody",
)


# --- Subscribing -----------------------------------------------------------------------------
class Subscriber:
    """A SubscribeToShard call read on its own thread: its events in `events`, then None."""

    def __init__(self, arn, position):
        self.response = kinesis.subscribe_to_shard(ConsumerARN=arn, ShardId=shard, StartingPosition=position)
        self.events = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.response["EventStream"]:
                self.events.put((time.monotonic(), event["SubscribeToShardEvent"]))
        finally:
            self.events.put(None)

    def records(self, n, timeout=30):
        """The next `n` records pushed, and the last event they came in."""
        got, last = [], None
        deadline = time.monotonic() + timeout
        while len(got) < n:
            item = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            check(item is not None, f"the subscription ended after {len(got)} of {n} records")
            _, last = item
            got.extend(last["Records"])
        check(len(got) == n, f"{len(got)} records, expected {n}")
        return got, last

    def close(self):
        self.response["EventStream"].close()


def _try_subscribe(position, arn=None):
    try:
        return Subscriber(arn or consumer_arn, position)
    except Exception as e:  # the previous subscription may take a moment to be released
        if "ResourceInUseException" in str(e):
            return None
        raise


for i in range(3):
    kinesis.put_record(StreamName="fan", PartitionKey="k", Data=f"before-{i}".encode())
first = Subscriber(consumer_arn, {"Type": "TRIM_HORIZON"})
records, _ = first.records(3)
check([r["Data"] for r in records] == [b"before-0", b"before-1", b"before-2"], records)

# Records put after subscribing are pushed, not polled for: each arrives soon after its put.
latencies = []
for i in range(5):
    put_at = time.monotonic()
    kinesis.put_record(StreamName="fan", PartitionKey="k", Data=f"after-{i}".encode())
    item = first.events.get(timeout=10)
    while item is not None and not item[1]["Records"]:
        item = first.events.get(timeout=10)
    check(item is not None, "the subscription ended")
    latencies.append(item[0] - put_at)
    check([r["Data"] for r in item[1]["Records"]] == [f"after-{i}".encode()], item)
    continuation = item[1]["ContinuationSequenceNumber"]
    check(continuation == item[1]["Records"][-1]["SequenceNumber"], item)
    check(item[1]["MillisBehindLatest"] == 0, item)
print(f"append-to-event latency: max {max(latencies) * 1000:.1f} ms")
check(max(latencies) < 2.0, latencies)

refused(
    lambda: kinesis.subscribe_to_shard(ConsumerARN=consumer_arn, ShardId=shard, StartingPosition={"Type": "LATEST"}),
    "ResourceInUseException",
    "Another active subscription exists for this consumer",
)
first.close()

# Resuming after the continuation number gives the next record and nothing before it.
kinesis.put_record(StreamName="fan", PartitionKey="k", Data=b"resumed")
resumed = wait_for(
    "the first subscription to be released",
    lambda: _try_subscribe({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": continuation}),
)
records, _ = resumed.records(1)
check([r["Data"] for r in records] == [b"resumed"], records)
resumed.close()



# LATEST (on the second consumer): only what is put after it subscribed.
other_arn = kinesis.describe_stream_consumer(StreamARN=stream_arn, ConsumerName="other")["ConsumerDescription"]["ConsumerARN"]
wait_for("the other consumer", lambda: kinesis.describe_stream_consumer(ConsumerARN=other_arn)["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE")
latest = Subscriber(other_arn, {"Type": "LATEST"})
time.sleep(0.5)
kinesis.put_record(StreamName="fan", PartitionKey="k", Data=b"latest")
records, _ = latest.records(1)
check([r["Data"] for r in records] == [b"latest"], records)

# A split while subscribed: the parent's last event names its children, then the stream ends.
kinesis.split_shard(StreamName="fan", ShardToSplit=shard, NewStartingHashKey=str(2**127))
while True:
    item = latest.events.get(timeout=30)
    check(item is not None, "the subscription ended without ChildShards")
    if item[1].get("ChildShards"):
        break
children = sorted(c["ShardId"] for c in item[1]["ChildShards"])
check(children == ["shardId-000000000001", "shardId-000000000002"], item[1])
check(latest.events.get(timeout=30) is None, "the subscription goes on after the shard's end")

# Bad requests, answered as AWS answers them.
refused(
    lambda: kinesis.subscribe_to_shard(ConsumerARN=consumer_arn, ShardId="shardId-000000000009", StartingPosition={"Type": "TRIM_HORIZON"}),
    "ResourceNotFoundException",
    "shardId-000000000009",
)
refused(
    lambda: kinesis.subscribe_to_shard(ConsumerARN=consumer_arn, ShardId=shard, StartingPosition={"Type": "AT_SEQUENCE_NUMBER"}),
    "InvalidArgumentException",
    "SequenceNumber is required",
)

# A stream with a registered consumer is deleted only when asked to take its consumers too.
refused(lambda: kinesis.delete_stream(StreamName="fan"), "ResourceInUseException", "registered consumer")

# Deregistered: gone.
kinesis.deregister_stream_consumer(ConsumerARN=consumer_arn)
refused(
    lambda: kinesis.describe_stream_consumer(ConsumerARN=consumer_arn),
    "ResourceNotFoundException",
    consumer_arn,
)
# --- On-demand capacity ------------------------------------------------------------------------
# An ON_DEMAND stream starts with 4 shards and grows as its writes need: at 1,000 records/s per
# shard, kept at twice the peak. PutRecords of 500 records as fast as one boto3 client goes is
# well over the 2,000 records/s 4 shards are kept for, so it scales up (at most doubling).
kinesis.create_stream(StreamName="grows", StreamModeDetails={"StreamMode": "ON_DEMAND"})
summary = kinesis.describe_stream_summary(StreamName="grows")["StreamDescriptionSummary"]
check(summary["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"} and summary["OpenShardCount"] == 4, summary)
put = 0
deadline = time.time() + 60
while kinesis.describe_stream_summary(StreamName="grows")["StreamDescriptionSummary"]["OpenShardCount"] == 4:
    check(time.time() < deadline, f"4 shards after {put} records in 60 s")
    out = kinesis.put_records(
        StreamName="grows",
        Records=[{"PartitionKey": f"k{put + i}", "Data": b"x" * 100} for i in range(500)],
    )
    check(out["FailedRecordCount"] == 0, out)
    put += 500
open_shards = kinesis.describe_stream_summary(StreamName="grows")["StreamDescriptionSummary"]["OpenShardCount"]
check(4 < open_shards <= 8, open_shards)
shards = kinesis.list_shards(StreamName="grows")["Shards"]
closed = [s["ShardId"] for s in shards if "EndingSequenceNumber" in s["SequenceNumberRange"]]
children = [s for s in shards if s.get("ParentShardId")]
check(closed and len(children) >= 2 and all(c["ParentShardId"] in closed for c in children), shards)
# Nothing put before or during the growth is lost: every record is read back.
check(len(shard_records(kinesis, "grows")) == put, put)
grows_arn = summary["StreamARN"]
kinesis.register_stream_consumer(StreamARN=grows_arn, ConsumerName="reader")
kinesis.delete_stream(StreamName="grows", EnforceConsumerDeletion=True)
refused(lambda: kinesis.describe_stream_summary(StreamName="grows"), "ResourceNotFoundException", "grows")
refused(
    lambda: kinesis.describe_stream_consumer(StreamARN=grows_arn, ConsumerName="reader"),
    "ResourceNotFoundException",
    "grows",
)
print("fanout: ok")

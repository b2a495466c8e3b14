"""What the end-to-end scripts that drive Sluice's AWS APIs share: boto3 clients for an
endpoint, a check that says what was wrong, and waiting for a condition."""

import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def client(service, endpoint):
    """A boto3 client for `service` at `endpoint`, with test credentials and no retries (so a
    refusal is seen as it was sent)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}),
    )


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def refused(call, exception, fragment):
    """Checks that `call()` is refused with AWS error `exception`, its message holding
    `fragment`."""
    try:
        call()
    except ClientError as e:
        code = e.response["Error"]["Code"]
        message = e.response["Error"]["Message"]
        check(code == exception, f"expected {exception}, got {code}: {message}")
        check(fragment in message, f"{fragment!r} not in {message!r}")
        return
    raise AssertionError(f"expected {exception}")


def wait_for(what, condition, timeout=60):
    """The first true value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.time() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def shard_records(kinesis, stream):
    """The data of every record of `stream` as GetRecords returns it, shard by shard from
    TRIM_HORIZON."""
    got = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            got.extend(r["Data"] for r in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return got

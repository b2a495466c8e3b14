"""Sluice's Kinesis API with boto3, as producers and consumers use Kinesis.

Usage: kinesis_api.py ENDPOINT   (e.g. http://127.0.0.1:4567)
"""

import base64
import json
import sys
import time
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = sys.argv[1]
kinesis = boto3.client(
    "kinesis",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    config=Config(retries={"max_attempts": 1}),
)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def error_type(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"]
    raise AssertionError(f"{call.__name__} succeeded")


def lifecycle():
    kinesis.create_stream(StreamName="events", ShardCount=4)
    summary = kinesis.describe_stream_summary(StreamName="events")["StreamDescriptionSummary"]
    check(summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 4, summary)
    arn = summary["StreamARN"]
    kinesis.get_waiter("stream_exists").wait(StreamName="events", WaiterConfig={"Delay": 1})

    put = kinesis.put_record(StreamName="events", PartitionKey="user-1", Data=b'{"user":"u1","n":1}')
    check(put["ShardId"].startswith("shardId-") and len(put["SequenceNumber"]) > 20, put)
    batch = kinesis.put_records(
        StreamARN=arn,
        Records=[{"PartitionKey": f"user-{i % 7}", "Data": json.dumps({"n": i}).encode()} for i in range(100)],
    )
    check(batch["FailedRecordCount"] == 0 and len(batch["Records"]) == 100, batch["FailedRecordCount"])

    shards = kinesis.list_shards(StreamName="events")["Shards"]
    check(len(shards) == 4, shards)
    check(shards[0]["HashKeyRange"]["StartingHashKey"] == "0", shards[0])
    paged = kinesis.list_shards(StreamName="events", MaxResults=3)
    check(len(paged["Shards"]) == 3 and "NextToken" in paged, paged)
    rest = kinesis.list_shards(NextToken=paged["NextToken"])
    check([s["ShardId"] for s in rest["Shards"]] == [shards[3]["ShardId"]], rest)

    # Every record comes back once, in order per shard, from TRIM_HORIZON.
    seen = []
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName="events", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        sequence = []
        while True:
            out = kinesis.get_records(ShardIterator=iterator, Limit=25)
            sequence.extend(r["SequenceNumber"] for r in out["Records"])
            seen.extend(r["Data"] for r in out["Records"])
            iterator = out["NextShardIterator"]
            if not out["Records"]:
                check(out["MillisBehindLatest"] == 0, out)
                break
        check(sequence == sorted(sequence, key=int), "ordered within a shard")
    check(len(seen) == 101 and b'{"user":"u1","n":1}' in seen, len(seen))

    # AT/AFTER_SEQUENCE_NUMBER, LATEST and AT_TIMESTAMP.
    shard = put["ShardId"]
    at = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER",
                                    StartingSequenceNumber=put["SequenceNumber"])["ShardIterator"]
    check(kinesis.get_records(ShardIterator=at)["Records"][0]["SequenceNumber"] == put["SequenceNumber"], "AT")
    after = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                       StartingSequenceNumber=put["SequenceNumber"])["ShardIterator"]
    check(all(r["SequenceNumber"] != put["SequenceNumber"] for r in kinesis.get_records(ShardIterator=after)["Records"]), "AFTER")
    latest = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    check(kinesis.get_records(ShardIterator=latest)["Records"] == [], "LATEST starts empty")
    later = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="AT_TIMESTAMP",
                                       Timestamp=time.time() + 3600)["ShardIterator"]
    check(kinesis.get_records(ShardIterator=later)["Records"] == [], "AT_TIMESTAMP in the future")
    records = kinesis.get_records(ShardIterator=at)["Records"]
    check(abs(records[0]["ApproximateArrivalTimestamp"].timestamp() - time.time()) < 120, records[0])

    # Retention, tags, listing.
    kinesis.increase_stream_retention_period(StreamName="events", RetentionPeriodHours=48)
    check(kinesis.describe_stream(StreamName="events")["StreamDescription"]["RetentionPeriodHours"] == 48, "retention")
    kinesis.decrease_stream_retention_period(StreamName="events", RetentionPeriodHours=24)
    kinesis.add_tags_to_stream(StreamName="events", Tags={"team": "data", "env": "test"})
    kinesis.remove_tags_from_stream(StreamName="events", TagKeys=["env"])
    tags = kinesis.list_tags_for_stream(StreamName="events")["Tags"]
    check(tags == [{"Key": "team", "Value": "data"}], tags)
    kinesis.create_stream(StreamName="other", ShardCount=1)
    # Sluice's own error_stream (records that did not decode) is a stream like any other.
    listed = kinesis.list_streams(Limit=2)
    check(listed["StreamNames"] == ["error_stream", "events"] and listed["HasMoreStreams"], listed)
    more = kinesis.list_streams(NextToken=listed["NextToken"])
    check(more["StreamNames"] == ["other"] and not more["HasMoreStreams"], more)
    check(more["StreamSummaries"][0]["StreamARN"].endswith(":stream/other"), more)
    kinesis.delete_stream(StreamName="other")


def errors():
    code, message = error_type(kinesis.describe_stream, StreamName="missing")
    check(code == "ResourceNotFoundException" and "missing" in message, (code, message))
    code, _ = error_type(kinesis.create_stream, StreamName="events", ShardCount=1)
    check(code == "ResourceInUseException", code)
    code, message = error_type(kinesis.put_record, StreamName="events", PartitionKey="k" * 257, Data=b"x")
    check(code == "ValidationException" and "1 validation error detected" in message and "partitionKey" in message, message)
    code, message = error_type(kinesis.put_record, StreamName="events", PartitionKey="k", Data=b"x" * (1024 * 1024 + 1))
    check(code == "ValidationException" and "1048576" in message, message)
    code, _ = error_type(kinesis.get_shard_iterator, StreamName="events", ShardId="shardId-000000000099",
                         ShardIteratorType="LATEST")
    check(code == "ResourceNotFoundException", code)
    code, _ = error_type(kinesis.get_records, ShardIterator="bm90IGFuIGl0ZXJhdG9y")
    check(code == "InvalidArgumentException", code)
    code, _ = error_type(kinesis.increase_stream_retention_period, StreamName="events", RetentionPeriodHours=10000)
    check(code == "ValidationException", code)
    code, message = error_type(kinesis.put_records, StreamName="events",
                               Records=[{"PartitionKey": "k", "Data": b"x"}] * 501)
    check(code == "ValidationException" and "500" in message, message)


def resharding():
    """Split, merge and scale a stream; lineage in ListShards; ChildShards at a parent's end."""
    kinesis.create_stream(StreamName="scaled", ShardCount=1)
    for i in range(20):
        kinesis.put_record(StreamName="scaled", PartitionKey=f"k{i}", Data=f"before-{i}".encode())
    half = str(2**127)
    kinesis.split_shard(StreamName="scaled", ShardToSplit="shardId-000000000000", NewStartingHashKey=half)
    shards = kinesis.list_shards(StreamName="scaled")["Shards"]
    check([s["ShardId"][-1] for s in shards] == ["0", "1", "2"], shards)
    check("EndingSequenceNumber" in shards[0]["SequenceNumberRange"], shards[0])
    check(shards[1]["ParentShardId"] == "shardId-000000000000", shards[1])
    check(shards[1]["HashKeyRange"]["EndingHashKey"] == str(2**127 - 1), shards[1])
    check(shards[2]["HashKeyRange"]["StartingHashKey"] == half, shards[2])
    latest = kinesis.list_shards(StreamName="scaled", ShardFilter={"Type": "AT_LATEST"})["Shards"]
    check([s["ShardId"] for s in latest] == ["shardId-000000000001", "shardId-000000000002"], latest)
    oldest = kinesis.list_shards(StreamName="scaled", ShardFilter={"Type": "AT_TRIM_HORIZON"})["Shards"]
    check([s["ShardId"] for s in oldest] == ["shardId-000000000000"], oldest)
    for i in range(20):
        put = kinesis.put_record(StreamName="scaled", PartitionKey=f"k{i}", Data=f"after-{i}".encode())
        check(put["ShardId"] in ("shardId-000000000001", "shardId-000000000002"), put)

    # Reading the parent to its end hands over to the children.
    iterator = kinesis.get_shard_iterator(StreamName="scaled", ShardId="shardId-000000000000",
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out = kinesis.get_records(ShardIterator=iterator)
    check(len(out["Records"]) == 20 and "NextShardIterator" not in out, out.keys())
    children = sorted(c["ShardId"] for c in out["ChildShards"])
    check(children == ["shardId-000000000001", "shardId-000000000002"], out["ChildShards"])
    check(out["ChildShards"][0]["ParentShards"] == ["shardId-000000000000"], out["ChildShards"])

    code, _ = error_type(kinesis.split_shard, StreamName="scaled", ShardToSplit="shardId-000000000000",
                         NewStartingHashKey=half)
    check(code == "ResourceInUseException", code)
    code, _ = error_type(kinesis.split_shard, StreamName="scaled", ShardToSplit="shardId-000000000001",
                         NewStartingHashKey="0")
    check(code == "InvalidArgumentException", code)
    code, _ = error_type(kinesis.split_shard, StreamName="scaled", ShardToSplit="shardId-000000000001",
                         NewStartingHashKey="12x")
    check(code == "ValidationException", code)
    code, _ = error_type(kinesis.merge_shards, StreamName="scaled", ShardToMerge="shardId-000000000009",
                         AdjacentShardToMerge="shardId-000000000001")
    check(code == "ResourceNotFoundException", code)

    kinesis.merge_shards(StreamName="scaled", ShardToMerge="shardId-000000000001",
                         AdjacentShardToMerge="shardId-000000000002")
    merged = kinesis.list_shards(StreamName="scaled", ShardFilter={"Type": "AT_LATEST"})["Shards"]
    check(len(merged) == 1 and merged[0]["ParentShardId"] == "shardId-000000000001"
          and merged[0]["AdjacentParentShardId"] == "shardId-000000000002", merged)

    code, _ = error_type(kinesis.update_shard_count, StreamName="scaled", TargetShardCount=8,
                         ScalingType="UNIFORM_SCALING")
    check(code == "LimitExceededException", code)
    scaled = kinesis.update_shard_count(StreamName="scaled", TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    check(scaled["CurrentShardCount"] == 1 and scaled["TargetShardCount"] == 2, scaled)
    summary = kinesis.describe_stream_summary(StreamName="scaled")["StreamDescriptionSummary"]
    check(summary["OpenShardCount"] == 2, summary)
    # Nothing was lost on the way: every record is in some shard.
    total = 0
    for shard in kinesis.list_shards(StreamName="scaled")["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName="scaled", ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        total += len(kinesis.get_records(ShardIterator=iterator)["Records"])
    check(total == 40, total)


def raw_requests():
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    def post_raw(target, body, content_type="application/x-amz-json-1.1", signed=True, secret="test", key="test"):
        headers = {"X-Amz-Target": target, "Content-Type": content_type}
        if signed:
            # Signed as the SDKs sign: the server verifies it against its configured keys.
            aws_request = AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers=headers)
            SigV4Auth(Credentials(key, secret), "kinesis", "us-east-1").add_auth(aws_request)
            headers = dict(aws_request.headers.items())
        request = urllib.request.Request(ENDPOINT + "/", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post_json(*args, **kwargs):
        status, raw = post_raw(*args, **kwargs)
        return status, json.loads(raw or b"{}")

    status, body = post_json("Kinesis_20131202.ListStreams", b"{}", secret="wrong")
    check(status == 400 and body["__type"] == "InvalidSignatureException", body)
    status, body = post_json("Kinesis_20131202.ListStreams", b"{}", key="nobody")
    check(status == 400 and body["__type"] == "UnrecognizedClientException", body)
    cbor_matches_json(post_raw)

    post = post_json
    status, body = post("Kinesis_20131202.ListStreams", b"{not json")
    check(status == 400 and body["__type"] == "SerializationException", body)
    status, body = post("Kinesis_20131202.Frobnicate", b"{}")
    check(status == 400 and body["__type"] == "UnknownOperationException", body)
    status, body = post("Kinesis_20131202.ListStreams", b"{}", signed=False)
    check(body["__type"] == "MissingAuthenticationTokenException", body)
    status, body = post("Kinesis_20131202.PutRecord", b"x" * (11 * 1024 * 1024))
    check(status == 413, status)
    # CloudWatch's stream metrics, as Prometheus text on the same port, for whom the server's
    # one authorizer admits: the server was started with a token and the key test/test, so
    # neither an anonymous scrape nor a wrong password gets them, and both credentials do.
    for authorization in (None, "Basic " + base64.b64encode(b"test:wrong").decode(), "Bearer wrong"):
        request = urllib.request.Request(ENDPOINT + "/metrics")
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            urllib.request.urlopen(request)
            check(False, f"/metrics answered {authorization!r}")
        except urllib.error.HTTPError as e:
            check(e.code == 401 and "Bearer" in e.headers.get("WWW-Authenticate", ""), (e.code, dict(e.headers)))
    bearer = urllib.request.Request(ENDPOINT + "/metrics", headers={"Authorization": "Bearer e2e-token"})
    with urllib.request.urlopen(bearer) as response:
        check(response.status == 200, response.status)
    basic = urllib.request.Request(
        ENDPOINT + "/metrics", headers={"Authorization": "Basic " + base64.b64encode(b"test:test").decode()}
    )
    with urllib.request.urlopen(basic) as response:
        metrics = response.read().decode()
    incoming = sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('sluice_kinesis_incoming_records_total{stream="events"')
    )
    check(incoming == 101, incoming)
    check('sluice_kinesis_get_records_total{stream="events"' in metrics, metrics[:2000])
    check('sluice_shard_retained_records{stream="events",shard="shardId-000000000000"}' in metrics, metrics[:2000])
    # The server is still fine.
    status, body = post("Kinesis_20131202.ListStreams", b"{}")
    check(status == 200 and "events" in body["StreamNames"], body)


def cbor_matches_json(post):
    """The Java SDKs, the KCL and the Kinesis Agent speak CBOR: the same actions must answer the
    same in CBOR (blobs as byte strings, timestamps in milliseconds) as in JSON."""
    import cbor2

    def both(action, body):
        target = "Kinesis_20131202." + action
        status_json, raw_json = post(target, json.dumps(body).encode())
        cbor_body = dict(body)
        for entry in cbor_body.get("Records", []):
            entry["Data"] = base64.b64decode(entry["Data"])
        if "Data" in cbor_body:
            cbor_body["Data"] = base64.b64decode(cbor_body["Data"])
        if "Timestamp" in cbor_body:
            cbor_body["Timestamp"] = int(cbor_body["Timestamp"] * 1000)
        status_cbor, raw_cbor = post(target, cbor2.dumps(cbor_body), content_type="application/x-amz-cbor-1.1")
        check(status_json == status_cbor, (action, status_json, status_cbor))
        return json.loads(raw_json or b"{}"), cbor2.loads(raw_cbor) if raw_cbor else {}

    kinesis.create_stream(StreamName="cbor", ShardCount=1)
    as_json, as_cbor = both("PutRecord", {"StreamName": "cbor", "PartitionKey": "k", "Data": base64.b64encode(b"\x00\xffbin").decode()})
    check(as_json["ShardId"] == as_cbor["ShardId"], (as_json, as_cbor))
    as_json, as_cbor = both("PutRecords", {"StreamName": "cbor", "Records": [
        {"PartitionKey": "k", "Data": base64.b64encode(b"one").decode()},
        {"PartitionKey": "k", "Data": base64.b64encode(b"two").decode()}]})
    check(as_json["FailedRecordCount"] == as_cbor["FailedRecordCount"] == 0, (as_json, as_cbor))
    as_json, as_cbor = both("DescribeStreamSummary", {"StreamName": "cbor"})
    summary_json, summary_cbor = as_json["StreamDescriptionSummary"], as_cbor["StreamDescriptionSummary"]
    # Timestamps: epoch seconds in JSON, epoch milliseconds in CBOR.
    check(summary_cbor["StreamCreationTimestamp"] == round(summary_json["StreamCreationTimestamp"] * 1000),
          (summary_json, summary_cbor))
    as_json, as_cbor = both("GetShardIterator", {"StreamName": "cbor", "ShardId": "shardId-000000000000",
                                                 "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": time.time() - 600})
    got_json = json.loads(post("Kinesis_20131202.GetRecords", json.dumps({"ShardIterator": as_json["ShardIterator"]}).encode())[1])
    _, raw = post("Kinesis_20131202.GetRecords", cbor2.dumps({"ShardIterator": as_cbor["ShardIterator"]}),
                  content_type="application/x-amz-cbor-1.1")
    got_cbor = cbor2.loads(raw)
    data_json = [base64.b64decode(r["Data"]) for r in got_json["Records"]]
    data_cbor = [r["Data"] for r in got_cbor["Records"]]
    check(data_json == data_cbor == [b"\x00\xffbin", b"\x00\xffbin", b"one", b"two", b"one", b"two"], (data_json, data_cbor))
    check([r["SequenceNumber"] for r in got_json["Records"]] == [r["SequenceNumber"] for r in got_cbor["Records"]], "sequence numbers")
    arrival_json = got_json["Records"][0]["ApproximateArrivalTimestamp"]
    arrival_cbor = got_cbor["Records"][0]["ApproximateArrivalTimestamp"]
    check(arrival_cbor == round(arrival_json * 1000), (arrival_json, arrival_cbor))
    as_json, as_cbor = both("DescribeStream", {"StreamName": "nope"})
    check(as_json["__type"] == as_cbor["__type"] == "ResourceNotFoundException", (as_json, as_cbor))
    as_json, as_cbor = both("PutRecord", {"StreamName": "cbor", "PartitionKey": "", "Data": "eA=="})
    check(as_json == as_cbor and as_json["__type"] == "ValidationException", (as_json, as_cbor))


def aws_cli():
    import os
    import shutil
    import subprocess

    if shutil.which("aws") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI must install aws-cli (pip install awscli)")
        print("skipped aws_cli: pip install awscli")
        return
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")

    def aws(*args):
        out = subprocess.run(["aws", "--endpoint-url", ENDPOINT, "kinesis", *args], env=env,
                             capture_output=True, text=True, timeout=60)
        check(out.returncode == 0, out.stderr)
        return json.loads(out.stdout) if out.stdout.strip() else {}

    aws("create-stream", "--stream-name", "cli-events", "--shard-count", "2")
    put = aws("put-record", "--stream-name", "cli-events", "--partition-key", "user-1",
              "--data", '{"user":"u1","n":1}')
    check(put["ShardId"].startswith("shardId-"), put)
    iterator = aws("get-shard-iterator", "--stream-name", "cli-events", "--shard-id", put["ShardId"],
                   "--shard-iterator-type", "TRIM_HORIZON")["ShardIterator"]
    records = aws("get-records", "--shard-iterator", iterator)["Records"]
    check(base64.b64decode(records[0]["Data"]) == b'{"user":"u1","n":1}', records)


for test in [lifecycle, errors, resharding, raw_requests, aws_cli]:
    test()
    print(f"ok {test.__name__}")
print("all Kinesis API checks passed")

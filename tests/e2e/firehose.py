"""Firehose over the wire, as Firehose users drive it: boto3's `firehose` and `glue` clients
against `sluice serve`, objects read back from the S3-compatible server's folder with DuckDB.

Usage: firehose.py first|second KINESIS_ENDPOINT BUCKET_FOLDER
  first:  direct put (raw, and converted to Parquet through a Glue table), a Kinesis stream
          source with dynamic partitioning by a jq query and KPL-aggregated records, the error
          prefixes, the API's checks, tags, UpdateDestination; then puts records into
          `durable` (buffered for 900 s) and leaves them for the server to be killed.
  second: after kill -9 and a restart: `durable`'s acknowledged records are all delivered.
BUCKET_FOLDER is the folder that holds the bucket `lake`'s objects.
"""

import base64
import glob
import json
import os
import sys
import time

import duckdb
from aws_kinesis_agg.aggregator import RecordAggregator

from aws_clients import check, client, refused, shard_records, wait_for

PHASE, ENDPOINT, BUCKET = sys.argv[1], sys.argv[2], sys.argv[3]
firehose = client("firehose", ENDPOINT)
glue = client("glue", ENDPOINT)
kinesis = client("kinesis", ENDPOINT)
LAKE = "arn:aws:s3:::lake"
ROLE = "arn:aws:iam::000000000000:role/firehose"


def objects(prefix):
    return sorted(
        p for p in glob.glob(os.path.join(BUCKET, prefix + "**"), recursive=True) if os.path.isfile(p)
    )




def lines(prefix):
    out = []
    for path in objects(prefix):
        with open(path, "rb") as f:
            out.extend(l for l in f.read().decode().split("\n") if l)
    return out


def first():
    # --- Direct put, raw records, AppendDelimiterToRecord -------------------------------
    arn = firehose.create_delivery_stream(
        DeliveryStreamName="events",
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE,
            "BucketARN": LAKE,
            "Prefix": "events/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0},
            "ProcessingConfiguration": {
                "Enabled": True,
                "Processors": [{"Type": "AppendDelimiterToRecord"}],
            },
        },
        Tags=[{"Key": "team", "Value": "data"}],
    )["DeliveryStreamARN"]
    check(arn.endswith(":deliverystream/events"), arn)
    batch = [{"Data": json.dumps({"n": i}).encode()} for i in range(500)]
    answer = firehose.put_record_batch(DeliveryStreamName="events", Records=batch)
    check(answer["FailedPutCount"] == 0, answer["FailedPutCount"])
    check(len(answer["RequestResponses"]) == 500, len(answer["RequestResponses"]))
    check(all("RecordId" in r for r in answer["RequestResponses"]), "record ids")
    one = firehose.put_record(DeliveryStreamName="events", Record={"Data": b'{"n": 500}'})
    check(one["RecordId"], one)
    got = wait_for("events' 501 records", lambda: (l := lines("events/")) and len(l) >= 501 and l)
    check(sorted(json.loads(l)["n"] for l in got) == list(range(501)), "each record once")

    # The API's checks, with Firehose's exception types.
    refused(
        lambda: firehose.put_record_batch(DeliveryStreamName="events", Records=batch + batch[:1]),
        "InvalidArgumentException",
        "1 to 500",
    )
    refused(
        lambda: firehose.put_record(DeliveryStreamName="events", Record={"Data": b"x" * 1_024_001}),
        "InvalidArgumentException",
        "at most 1024000 bytes",
    )
    refused(
        lambda: firehose.put_record(DeliveryStreamName="nope", Record={"Data": b"x"}),
        "ResourceNotFoundException",
        "Firehose nope under account",
    )
    refused(
        lambda: firehose.create_delivery_stream(
            DeliveryStreamName="events",
            ExtendedS3DestinationConfiguration={"RoleARN": ROLE, "BucketARN": LAKE},
        ),
        "ResourceInUseException",
        "already exists",
    )
    refused(
        lambda: firehose.create_delivery_stream(
            DeliveryStreamName="orc",
            ExtendedS3DestinationConfiguration={
                "RoleARN": ROLE,
                "BucketARN": LAKE,
                "DataFormatConversionConfiguration": {
                    "SchemaConfiguration": {"DatabaseName": "analytics", "TableName": "trades"},
                    "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                    "OutputFormatConfiguration": {"Serializer": {"OrcSerDe": {}}},
                },
            },
        ),
        "InvalidArgumentException",
        "ORC (OrcSerDe) is not supported",
    )
    refused(
        lambda: firehose.create_delivery_stream(
            DeliveryStreamName="lambda",
            ExtendedS3DestinationConfiguration={
                "RoleARN": ROLE,
                "BucketARN": LAKE,
                "ProcessingConfiguration": {
                    "Enabled": True,
                    "Processors": [{"Type": "Lambda", "Parameters": [{"ParameterName": "LambdaArn", "ParameterValue": "arn:aws:lambda:us-east-1:000000000000:function:f"}]}],
                },
            },
        ),
        "InvalidArgumentException",
        "Lambda processors are not supported",
    )
    refused(
        lambda: firehose.create_delivery_stream(
            DeliveryStreamName="nokeys",
            ExtendedS3DestinationConfiguration={
                "RoleARN": ROLE,
                "BucketARN": LAKE,
                "Prefix": "x/",
                "DynamicPartitioningConfiguration": {"Enabled": True},
            },
        ),
        "InvalidArgumentException",
        "ErrorOutputPrefix is required",
    )

    # --- Record format conversion to Parquet through a Glue table ------------------------
    glue.create_database(DatabaseInput={"Name": "analytics"})
    glue.create_table(
        DatabaseName="analytics",
        TableInput={
            "Name": "trades",
            "StorageDescriptor": {
                "Columns": [
                    {"Name": "ticker", "Type": "string"},
                    {"Name": "price", "Type": "double"},
                    {"Name": "qty", "Type": "int"},
                    {"Name": "ts", "Type": "timestamp"},
                ]
            },
        },
    )
    check(
        [c["Name"] for c in glue.get_table(DatabaseName="analytics", Name="trades")["Table"]["StorageDescriptor"]["Columns"]]
        == ["ticker", "price", "qty", "ts"],
        "glue table",
    )
    refused(
        lambda: glue.create_table(
            DatabaseName="analytics",
            TableInput={"Name": "bad", "StorageDescriptor": {"Columns": [{"Name": "m", "Type": "map<string,int>"}]}},
        ),
        "InvalidInputException",
        "not a Hive type",
    )
    firehose.create_delivery_stream(
        DeliveryStreamName="trades",
        ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE,
            "BucketARN": LAKE,
            "Prefix": "trades/",
            "ErrorOutputPrefix": "trade-errors/!{firehose:error-output-type}/",
            "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 0},
            "DataFormatConversionConfiguration": {
                "Enabled": True,
                "SchemaConfiguration": {"DatabaseName": "analytics", "TableName": "trades", "RoleARN": ROLE},
                "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}},
            },
        },
    )
    trades = [
        # A year ago, now-ish, and in the future: event time is data, not arrival.
        {"ticker": "AMZN", "price": 130.5, "qty": 10, "ts": "2025-12-07T10:00:00Z"},
        {"ticker": "MSFT", "price": 410.25, "qty": 3, "ts": "2026-12-07T10:00:00Z"},
        {"ticker": "ORCL", "price": 99.0, "qty": 7, "ts": "2027-06-01T00:00:00Z"},
    ]
    records = [{"Data": json.dumps(t).encode()} for t in trades]
    records.append({"Data": b'{"ticker": "BAD", "price": "not a number", "qty": 1}'})
    records.append({"Data": b"this is not json"})
    answer = firehose.put_record_batch(DeliveryStreamName="trades", Records=records)
    check(answer["FailedPutCount"] == 0, answer)
    parquet = wait_for("trades' Parquet", lambda: [p for p in objects("trades/") if p.endswith(".parquet")])
    rows = duckdb.sql(
        "SELECT ticker, price, qty, CAST(ts AS VARCHAR) FROM read_parquet(" + json.dumps(parquet) + ") ORDER BY ts"
    ).fetchall()
    check(
        rows
        == [
            ("AMZN", 130.5, 10, "2025-12-07 10:00:00"),
            ("MSFT", 410.25, 3, "2026-12-07 10:00:00"),
            ("ORCL", 99.0, 7, "2027-06-01 00:00:00"),
        ],
        rows,
    )
    types = duckdb.sql("DESCRIBE SELECT * FROM read_parquet(" + json.dumps(parquet) + ")").fetchall()
    check([t[1] for t in types][:3] == ["VARCHAR", "DOUBLE", "INTEGER"], types)
    failed = wait_for("trades' error records", lambda: (l := lines("trade-errors/format-conversion-failed/")) and len(l) >= 2 and l)
    failed = [json.loads(l) for l in failed]
    check(all(f["lastErrorCode"] == "DataFormatConversion.MalformedData" for f in failed), failed)
    raw = sorted(base64.b64decode(f["rawData"]) for f in failed)
    check(raw == [b"this is not json", b'{"ticker": "BAD", "price": "not a number", "qty": 1}'], raw)

    # --- A Kinesis stream source, dynamic partitioning by jq, KPL aggregation -------------
    kinesis.create_stream(StreamName="clicks", ShardCount=2)
    firehose.create_delivery_stream(
        DeliveryStreamName="clicks-by-customer",
        DeliveryStreamType="KinesisStreamAsSource",
        KinesisStreamSourceConfiguration={
            "KinesisStreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/clicks",
            "RoleARN": ROLE,
        },
        ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE,
            "BucketARN": LAKE,
            "Prefix": "clicks/customer=!{partitionKeyFromQuery:customer}/",
            "ErrorOutputPrefix": "click-errors/!{firehose:error-output-type}/",
            "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 0},
            "DynamicPartitioningConfiguration": {"Enabled": True},
            "ProcessingConfiguration": {
                "Enabled": True,
                "Processors": [
                    {
                        "Type": "MetadataExtraction",
                        "Parameters": [
                            {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{customer: .customer.id}"},
                            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
                        ],
                    },
                    {"Type": "AppendDelimiterToRecord"},
                ],
            },
        },
    )
    kinesis.put_record(StreamName="clicks", PartitionKey="a", Data=b'{"customer": {"id": "c1"}, "page": "/"}')
    kinesis.put_record(StreamName="clicks", PartitionKey="b", Data=b'{"customer": {"id": "c2"}, "page": "/buy"}')
    kinesis.put_record(StreamName="clicks", PartitionKey="c", Data=b'{"page": "/anonymous"}')
    # Three clicks packed into one Kinesis record by the KPL's aggregation.
    aggregator = RecordAggregator()
    for i, customer in enumerate(["c1", "c3", "c3"]):
        aggregator.add_user_record(f"user-{i}", json.dumps({"customer": {"id": customer}, "page": f"/agg/{i}"}).encode())
    partition_key, hash_key, data = aggregator.clear_and_get().get_contents()
    kinesis.put_record(StreamName="clicks", PartitionKey=partition_key, Data=data)
    # GetRecords returns the aggregate as the one record it is stored as.
    stored = shard_records(kinesis, "clicks")
    check(len(stored) == 4, len(stored))
    by_customer = wait_for(
        "clicks by customer",
        lambda: (
            got := {c: lines(f"clicks/customer={c}/") for c in ["c1", "c2", "c3"]}
        )
        and sum(len(v) for v in got.values()) >= 5
        and got,
    )
    pages = {c: sorted(json.loads(l)["page"] for l in v) for c, v in by_customer.items()}
    check(pages == {"c1": ["/", "/agg/0"], "c2": ["/buy"], "c3": ["/agg/1", "/agg/2"]}, pages)
    unpartitioned = wait_for("partitioning failures", lambda: lines("click-errors/partitioning-failed/"))
    failure = json.loads(unpartitioned[0])
    check(base64.b64decode(failure["rawData"]) == b'{"page": "/anonymous"}', failure)
    check("'customer' is null" in failure["lastErrorMessage"], failure)
    refused(
        lambda: firehose.put_record(DeliveryStreamName="clicks-by-customer", Record={"Data": b"{}"}),
        "InvalidArgumentException",
        "not permitted on KinesisStreamAsSource",
    )

    # --- Describe, list, tags, UpdateDestination ------------------------------------------
    description = firehose.describe_delivery_stream(DeliveryStreamName="clicks-by-customer")["DeliveryStreamDescription"]
    check(description["DeliveryStreamStatus"] == "ACTIVE", description)
    check(description["DeliveryStreamType"] == "KinesisStreamAsSource", description)
    check(description["Source"]["KinesisStreamSourceDescription"]["KinesisStreamARN"].endswith("stream/clicks"), description)
    names = firehose.list_delivery_streams(Limit=100)["DeliveryStreamNames"]
    # `from_sql` was made with CREATE DELIVERY STREAM before this script ran.
    check(names == ["clicks-by-customer", "events", "from_sql", "trades"], names)
    check(
        firehose.list_delivery_streams(DeliveryStreamType="DirectPut")["DeliveryStreamNames"] == ["events", "trades"],
        "DirectPut filter",
    )
    firehose.tag_delivery_stream(DeliveryStreamName="events", Tags=[{"Key": "env", "Value": "test"}])
    tags = firehose.list_tags_for_delivery_stream(DeliveryStreamName="events")["Tags"]
    check(tags == [{"Key": "env", "Value": "test"}, {"Key": "team", "Value": "data"}], tags)
    firehose.untag_delivery_stream(DeliveryStreamName="events", TagKeys=["team"])
    check(len(firehose.list_tags_for_delivery_stream(DeliveryStreamName="events")["Tags"]) == 1, "untagged")

    events = firehose.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
    refused(
        lambda: firehose.update_destination(
            DeliveryStreamName="events",
            CurrentDeliveryStreamVersionId="99",
            DestinationId=events["Destinations"][0]["DestinationId"],
            ExtendedS3DestinationUpdate={"Prefix": "events-v2/"},
        ),
        "ConcurrentModificationException",
        "not the current version",
    )
    firehose.update_destination(
        DeliveryStreamName="events",
        CurrentDeliveryStreamVersionId=events["VersionId"],
        DestinationId=events["Destinations"][0]["DestinationId"],
        ExtendedS3DestinationUpdate={"Prefix": "events-v2/"},
    )
    after = firehose.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
    check(int(after["VersionId"]) == int(events["VersionId"]) + 1, after["VersionId"])
    check(after["Destinations"][0]["ExtendedS3DestinationDescription"]["Prefix"] == "events-v2/", after)
    firehose.put_record(DeliveryStreamName="events", Record={"Data": b'{"n": 501}'})
    moved = wait_for("events under the new prefix", lambda: lines("events-v2/"))
    check(moved == ['{"n": 501}'], moved)
    check(all("-2-" in os.path.basename(p) for p in objects("events-v2/")), objects("events-v2/"))
    check(len(lines("events/")) == 501, "nothing delivered twice after the update")

    firehose.delete_delivery_stream(DeliveryStreamName="trades")
    refused(
        lambda: firehose.describe_delivery_stream(DeliveryStreamName="trades"),
        "ResourceNotFoundException",
        "not found",
    )
    refused(
        lambda: firehose.delete_delivery_stream(DeliveryStreamName="trades"),
        "ResourceNotFoundException",
        "Firehose trades under account",
    )

    # --- Records buffered for 900 s, left for kill -9 -------------------------------------
    firehose.create_delivery_stream(
        DeliveryStreamName="durable",
        ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE,
            "BucketARN": LAKE,
            "Prefix": "durable/",
            "BufferingHints": {"SizeInMBs": 128, "IntervalInSeconds": 900},
            "ProcessingConfiguration": {"Enabled": True, "Processors": [{"Type": "AppendDelimiterToRecord"}]},
        },
    )
    answer = firehose.put_record_batch(
        DeliveryStreamName="durable", Records=[{"Data": f"line {i}".encode()} for i in range(100)]
    )
    check(answer["FailedPutCount"] == 0, answer)
    check(objects("durable/") == [], "nothing delivered yet")
    print("first: ok")


def second():
    description = firehose.describe_delivery_stream(DeliveryStreamName="durable")["DeliveryStreamDescription"]
    # Deliver now: the buffered records come from the stream, where the put left them.
    firehose.update_destination(
        DeliveryStreamName="durable",
        CurrentDeliveryStreamVersionId=description["VersionId"],
        DestinationId=description["Destinations"][0]["DestinationId"],
        ExtendedS3DestinationUpdate={"BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0}},
    )
    got = wait_for("durable's records", lambda: (l := lines("durable/")) and len(l) >= 100 and l)
    check(sorted(got) == sorted(f"line {i}" for i in range(100)), got[:5])
    check(
        firehose.list_tags_for_delivery_stream(DeliveryStreamName="events")["Tags"] == [{"Key": "env", "Value": "test"}],
        "tags kept across the restart",
    )
    print("second: ok")


{"first": first, "second": second}[PHASE]()

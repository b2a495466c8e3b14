"""Kinesis Data Analytics applications managed as KDA's were: aws-cli creates one from a JSON
definition file, boto3 adds its reference table (an object on an S3-compatible server), starts
it, creates a second application with the same in-application names, and reads what both
deliver; bad definitions get KDA's exception types.

Usage: kda_applications.py first|second KINESIS_ENDPOINT WORKDIR
  first:  everything above, then stop/start at LAST_STOPPED_POINT.
  second: after the server was killed with kill -9 and started again: the applications still
          run, resume where they were, and deliver every record exactly once.
WORKDIR holds app.json (written here) and lake/ (where the delivery stream `lake` writes).
"""

import glob
import json
import os
import subprocess
import sys
import time

import boto3
import duckdb
from botocore.config import Config
from botocore.exceptions import ClientError

PHASE, ENDPOINT, WORKDIR = sys.argv[1], sys.argv[2], sys.argv[3]
SETTINGS = dict(
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    config=Config(retries={"max_attempts": 1}),
)
kinesis = boto3.client("kinesis", **SETTINGS)
kda = boto3.client("kinesisanalytics", **SETTINGS)
ARN = "arn:aws:kinesis:us-east-1:000000000000:stream/"


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def records(stream, want, timeout=30):
    """Every record of `stream` from the start, waiting until there are `want`."""
    deadline = time.time() + timeout
    while True:
        got = []
        for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
            iterator = kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                page = kinesis.get_records(ShardIterator=iterator, Limit=1000)
                got.extend(r["Data"].decode() for r in page["Records"])
                if not page["Records"]:
                    break
                iterator = page.get("NextShardIterator")
        if len(got) >= want or time.time() > deadline:
            return got
        time.sleep(0.2)


def error_code(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"]
    raise AssertionError(f"{call.__name__} accepted {kwargs}")


def status(name):
    return kda.describe_application(ApplicationName=name)["ApplicationDetail"]


def wait_running(name):
    deadline = time.time() + 30
    while status(name)["ApplicationStatus"] != "RUNNING":
        check(time.time() < deadline, f"{name} never became RUNNING: {status(name)}")
        time.sleep(0.2)


def trade(symbol, price, when):
    return {
        "Data": json.dumps(
            {"TICKER_SYMBOL": symbol, "PRICE": {"last": price}, "EVENT_TIME": when}
        ).encode(),
        "PartitionKey": symbol,
    }


ALPHA_CODE = """
CREATE OR REPLACE STREAM "DESTINATION_SQL_STREAM" (
    "TICKER_SYMBOL" VARCHAR(4), "COMPANY" VARCHAR(32), "PRICE" DOUBLE, "EVENT_TIME" TIMESTAMP);
-- every trade, named from the reference table
CREATE OR REPLACE PUMP "STREAM_PUMP" AS INSERT INTO "DESTINATION_SQL_STREAM"
SELECT STREAM "TICKER_SYMBOL", "c"."COMPANY", "PRICE", "EVENT_TIME"
FROM "SOURCE_SQL_STREAM_001" LEFT JOIN "COMPANIES" AS "c"
  ON "SOURCE_SQL_STREAM_001"."TICKER_SYMBOL" = "c"."TICKER";
"""

BETA_CODE = """
CREATE OR REPLACE STREAM "DESTINATION_SQL_STREAM" ("USER_ID" VARCHAR(8), "URL" VARCHAR(64));
CREATE OR REPLACE PUMP "STREAM_PUMP" AS INSERT INTO "DESTINATION_SQL_STREAM"
SELECT STREAM "USER_ID", "URL" FROM "SOURCE_SQL_STREAM_001";
"""


def first():
    for name, shards in [("ticker", 2), ("out", 1), ("clicks", 1), ("out2", 1)]:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    # A trade from a year ago, one from the future, one now, and a record that is not JSON.
    put = kinesis.put_records(
        StreamName="ticker",
        Records=[
            trade("AMZN", 150.5, "2025-12-07 10:00:00"),
            trade("ORCL", 12.0, "2027-06-01 00:00:00"),
            trade("IBM", 5.0, "2026-12-07 01:00:00"),
            {"Data": b"not json", "PartitionKey": "x"},
        ],
    )
    check(put["FailedRecordCount"] == 0, put)

    # The definition file a KDA user keeps, created with aws-cli.
    definition = {
        "ApplicationName": "alpha",
        "ApplicationDescription": "trades named by company",
        "ApplicationCode": ALPHA_CODE,
        "Inputs": [
            {
                "NamePrefix": "SOURCE_SQL_STREAM",
                "KinesisStreamsInput": {
                    "ResourceARN": ARN + "ticker",
                    "RoleARN": "arn:aws:iam::000000000000:role/kda",
                },
                "InputParallelism": {"Count": 1},
                "InputSchema": {
                    "RecordFormat": {
                        "RecordFormatType": "JSON",
                        "MappingParameters": {"JSONMappingParameters": {"RecordRowPath": "$"}},
                    },
                    "RecordEncoding": "UTF-8",
                    "RecordColumns": [
                        {"Name": "TICKER_SYMBOL", "Mapping": "$.TICKER_SYMBOL", "SqlType": "VARCHAR(4)"},
                        {"Name": "PRICE", "Mapping": "$.PRICE.last", "SqlType": "DOUBLE"},
                        {"Name": "EVENT_TIME", "Mapping": "$.EVENT_TIME", "SqlType": "TIMESTAMP"},
                    ],
                },
            }
        ],
        "Outputs": [
            {
                "Name": "DESTINATION_SQL_STREAM",
                "KinesisStreamsOutput": {"ResourceARN": ARN + "out", "RoleARN": "r"},
                "DestinationSchema": {"RecordFormatType": "JSON"},
            },
            {
                "Name": "DESTINATION_SQL_STREAM",
                "KinesisFirehoseOutput": {
                    "ResourceARN": "arn:aws:firehose:us-east-1:000000000000:deliverystream/lake",
                    "RoleARN": "r",
                },
                "DestinationSchema": {"RecordFormatType": "CSV"},
            },
        ],
    }
    path = os.path.join(WORKDIR, "app.json")
    with open(path, "w") as f:
        json.dump(definition, f)
    aws = os.path.join(os.path.dirname(sys.executable), "aws")
    created = subprocess.run(
        [aws, "kinesisanalytics", "create-application", "--cli-input-json", "file://" + path,
         "--endpoint-url", ENDPOINT, "--region", "us-east-1", "--output", "json"],
        capture_output=True, text=True,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    )
    check(created.returncode == 0, f"aws-cli: {created.stderr}")
    summary = json.loads(created.stdout)["ApplicationSummary"]
    check(summary["ApplicationStatus"] == "READY", summary)
    check(summary["ApplicationARN"].endswith(":application/alpha"), summary)

    detail = status("alpha")
    kda.add_application_reference_data_source(
        ApplicationName="alpha",
        CurrentApplicationVersionId=detail["ApplicationVersionId"],
        ReferenceDataSource={
            "TableName": "COMPANIES",
            "S3ReferenceDataSource": {
                "BucketARN": "arn:aws:s3:::refdata",
                "FileKey": "companies.csv",
                "ReferenceRoleARN": "arn:aws:iam::000000000000:role/ref",
            },
            "ReferenceSchema": {
                "RecordFormat": {
                    "RecordFormatType": "CSV",
                    "MappingParameters": {
                        "CSVMappingParameters": {"RecordRowDelimiter": "\n", "RecordColumnDelimiter": ","}
                    },
                },
                "RecordEncoding": "UTF-8",
                "RecordColumns": [
                    {"Name": "TICKER", "SqlType": "VARCHAR(4)"},
                    {"Name": "COMPANY", "SqlType": "VARCHAR(32)"},
                ],
            },
        },
    )
    detail = status("alpha")
    check(detail["ApplicationVersionId"] == 2, detail)
    input_id = detail["InputDescriptions"][0]["InputId"]
    kda.start_application(
        ApplicationName="alpha",
        InputConfigurations=[
            {"Id": input_id, "InputStartingPositionConfiguration": {"InputStartingPosition": "TRIM_HORIZON"}}
        ],
    )
    wait_running("alpha")

    # A second application with the same in-application names, on CSV input.
    kda.create_application(
        ApplicationName="beta",
        ApplicationCode=BETA_CODE,
        Inputs=[
            {
                "NamePrefix": "SOURCE_SQL_STREAM",
                "KinesisStreamsInput": {"ResourceARN": ARN + "clicks", "RoleARN": "r"},
                "InputSchema": {
                    "RecordFormat": {
                        "RecordFormatType": "CSV",
                        "MappingParameters": {
                            "CSVMappingParameters": {"RecordRowDelimiter": "\n", "RecordColumnDelimiter": ","}
                        },
                    },
                    "RecordColumns": [
                        {"Name": "USER_ID", "SqlType": "VARCHAR(8)"},
                        {"Name": "URL", "SqlType": "VARCHAR(64)"},
                    ],
                },
            }
        ],
        Outputs=[
            {
                "Name": "DESTINATION_SQL_STREAM",
                "KinesisStreamsOutput": {"ResourceARN": ARN + "out2", "RoleARN": "r"},
                "DestinationSchema": {"RecordFormatType": "CSV"},
            }
        ],
    )
    kda.start_application(
        ApplicationName="beta",
        InputConfigurations=[{"Id": "1.1", "InputStartingPositionConfiguration": {"InputStartingPosition": "NOW"}}],
    )
    wait_running("beta")
    kinesis.put_record(StreamName="clicks", Data=b"u1,/home\nu2,/cart", PartitionKey="u")

    out = [json.loads(r) for r in records("out", 3)]
    check(len(out) == 3, out)
    by_symbol = {r["TICKER_SYMBOL"]: r for r in out}
    check(by_symbol["AMZN"]["COMPANY"] == "Amazon" and by_symbol["AMZN"]["PRICE"] == 150.5, out)
    check(by_symbol["ORCL"]["COMPANY"] == "Oracle", out)
    check("COMPANY" not in by_symbol["IBM"], out)
    check(by_symbol["AMZN"]["EVENT_TIME"].startswith("2025-12-07T10:00:00"), out)
    check(by_symbol["ORCL"]["EVENT_TIME"].startswith("2027-06-01"), out)
    check(sorted(records("out2", 2)) == ["u1,/home", "u2,/cart"], records("out2", 2))

    # The delivery stream got the same rows as CSV records and wrote them as JSON objects.
    deadline = time.time() + 30
    rows = []
    while time.time() < deadline:
        files = glob.glob(os.path.join(WORKDIR, "lake", "**", "*.json"), recursive=True)
        if files:
            rows = duckdb.sql(
                f"SELECT TICKER_SYMBOL, COMPANY FROM read_json_auto({files!r}) ORDER BY 1"
            ).fetchall()
            if len(rows) >= 3:
                break
        time.sleep(0.3)
    rows = [(symbol, company or None) for symbol, company in rows]
    check(rows == [("AMZN", "Amazon"), ("IBM", None), ("ORCL", "Oracle")], rows)

    # Bad definitions: KDA's exception types, messages naming the field.
    bad_input = json.loads(json.dumps(definition["Inputs"][0]))
    bad_input["InputSchema"]["RecordColumns"][1]["SqlType"] = "MONEY"
    code, message = error_code(kda.create_application, ApplicationName="bad", Inputs=[bad_input])
    check(code == "InvalidArgumentException" and "RecordColumns[1].SqlType" in message, message)
    code, message = error_code(
        kda.create_application,
        ApplicationName="bad",
        Outputs=[{"Name": "X", "LambdaOutput": {"ResourceARN": "arn:aws:lambda:us-east-1:0:function:f", "RoleARN": "r"},
                  "DestinationSchema": {"RecordFormatType": "JSON"}}],
    )
    check(code == "UnsupportedOperationException" and "LambdaOutput" in message, message)
    code, message = error_code(
        kda.create_application, ApplicationName="bad", ApplicationCode="CREATE OR REPLACE STREAM ("
    )
    check(code == "CodeValidationException", message)
    code, _ = error_code(
        kda.update_application,
        ApplicationName="alpha",
        CurrentApplicationVersionId=99,
        ApplicationUpdate={"ApplicationCodeUpdate": ALPHA_CODE},
    )
    check(code == "ConcurrentModificationException", code)
    code, _ = error_code(kda.describe_application, ApplicationName="nope")
    check(code == "ResourceNotFoundException", code)
    code, _ = error_code(kda.create_application, ApplicationName="beta")
    check(code == "ResourceInUseException", code)

    # DiscoverInputSchema, as the console used it.
    found = kda.discover_input_schema(
        ResourceARN=ARN + "ticker",
        RoleARN="r",
        InputStartingPositionConfiguration={"InputStartingPosition": "TRIM_HORIZON"},
    )
    names = [c["Name"] for c in found["InputSchema"]["RecordColumns"]]
    check("TICKER_SYMBOL" in names, names)
    check(len(found["RawInputRecords"]) == 4, found["RawInputRecords"])

    # Stopped, a trade arrives; LAST_STOPPED_POINT takes it in once.
    kda.stop_application(ApplicationName="alpha")
    check(status("alpha")["ApplicationStatus"] == "READY", status("alpha"))
    kinesis.put_records(StreamName="ticker", Records=[trade("MSFT", 20.0, "2026-12-07 02:00:00")])
    kda.start_application(
        ApplicationName="alpha",
        InputConfigurations=[
            {"Id": input_id, "InputStartingPositionConfiguration": {"InputStartingPosition": "LAST_STOPPED_POINT"}}
        ],
    )
    wait_running("alpha")
    out = records("out", 4)
    check(len(out) == 4, out)
    tags = kda.list_tags_for_resource(ResourceARN=summary["ApplicationARN"])["Tags"]
    check(tags == [], tags)
    print("phase one: the applications ran as KDA's")


def second():
    # Still running after kill -9 and a restart; a new trade goes through once.
    wait_running("alpha")
    wait_running("beta")
    kinesis.put_records(StreamName="ticker", Records=[trade("NFLX", 500.0, "2026-12-07 03:00:00")])
    out = [json.loads(r) for r in records("out", 5)]
    time.sleep(1)
    out = [json.loads(r) for r in records("out", 5)]
    symbols = sorted(r["TICKER_SYMBOL"] for r in out)
    check(symbols == ["AMZN", "IBM", "MSFT", "NFLX", "ORCL"], symbols)
    created = status("beta")["CreateTimestamp"]
    kda.delete_application(ApplicationName="beta", CreateTimestamp=created)
    listed = kda.list_applications()["ApplicationSummaries"]
    check([a["ApplicationName"] for a in listed] == ["alpha"], listed)
    print("phase two: alpha resumed exactly where it was")


first() if PHASE == "first" else second()

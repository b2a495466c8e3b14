"""A Kinesis Data Analytics application on Sluice, fed and read as KDA's were: boto3 puts
JSON records (upper-case keys from one producer, lower-case from another) into the source
stream over the Kinesis API, and reads the pump's output from the destination stream.

Usage: kda_app.py ENDPOINT   (with examples/kda_ticker.sql already running there)
"""

import json
import sys
import time

import boto3
from botocore.config import Config

kinesis = boto3.client(
    "kinesis",
    endpoint_url=sys.argv[1],
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    config=Config(retries={"max_attempts": 1}),
)

TRADES = [
    {"TICKER_SYMBOL": "QXZ", "SECTOR": "TECHNOLOGY", "CHANGE": 1.0, "PRICE": 10.0},
    {"ticker_symbol": "QXZ", "sector": "TECHNOLOGY", "change": 2.0, "price": 20.0},
    {"ticker_symbol": "WMT", "sector": "RETAIL", "change": 0.5, "price": 60.0},
    {"TICKER_SYMBOL": "ALY", "SECTOR": "TECH", "CHANGE": -1.0, "PRICE": 5.0},
    {"ticker_symbol": "QXZ", "sector": "TECHNOLOGY", "change": 3.0, "price": 30.0},
    {"ticker_symbol": "ALY", "sector": "TECH", "change": 1.0, "price": 7.0},
]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def symbol(trade):
    return trade.get("TICKER_SYMBOL") or trade.get("ticker_symbol")


# One PutRecords per producer, each record keyed by its ticker as KDA applications' producers do.
put = kinesis.put_records(
    StreamName="SOURCE_SQL_STREAM_001",
    Records=[{"Data": json.dumps(t).encode(), "PartitionKey": symbol(t)} for t in TRADES],
)
check(put["FailedRecordCount"] == 0, f"put_records failed: {put}")

# Read the destination stream from the start, every shard, until the pump's rows are there.
shards = kinesis.list_shards(StreamName="DESTINATION_SQL_STREAM")["Shards"]
rows = []
deadline = time.time() + 30
iterators = [
    kinesis.get_shard_iterator(
        StreamName="DESTINATION_SQL_STREAM",
        ShardId=shard["ShardId"],
        ShardIteratorType="TRIM_HORIZON",
    )["ShardIterator"]
    for shard in shards
]
while len(rows) < 5 and time.time() < deadline:
    for i, iterator in enumerate(iterators):
        got = kinesis.get_records(ShardIterator=iterator, Limit=100)
        rows.extend(json.loads(r["Data"]) for r in got["Records"])
        iterators[i] = got["NextShardIterator"]
    time.sleep(0.2)

print(json.dumps(rows))
check(len(rows) == 5, f"expected 5 rows (the TECH tickers), got {rows}")
by_symbol = {}
for row in rows:
    by_symbol.setdefault(row["ticker_symbol"], []).append((row["price"], row["avg_price"]))
# Each row's average is over its ticker's rows so far (all within the minute), in arrival order.
check(
    by_symbol == {"QXZ": [(10.0, 10.0), (20.0, 15.0), (30.0, 20.0)], "ALY": [(5.0, 5.0), (7.0, 6.0)]},
    f"unexpected averages: {by_symbol}",
)
print("the KDA application gave KDA's rows")

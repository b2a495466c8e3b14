"""Nothing acknowledged is lost: the real server under concurrent producers, killed with SIGKILL
at random moments, restarted, and checked.

Producers: boto3 PutRecords (Kinesis API) from several threads, and INSERT statements over Flight
SQL (ADBC). Every record carries a unique id, and no client retries, so a record can reach the
server at most once. After the last kill the server is started once more and every record is read
back; each acknowledged record must be there exactly once, in the order it was acknowledged
within its shard (at the shard and sequence number it was acknowledged with), and nothing may
appear that was never sent. A pump copies the Kinesis stream into another one the whole time;
its output must equal what an uninterrupted run would write: every input record exactly once,
in the input's order per source shard. A delivery stream writes the Kinesis stream to a folder
the whole time; its objects must cover every record (at least once: duplicates are allowed
across a crash).

Usage: crash.py SLUICE_BINARY [ROUNDS]
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import boto3
from botocore.config import Config

SLUICE = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
DATA = tempfile.mkdtemp(prefix="sluice-crash-")
LAKE = tempfile.mkdtemp(prefix="sluice-crash-lake-")


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def start():
    server = subprocess.Popen(
        [SLUICE, "--data-dir", DATA, "serve", "--flight-port", "0", "--kinesis-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = server.stdout.readline()
    words = first.split()
    grpc = next((w for w in words if w.startswith("grpc://")), None)
    http = next((w for w in words if w.startswith("http://")), None)
    check(grpc and http, f"no addresses in {first!r}")
    return server, grpc, http


def kinesis_client(endpoint):
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))


acked = {}          # record id -> (shard id, sequence number) for the Kinesis stream
acked_sql = set()   # ids of rows whose INSERT returned
sent = set()        # every id any producer tried to send
lock = threading.Lock()


def kinesis_producer(endpoint, name, stop):
    client = kinesis_client(endpoint)
    n = 0
    while not stop.is_set():
        ids = [f"{name}-{n}-{i}" for i in range(50)]
        n += 1
        with lock:
            sent.update(ids)
        records = [{"PartitionKey": f"key-{random.randrange(20)}", "Data": json.dumps({"id": i}).encode()}
                   for i in ids]
        try:
            out = client.put_records(StreamName="crash", Records=records)
        except Exception:
            return  # the server is gone
        with lock:
            for record_id, result in zip(ids, out["Records"]):
                if "SequenceNumber" in result:
                    acked[record_id] = (result["ShardId"], result["SequenceNumber"])


def sql_producer(uri, name, stop):
    try:
        conn = flightsql.connect(uri)
        cursor = conn.cursor()
    except Exception:
        return
    n = 0
    while not stop.is_set():
        ids = [f"{name}-{n}-{i}" for i in range(10)]
        n += 1
        with lock:
            sent.update(ids)
        values = ", ".join(f"('{i}')" for i in ids)
        try:
            cursor.execute(f"INSERT INTO crash_sql VALUES {values}")
        except Exception:
            return
        with lock:
            acked_sql.update(ids)


for round in range(ROUNDS):
    server, grpc, http = start()
    if round == 0:
        kinesis_client(http).create_stream(StreamName="crash", ShardCount=4)
        with flightsql.connect(grpc) as conn, conn.cursor() as cursor:
            cursor.execute("CREATE STREAM crash_sql (id VARCHAR) WITH (shards = 2, partition_key = 'id')")
            cursor.execute("CREATE STREAM crash_copy WITH (shards = 1)")
            cursor.execute("CREATE PUMP copy AS INSERT INTO crash_copy SELECT STREAM _partition_key, _data FROM crash")
            cursor.execute(f"CREATE DELIVERY STREAM lake FROM crash WITH (destination = 'file://{LAKE}/', "
                           "format = 'json', buffer_interval_seconds = 0)")
    stop = threading.Event()
    threads = [threading.Thread(target=kinesis_producer, args=(http, f"r{round}k{t}", stop)) for t in range(3)]
    threads.append(threading.Thread(target=sql_producer, args=(grpc, f"r{round}s", stop)))
    for t in threads:
        t.start()
    time.sleep(random.uniform(0.8, 2.5))
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    stop.set()
    for t in threads:
        t.join()
    print(f"round {round}: killed with {len(acked)} Kinesis records and {len(acked_sql)} SQL rows acknowledged so far")

check(len(acked) > 0 and len(acked_sql) > 0, "the producers got nothing acknowledged")
server, grpc, http = start()
try:
    client = kinesis_client(http)
    found = {}  # id -> (shard, sequence number)
    per_shard = {}
    for shard in client.list_shards(StreamName="crash")["Shards"]:
        shard_id = shard["ShardId"]
        iterator = client.get_shard_iterator(StreamName="crash", ShardId=shard_id,
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        sequence = []
        while iterator:
            out = client.get_records(ShardIterator=iterator, Limit=10000)
            for record in out["Records"]:
                record_id = json.loads(record["Data"])["id"]
                check(record_id not in found, f"{record_id} is in the stream twice")
                found[record_id] = (shard_id, record["SequenceNumber"])
                sequence.append(record["SequenceNumber"])
            if not out["Records"]:
                break
            iterator = out.get("NextShardIterator")
        check(sequence == sorted(sequence), f"{shard_id}: sequence numbers out of order")
        per_shard[shard_id] = len(sequence)
    for record_id, where in acked.items():
        check(found.get(record_id) == where, f"acknowledged {record_id} at {where} but found {found.get(record_id)}")
    check(set(found) <= sent, f"records nobody sent: {sorted(set(found) - sent)[:5]}")

    with flightsql.connect(grpc) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT id FROM crash_sql")
        rows = [r[0] for r in cursor.fetchall()]
        # The pump, restarted with the server each time, catches up; FLUSH waits for it.
        cursor.execute("FLUSH")
        cursor.fetchall()
        cursor.execute("SELECT arrow_cast(_data, 'Utf8') FROM crash_copy ORDER BY _sequence_number")
        copied = [json.loads(r[0])["id"] for r in cursor.fetchall()]
    delivered = []
    for folder, _, files in os.walk(LAKE):
        for name in files:
            with open(os.path.join(folder, name)) as f:
                delivered.extend(json.loads(line)["id"] for line in f if line.strip())
    lost = set(found) - set(delivered)
    check(not lost, f"{len(lost)} records never delivered, e.g. {sorted(lost)[:3]}")
    check(set(delivered) <= set(found), "delivered records that are not in the stream")
    check(len(copied) == len(set(copied)), f"the pump wrote {len(copied) - len(set(copied))} records twice")
    check(set(copied) == set(found), f"the pump's output lacks {len(set(found) - set(copied))} input records")
    last = {}
    for record_id in copied:
        shard_id, sequence = found[record_id]
        check(sequence > last.get(shard_id, ""), f"the pump's output is out of order for {shard_id}")
        last[shard_id] = sequence
    check(len(rows) == len(set(rows)), "a SQL row is in the stream twice")
    missing = acked_sql - set(rows)
    check(not missing, f"acknowledged SQL rows lost: {sorted(missing)[:5]}")
    check(set(rows) <= sent, "SQL rows nobody sent")
    print(f"after {ROUNDS} kills: all {len(acked)} acknowledged Kinesis records ({len(found)} present, "
          f"{per_shard}) and all {len(acked_sql)} acknowledged SQL rows ({len(rows)} present) survived, once each; "
          f"the pump copied all {len(copied)} exactly once, in order; delivery wrote all of them "
          f"({len(delivered) - len(set(delivered))} duplicates)")
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
print("crash checks passed")

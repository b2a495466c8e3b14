"""`sluice agent` against `sluice serve`, as the Kinesis Agent is used: a log file written
while it is rotated by rename and by copytruncate, the agent killed with kill -9 mid-file and
started again; every line must arrive at least once (duplicates are counted and reported).
Apache combined-log lines go to a Kinesis stream and syslog lines to a Firehose delivery stream,
both turned into JSON by LOGTOJSON as the Agent's documentation shows.

Usage: agent.py SLUICE_BINARY KINESIS_ENDPOINT WORKDIR BUCKET_FOLDER
"""

import base64
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from aws_clients import check, client, shard_records, wait_for


SLUICE, ENDPOINT, WORK, BUCKET = sys.argv[1:5]
kinesis = client("kinesis", ENDPOINT)
firehose = client("firehose", ENDPOINT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]






LOGS = os.path.join(WORK, "logs")
WEB = os.path.join(WORK, "web")
SYS = os.path.join(WORK, "sys")
for d in (LOGS, WEB, SYS):
    os.makedirs(d, exist_ok=True)
APP = os.path.join(LOGS, "app.log")
METRICS = free_port()

config = {
    "cloudwatch.emitMetrics": False,
    "kinesis.endpoint": ENDPOINT,
    "firehose.endpoint": ENDPOINT,
    "awsAccessKeyId": "test",
    "awsSecretAccessKey": "test",
    "checkpointFile": os.path.join(WORK, "checkpoints.json"),
    "flows": [
        {
            "filePattern": os.path.join(LOGS, "app.log*"),
            "kinesisStream": "app-logs",
            "initialPosition": "START_OF_FILE",
            "maxBufferAgeMillis": 1000,
            "maxBufferSizeRecords": 200,
        },
        {
            "filePattern": os.path.join(WEB, "access_log"),
            "kinesisStream": "web",
            "initialPosition": "START_OF_FILE",
            "maxBufferAgeMillis": 1000,
            "partitionKeyOption": "DETERMINISTIC",
            "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}],
        },
        {
            "filePattern": os.path.join(SYS, "messages"),
            "deliveryStream": "syslog",
            "initialPosition": "START_OF_FILE",
            "maxBufferAgeMillis": 1000,
            "dataProcessingOptions": [
                {"optionName": "LOGTOJSON", "logFormat": "SYSLOG"},
                {"optionName": "ADDMETADATA", "metadata": {"host": "web-1"}},
            ],
        },
    ],
}
with open(os.path.join(WORK, "agent.json"), "w") as f:
    json.dump(config, f)

kinesis.create_stream(StreamName="app-logs", ShardCount=2)
kinesis.create_stream(StreamName="web", ShardCount=1)
firehose.create_delivery_stream(
    DeliveryStreamName="syslog",
    ExtendedS3DestinationConfiguration={
        "RoleARN": "arn:aws:iam::000000000000:role/r",
        "BucketARN": "arn:aws:s3:::lake",
        "Prefix": "syslog/",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0},
    },
)


def start_agent():
    return subprocess.Popen(
        [SLUICE, "agent", "-c", os.path.join(WORK, "agent.json"), "--progress-seconds", "1",
         "--metrics-addr", f"127.0.0.1:{METRICS}"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(WORK, "agent.err"), "a"),
    )


written = 0


def write(n, path=APP):
    global written
    with open(path, "a") as f:
        for _ in range(n):
            f.write(f"line-{written:06d} " + "x" * 40 + "\n")
            written += 1


def metric(name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics", timeout=5).read().decode()
    except OSError:
        return -1  # not listening yet
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in {text}")


agent = None
try:
    write(5000)
    agent = start_agent()
    wait_for("the agent's first records", lambda: metric("sluice_agent_records_sent_total") >= 1000)
    # Rotation by rename: app.log -> app.log.1, a new app.log.
    write(3000)
    os.rename(APP, APP + ".1")
    write(40000)
    # kill -9 while it is still sending the file.
    time.sleep(0.3)
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    write(3000)
    agent = start_agent()
    # Rotation by copytruncate: app.log copied to app.log.2, then truncated in place.
    wait_for("progress after the restart", lambda: metric("sluice_agent_records_sent_total") >= 1000)
    write(2000)
    with open(APP, "rb") as src, open(APP + ".2", "wb") as dst:
        dst.write(src.read())
    open(APP, "w").close()
    write(3000)

    # Web and syslog lines.
    with open(os.path.join(WEB, "access_log"), "w") as f:
        f.write('127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"\n')
        f.write('192.168.0.7 - - [07/Dec/2026:10:00:00 +0000] "POST /buy HTTP/1.1" 201 - "-" "curl/8.0"\n')
    with open(os.path.join(SYS, "messages"), "w") as f:
        f.write("Mar 12 12:00:08 server2 rcd[308]: Loaded 12 packages in 'ximian-red-carpet|351' (0.01878 seconds)\n")
        f.write("Dec  7 10:00:01 web-1 sshd: session opened\n")

    expected = {f"line-{i:06d}" for i in range(written)}


    def all_lines():
        got = [r.decode().split(" ")[0] for r in shard_records(kinesis, "app-logs")]
        return got if expected <= set(got) else None


    got = wait_for("every line", all_lines, timeout=120)
    duplicates = len(got) - len(set(got))
    check(set(got) == expected, f"unexpected lines: {sorted(set(got) - expected)[:5]}")
    print(f"app-logs: {len(expected)} lines written, {len(got)} records, {duplicates} duplicates")

    web = wait_for("web records", lambda: (r := shard_records(kinesis, "web")) and len(r) >= 2 and r)
    web = [json.loads(r) for r in web]
    check(
        web[0]
        == {
            "host": "127.0.0.1", "ident": None, "authuser": "frank",
            "datetime": "10/Oct/2000:13:55:36 -0700", "request": "GET /apache_pb.gif HTTP/1.0",
            "response": "200", "bytes": "2326", "referer": "http://www.example.com/start.html",
            "agent": "Mozilla/4.08 [en] (Win98; I ;Nav)",
        },
        web[0],
    )
    check(web[1]["bytes"] is None and web[1]["referer"] is None and web[1]["response"] == "201", web[1])


    def syslog_lines():
        out = []
        for path in glob.glob(os.path.join(BUCKET, "syslog", "**"), recursive=True):
            if os.path.isfile(path):
                out.extend(l for l in open(path).read().splitlines() if l)
        return out if len(out) >= 2 else None


    sys_lines = sorted((json.loads(l) for l in wait_for("syslog objects", syslog_lines)), key=lambda r: r["data"])
    check(sys_lines[0]["metadata"] == {"host": "web-1"}, sys_lines[0])
    first = json.loads(sys_lines[0]["data"]) if sys_lines[0]["data"].startswith("{") else None
    check(first is not None, sys_lines)
    converted = sorted(json.loads(l["data"])["program"] for l in sys_lines)
    check(converted == ["rcd", "sshd"], converted)
    check(metric("sluice_agent_bytes_behind") == 0, "caught up")
    agent.send_signal(signal.SIGINT)
    agent.wait(timeout=10)
    print(f"agent: ok ({duplicates} duplicates)")

finally:
    if agent is not None and agent.poll() is None:
        agent.kill()

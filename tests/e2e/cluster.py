"""Three `sluice serve --cluster` nodes driven with boto3, as a producer and a consumer would:
any node answers any request (requests for a shard another node owns are forwarded to it).

Usage:
  cluster.py write STATE_FILE FIRST N ENDPOINT...
      creates stream `orders` (6 shards) through the first endpoint if STATE_FILE does not
      exist yet, waits until every endpoint knows it, then puts N records (numbered from FIRST)
      round-robin through the endpoints, half with PutRecord and half with PutRecords; every
      acknowledged record (data, shard, sequence number) is appended to STATE_FILE. Records
      refused while a shard moves are retried until acknowledged (within 30 s each); the
      longest wait is printed as `longest wait: S s`.
  cluster.py probe STATE_FILE SINCE LABEL ENDPOINT...
      puts one record into each shard, retrying until acknowledged, and prints how long after
      SINCE (Unix time) every shard took writes.
  cluster.py check STATE_FILE ENDPOINT...
      reads every shard from TRIM_HORIZON through each endpoint and checks that every
      acknowledged record is there, at the sequence number it was acknowledged with, in
      increasing sequence order per shard, and only once unless its put had to be retried.
  cluster.py query STATE_FILE FLIGHT_URL...
      queries the stream with Flight SQL (ADBC) through each node and checks the same of the
      rows: every node reads every shard (the ones it does not own from the shared log, a
      moment after their owners logged them), so each waits up to 15 s for all of them.
  cluster.py recreate STATE_FILE ENDPOINT...
      deletes stream `orders` through the first endpoint, waits until no node knows it, creates
      it again and empties STATE_FILE: the new stream must hold none of the old one's records.
  cluster.py fanout STATE_FILE ENDPOINT...
      registers an enhanced fan-out consumer through the first endpoint and subscribes to each
      shard through another node (any node serves a subscription from its copy of the shard):
      every acknowledged record of the shard arrives, in order, within 15 s.
  cluster.py fresh STATE_FILE KINESIS_URL,FLIGHT_URL...
      read-your-writes across nodes: puts a record into each shard through one node and at
      once queries for it with Flight SQL through the next node, which must find it on the
      first try (a query takes in what other nodes acknowledged before it began).
  cluster.py pump KINESIS_URL FLIGHT_URL NODE_ID
      creates stream `copies` (2 shards) and, with Flight SQL through that node, the pump
      `copier` copying every record of `orders` into it (both streams shared, so the pump is
      the cluster's); waits until some node runs it and prints `pump runs on: NODE`.
  cluster.py pump-windows KINESIS_URL FLIGHT_URL NODE_ID
      as `pump`, and a windowed pump `counter` too: records per second of arrival into stream
      `per_second` (1 shard), keyed by the window's start.
  cluster.py windows KINESIS_URL FLIGHT_URL
      waits (up to 20 s) for the windowed pump to emit every window, then checks that each was
      emitted once, counting exactly the records it holds.
  cluster.py where FLIGHT_URL NODE_ID
      prints which node runs the pump (`pump runs on: NODE`), as SHOW PUMPS says through
      that node.
  cluster.py unpump FLIGHT_URL KINESIS_URL
      drops the pump through that node: no node lists it any more, and records put afterwards
      are not copied.
  cluster.py copies ENDPOINT...
      through each endpoint, waits (up to 30 s) until `copies` holds every record of `orders`
      exactly once: the pump neither repeats nor skips records, wherever it ran.
"""

import json
import sys
import time

from botocore.exceptions import ClientError, EndpointConnectionError

from aws_clients import check, client, shard_records, wait_for

STREAM = "orders"


def clients(endpoints):
    return [client("kinesis", e) for e in endpoints]


def retrying(call, what):
    """`call()` until it is acknowledged; the answer and how long it took (zero when the first
    attempt was acknowledged)."""
    started = time.time()
    failed = False
    while True:
        try:
            answer = call()
            return answer, (time.time() - started) if failed else 0.0
        except (ClientError, EndpointConnectionError) as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "connection")
            if code not in ("InternalFailure", "connection", "ServiceUnavailable"):
                raise
            if time.time() - started > 30:
                raise AssertionError(f"{what} not acknowledged within 30 s: {e}")
            failed = True
            time.sleep(0.1)


def write(state_file, first, count, endpoints):
    nodes = clients(endpoints)
    try:
        open(state_file).close()
    except FileNotFoundError:
        nodes[0].create_stream(StreamName=STREAM, ShardCount=6)
        open(state_file, "w").close()
    def knows_the_stream(node):
        try:
            summary = node.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]
            return summary["OpenShardCount"] == 6
        except ClientError:
            return False

    for node in nodes:
        wait_for("every node to know the stream", lambda: knows_the_stream(node))
    acked = []
    longest = 0.0
    n = first
    while n < first + count:
        node = nodes[n % len(nodes)]
        if n % 2 == 0:
            data = f"record-{n}".encode()
            answer, waited = retrying(
                lambda: node.put_record(StreamName=STREAM, PartitionKey=f"key-{n}", Data=data),
                f"record {n}",
            )
            acked.append({"data": data.decode(), "shard": answer["ShardId"], "seq": answer["SequenceNumber"], "retried": waited > 0})
            longest = max(longest, waited)
            n += 1
        else:
            batch = list(range(n, min(n + 10, first + count)))
            pending = {i: f"record-{i}".encode() for i in batch}
            retried = set()
            started = time.time()
            while pending:
                items = sorted(pending.items())
                try:
                    answer = node.put_records(
                        StreamName=STREAM,
                        Records=[{"PartitionKey": f"key-{i}", "Data": d} for i, d in items],
                    )
                except (ClientError, EndpointConnectionError):
                    answer = None
                if answer:
                    for (i, d), result in zip(items, answer["Records"]):
                        if "SequenceNumber" in result:
                            acked.append({"data": d.decode(), "shard": result["ShardId"], "seq": result["SequenceNumber"], "retried": i in retried})
                            del pending[i]
                        else:
                            check(result["ErrorCode"] == "InternalFailure", result)
                            retried.add(i)
                else:
                    retried.update(pending)
                if pending:
                    check(time.time() - started < 30, f"records {sorted(pending)} not acknowledged within 30 s")
                    time.sleep(0.1)
            if retried:
                longest = max(longest, time.time() - started)
            n = batch[-1] + 1
    with open(state_file, "a") as f:
        for a in acked:
            f.write(json.dumps(a) + "\n")
    print(f"acknowledged: {len(acked)}")
    print(f"longest wait: {longest:.2f} s")


def probe(state_file, since, label, endpoints):
    """One record into each of the 6 shards (by explicit hash key), each retried until
    acknowledged: prints how long after `since` (a Unix time) every shard took writes."""
    nodes = clients(endpoints)
    step = (1 << 128) // 6
    acked = []
    for shard in range(6):
        data = f"probe-{label}-{shard}".encode()
        node = nodes[shard % len(nodes)]
        answer, waited = retrying(
            lambda: node.put_record(
                StreamName=STREAM, PartitionKey="probe", ExplicitHashKey=str(step * shard), Data=data
            ),
            f"a probe of shard {shard}",
        )
        check(answer["ShardId"] == f"shardId-{shard:012d}", answer)
        acked.append({"data": data.decode(), "shard": answer["ShardId"], "seq": answer["SequenceNumber"], "retried": waited > 0})
    with open(state_file, "a") as f:
        for a in acked:
            f.write(json.dumps(a) + "\n")
    print(f"every shard took writes {time.time() - since:.2f} s after")


def read_all(kinesis, stream=STREAM):
    """Every record of the stream with its shard and sequence number, shard by shard."""
    got = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        # Asked of the shard's owner, which may have just been lost: retried while it moves.
        iterator, _ = retrying(
            lambda: kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"],
            "a shard iterator",
        )
        while iterator:
            page, _ = retrying(lambda: kinesis.get_records(ShardIterator=iterator, Limit=10000), "a read")
            got.extend(
                {"data": r["Data"].decode(), "shard": shard["ShardId"], "seq": r["SequenceNumber"], "key": r["PartitionKey"]}
                for r in page["Records"]
            )
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return got


def check_all(state_file, endpoints):
    """Every acknowledged record is read back at the sequence number it was acknowledged with,
    once; a record whose put was retried after an error may also be there a second time (its
    first attempt was written but not acknowledged: a producer's retry duplicates it, as on
    Kinesis). Per shard, sequence numbers increase."""
    acked = [json.loads(line) for line in open(state_file) if line.strip()]
    retried = {a["data"] for a in acked if a.get("retried")}
    for endpoint, kinesis in zip(endpoints, clients(endpoints)):
        got = [{k: r[k] for k in ("data", "shard", "seq")} for r in read_all(kinesis)]
        copies = {}
        for r in got:
            copies.setdefault(r["data"], []).append(r)
        duplicated = 0
        for data, found in copies.items():
            if len(found) > 1:
                check(data in retried, f"{endpoint}: {data} read {len(found)} times but was never retried: {found}")
                check(len(found) == 2, f"{endpoint}: {data} read {len(found)} times: {found}")
                duplicated += 1
        known = {a["data"] for a in acked}
        unknown = [r for r in got if r["data"] not in known]
        check(not unknown, f"{endpoint}: read records that were never put: {unknown[:3]}")
        for a in acked:
            mine = {k: a[k] for k in ("data", "shard", "seq")}
            check(a["data"] in copies, f"{endpoint}: acknowledged {mine} was not read back")
            check(mine in copies[a["data"]], f"{endpoint}: {mine} read back as {copies[a['data']]}")
        shards = {}
        for r in got:
            shards.setdefault(r["shard"], []).append(int(r["seq"]))
        for shard, seqs in shards.items():
            check(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{endpoint}: {shard} out of order")
        print(f"{endpoint}: {len(acked)} acknowledged records read back; {duplicated} retried records also written by an unacknowledged attempt")
    print("cluster: ok")


def query(state_file, urls):
    import adbc_driver_flightsql.dbapi as flight_sql

    acked = [json.loads(line) for line in open(state_file) if line.strip()]
    retried = {a["data"] for a in acked if a.get("retried")}
    sql = (
        f"SELECT arrow_cast(_data, 'Utf8') AS data, _shard_id AS shard, _sequence_number AS seq "
        f"FROM {STREAM} ORDER BY _shard_id, _sequence_number"
    )
    for url in urls:
        started = time.time()
        while True:
            with flight_sql.connect(url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    rows = cur.fetch_arrow_table().to_pylist()
            got = {(r["data"], r["shard"], r["seq"]) for r in rows}
            missing = [a for a in acked if (a["data"], a["shard"], a["seq"]) not in got]
            if not missing:
                break
            check(
                time.time() - started < 15,
                f"{url}: {len(missing)} of {len(acked)} acknowledged records not read by SQL within 15 s, e.g. {missing[:3]}",
            )
            time.sleep(0.2)
        copies = {}
        for r in rows:
            copies.setdefault(r["data"], []).append(r)
        for data, found in copies.items():
            check(len(found) == 1 or (data in retried and len(found) == 2), f"{url}: {data} read {len(found)} times: {found}")
        seen = set()
        for r in rows:
            check((r["shard"], r["seq"]) not in seen, f"{url}: {r['shard']} {r['seq']} read twice")
            seen.add((r["shard"], r["seq"]))
        print(f"{url}: SQL read all {len(acked)} acknowledged records after {time.time() - started:.2f} s")
        # Records of a shared stream are numbered by its shards' owners: SQL INSERT is refused,
        # saying how to write it instead, and leaves nothing behind.
        with flight_sql.connect(url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:
            with conn.cursor() as cur:
                try:
                    cur.execute(f"INSERT INTO {STREAM} (_partition_key, _data) VALUES ('k', 'inserted')")
                    refused = None
                except Exception as e:  # the driver's own error type
                    refused = str(e)
                check(refused and "shared by the cluster" in refused and "PutRecord" in refused, f"{url}: INSERT into a shared stream: {refused}")
                cur.execute(f"SELECT count(*) AS n FROM {STREAM} WHERE arrow_cast(_data, 'Utf8') = 'inserted'")
                check(cur.fetch_arrow_table().to_pylist() == [{"n": 0}], f"{url}: a refused INSERT left a record")
    print("query: ok")


def fanout(state_file, endpoints):
    nodes = clients(endpoints)
    acked = [json.loads(line) for line in open(state_file) if line.strip()]
    stream_arn = nodes[0].describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamARN"]
    name = f"fan-{time.time_ns()}"
    arn = nodes[0].register_stream_consumer(StreamARN=stream_arn, ConsumerName=name)["Consumer"]["ConsumerARN"]
    for node in nodes:
        # Every node knows the consumer (the cluster keeps it).
        wait_for(
            "the consumer to be ACTIVE on every node",
            lambda: node.describe_stream_consumer(ConsumerARN=arn)["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE",
        )
    for shard in range(6):
        shard_id = f"shardId-{shard:012d}"
        wanted = [(a["seq"], a["data"]) for a in acked if a["shard"] == shard_id]
        node = nodes[(shard + 1) % len(nodes)]
        response, _ = retrying(
            lambda: node.subscribe_to_shard(ConsumerARN=arn, ShardId=shard_id, StartingPosition={"Type": "TRIM_HORIZON"}),
            f"a subscription to {shard_id}",
        )
        got = []
        started = time.time()
        for event in response["EventStream"]:
            records = event["SubscribeToShardEvent"]["Records"]
            got.extend((r["SequenceNumber"], r["Data"].decode()) for r in records)
            if set(wanted) <= set(got) or time.time() - started > 15:
                break
        response["EventStream"].close()
        missing = sorted(set(wanted) - set(got))
        check(not missing, f"{shard_id} through another node: {len(missing)} acknowledged records not delivered, e.g. {missing[:3]}")
        seqs = [int(seq) for seq, _ in got]
        check(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{shard_id}: delivered out of order")
    nodes[0].deregister_stream_consumer(ConsumerARN=arn)
    print(f"fanout: ok ({len(acked)} acknowledged records delivered to a consumer through other nodes)")


def recreate(state_file, endpoints):
    nodes = clients(endpoints)
    nodes[0].delete_stream(StreamName=STREAM)

    def gone(node):
        try:
            node.describe_stream_summary(StreamName=STREAM)
            return False
        except ClientError as e:
            return e.response["Error"]["Code"] == "ResourceNotFoundException"

    for node in nodes:
        wait_for("every node to forget the stream", lambda: gone(node))
    nodes[0].create_stream(StreamName=STREAM, ShardCount=6)
    open(state_file, "w").close()
    print("recreated")


def fresh(state_file, pairs):
    import adbc_driver_flightsql.dbapi as flight_sql

    nodes = [(client("kinesis", k), f) for k, f in (p.split(",") for p in pairs)]
    conns = [flight_sql.connect(f, db_kwargs={"username": "test", "password": "test"}, autocommit=True) for _, f in nodes]
    step = (1 << 128) // 6
    acked = []
    try:
        for i in range(12):
            writer, _ = nodes[i % len(nodes)]
            reader = conns[(i + 1) % len(nodes)]
            data = f"fresh-{time.time_ns()}-{i}"
            answer, waited = retrying(
                lambda: writer.put_record(
                    StreamName=STREAM, PartitionKey="fresh", ExplicitHashKey=str(step * (i % 6)), Data=data.encode()
                ),
                f"fresh record {i}",
            )
            acked.append({"data": data, "shard": answer["ShardId"], "seq": answer["SequenceNumber"], "retried": waited > 0})
            with reader.cursor() as cur:
                cur.execute(
                    f"SELECT _shard_id AS shard, _sequence_number AS seq FROM {STREAM} "
                    f"WHERE arrow_cast(_data, 'Utf8') = '{data}'"
                )
                rows = cur.fetch_arrow_table().to_pylist()
            check(
                rows == [{"shard": answer["ShardId"], "seq": answer["SequenceNumber"]}],
                f"record {i} acknowledged at {answer['ShardId']} {answer['SequenceNumber']} but a query through the next node at once read {rows}",
            )
    finally:
        for conn in conns:
            conn.close()
    with open(state_file, "a") as f:
        for a in acked:
            f.write(json.dumps(a) + "\n")
    print(f"fresh: ok ({len(acked)} records read through another node straight after their put)")


PUMP_TARGET = "copies"


WINDOWS_TARGET = "per_second"


def pump(endpoint, flight_url, node_id, with_windows=False):
    import adbc_driver_flightsql.dbapi as flight_sql

    kinesis = client("kinesis", endpoint)
    kinesis.create_stream(StreamName=PUMP_TARGET, ShardCount=2)
    wait_for(
        "the pump's target stream",
        lambda: kinesis.describe_stream_summary(StreamName=PUMP_TARGET)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE",
    )
    with flight_sql.connect(flight_url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:
        with conn.cursor() as cur:
            # A cluster's pump runs on any node: reading a stream only this node has is refused.
            cur.execute("CREATE STREAM only_here (n BIGINT)")
            try:
                cur.execute(f"CREATE PUMP stray AS INSERT INTO {PUMP_TARGET} SELECT STREAM 'k' AS _partition_key, arrow_cast(CAST(n AS VARCHAR), 'Binary') AS _data FROM only_here")
                refused = None
            except Exception as e:  # the driver's own error type
                refused = str(e)
            check(refused and "which only this node has" in refused, f"a cluster pump reading a node's own stream: {refused}")
            cur.execute(f"CREATE PUMP copier AS INSERT INTO {PUMP_TARGET} SELECT STREAM _partition_key, _data FROM {STREAM}")
            cur.fetchall()
    if with_windows:
        # A windowed pump too: records per second of arrival, keyed by the window's start.
        kinesis.create_stream(StreamName=WINDOWS_TARGET, ShardCount=1)
        wait_for(
            "the windowed pump's target stream",
            lambda: kinesis.describe_stream_summary(StreamName=WINDOWS_TARGET)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE",
        )
        with flight_sql.connect(flight_url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE PUMP counter AS INSERT INTO {WINDOWS_TARGET} (_partition_key, _data, ROWTIME) "
                    f"SELECT STREAM CAST(window_start AS VARCHAR) AS _partition_key, "
                    f"arrow_cast(CAST(count(*) AS VARCHAR), 'Binary') AS _data, window_end AS ROWTIME "
                    f"FROM tumble({STREAM}, ROWTIME, INTERVAL '1' SECOND) GROUP BY window_start, window_end"
                )
                cur.fetchall()
    where(flight_url, node_id)


def where(flight_url, node_id):
    """Prints which node runs the pump, as SHOW PUMPS through `flight_url` (node `node_id`)
    says, waiting until one does."""
    import adbc_driver_flightsql.dbapi as flight_sql

    runs_on = []
    with flight_sql.connect(flight_url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:

        def running():
            with conn.cursor() as cur:
                cur.execute("SHOW PUMPS")
                rows = [r for r in cur.fetch_arrow_table().to_pylist() if r["name"] == "copier"]
            check(len(rows) == 1, f"SHOW PUMPS lists the pump once: {rows}")
            state = rows[0]["state"]
            check(not state.startswith("failed"), f"the pump failed: {state}")
            if state == "running":
                runs_on.append(node_id)
            elif state.startswith("running on "):
                runs_on.append(state.removeprefix("running on "))
            return bool(runs_on)

        wait_for("a node to run the pump", running, timeout=30)
    print(f"pump runs on: {runs_on[0]}")


def unpump(flight_url, endpoint):
    import adbc_driver_flightsql.dbapi as flight_sql

    with flight_sql.connect(flight_url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:
        with conn.cursor() as cur:
            try:
                cur.execute("STOP PUMP copier")
                refused = None
            except Exception as e:  # the driver's own error type
                refused = str(e)
            check(refused and "is the cluster's" in refused, f"STOP PUMP of the cluster's pump: {refused}")
            cur.execute("DROP PUMP copier")
            cur.fetchall()
            cur.execute("SHOW PUMPS")
            listed = [r["name"] for r in cur.fetch_arrow_table().to_pylist()]
            check("copier" not in listed, f"SHOW PUMPS after DROP PUMP: {listed}")
    kinesis = client("kinesis", endpoint)
    before = len(read_all(kinesis, PUMP_TARGET))
    retrying(lambda: kinesis.put_record(StreamName=STREAM, PartitionKey="after-drop", Data=b"after-drop"), "a put")
    time.sleep(2)
    after = read_all(kinesis, PUMP_TARGET)
    check(len(after) == before, f"a dropped pump copied {len(after) - before} more records")
    print("unpump: ok")


def windows(endpoint, flight_url):
    """The windowed pump emitted every window once, each counting exactly the records it holds:
    none lost or counted twice across the move, and none dropped as late though other nodes'
    records reach each node's copy a moment after they arrived (windows over ROWTIME of a
    shared stream close a few seconds after they end)."""
    import adbc_driver_flightsql.dbapi as flight_sql

    kinesis = client("kinesis", endpoint)
    with flight_sql.connect(flight_url, db_kwargs={"username": "test", "password": "test"}, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT CAST(window_start AS VARCHAR) AS w, count(*) AS n "
                f"FROM tumble({STREAM}, ROWTIME, INTERVAL '1' SECOND) GROUP BY window_start"
            )
            held = {r["w"]: r["n"] for r in cur.fetch_arrow_table().to_pylist()}
    started = time.time()
    while True:
        emitted = read_all(kinesis, WINDOWS_TARGET)
        keys = [r["key"] for r in emitted]
        if set(held) <= set(keys) or time.time() - started > 20:
            break
        time.sleep(0.5)
    got = {r["key"]: int(r["data"]) for r in emitted}
    detail = f"emitted {[(r['key'], r['data']) for r in emitted]}; held {held}"
    check(len(keys) == len(set(keys)), f"windows emitted more than once: {detail}")
    check(got == held, f"the windows' counts are not the records they hold: {detail}")
    print(f"windows: ok ({len(keys)} windows emitted once each, counting all {sum(held.values())} records)")


def copies(endpoints):
    from collections import Counter

    for endpoint, kinesis in zip(endpoints, clients(endpoints)):
        started = time.time()
        while True:
            source = Counter(r["data"] for r in read_all(kinesis))
            copied = Counter(r["data"] for r in read_all(kinesis, PUMP_TARGET))
            if copied == source:
                break
            repeated = {d: n for d, n in copied.items() if n > source.get(d, 0)}
            check(not repeated, f"{endpoint}: the pump wrote records more often than they were put: {list(repeated.items())[:3]}")
            missing = source - copied
            check(
                time.time() - started < 30,
                f"{endpoint}: {sum(missing.values())} of {sum(source.values())} records not copied within 30 s, e.g. {list(missing)[:3]}",
            )
            time.sleep(0.3)
        print(f"{endpoint}: {sum(copied.values())} records copied once each")
    print("copies: ok")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    elif sys.argv[1] == "probe":
        probe(sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5:])
    elif sys.argv[1] == "fanout":
        fanout(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "recreate":
        recreate(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "fresh":
        fresh(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "pump":
        pump(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "where":
        where(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "pump-windows":
        pump(sys.argv[2], sys.argv[3], sys.argv[4], with_windows=True)
    elif sys.argv[1] == "windows":
        windows(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "unpump":
        unpump(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "copies":
        copies(sys.argv[2:])
    elif sys.argv[1] == "query":
        query(sys.argv[2], sys.argv[3:])
    else:
        check_all(sys.argv[2], sys.argv[3:])

"""Sluice over Arrow Flight SQL, as users' own clients see it: ADBC's Flight SQL driver and
plain pyarrow.flight against a running `sluice serve`.

Usage: flight_sql.py URL TOKEN   (the server must require TOKEN as a bearer token)
"""

import json
import sys
import threading
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight

URL, TOKEN = sys.argv[1], sys.argv[2]
AUTH = {adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {TOKEN}"}


def connect():
    return flight_sql.connect(URL, db_kwargs=AUTH)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def ddl_inserts_and_queries():
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE STREAM clicks (user_id VARCHAR, url VARCHAR, n BIGINT) "
            "WITH (shards = 2, format = 'json', partition_key = 'user_id')"
        )
        cur.execute(
            "INSERT INTO clicks VALUES ('u1', '/a', 1), ('u2', '/b', 2), ('u1', '/c', 3)"
        )
        cur.execute("SELECT user_id, sum(n) AS total FROM clicks GROUP BY user_id ORDER BY user_id")
        table = cur.fetch_arrow_table()
        check(table.to_pylist() == [{"user_id": "u1", "total": 4}, {"user_id": "u2", "total": 2}], table)
        # Plain strings, not string views: the Flight SQL JDBC driver refuses Utf8View.
        check(table.schema.field("user_id").type == pa.string(), table.schema)
        cur.execute("SHOW STREAMS")
        names = cur.fetch_arrow_table().column("name").to_pylist()
        check("clicks" in names, names)
        # System columns come along with the stream's own.
        cur.execute("SELECT _shard_id, _sequence_number, _partition_key FROM clicks WHERE n = 2")
        row = cur.fetch_arrow_table().to_pylist()[0]
        check(row["_shard_id"].startswith("shardId-") and row["_partition_key"] == "u2", row)


def metadata():
    with connect() as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        catalogs = {c["catalog_name"]: c for c in objects}
        check("sluice" in catalogs, list(catalogs))
        public = [s for s in catalogs["sluice"]["catalog_db_schemas"] if s["db_schema_name"] == "public"][0]
        tables = {t["table_name"]: t for t in public["db_schema_tables"]}
        check("clicks" in tables, list(tables))
        columns = [c["column_name"] for c in tables["clicks"]["table_columns"]]
        check(columns[:3] == ["user_id", "url", "n"] and "_sequence_number" in columns, columns)
        schema = conn.adbc_get_table_schema("clicks", catalog_filter="sluice", db_schema_filter="public")
        check(schema.field("n").type == pa.int64(), schema)
        check(schema.field("url").type == pa.string(), schema)
        check("TABLE" in conn.adbc_get_table_types(), conn.adbc_get_table_types())
        info = conn.adbc_get_info()
        check(info["vendor_name"] == "Sluice", info)


def prepared_statements():
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT url FROM clicks WHERE user_id = ? AND n > ? ORDER BY url", parameters=("u1", 1))
        check(cur.fetch_arrow_table().column("url").to_pylist() == ["/c"], "bound parameters")
        # The same statement again with other values reuses the prepared statement.
        cur.execute("SELECT url FROM clicks WHERE user_id = ? AND n > ? ORDER BY url", parameters=("u1", 0))
        check(cur.fetch_arrow_table().column("url").to_pylist() == ["/a", "/c"], "rebound parameters")
        cur.executemany("INSERT INTO clicks VALUES (?, ?, ?)", [("u3", "/d", 10), ("u4", "/e", 20)])
        cur.execute("SELECT count(*) AS c FROM clicks WHERE n >= 10")
        check(cur.fetch_arrow_table().column("c").to_pylist() == [2], "executemany inserted two rows")


def bulk_ingest():
    with connect() as conn, conn.cursor() as cur:
        data = pa.table({"user_id": ["u9", "u8"], "url": ["/x", "/y"], "n": [100, 200]})
        written = cur.adbc_ingest("clicks", data, mode="append")
        check(written in (2, -1), written)
        created = pa.table({"sensor": ["s1", "s2", "s1"], "reading": [1.5, 2.5, 3.5]})
        cur.adbc_ingest("readings", created, mode="create")
        cur.execute("SELECT sensor, sum(reading) AS r FROM readings GROUP BY sensor ORDER BY sensor")
        check(cur.fetch_arrow_table().to_pylist() == [{"sensor": "s1", "r": 5.0}, {"sensor": "s2", "r": 2.5}], "ingest created a stream")


def errors():
    with connect() as conn, conn.cursor() as cur:
        try:
            cur.execute("SELEC 1")
            raise AssertionError("bad SQL accepted")
        except adbc_driver_manager.ProgrammingError as e:
            check("syntax error at line 1, column 1" in str(e) and "INVALID_ARGUMENT" in str(e).upper().replace(" ", "_"), str(e))
        try:
            cur.execute("SELECT * FROM no_such_stream")
            raise AssertionError("unknown stream accepted")
        except adbc_driver_manager.Error as e:
            check("no_such_stream" in str(e) and "does not exist" in str(e), str(e))
    # A wrong token is refused.
    wrong = {adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer wrong"}
    try:
        with flight_sql.connect(URL, db_kwargs=wrong) as conn, conn.cursor() as cur:
            cur.execute("SHOW STREAMS")
            cur.fetch_arrow_table()
        raise AssertionError("a wrong token was accepted")
    except adbc_driver_manager.Error as e:
        check("UNAUTHENTICATED" in str(e).upper() or "token" in str(e), str(e))


class Bearer(flight.ClientMiddlewareFactory):
    def start_call(self, info):
        return BearerMiddleware()


class BearerMiddleware(flight.ClientMiddleware):
    def sending_headers(self):
        return {"authorization": f"Bearer {TOKEN}"}


def plain_flight():
    client = flight.FlightClient(URL, middleware=[Bearer()])
    # do_put: Arrow batches straight into the stream, routed by its partition key column.
    batch = pa.record_batch({"user_id": ["p1", "p2", "p3"], "url": ["/p", "/q", "/r"], "n": [7, 8, 9]})
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("clicks"), batch.schema)
    writer.write_batch(batch)
    writer.done_writing()
    ack = reader.read()
    check(ack is not None and json.loads(ack.to_pybytes())["records"] == 3, ack)
    writer.close()
    query = json.dumps({"query": "SELECT count(*) AS c FROM clicks WHERE user_id LIKE 'p%'"}).encode()
    counted = client.do_get(flight.Ticket(query)).read_all()
    check(counted.column("c").to_pylist() == [3], counted)

    # A subscription from now on receives rows inserted after it started.
    ticket = flight.Ticket(json.dumps({"stream": "clicks", "from": "latest"}).encode())
    received = []
    ready = threading.Event()

    def subscribe():
        stream = client.do_get(ticket)
        ready.set()
        for chunk in stream:
            received.extend(chunk.data.column(chunk.data.schema.get_field_index("url")).to_pylist())
            if len(received) >= 2:
                break
        stream.cancel()

    thread = threading.Thread(target=subscribe, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)
    with connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO clicks VALUES ('late1', '/new1', 1), ('late2', '/new2', 2)")
    thread.join(20)
    check(sorted(received) == ["/new1", "/new2"], received)

    # A continuous query over Flight: rows as they arrive.
    ticket = flight.Ticket(json.dumps({"query": "SELECT STREAM url FROM clicks WHERE n > 1000"}).encode())
    got = []

    def follow():
        stream = client.do_get(ticket)
        for chunk in stream:
            got.extend(chunk.data.column(0).to_pylist())
            if got:
                break
        stream.cancel()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.5)
    with connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO clicks VALUES ('big', '/big', 5000)")
    thread.join(20)
    check(got == ["/big"], got)

    # A bad ticket says what a ticket should be.
    try:
        client.do_get(flight.Ticket(b'{"strem": "clicks"}')).read_all()
        raise AssertionError("bad ticket accepted")
    except (flight.FlightError, pa.ArrowException) as e:
        check("ticket is not valid" in str(e) and "strem" in str(e), str(e))


for test in [ddl_inserts_and_queries, metadata, prepared_statements, bulk_ingest, errors, plain_flight]:
    test()
    print(f"ok {test.__name__}")
print("all Flight SQL checks passed")

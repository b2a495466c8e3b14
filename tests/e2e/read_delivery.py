"""Reads back what Sluice's delivery streams wrote, with pyarrow and DuckDB, and compares it
row for row with what went in.

Usage: python3 read_delivery.py <lake folder> <expected rows as JSON>

<lake folder> holds one sub-folder per delivery stream, named <format>-<compression>. Every
object under it is read with pyarrow (Parquet, JSON lines, CSV, decompressing gzip and zstd);
Parquet and gzip JSON are read again with DuckDB. Exits non-zero on the first difference.
"""

import json
import pathlib
import sys

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq


def canonical(rows):
    out = []
    for r in rows:
        ts = r["ts"]
        if ts is not None and not isinstance(ts, str):
            ts = ts.isoformat()
        if isinstance(ts, str):
            ts = ts.replace(" ", "T")[:19]
        price = r["price"]
        out.append(
            {
                "id": None if r["id"] is None else int(r["id"]),
                "name": r["name"],
                "price": None if price is None else float(price),
                "ok": None if r["ok"] is None else bool(r["ok"]),
                "ts": ts,
            }
        )
    return sorted(out, key=lambda r: r["id"])


def read_with_pyarrow(path: pathlib.Path, fmt: str, compression: str):
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    codec = {"none": None, "gzip": "gzip", "zstd": "zstd"}[compression]
    stream = pa.input_stream(str(path), compression=codec)
    if fmt == "json":
        return pajson.read_json(stream).to_pylist()
    convert = pacsv.ConvertOptions(
        column_types={"id": pa.int64(), "name": pa.string(), "price": pa.float64(), "ok": pa.bool_(), "ts": pa.string()},
        strings_can_be_null=True,
    )
    return pacsv.read_csv(stream, convert_options=convert).to_pylist()


def main():
    lake = pathlib.Path(sys.argv[1])
    expected = canonical(json.loads(pathlib.Path(sys.argv[2]).read_text()))
    checked = 0
    for folder in sorted(p for p in lake.iterdir() if p.is_dir()):
        fmt, compression = folder.name.split("-")
        objects = sorted(p for p in folder.rglob("*") if p.is_file())
        if not objects:
            sys.exit(f"{folder.name}: no objects written")
        rows = []
        for obj in objects:
            rows.extend(read_with_pyarrow(obj, fmt, compression))
        got = canonical(rows)
        if got != expected:
            sys.exit(f"{folder.name}: pyarrow read\n{got}\nexpected\n{expected}")
        if fmt == "parquet":
            cursor = duckdb.connect().execute(f"SELECT * FROM read_parquet('{folder}/**/*.parquet')")
            columns = [d[0] for d in cursor.description]
            got = canonical([dict(zip(columns, row)) for row in cursor.fetchall()])
            if got != expected:
                sys.exit(f"{folder.name}: duckdb read\n{got}\nexpected\n{expected}")
        if fmt == "json" and compression == "gzip":
            con = duckdb.connect()
            table = con.execute(
                f"SELECT id, name, price, ok, ts FROM read_json_auto('{folder}/**/*.json.gz')"
            ).fetchall()
            got = canonical(
                [dict(zip(["id", "name", "price", "ok", "ts"], row)) for row in table]
            )
            if got != expected:
                sys.exit(f"{folder.name}: duckdb read\n{got}\nexpected\n{expected}")
        checked += 1
        print(f"ok {folder.name}: {len(objects)} object(s), {len(rows)} rows")
    if checked == 0:
        sys.exit("no delivery folders found")


if __name__ == "__main__":
    main()

-- A Kinesis Data Analytics SQL application, as written for KDA: the in-application source
-- stream with the upper-case columns schema discovery gives, and a pump with a sliding window
-- (KDA's "sliding window" example). Run it with `sluice -f examples/kda_ticker.sql`, or against a
-- server with `sluice --connect grpc://127.0.0.1:50051 -f examples/kda_ticker.sql`, then put
-- JSON records ({"ticker_symbol": "AMZN", "price": 131.25, ...}) into SOURCE_SQL_STREAM_001
-- over the Kinesis API.

CREATE OR REPLACE STREAM "SOURCE_SQL_STREAM_001" (
    "TICKER_SYMBOL" VARCHAR(4),
    "SECTOR"        VARCHAR(16),
    "CHANGE"        REAL,
    "PRICE"         REAL)
  WITH (shards = 2, partition_key = 'TICKER_SYMBOL');

CREATE OR REPLACE STREAM "DESTINATION_SQL_STREAM" (
    ticker_symbol VARCHAR(4),
    price         REAL,
    avg_price     DOUBLE);

CREATE OR REPLACE PUMP "STREAM_PUMP" AS INSERT INTO "DESTINATION_SQL_STREAM"
  SELECT STREAM ticker_symbol, price, AVG(price) OVER W1 AS avg_price
  FROM "SOURCE_SQL_STREAM_001"
  -- Only the tickers of the technology sector.
  WHERE sector SIMILAR TO '%TECH%'
  WINDOW W1 AS (PARTITION BY ticker_symbol RANGE INTERVAL '1' MINUTE PRECEDING);

-- A first Sluice script: a stream, a few records, a bounded query, a pump and a window.
-- Run it with:  cargo run --bin sluice -- -f examples/ticker.sql

CREATE STREAM IF NOT EXISTS ticker (
  symbol VARCHAR, sector VARCHAR, change DOUBLE, price DOUBLE, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (shards = 4, partition_key = 'symbol', retention = '24 hours');

INSERT INTO ticker VALUES
  ('AMZN', 'TECHNOLOGY', 1.5, 130.2, '2026-01-01 10:00:01'),
  ('MSFT', 'TECHNOLOGY', -0.5, 410.5, '2026-01-01 10:00:02'),
  ('AMZN', 'TECHNOLOGY', 0.7, 130.9, '2026-01-01 10:00:31'),
  ('XOM', 'ENERGY', -1.1, 112.3, '2026-01-01 10:01:05'),
  ('MSFT', 'TECHNOLOGY', 2.0, 412.5, '2026-01-01 10:02:10');

-- Bounded: the records retained now.
SELECT symbol, count(*) AS trades, avg(price) AS avg_price FROM ticker GROUP BY symbol ORDER BY symbol;

-- Continuous: a pump keeps a per-minute summary up to date in its own stream.
CREATE STREAM IF NOT EXISTS ticker_minutes (
  window_start TIMESTAMP, sector VARCHAR, trades BIGINT, avg_price DOUBLE
) WITH (shards = 1);

CREATE OR REPLACE PUMP minutes AS
  INSERT INTO ticker_minutes
  SELECT STREAM window_start, sector, count(*), avg(price)
  FROM tumble(ticker, ts, INTERVAL '1' MINUTE)
  GROUP BY window_start, sector;

-- FLUSH waits until the pump has taken in everything inserted before it. Windows come out once
-- the watermark (the newest ts minus 5 seconds) passes their end: 10:00 and 10:01 are closed,
-- 10:02 is still open.
FLUSH;
SELECT window_start, sector, trades, avg_price FROM ticker_minutes ORDER BY window_start, sector;

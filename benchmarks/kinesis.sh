#!/usr/bin/env bash
# The Kinesis API benchmark: Sluice against kinesalite (npm), the same load in the same run.
#
#   benchmarks/kinesis.sh [--seconds S] [--clients C]
#
# Installs kinesalite into benchmarks/.emulator (once), builds `sluice` and `sluice-bench` with
# the release-nonlto profile, starts kinesalite on a free loopback port and runs the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
emulator_dir=$root/benchmarks/.emulator
if [ ! -x "$emulator_dir/node_modules/.bin/kinesalite" ]; then
  mkdir -p "$emulator_dir"
  (cd "$emulator_dir" && npm install --no-audit --no-fund --silent kinesalite@3)
fi
cargo build --profile release-nonlto -p sluice-repl -p sluice-benchmarks
target=${CARGO_TARGET_DIR:-$root/target}/release-nonlto
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# kinesalite's command line listens on every interface; its module can be told loopback only.
node -e "require('$emulator_dir/node_modules/kinesalite')({createStreamMs: 0, deleteStreamMs: 0,
  updateStreamMs: 0, shardLimit: 1000}).listen($port, '127.0.0.1')" >/dev/null 2>&1 &
emulator=$!
trap 'kill $emulator 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then break; fi
  sleep 0.1
done
"$target/sluice-bench" kinesis --emulator "http://127.0.0.1:$port" "$@"

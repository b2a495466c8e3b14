#!/usr/bin/env bash
# The Kinesis API benchmark: Sluice against ferrokinesis (crates.io, the fastest emulator we know)
# and kinesalite (npm, the most used), the same load in the same run.
#
#   benchmarks/kinesis.sh [--seconds S] [--clients C]
#
# Builds ferrokinesis (benchmarks/ferrokinesis-loopback: its library served on 127.0.0.1) and
# installs kinesalite into benchmarks/.emulator (once), builds `sluice` and `sluice-bench` with
# the release-nonlto profile, starts both emulators on free loopback ports and runs the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
emulator_dir=$root/benchmarks/.emulator
if [ ! -x "$emulator_dir/node_modules/.bin/kinesalite" ]; then
  mkdir -p "$emulator_dir"
  (cd "$emulator_dir" && npm install --no-audit --no-fund --silent kinesalite@3)
fi
cargo build --release --manifest-path benchmarks/ferrokinesis-loopback/Cargo.toml \
  --target-dir "$emulator_dir/ferro-target"
cargo build --profile release-nonlto -p sluice-repl -p sluice-benchmarks
target=${CARGO_TARGET_DIR:-$root/target}/release-nonlto
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# kinesalite's command line listens on every interface; its module can be told loopback only.
node -e "require('$emulator_dir/node_modules/kinesalite')({createStreamMs: 0, deleteStreamMs: 0,
  updateStreamMs: 0, shardLimit: 1000}).listen($port, '127.0.0.1')" >/dev/null 2>&1 &
kinesalite=$!
ferro_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$emulator_dir/ferro-target/release/ferrokinesis-loopback" "$ferro_port" >/dev/null 2>&1 &
ferrokinesis=$!
trap 'kill $kinesalite $ferrokinesis 2>/dev/null || true' EXIT
for p in "$port" "$ferro_port"; do
  for _ in $(seq 50); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then break; fi
    sleep 0.1
  done
done
"$target/sluice-bench" kinesis --emulator "ferrokinesis=http://127.0.0.1:$ferro_port" \
  --emulator "kinesalite=http://127.0.0.1:$port" "$@"

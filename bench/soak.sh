#!/usr/bin/env bash
# A soak: poolgate (release, the embedded default with SQLite in its data directory, the
# default limits) under a steady mixed load for MINUTES (examples/soak.rs: sign-ins with
# failures, pools and task round trips, desktops with their events, v2 REST logins and
# listings, status sockets, sockets opening and closing), sampled every 10 s.
#
# Usage: bench/soak.sh [MINUTES]   (default 30)
# Writes bench/results-soak/{soak.csv,summary.json,server.log} and docs/soak.png; prints the
# summary: each figure at minute 5 and at the end, and whether the end is within 5 % of it.
set -euo pipefail
minutes=${1:-30}
cd "$(dirname "$0")/.."
out=bench/results-soak
rm -rf "$out" && mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[ -f "$font" ] || { s=""; [ "$(id -u)" -ne 0 ] && s=sudo; $s apt-get install -y -qq fonts-dejavu-core >/dev/null; }
cargo build --release --quiet --bin poolgate --example soak
(cd bench/plot && cargo build --release --quiet)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data="$out/data"
# The embedded demo with one change: ended tasks are kept 2 minutes instead of 7 days, so the
# store reaches the size it keeps within the warm-up (with 7 days it grows by each ended task
# for a week: the desktops of this load end ~14 tasks a minute).
{ echo "task_retention = 120"; grep -v '^\(listen\|data_dir\) *=' examples/demo.toml; } >"$out/poolgate.toml"
./target/release/poolgate serve --config "$out/poolgate.toml" --listen "127.0.0.1:$port" --data-dir "$data" >"$out/server.log" 2>&1 &
pg=$!
trap 'kill $pg 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

./target/release/examples/soak --url "ws://127.0.0.1:$port/" --minutes "$minutes" \
  --server-pid "$pg" --data-dir "$data" --csv "$out/soak.csv" --json "$out/summary.json"
./bench/plot/target/release/poolgate-bench-plot soak "$out/soak.csv" docs/soak.png "$font"
echo "plot: docs/soak.png; samples: $out/soak.csv"

#!/usr/bin/env bash
# Step 1 with and without a warm set (docs/warm-sets.md): the release build on the demo dataset,
# its simulated provisioner set to a realistic step 1 (PENDING 1 s, then RUNNING 4 s, always
# completing), pool-win-1 keeping 2 warm machines and pool-win-2 none, state in SQLite; then
# examples/warm_sets.rs times pool_request to COMPLETED in each pool, interleaved, ROUNDS times.
# Prints a table.
#
# Usage: bench/warm.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-30}
cargo build --release --quiet --bin poolgate --example warm_sets
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
source bench/lib.sh
bin=${CARGO_TARGET_DIR:-target}/release

python3 - "$dir/poolgate.toml" <<'PY'
import sys
text = open("examples/demo.toml").read()
sim = "pending = 1\nrunning = [1, 4]\nexpand = { completed = 0.8, cancelled = 0.2 }"
pool = 'name = "pool-win-1"\n'
if sim not in text or pool not in text:
    sys.exit("examples/demo.toml changed: update bench/warm.sh")
text = text.replace(sim, "pending = 1\nrunning = [4, 4]\nexpand = { completed = 1 }")
open(sys.argv[1], "w").write(text.replace(pool, pool + "warm = 2\n"))
PY
port=$(free_port)
RUST_LOG=warn "$bin/poolgate" serve --config "$dir/poolgate.toml" --data-dir "$dir/data" \
  --listen "127.0.0.1:$port" 2>"$dir/log" &
pids+=($!)
wait_port "$port"
# The set fills in the background (one step 1's time): wait for it, at most 30 s.
for _ in $(seq 300); do
  curl -s "http://127.0.0.1:$port/metrics" | grep -q '^poolgate_warm_machines{pool="pool-win-1"} 2$' && break
  sleep 0.1
done
"$bin/examples/warm_sets" "ws://127.0.0.1:$port/" "$rounds"

#!/usr/bin/env bash
# N = 1, 2, 4 poolgate instances on this machine sharing one Redis (Debian: redis-server), or
# with --cluster a three-master Redis Cluster on loopback, the demo dataset, clients spread
# round-robin over the instances by the load generator (examples/loadgen.rs). For each N:
#   idle     SOCKETS signed-in idle sockets spread over the instances: RSS per socket on each;
#   events   1 000 sockets of one user on the last instance, the tasks made on the first: the
#            delay from a status change to its delivery, across instances (p50/p99);
#   rpc      `task` lookups on every instance at once (32 connections each): requests/s in all;
#   bus      bus messages each instance received over the whole run (the events phase's user
#            is heard only where it has sockets: the first and last instance).
# Bus messages per instance as instances grow, users spread: bench/routing.sh. Prints a table.
#
# Usage: bench/scale.sh [--cluster] [SOCKETS]
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=""
if [ "${1:-}" = "--cluster" ]; then cluster=1; shift; fi
sockets=${1:-8000}
command -v redis-server >/dev/null || { echo "needs redis-server: apt-get install redis-server" >&2; exit 1; }
cargo build --release --quiet --bin poolgate --example loadgen
bin=target/release/poolgate
loadgen=target/release/examples/loadgen
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
source bench/lib.sh

if [ -n "$cluster" ]; then
  command -v redis-cli >/dev/null || { echo "needs redis-cli: apt-get install redis-server" >&2; exit 1; }
  start_cluster 3
  state="$cluster_url"
else
  start_redis
  state="redis://127.0.0.1:$rport"
fi
echo "state: $state"
export POOLGATE_JWT_SECRET
POOLGATE_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')

echo "| instances | idle sockets | RSS per idle socket, each instance (KiB) | event delay across instances p50 / p99 (ms) | task lookups/s, all instances | bus messages received, each instance |"
echo "|---|---|---|---|---|---|"
for n in 1 2 4; do
  { printf 'state = "%s"\nstate_prefix = "scale%s-%s"\nlockout_address_attempts = 100000\nmax_sessions_per_user = 1000\n' "$state" "$n" "$RANDOM"
    grep -v '^\(listen\|data_dir\) *=' examples/demo.toml; } > "$dir/poolgate-$n.toml"
  urls=(); inst=(); ports=()
  for k in $(seq 1 "$n"); do
    port=$(free_port)
    "$bin" serve --config "$dir/poolgate-$n.toml" --data-dir "$dir/data-$n-$k" \
      --listen "127.0.0.1:$port" >"$dir/server-$n-$k.log" 2>&1 &
    inst+=($!); pids+=($!)
    urls+=("ws://127.0.0.1:$port/")
    ports+=("$port")
    wait_port "$port"
  done

  # Idle sockets, spread evenly: each instance's share held at once, RSS read per instance.
  per=$((sockets / n))
  for k in $(seq 0 $((n - 1))); do
    "$loadgen" idle --url "${urls[$k]}" -c "$per" -d 5 --server-pid "${inst[$k]}" \
      --json "$dir/idle-$n-$k.json" >/dev/null 2>&1 &
  done
  wait $(jobs -p | tail -n "$n") 2>/dev/null || true
  rss=()
  for k in $(seq 0 $((n - 1))); do
    rss+=("$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['bytes_per_socket']/1024:.1f}\")" "$dir/idle-$n-$k.json")")
  done

  # Events across instances: sockets on the last instance, tasks made on the first.
  "$loadgen" fanout --url "${urls[$((n - 1))]}" --driver-url "${urls[0]}" -c 1000 -d 10 \
    --json "$dir/fanout-$n.json" >/dev/null 2>&1
  p50=$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['latency_us']['p50']/1000:.1f}\")" "$dir/fanout-$n.json")
  p99=$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['latency_us']['p99']/1000:.1f}\")" "$dir/fanout-$n.json")

  # RPC throughput: every instance loaded at once.
  for k in $(seq 0 $((n - 1))); do
    "$loadgen" rpc --url "${urls[$k]}" -c 32 -d 5 --json "$dir/rpc-$n-$k.json" >/dev/null 2>&1 &
  done
  wait $(jobs -p | tail -n "$n") 2>/dev/null || true
  total=$(python3 -c "import json,sys; print(round(sum(json.load(open(f))['per_second'] for f in sys.argv[1:])))" "$dir"/rpc-"$n"-*.json)

  bus=()
  for p in "${ports[@]}"; do
    bus+=("$(curl -s "http://127.0.0.1:$p/metrics" | awk '/^poolgate_bus_messages_received_total /{print $2}')")
  done

  kill "${inst[@]}" 2>/dev/null || true
  wait "${inst[@]}" 2>/dev/null || true
  echo "| $n | $sockets | ${rss[*]} | $p50 / $p99 | $total | ${bus[*]} |"
done

#!/usr/bin/env bash
# Bus messages an instance receives, with per-user routing, against what every instance would
# receive on one global channel (all the bus carries: the PUBLISH and SPUBLISH calls Redis
# counted, scripts' included): N = 1, 2, 4 release instances on one Redis (Debian:
# redis-server), or with --cluster on a three-master Redis Cluster, USERS users spread
# round-robin over them, each running step 1 and step 2 once (examples/bus_routing.rs).
# Prints a table.
#
# Usage: bench/routing.sh [--cluster] [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=""
if [ "${1:-}" = "--cluster" ]; then cluster=1; shift; fi
users=${1:-200}
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || { echo "needs redis-server and redis-cli: apt-get install redis-server" >&2; exit 1; }
cargo build --release --quiet --bin poolgate --example bus_routing
bin=target/release/poolgate
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
source bench/lib.sh

if [ -n "$cluster" ]; then
  start_cluster 3
  state="$cluster_url"
  nodes=("${cluster_ports[@]}")
else
  start_redis
  state="redis://127.0.0.1:$rport"
  nodes=("$rport")
fi

# USERS users with one password (one hash: hashing is not what is measured), one pool for all.
password=bench-password
hash=$(printf '%s\n' "$password" | "$bin" hash-password)
pool=6f1c0c2e-4b57-4d59-9a53-8d3a2f2b7a10
secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
{
  printf '[provisioners.simulated]\nkind = "simulated"\npending = 0.05\nrunning = [0.1, 0.3]\nexpand = { completed = 1.0 }\nconnect = { completed = 1.0 }\n'
  names=""
  for i in $(seq 0 $((users - 1))); do
    name=$(printf 'bench-%03d' "$i")
    printf '[[users]]\nusername = "%s"\nid = "%s"\npassword_hash = "%s"\n' \
      "$name" "$(python3 -c 'import uuid; print(uuid.uuid4())')" "$hash"
    names="$names\"$name\","
  done
  printf '[[pools]]\nid = "%s"\nname = "bench"\npool_type = "AUTOMATED"\nos_type = "Windows"\nconnection_types = ["RDP"]\nprovisioner = "simulated"\nusers = [%s]\n' "$pool" "${names%,}"
} > "$dir/body.toml"

echo "$users users, each step 1 + step 2 once, spread round-robin over the instances"
echo
commands() {
  for p in "${nodes[@]}"; do redis-cli -p "$p" info stats; done \
    | awk -F: '/^total_commands_processed/{n += $2} END {print n+0}'
}
published() {
  for p in "${nodes[@]}"; do redis-cli -p "$p" info commandstats; done \
    | awk -F'[=,]' '/^cmdstat_s?publish:/{n += $2} END {print n+0}'
}
echo "| instances | bus messages in all | received per instance (each) | share | Redis commands per user |"
echo "|---|---|---|---|---|"
for n in 1 2 4; do
  prefix="route$n-$RANDOM"
  { printf 'jwt_secret = "%s"\nlockout_address_attempts = 100000\n' "$secret"
    printf 'state = "%s"\nstate_prefix = "%s"\n' "$state" "$prefix"
    cat "$dir/body.toml"; } > "$dir/poolgate-$n.toml"
  urls=()
  ports=()
  inst=()
  for k in $(seq 1 "$n"); do
    port=$(free_port)
    "$bin" serve --config "$dir/poolgate-$n.toml" --data-dir "$dir/data-$n-$k" \
      --listen "127.0.0.1:$port" >"$dir/server-$n-$k.log" 2>&1 &
    inst+=($!)
    pids+=($!)
    ports+=("$port")
    urls+=("ws://127.0.0.1:$port/")
  done
  for p in "${ports[@]}"; do wait_port "$p"; done
  sleep 0.3
  before=$(commands)
  # Everything published: what one global channel would give every instance.
  published_before=$(published)
  out=$(target/release/examples/bus_routing --urls "$(IFS=,; echo "${urls[*]}")" \
    --users "$users" --prefix bench- --password "$password" --pool "$pool")
  sleep 0.5
  after=$(commands)
  all=$(( $(published) - published_before ))
  each=()
  for p in "${ports[@]}"; do
    each+=("$(curl -s "http://127.0.0.1:$p/metrics" | awk '/^poolgate_bus_messages_received_total /{print $2}')")
  done
  kill "${inst[@]}" 2>/dev/null || true
  wait "${inst[@]}" 2>/dev/null || true
  echo "| $n | $all | ${each[*]} | $(python3 -c "import sys; e=[float(x) for x in sys.argv[2:]]; a=float(sys.argv[1]); print(f'{max(e)/a:.2f} of all (max)' if a else '-')" "$all" "${each[@]}") | $(( (after - before) / users )) |"
  echo "$out" >&2
done

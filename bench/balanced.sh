#!/usr/bin/env bash
# N = 1, 2, 4 poolgate instances on one three-master Redis Cluster behind a real L4 balancer:
# Debian's haproxy in TCP mode, round-robin, `send-proxy-v2` to each instance (which has
# `proxy_protocol = true` and trusts only 127.0.0.1). Every client connects to haproxy's one
# port. For each N:
#   spread   SOCKETS signed-in idle sockets from 16 client addresses (127.0.x.y) through the
#            balancer: how many each instance holds (its connections_open). Each instance caps
#            connections per client address at 600 while every address opens SOCKETS/16: all
#            open only because each instance counts the client the PROXY header names (seen as
#            the balancer's one address, the 601st socket of an instance would be refused) —
#            and the control: one address opening 600 × N + 1 sockets is refused the last;
#   events   1 000 sockets of one user through the balancer (so on every instance), the tasks
#            made through it too: the delay from a status change to its delivery (p50/p99),
#            mostly across instances when N > 1;
#   rpc      `task` lookups from 64 connections through the balancer: requests/s in all.
# Prints a table (docs/benchmarks.md, "Behind a real L4 balancer").
#
# Usage: bench/balanced.sh [SOCKETS]   (default 8000; needs haproxy, redis-server, redis-cli)
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-8000}
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || { echo "needs haproxy: apt-get install haproxy" >&2; exit 1; }
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || { echo "needs redis-server and redis-cli: apt-get install redis-server" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --bin poolgate --example loadgen
bin=target/release/poolgate
loadgen=target/release/examples/loadgen
dir=$(mktemp -d); [ -z "${KEEP:-}" ] || echo "kept: $dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
source bench/lib.sh
start_cluster 3
echo "state: $cluster_url; $("$haproxy" -v | sed -n 1p)"
export POOLGATE_JWT_SECRET
POOLGATE_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')

open_total() { # the sum of connections_open over the metrics ports given
  local sum=0 v
  for m in "$@"; do
    v=$(curl -s "http://127.0.0.1:$m/metrics" | awk '/^poolgate_connections_open /{print $2}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

echo
echo "| instances | idle sockets through haproxy (16 client addresses, cap 600 per address and instance) | sockets on each instance | one address's 600 × N + 1st socket refused | event delay p50 / p99 (ms) | task lookups/s through haproxy |"
echo "|---|---|---|---|---|---|"
for n in 1 2 4; do
  prefix="balanced$n-$RANDOM"
  inst=(); metrics=(); servers=""
  for k in $(seq 1 "$n"); do
    port=$(free_port); mport=$(free_port)
    { printf 'state = "%s"\nstate_prefix = "%s"\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1"]\n' "$cluster_url" "$prefix"
      printf 'metrics_listen = "127.0.0.1:%s"\nmax_connections_per_address = 600\n' "$mport"
      printf 'lockout_address_attempts = 100000\nmax_sessions_per_user = 100000\n'
      grep -v '^\(listen\|data_dir\) *=' examples/demo.toml; } > "$dir/poolgate-$n-$k.toml"
    "$bin" serve --config "$dir/poolgate-$n-$k.toml" --data-dir "$dir/data-$n-$k" \
      --listen "127.0.0.1:$port" >"$dir/server-$n-$k.log" 2>&1 &
    inst+=($!); pids+=($!)
    metrics+=("$mport")
    servers+="    server s$k 127.0.0.1:$port send-proxy-v2 check inter 500ms"$'\n'
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null && break; sleep 0.1; done
    (wait_port "$mport") || { tail -n 5 "$dir/server-$n-$k.log" >&2; exit 1; }
  done
  front=$(free_port)
  cat > "$dir/haproxy-$n.cfg" <<CFG
global
    maxconn $(( (sockets > 2401 ? sockets : 2401) + 500 ))
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend poolgate
    bind 127.0.0.1:$front
    default_backend poolgate
backend poolgate
    balance roundrobin
$servers
CFG
  "$haproxy" -db -f "$dir/haproxy-$n.cfg" >"$dir/haproxy-$n.log" 2>&1 &
  hap=$!; pids+=($hap)
  wait_port "$front"
  sleep 1.5 # the first health checks
  url="ws://127.0.0.1:$front/"

  # Spread: the sockets held while each instance's count is read.
  "$loadgen" idle --url "$url" -c "$sockets" --addresses 16 -d 8 --json "$dir/idle-$n.json" \
    >"$dir/idle-$n.out" 2>&1 &
  idle=$!
  for _ in $(seq 300); do
    [ "$(open_total "${metrics[@]}")" -ge "$sockets" ] && break
    kill -0 "$idle" 2>/dev/null || break
    sleep 0.2
  done
  each=()
  for m in "${metrics[@]}"; do
    each+=("$(curl -s "http://127.0.0.1:$m/metrics" | awk '/^poolgate_connections_open /{print $2}')")
  done
  if wait "$idle"; then opened="all $sockets"; else opened="FAILED: $(tail -n 2 "$dir/idle-$n.out" | tr '\n' ' ')"; fi
  # The control: one client address opening 600 × N + 1 sockets, which round-robin puts 601
  # on one instance: that one is refused.
  if "$loadgen" idle --url "$url" -c $((600 * n + 1)) --addresses 1 -d 1 >"$dir/cap-$n.out" 2>&1; then
    cap="no: all $((600 * n + 1)) opened"
  else
    cap="yes"
  fi

  "$loadgen" fanout --url "$url" -c 1000 -d 10 --json "$dir/fanout-$n.json" >/dev/null 2>&1
  p50=$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['latency_us']['p50']/1000:.1f}\")" "$dir/fanout-$n.json")
  p99=$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['latency_us']['p99']/1000:.1f}\")" "$dir/fanout-$n.json")

  "$loadgen" rpc --url "$url" -c 64 -d 5 --json "$dir/rpc-$n.json" >/dev/null 2>&1
  rps=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['per_second']))" "$dir/rpc-$n.json")

  kill "${inst[@]}" "$hap" 2>/dev/null || true
  wait "${inst[@]}" "$hap" 2>/dev/null || true
  echo "| $n | $opened | ${each[*]} | $cap | $p50 / $p99 | $rps |"
done

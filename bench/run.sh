#!/usr/bin/env bash
# Runs the benchmark set on this machine and writes bench/RESULTS.md (+ JSON per run):
#   1. authenticated RPC round trips (rpc/task) vs the raw echo ceiling, 1..1024 connections,
#      one request in flight and 8 pipelined;
#   2. REST GET /api/v2/pools/ (valid JWT) and POST /api/v2/users/login/ with wrk;
#   3. idle signed-in sockets: server RSS per socket.
# Usage: bench/run.sh [SECONDS_PER_RUN] [IDLE_SOCKETS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
idle=${2:-15000}
out=bench/results
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

command -v wrk >/dev/null || { sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo; $sudo_ apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin poolgate --example loadgen --example echo_server

data=$(mktemp -d)
./target/release/poolgate serve --listen 127.0.0.1:18080 --data-dir "$data" --idle-timeout 3600 --auth-grace 3600 --max-connections 30000 >"$out/server.log" 2>&1 &
pg=$!
./target/release/examples/echo_server 127.0.0.1:19001 >/dev/null 2>&1 &
echo_pid=$!
trap 'kill $pg $echo_pid 2>/dev/null; rm -rf "$data"' EXIT
sleep 1

table="| workload | connections | in flight | req/s | p50 µs | p99 µs | max µs | server CPU µs/req | errors |\n|---|---|---|---|---|---|---|---|---|\n"
for conns in 1 16 256 1024; do
  for pipe in 1 8; do
    for mode in echo rpc; do
      pid=$pg; url=ws://127.0.0.1:18080/
      [ "$mode" = echo ] && { pid=$echo_pid; url=ws://127.0.0.1:19001/; }
      f="$out/$mode-$conns-$pipe.json"
      ./target/release/examples/loadgen "$mode" --url "$url" -c "$conns" --pipeline "$pipe" -d "$secs" --server-pid "$pid" --json "$f" >/dev/null 2>>"$out/loadgen.log"
      row=$(python3 -c "import json,sys; r=json.load(open('$f')); l=r['latency_us']; c=r['server_cpu_us_per_request']; c='n/a' if c is None else f'{c:.1f}'; print(f\"| {r['mode']} | {r['connections']} | {r['pipeline']} | {r['per_second']:.0f} | {l['p50']} | {l['p99']} | {l['max']} | {c} | {r['errors']} |\")")
      table+="$row\n"
      echo "$row"
    done
  done
done

token=$(curl -s -X POST localhost:18080/api/v2/users/login/ -H 'content-type: application/json' \
  -d '{"username":"astravdi","password":"Bazalt1!","ldap":false}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["access_token"])')
wrk -t2 -c64 -d"${secs}s" --latency -H "Authorization: JWT $token" http://127.0.0.1:18080/api/v2/pools/ >"$out/wrk-pools.txt"
cat >"$out/login.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"username":"astravdi","password":"Bazalt1!","ldap":false}'
wrk.headers["Content-Type"] = "application/json"
LUA
# Logins are argon2-bound by design; the lockout does not apply to successful ones.
wrk -t2 -c16 -d"${secs}s" --latency -s "$out/login.lua" http://127.0.0.1:18080/api/v2/users/login/ >"$out/wrk-login.txt"
pools_rps=$(awk '/Requests\/sec/ {print $2}' "$out/wrk-pools.txt")
login_rps=$(awk '/Requests\/sec/ {print $2}' "$out/wrk-login.txt")
pools_p99=$(awk '/ 99%/ {print $2}' "$out/wrk-pools.txt")
login_p99=$(awk '/ 99%/ {print $2}' "$out/wrk-login.txt")

./target/release/examples/loadgen idle --url ws://127.0.0.1:18080/ -c "$idle" -d 3 --server-pid "$pg" --json "$out/idle.json" >/dev/null 2>>"$out/loadgen.log"
per=$(python3 -c "import json; r=json.load(open('$out/idle.json')); print(f\"{r['bytes_per_socket']/1024:.2f} KiB per socket over {r['connections']} sockets (RSS {r['server_rss_kib_before']} -> {r['server_rss_kib_after']} KiB); 100 000 sockets: {r['projected_gib_100k']:.2f} GiB, 1 000 000: {r['projected_gib_1m']:.1f} GiB\")")

{
  echo "# Benchmark results"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%Y-%m-%d). Command: \`bench/run.sh $secs $idle\`."
  echo "Client and server share the machine. rpc = authenticated \`rpc/task\` lookups on the"
  echo "embedded SQLite store; echo = raw tokio-tungstenite echo with the same frames and buffers."
  echo
  echo "## WebSocket round trips"
  echo
  printf "%b" "$table"
  echo
  echo "## REST (wrk, 2 threads)"
  echo
  echo "| request | connections | req/s | p99 |"
  echo "|---|---|---|---|"
  echo "| GET /api/v2/pools/ (JWT) | 64 | $pools_rps | $pools_p99 |"
  echo "| POST /api/v2/users/login/ (argon2id) | 16 | $login_rps | $login_p99 |"
  echo
  echo "## Idle signed-in sockets"
  echo
  echo "$per"
} > bench/RESULTS.md
cat bench/RESULTS.md

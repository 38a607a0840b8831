#!/usr/bin/env bash
# Instructions per REST request, counted by callgrind (repeatable where wall-clock figures
# are not): poolgate's `GET /api/v2/pools/` with a valid JWT against the bare axum handler of
# examples/rest_ceiling.rs returning the same bytes, each under valgrind, counters zeroed
# after sign-in and warm-up, then `wrk -t1 -c16` for SECONDS; the dump's total divided by the
# requests hyper parsed in that window (counted in the dump). Prints both and their ratio.
#
# Usage: [POOLGATE=BINARY] bench/callgrind_rest.sh [SECONDS]        (default 5)
#   POOLGATE: another build of the server to measure (default: this tree's release build)
# Needs valgrind and wrk (Debian: valgrind wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release --quiet --bin poolgate --example rest_ceiling
source bench/lib.sh
out=bench/results-callgrind
mkdir -p "$out"
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT

measure() { # NAME PID URL [wrk args...]: prints instructions per request
  local name=$1 pid=$2 url=$3; shift 3
  wrk -t1 -c16 -d2s "$@" "$url" >/dev/null            # warm-up
  callgrind_control --zero "$pid" >/dev/null 2>&1
  wrk -t1 -c16 -d"${secs}s" "$@" "$url" >/dev/null
  callgrind_control --dump="$name" "$pid" >/dev/null 2>&1
  sleep 1
  local file
  file=$(ls -t "$out/rest-$name.out"* | head -1)
  # Requests counted in the dump itself (calls of hyper's request parser), not from wrk:
  # valgrind takes the zero and dump commands when it next looks, not when they are sent.
  local parsed
  parsed=$(callgrind_annotate --tree=calling --inclusive=yes "$file" 2>/dev/null \
    | grep -E '>   .*httparse::Request::parse_with_config_and_uninit_headers \(' | head -1 \
    | sed -E 's/.*\(([0-9,]+)x\).*/\1/' | tr -d ,)
  [ -n "$parsed" ] || { echo "no request parser calls in $file" >&2; exit 1; }
  python3 - "$file" "$parsed" <<'PY'
import sys
f, reqs = sys.argv[1], int(sys.argv[2])
ir = max(int(l.split()[1]) for l in open(f) if l.startswith("totals:") or l.startswith("summary:"))
print(round(ir / reqs))
PY
}

pg_port=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$out/rest-poolgate.out" "${POOLGATE:-./target/release/poolgate}" serve \
  --listen "127.0.0.1:$pg_port" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
pg=$!; pids+=("$pg"); wait_port "$pg_port"
token=$(curl -sf -X POST "http://127.0.0.1:$pg_port/api/v2/users/login/" -H 'content-type: application/json' \
  -d '{"username":"astravdi","password":"Bazalt1!","ldap":false}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["access_token"])')
curl -sf -H "Authorization: JWT $token" "http://127.0.0.1:$pg_port/api/v2/pools/" >"$dir/body.json"
p=$(measure poolgate "$pg" "http://127.0.0.1:$pg_port/api/v2/pools/" -H "Authorization: JWT $token")

ceil_port=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$out/rest-ceiling.out" ./target/release/examples/rest_ceiling \
  "127.0.0.1:$ceil_port" "$dir/body.json" 2>/dev/null &
ceil=$!; pids+=("$ceil"); wait_port "$ceil_port"
c=$(measure ceiling "$ceil" "http://127.0.0.1:$ceil_port/api/v2/pools/")
python3 -c "print(f'GET /api/v2/pools/: poolgate $p, bare axum handler $c instructions per request: {$p/$c:.2f}x')"

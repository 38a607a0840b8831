#!/usr/bin/env bash
# REST at the framework's ceiling: poolgate's `GET /api/v2/pools/` with a valid JWT (the JWT
# checked, its revocation and expiry looked up, the user's listing rendered) against a bare
# axum handler returning the same bytes with no authentication (examples/rest_ceiling.rs), on
# the same machine, `wrk -t1 -c64`, interleaved rounds (ceiling, poolgate, ceiling, …) so that
# the machine's drift hits both alike. Prints a table: requests per second and p99 of each
# round, server CPU per request, and poolgate's share of the ceiling.
#
# Usage: bench/rest.sh [SECONDS_PER_ROUND] [ROUNDS]        (defaults 10 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
command -v wrk >/dev/null || { s=""; [ "$(id -u)" -ne 0 ] && s=sudo; $s apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin poolgate --example rest_ceiling
source bench/lib.sh
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT

pg_port=$(free_port)
./target/release/poolgate serve --listen "127.0.0.1:$pg_port" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
pg=$!; pids+=("$pg"); wait_port "$pg_port"
token=$(curl -sf -X POST "http://127.0.0.1:$pg_port/api/v2/users/login/" -H 'content-type: application/json' \
  -d '{"username":"astravdi","password":"Bazalt1!","ldap":false}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["access_token"])')
curl -sf -H "Authorization: JWT $token" "http://127.0.0.1:$pg_port/api/v2/pools/" >"$dir/body.json"
ceil_port=$(free_port)
./target/release/examples/rest_ceiling "127.0.0.1:$ceil_port" "$dir/body.json" 2>/dev/null &
ceil=$!; pids+=("$ceil"); wait_port "$ceil_port"
cmp -s "$dir/body.json" <(curl -sf "http://127.0.0.1:$ceil_port/api/v2/pools/") \
  || { echo "the ceiling does not answer poolgate's bytes" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
run() { # NAME PID URL [wrk header args...]: prints "req/s p99 cpu_us_per_req"
  local name=$1 pid=$2 url=$3; shift 3
  local before after out
  before=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c64 -d"${secs}s" --latency "$@" "$url")
  after=$(cpu_ticks "$pid")
  python3 - "$out" "$before" "$after" "$hz" <<'PY'
import re, sys
out, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
total = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if bad:
    sys.exit(f"{bad.group(1)} non-2xx answers")
print(f"{rps:.0f} {p99} {(after - before) / hz * 1e6 / total:.1f}")
PY
}

echo "| round | ceiling req/s | ceiling p99 | ceiling CPU µs/req | poolgate req/s | poolgate p99 | poolgate CPU µs/req | poolgate ÷ ceiling | CPU ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  read -r c_rps c_p99 c_cpu < <(run ceiling "$ceil" "http://127.0.0.1:$ceil_port/api/v2/pools/")
  read -r p_rps p_p99 p_cpu < <(run poolgate "$pg" "http://127.0.0.1:$pg_port/api/v2/pools/" -H "Authorization: JWT $token")
  python3 -c "print(f'| $r | $c_rps | $c_p99 | $c_cpu | $p_rps | $p_p99 | $p_cpu | {$p_rps/$c_rps:.2f}× | {$p_cpu/$c_cpu:.2f}× |')"
done

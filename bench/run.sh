#!/usr/bin/env bash
# Runs the whole benchmark set on this machine, side by side in one run, and writes
# bench/RESULTS.md (tables), docs/benchmarks.png (plot) and bench/results/*.json (raw figures):
#
#   1. authenticated RPC round trips (rpc/task on a task the user owns) vs the raw
#      tokio-tungstenite echo ceiling, 1/16/256/1024 connections, 1 and 8 in flight;
#   2. REST GET /api/v2/pools/ (valid JWT) and POST /api/v2/users/login/ with wrk, and the
#      same two requests against the reference mock when MOCK_URL is set (see docs/benchmarks.md:
#      the mock is run outside the repository);
#   3. idle signed-in sockets: server RSS per socket;
#   4. fan-out: one user with FANOUT sockets, status change -> delivery on every socket,
#      tasks one at a time, then overlapping bursts (4 pools at once);
#   5. login storm: 50 argon2 sign-ins/s during workload 1 at 256 connections;
#   6. workloads 1 (256 connections) and 4 again with state on Redis (redis-server from
#      Debian's packages, started here on a free loopback port).
#
# Usage: bench/run.sh [SECONDS_PER_RUN] [IDLE_SOCKETS] [FANOUT_SOCKETS]
#        MOCK_URL=http://127.0.0.1:8000 bench/run.sh ...   (also measure the mock)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
idle=${2:-15000}
fan=${3:-10000}
out=bench/results
rm -rf "$out" && mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

need() { command -v "$1" >/dev/null || { s=""; [ "$(id -u)" -ne 0 ] && s=sudo; $s apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need redis-server redis-server
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[ -f "$font" ] || need fc-list fonts-dejavu-core
cargo build --release --quiet --bin poolgate --example loadgen --example echo_server --example cache_invalidation --example broadcast_server
(cd bench/plot && cargo build --release --quiet)
source bench/lib.sh

# Every load here signs one demo user in from loopback thousands of times (the idle sockets,
# the login storm, wrk on the login endpoint): the brute-force lockout would measure itself,
# so it is raised out of the way, as in bench/signin-timing.sh.
sed -e 's/^demo = true/demo = true\nlockout_attempts = 1000000\nlockout_address_attempts = 1000000/' \
    examples/demo.toml >"$out/bench.toml"
grep -q '^lockout_attempts = 1000000' "$out/bench.toml" || { echo "examples/demo.toml changed: update $0" >&2; exit 1; }
# The fan-out config: the demo's users and pools; tasks take ~1.2 s (step 1 always succeeds)
# so one user's status changes come a few per second.
sed -e 's/^pending = .*/pending = 0.2/' -e 's/^running = .*/running = [1, 1]/' \
    -e 's/^expand = .*/expand = { completed = 1.0 }/' "$out/bench.toml" >"$out/fanout.toml"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$out"/data-*; }
trap cleanup EXIT
serve() { # NAME PORT [extra serve flags...]: starts poolgate; its pid in $served
  local name=$1 port=$2; shift 2
  ./target/release/poolgate serve --listen "127.0.0.1:$port" --data-dir "$out/data-$name" \
    --idle-timeout 3600 --auth-grace 3600 "$@" >"$out/server-$name.log" 2>&1 &
  served=$!; pids+=("$served"); wait_port "$port"
}
loadgen() { ./target/release/examples/loadgen "$@" 2>>"$out/loadgen.log" >/dev/null; }
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

pg_port=$(free_port); serve sqlite "$pg_port" --config "$out/bench.toml"; pg=$served
echo_port=$(free_port)
./target/release/examples/echo_server "127.0.0.1:$echo_port" >/dev/null 2>&1 &
echo_pid=$!; pids+=("$echo_pid"); wait_port "$echo_port"

row() { # JSON -> one markdown row of the round-trip table
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]; c = r["server_cpu_us_per_request"]
c = "n/a" if c is None else f"{c:.1f}"
print(f"| {r['mode']} | {r['connections']} | {r['pipeline']} | {r['per_second']:.0f} | {l['p50']} | {l['p99']} | {l['max']} | {c} | {r['errors']} |")
PY
}
table="| workload | connections | in flight | req/s | p50 µs | p99 µs | max µs | server CPU µs/req | errors |\n|---|---|---|---|---|---|---|---|---|\n"
echo "== 1. round trips"
for conns in 1 16 256 1024; do
  for pipe in 1 8; do
    for mode in echo rpc; do
      pid=$pg; url=ws://127.0.0.1:$pg_port/
      [ "$mode" = echo ] && { pid=$echo_pid; url=ws://127.0.0.1:$echo_port/; }
      f="$out/$mode-$conns-$pipe.json"
      loadgen "$mode" --url "$url" -c "$conns" --pipeline "$pipe" -d "$secs" --server-pid "$pid" --json "$f"
      r=$(row "$f"); table+="$r\n"; echo "$r"
    done
  done
done
ratio=$(python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
for pipe in (1, 8):
    e = json.load(open(f"{d}/echo-256-{pipe}.json")); r = json.load(open(f"{d}/rpc-256-{pipe}.json"))
    cpu = "n/a"
    if e["server_cpu_us_per_request"] and r["server_cpu_us_per_request"]:
        cpu = f"{r['server_cpu_us_per_request'] / e['server_cpu_us_per_request']:.2f}x"
    print(f"- 256 connections, {pipe} in flight: rpc/echo throughput **{r['per_second'] / e['per_second']:.2f}x**, "
          f"server CPU per request **{cpu}**, rpc p99 **{r['latency_us']['p99'] / 1000:.1f} ms** (echo {e['latency_us']['p99'] / 1000:.1f} ms)")
PY
)

echo "== 1b. every read RPC a client makes in steady state, 256 connections, 1 in flight"
# Each method right after its own echo run, so the ratio is taken on the same machine state.
methods_table="| method | req/s | vs echo | server CPU µs/req | vs echo | p99 µs | vs echo |\n|---|---|---|---|---|---|---|\n"
for m in task pools tasks connect-info identify; do
  loadgen echo --url "ws://127.0.0.1:$echo_port/" -c 256 -d "$secs" --server-pid "$echo_pid" --json "$out/method-echo-$m.json"
  loadgen rpc --url "ws://127.0.0.1:$pg_port/" -c 256 -d "$secs" --method "$m" --server-pid "$pg" --json "$out/method-$m.json"
  r=$(python3 - "$out/method-echo-$m.json" "$out/method-$m.json" <<'PY'
import json, sys
e, r = (json.load(open(p)) for p in sys.argv[1:])
ec, rc = e["server_cpu_us_per_request"], r["server_cpu_us_per_request"]
cpu = f"{rc:.1f} | **{rc / ec:.2f}x**" if ec and rc else "n/a | n/a"
print(f"| {r['method']} | {r['per_second']:.0f} | **{r['per_second'] / e['per_second']:.2f}x** | {cpu} | "
      f"{r['latency_us']['p99']} | **{r['latency_us']['p99'] / e['latency_us']['p99']:.2f}x** |")
PY
)
  methods_table+="$r\n"; echo "$r"
done

echo "== 5. login storm"
loadgen rpc --url "ws://127.0.0.1:$pg_port/" -c 256 -d "$secs" --logins-per-sec 50 --server-pid "$pg" --json "$out/storm.json"
storm=$(python3 - "$out" <<'PY'
import json, sys
q = json.load(open(f"{sys.argv[1]}/rpc-256-1.json")); s = json.load(open(f"{sys.argv[1]}/storm.json"))
lg = s["logins"]
print(f"rpc at 256 connections: quiet p99 {q['latency_us']['p99'] / 1000:.1f} ms, {q['per_second']:.0f} req/s; "
      f"with {lg['per_second']} logins/s: p99 {s['latency_us']['p99'] / 1000:.1f} ms "
      f"(**{s['latency_us']['p99'] / q['latency_us']['p99']:.2f}x** quiet), {s['per_second']:.0f} req/s; "
      f"{lg['count']} logins done, {lg['failed']} failed, login p50 {lg['latency_us']['p50'] / 1000:.0f} ms, p99 {lg['latency_us']['p99'] / 1000:.0f} ms")
PY
)
echo "$storm"

echo "== 2. REST"
rest() { # NAME BASE_URL: wrk on pools (JWT) and login
  local name=$1 base=$2 token
  token=$(curl -sf -X POST "$base/api/v2/users/login/" -H 'content-type: application/json' \
    -d '{"username":"astravdi","password":"Bazalt1!","ldap":false}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["access_token"])')
  wrk -t2 -c64 -d"${secs}s" --latency -H "Authorization: JWT $token" "$base/api/v2/pools/" >"$out/wrk-$name-pools.txt"
  wrk -t2 -c16 -d"${secs}s" --latency -s bench/login.lua "$base/api/v2/users/login/" >"$out/wrk-$name-login.txt"
}
wrk_fig() { awk -v k="$2" '$1 == k {print $2}' "$1"; }
rest poolgate "http://127.0.0.1:$pg_port"
rest_rows="| poolgate | GET /api/v2/pools/ (JWT) | 64 | $(wrk_fig "$out/wrk-poolgate-pools.txt" Requests/sec:) | $(wrk_fig "$out/wrk-poolgate-pools.txt" 99%) |\n"
rest_rows+="| poolgate | POST /api/v2/users/login/ (argon2id) | 16 | $(wrk_fig "$out/wrk-poolgate-login.txt" Requests/sec:) | $(wrk_fig "$out/wrk-poolgate-login.txt" 99%) |\n"
mock_note="The mock was not measured in this run (set MOCK_URL)."
if [ -n "${MOCK_URL:-}" ]; then
  rest mock "$MOCK_URL"
  rest_rows+="| mock | GET /api/v2/pools/ (JWT) | 64 | $(wrk_fig "$out/wrk-mock-pools.txt" Requests/sec:) | $(wrk_fig "$out/wrk-mock-pools.txt" 99%) |\n"
  rest_rows+="| mock | POST /api/v2/users/login/ (no password check) | 16 | $(wrk_fig "$out/wrk-mock-login.txt" Requests/sec:) | $(wrk_fig "$out/wrk-mock-login.txt" 99%) |\n"
  mock_note=$(python3 -c "
p=float('$(wrk_fig "$out/wrk-poolgate-pools.txt" Requests/sec:)'); m=float('$(wrk_fig "$out/wrk-mock-pools.txt" Requests/sec:)')
print(f'GET /api/v2/pools/: poolgate serves **{p/m:.0f}x** the mock\'s requests per second ({p:.0f} vs {m:.0f}).')")
fi

echo "== 3. idle sockets"
loadgen idle --url "ws://127.0.0.1:$pg_port/" -c "$idle" -d 3 --server-pid "$pg" --json "$out/idle.json"
idle_line=$(field "$out/idle.json" "f\"{r['bytes_per_socket']/1024:.2f} KiB per signed-in socket over {r['connections']} sockets (server RSS {r['server_rss_kib_before']} -> {r['server_rss_kib_after']} KiB); projected 100 000 sockets: {r['projected_gib_100k']:.2f} GiB, 1 000 000: {r['projected_gib_1m']:.1f} GiB\"")
echo "$idle_line"
kill "$pg"

fanrow() { # LABEL JSON
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[2])); l = r["latency_us"]; b = r["burst_span_ms"]
cpu = r["server_cpu_us_per_delivery"]; per = r["deliveries_per_cpu_second"]
sys_share = r.get("server_cpu_system_share")
sys_share = "n/a" if sys_share is None else f"{sys_share * 100:.0f} %"
print(f"| {sys.argv[1]} | {r['connections']} | {r['tasks']} | {r['deliveries']} | {l['p50']/1000:.1f} | {l['p99']/1000:.1f} | {l['max']/1000:.1f} | "
      f"{b['p50']} / {b['max']} | {cpu:.2f} | {sys_share} | {per:,.0f} |".replace(f"{per:,.0f}", f"{per:,.0f}".replace(",", " ")))
PY
}
fan_table="| run | sockets | changes | deliveries | p50 ms | p99 ms | max ms | burst span p50 / max ms | server CPU µs/delivery | of it in the kernel | deliveries per CPU-second |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
echo "== 4. fan-out"
# The ceiling first: a minimal tokio-tungstenite broadcast of the same frame to as many sockets.
bp=$(free_port)
./target/release/examples/broadcast_server "127.0.0.1:$bp" >/dev/null 2>&1 &
b_pid=$!; pids+=("$b_pid"); wait_port "$bp"
loadgen broadcast --url "ws://127.0.0.1:$bp/" -c "$fan" -d "$secs" --server-pid "$b_pid" --json "$out/fanout-ceiling.json"
fan_table+="$(fanrow "ceiling: tokio-tungstenite broadcast" "$out/fanout-ceiling.json")\n"
kill "$b_pid"
fp=$(free_port); serve fanout "$fp" --config "$out/fanout.toml"; f_pid=$served
loadgen fanout --url "ws://127.0.0.1:$fp/" -c "$fan" -d "$secs" --pipeline 1 --server-pid "$f_pid" --json "$out/fanout-sqlite-1.json"
fan_table+="$(fanrow "sqlite, one task at a time" "$out/fanout-sqlite-1.json")\n"
loadgen fanout --url "ws://127.0.0.1:$fp/" -c "$fan" -d "$secs" --pipeline 4 --server-pid "$f_pid" --json "$out/fanout-sqlite-4.json"
fan_table+="$(fanrow "sqlite, 4 pools at once" "$out/fanout-sqlite-4.json")\n"
kill "$f_pid"
fan_ratio=$(python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/fanout-ceiling.json")); p = json.load(open(f"{d}/fanout-sqlite-1.json"))
print(f"poolgate (one task at a time) vs the ceiling: server CPU per delivery **{p['server_cpu_us_per_delivery'] / c['server_cpu_us_per_delivery']:.2f}x** "
      f"({p['server_cpu_us_per_delivery']:.2f} vs {c['server_cpu_us_per_delivery']:.2f} µs), p99 **{p['latency_us']['p99'] / c['latency_us']['p99']:.2f}x** "
      f"({p['latency_us']['p99'] / 1000:.0f} vs {c['latency_us']['p99'] / 1000:.0f} ms)")
PY
)
echo "$fan_ratio"

echo "== 6. redis"
rport=$(free_port); rdir=$(mktemp -d)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$rdir" --daemonize no >/dev/null 2>&1 &
pids+=($!); wait_port "$rport"
{ echo "state = \"redis://127.0.0.1:$rport/\""; cat "$out/fanout.toml"; } >"$out/redis.toml"
rp=$(free_port); serve redis "$rp" --config "$out/redis.toml"; r_pid=$served
for pipe in 1 8; do
  loadgen rpc --url "ws://127.0.0.1:$rp/" -c 256 --pipeline "$pipe" -d "$secs" --server-pid "$r_pid" --json "$out/redis-rpc-256-$pipe.json"
  r=$(row "$out/redis-rpc-256-$pipe.json"); table+="${r/| rpc |/| rpc on redis |}\n"; echo "$r (redis)"
done
for m in pools connect-info; do
  loadgen rpc --url "ws://127.0.0.1:$rp/" -c 256 -d "$secs" --method "$m" --server-pid "$r_pid" --json "$out/redis-method-$m.json"
done
./target/release/examples/cache_invalidation "redis://127.0.0.1:$rport/" 2000 --json "$out/invalidation.json" >/dev/null
loadgen fanout --url "ws://127.0.0.1:$rp/" -c "$fan" -d "$secs" --pipeline 1 --server-pid "$r_pid" --json "$out/fanout-redis-1.json"
fan_table+="$(fanrow "redis, one task at a time" "$out/fanout-redis-1.json")\n"
redis_line=$(python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]; out = []
for pipe in (1, 8):
    s = json.load(open(f"{d}/rpc-256-{pipe}.json")); r = json.load(open(f"{d}/redis-rpc-256-{pipe}.json"))
    out.append(f"{pipe} in flight: {r['per_second']:.0f} vs {s['per_second']:.0f} req/s on sqlite "
               f"({r['per_second'] / s['per_second']:.2f}x), p99 {r['latency_us']['p99']/1000:.1f} vs {s['latency_us']['p99']/1000:.1f} ms")
for m in ("pools", "connect-info"):
    s = json.load(open(f"{d}/method-{m}.json")); r = json.load(open(f"{d}/redis-method-{m}.json"))
    out.append(f"{r['method']}: {r['per_second']:.0f} vs {s['per_second']:.0f} req/s on sqlite "
               f"({r['per_second'] / s['per_second']:.2f}x), p99 {r['latency_us']['p99']/1000:.1f} vs {s['latency_us']['p99']/1000:.1f} ms "
               f"({r['latency_us']['p99'] / s['latency_us']['p99']:.2f}x)")
i = json.load(open(f"{d}/invalidation.json"))["latency_us"]
out.append(f"a write on one instance stops being served by another's read cache after p50 {i['p50']} µs, "
           f"p99 {i['p99']} µs, max {i['max']} µs (examples/cache_invalidation, 2000 writes)")
fs = json.load(open(f"{d}/fanout-sqlite-1.json")); fr = json.load(open(f"{d}/fanout-redis-1.json"))
out.append(f"fan-out p99 {fr['latency_us']['p99']/1000:.1f} ms on redis vs {fs['latency_us']['p99']/1000:.1f} ms on sqlite")
print("- " + "\n- ".join(out))
PY
)
echo "$redis_line"

mkdir -p docs
./bench/plot/target/release/poolgate-bench-plot "$out" docs/benchmarks.png "$font"

{
  echo "# Benchmark results"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%Y-%m-%d)."
  echo "Command: \`bench/run.sh $secs $idle $fan\`. Client and server share the machine's cores."
  echo
  echo "## 1. WebSocket round trips (and 6. the same on Redis)"
  echo
  echo "rpc = authenticated \`rpc/task\` lookups of a task the user owns; echo = a raw"
  echo "tokio-tungstenite echo server with the same buffers, sent the same frames."
  echo
  printf "%b" "$table"
  echo
  echo "$ratio"
  echo
  echo "Every read RPC a client makes in steady state, 256 connections, 1 in flight, each run right"
  echo "after its own echo run (goal: ≥ 0.9x the echo's throughput, ≤ 1.3x its CPU per request,"
  echo "≤ 1.2x its p99):"
  echo
  printf "%b" "$methods_table"
  echo
  echo "![throughput and p99 versus connections](../docs/benchmarks.png)"
  echo
  echo "## 2. REST (wrk, 2 threads)"
  echo
  echo "| server | request | connections | req/s | p99 |"
  echo "|---|---|---|---|---|"
  printf "%b" "$rest_rows"
  echo
  echo "$mock_note"
  echo
  echo "## 3. Idle signed-in sockets"
  echo
  echo "$idle_line"
  echo
  echo "## 4. Fan-out (and 6. on Redis)"
  echo
  echo "Delay from a task's status change (its own timestamp) to the frame's arrival on each socket."
  echo
  printf "%b" "$fan_table"
  echo
  echo "$fan_ratio"
  echo
  echo "## 5. Login storm"
  echo
  echo "$storm"
  echo
  echo "## 6. Redis overhead"
  echo
  echo "$redis_line"
} >bench/RESULTS.md
cat bench/RESULTS.md

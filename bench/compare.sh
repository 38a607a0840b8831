#!/usr/bin/env bash
# Compares the server of another revision with this tree's, side by side in one run, on the
# two figures a refactor must not make worse: authenticated RPC round trips at 256
# connections (1 and 8 in flight) as a ratio of the tokio-tungstenite echo ceiling, and RSS
# per idle signed-in socket. Runs are interleaved (echo, base, head; ROUNDS times) so the
# machine's drift hits both alike; the figure is the median ratio.
#
# Usage: [METHOD=pools] bench/compare.sh BASE_REV [SECONDS_PER_RUN] [ROUNDS] [IDLE_SOCKETS]
#   bench/compare.sh 0558598 5 3 10000
# METHOD is loadgen's --method (task by default); the idle sockets come from 16 addresses.
# BASE_REV `-` measures this tree alone against the echo (no second build).
# Writes bench/results-compare/*.json and prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/compare.sh BASE_REV [SECONDS] [ROUNDS] [IDLE_SOCKETS]}
secs=${2:-5}
rounds=${3:-3}
idle=${4:-10000}
method=${METHOD:-task}
out=bench/results-compare
rm -rf "$out" && mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

# The base revision is built in its own worktree with its own target directory (kept between
# runs, so a second comparison against the same base does not rebuild it).
wt=target/compare-base
revs=(base head)
if [ "$base" = "-" ]; then
  revs=(head)
else
  if [ -d "$wt" ]; then git -C "$wt" checkout -q --detach "$base"; else git worktree add -q --detach "$wt" "$base"; fi
  (cd "$wt" && CARGO_TARGET_DIR=../compare-base-target cargo build --release --quiet --bin poolgate)
fi
cargo build --release --quiet --bin poolgate --example loadgen --example echo_server
declare -A bin=([base]=target/compare-base-target/release/poolgate [head]=target/release/poolgate)

source bench/lib.sh
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$out"/data-*; }
trap cleanup EXIT
serve() { # WHICH PORT: starts that revision's server; its pid in $served
  "${bin[$1]}" serve --listen "127.0.0.1:$2" --data-dir "$out/data-$1-$2" \
    --idle-timeout 3600 --auth-grace 3600 >"$out/server-$1-$2.log" 2>&1 &
  served=$!; pids+=("$served"); wait_port "$2"
}
loadgen() { ./target/release/examples/loadgen "$@" 2>>"$out/loadgen.log" >/dev/null; }

echo_port=$(free_port)
./target/release/examples/echo_server "127.0.0.1:$echo_port" >/dev/null 2>&1 &
echo_pid=$!; pids+=("$echo_pid"); wait_port "$echo_port"
declare -A port pid
for which in "${revs[@]}"; do port[$which]=$(free_port); serve "$which" "${port[$which]}"; pid[$which]=$served; done

for round in $(seq "$rounds"); do
  for pipe in 1 8; do
    loadgen echo --url "ws://127.0.0.1:$echo_port/" -c 256 --pipeline "$pipe" -d "$secs" --server-pid "$echo_pid" --json "$out/echo-$pipe-$round.json"
    for which in "${revs[@]}"; do
      loadgen rpc --url "ws://127.0.0.1:${port[$which]}/" -c 256 --pipeline "$pipe" --method "$method" -d "$secs" --server-pid "${pid[$which]}" --json "$out/$which-$pipe-$round.json"
    done
  done
  echo "round $round of $rounds done" >&2
done
for which in "${revs[@]}"; do
  # A fresh server each, so the idle figure is not coloured by the round trips' buffers.
  p=$(free_port); serve "$which" "$p"
  loadgen idle --url "ws://127.0.0.1:$p/" -c "$idle" --addresses 16 -d 3 --server-pid "$served" --json "$out/idle-$which.json"
  kill "$served"
done

python3 - "$out" "$rounds" "$base" "$(git rev-parse --short HEAD)" "$method" <<'PY'
import json, statistics, sys
d, rounds, base, head, method = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
load = lambda name: json.load(open(f"{d}/{name}.json"))
revs = ["base", "head"] if base != "-" else ["head"]
print(f"| figure | " + " | ".join(f"base {base}" if w == "base" else f"head {head} (tree)" for w in revs) + " |")
print("|---|" + "---|" * len(revs))
for pipe in (1, 8):
    rows = {"throughput vs echo": {}, "server CPU per request vs echo": {}, "p99 ms": {}}
    for which in revs:
        tp, cpu, p99 = [], [], []
        for r in range(1, rounds + 1):
            e, x = load(f"echo-{pipe}-{r}"), load(f"{which}-{pipe}-{r}")
            tp.append(x["per_second"] / e["per_second"])
            if e["server_cpu_us_per_request"] and x["server_cpu_us_per_request"]:
                cpu.append(x["server_cpu_us_per_request"] / e["server_cpu_us_per_request"])
            p99.append(x["latency_us"]["p99"] / 1000)
        rows["throughput vs echo"][which] = f"{statistics.median(tp):.2f}x ({', '.join(f'{v:.2f}' for v in tp)})"
        rows["server CPU per request vs echo"][which] = f"{statistics.median(cpu):.2f}x" if cpu else "n/a"
        rows["p99 ms"][which] = f"{statistics.median(p99):.1f}"
    for k, v in rows.items():
        print(f"| rpc/{method}, 256 connections, {pipe} in flight: {k} | " + " | ".join(v[w] for w in revs) + " |")
idle = [load(f"idle-{w}") for w in revs]
print(f"| KiB per idle signed-in socket ({idle[0]['connections']} sockets) | " + " | ".join(f"{i['bytes_per_socket']/1024:.2f}" for i in idle) + " |")
PY

#!/usr/bin/env bash
# Instructions per authenticated rpc/task round trip in the server, counted by callgrind
# (repeatable where wall-clock figures are not): two runs under valgrind, 2 s and 8 s of load
# from 16 connections, and the difference divided by the difference in requests, so start-up
# and sign-ins cancel out. Batching still varies a little with timing (about ±3 %).
#
# Usage: bench/callgrind.sh SERVER_BINARY NAME [PIPELINE] [METHOD]
#   bench/callgrind.sh target/release/poolgate head 1 pools   (METHOD: loadgen's --method; task)
# Needs valgrind (Debian: valgrind) and the release loadgen (cargo build --release --example loadgen).
set -euo pipefail
bin=$1; name=$2; pipe=${3:-1}; method=${4:-task}
cd "$(dirname "$0")/.."
out=bench/results-callgrind; mkdir -p "$out"
for d in 2 8; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf $out/data-$name-$d
  valgrind --tool=callgrind --callgrind-out-file=$out/$name-$method-$pipe-$d.out "$bin" serve --listen 127.0.0.1:$port --data-dir $out/data-$name-$d --idle-timeout 3600 --auth-grace 3600 > $out/$name-$d.log 2>&1 &
  vp=$!
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
  ./target/release/examples/loadgen rpc --url ws://127.0.0.1:$port/ -c 16 --pipeline $pipe --method $method -d $d --json $out/$name-$method-$pipe-$d.json >/dev/null 2>$out/$name-$method-$pipe-$d.err || { cat $out/$name-$method-$pipe-$d.err >&2; kill $vp; exit 1; }
  kill -TERM $vp; wait $vp || true
done
python3 - "$out" "$name" "$pipe" "$method" <<'PY'
import json, re, sys
d, name, pipe, method = sys.argv[1:]
def ir(f):
    for line in open(f):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
def reqs(f): return json.load(open(f))["requests"]
a, b = ir(f"{d}/{name}-{method}-{pipe}-2.out"), ir(f"{d}/{name}-{method}-{pipe}-8.out")
ra, rb = reqs(f"{d}/{name}-{method}-{pipe}-2.json"), reqs(f"{d}/{name}-{method}-{pipe}-8.json")
print(f"{name} {method} pipeline {pipe}: {(b - a) / (rb - ra):.0f} instructions per request ({rb - ra} requests)")
PY

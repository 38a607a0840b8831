#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), from the committed seed corpus.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain.
#   fuzz/run.sh          # 10 minutes per target
#   fuzz/run.sh 30       # a smoke run
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
for target in envelope rpc_args jwt token_tag; do
  mkdir -p "work/$target"
  echo "== $target ($secs s)"
  cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12
done

#!/usr/bin/env bash
# The "no enumeration" check: sign-in reply times by kind of attempt (unknown user, wrong
# password, MFA users with right and wrong passwords, a disabled user), against the release
# build on the demo dataset with the lockout raised out of the way (or it would be measured
# instead). Prints a table; see examples/signin_timing.rs.
#
# Usage: bench/signin-timing.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-40}
cargo build --release --quiet --bin poolgate --example signin_timing
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e 's/^demo = true/demo = true\nlockout_attempts = 1000000\nlockout_address_attempts = 1000000/' \
  examples/demo.toml > "$dir/poolgate.toml"
grep -q '^lockout_attempts = 1000000' "$dir/poolgate.toml" || { echo "examples/demo.toml changed: update $0" >&2; exit 1; }
RUST_LOG=warn target/release/poolgate serve --config "$dir/poolgate.toml" --data-dir "$dir/data" \
  --listen "127.0.0.1:$port" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
target/release/examples/signin_timing "ws://127.0.0.1:$port/" "$rounds"

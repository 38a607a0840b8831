#!/usr/bin/env bash
# WebSocket conformance: the Autobahn TestSuite cases, driven by kosoku (PyPI), against an
# echo endpoint built from poolgate's own transport (examples/autobahn_echo.rs). Prints the
# tally and writes bench/results/autobahn/ (HTML + JSON per case); fails on any case that is
# not OK, NON-STRICT or INFORMATIONAL. CI runs it (a few seconds).
#
# Excluded, on purpose:
#   12.*, 13.*            permessage-deflate: poolgate does not offer compression (its messages
#                         are small JSON); these cases then answer UNIMPLEMENTED by design.
#   9.1.5 9.1.6 9.2.5 9.2.6   8 and 16 MiB messages: above poolgate's 4 MiB message ceiling
#                         (max_message_bytes), which closes them with 1009 as configured.
# Usage: bench/autobahn.sh [release|debug]   (default: debug, the build `cargo test` made)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
venv=${AUTOBAHN_VENV:-target/autobahn-venv}
out=bench/results/autobahn
[ -x "$venv/bin/kosoku" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q kosoku==0.1.0; }
if [ "$profile" = release ]; then
  cargo build --release --quiet --example autobahn_echo
else
  cargo build --quiet --example autobahn_echo
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"./target/$profile/examples/autobahn_echo" "127.0.0.1:$port" 2>/dev/null &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
rm -rf "$out" && mkdir -p bench/results
"$venv/bin/kosoku" "127.0.0.1:$port" -p 4 -o "$out" \
  -x '12.*' -x '13.*' -x 9.1.5 -x 9.1.6 -x 9.2.5 -x 9.2.6 >"$out.log" 2>&1 || true
python3 - "$out/index.json" <<'PY'
import collections, json, sys
cases = next(iter(json.load(open(sys.argv[1])).values()))
tally = collections.Counter(c["behavior"] for c in cases.values())
print("autobahn: %d cases: %s" % (len(cases), ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))))
bad = sorted(k for k, c in cases.items() if c["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL"))
if bad or not cases:
    print("autobahn: failing cases: " + " ".join(bad))
    sys.exit(1)
PY

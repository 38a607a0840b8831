#!/usr/bin/env bash
# Replays the security issue's attacks against a release server on loopback and prints what
# each got (examples/hostile.rs), then how long SIGTERM takes with a release step hanging.
# The server runs the demo dataset plus a pool on a command provisioner that prints its
# environment and its parent's (/proc/$PPID/environ), leaves a background child in step 2 and hangs on release.
#
# Usage: bench/hostile.sh            (PROFILE=debug bench/hostile.sh for a quick debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
flag=--release; [ "$profile" = debug ] && flag=
cargo build $flag --quiet --bin poolgate --example hostile
dir=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pool=6f1b7f0e-0a57-4b9e-9a11-5e5ca1ab1e00
cat > "$dir/provision.sh" <<SH
#!/bin/sh
req=\$(cat)
case "\$req" in
  *'"step":"expand"'*) env > "$dir/env.txt"; tr '\\0' '\\n' < /proc/\$PPID/environ > "$dir/parent-environ.txt" 2>&1
    (exec 3< /proc/\$PPID/mem) 2>/dev/null && echo open > "$dir/parent-mem.txt" || echo denied > "$dir/parent-mem.txt"
    echo '{"result":{"host":"127.0.0.1","port":1}}' ;;
  *'"step":"connect"'*) sleep 300 & echo \$! > "$dir/bg.pid"; sleep 1000 ;;
  *) sleep 1000 ;;
esac
SH
chmod +x "$dir/provision.sh"
{
  echo "metrics_listen = \"127.0.0.1:$mport\""
  sed -e 's/^task_deadline = .*/task_deadline = 4/' examples/demo.toml
  cat <<TOML

[[pools]]
id = "$pool"
name = "hostile"
pool_type = "AUTOMATED"
os_type = "Linux"
connection_types = ["RDP"]
users = ["astravdi"]
provisioner = "hostile"

[provisioners.hostile]
kind = "command"
command = ["$dir/provision.sh"]
TOML
} > "$dir/poolgate.toml"
export POOLGATE_JWT_SECRET=$(head -c 32 /dev/urandom | base64)
export POOLGATE_REDIS_PASSWORD=not-used-here-but-secret
NO_COLOR=1 target/$profile/poolgate serve --config "$dir/poolgate.toml" --data-dir "$dir/data" \
  --listen "127.0.0.1:$port" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
HOSTILE_SERVER_PID=$pid HOSTILE_METRICS_ADDR="127.0.0.1:$mport" \
  target/$profile/examples/hostile "ws://127.0.0.1:$port/" "127.0.0.1:$port" "$dir" "$dir/log" "$pool"
# A release is still hanging: how long does SIGTERM take?
start=$(date +%s.%N)
kill -TERM $pid
for _ in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
end=$(date +%s.%N)
if kill -0 $pid 2>/dev/null; then
  echo "| SIGTERM with a release step hanging | still running after 30 s |"
else
  python3 -c "print(f'| SIGTERM with a release step hanging | stopped in {$end - $start:.1f} s |')"
fi

#!/usr/bin/env bash
# Sign-in latency added by the directory: a real slapd (Debian: slapd, ldap-utils) loaded with
# the tests' people and groups (tests/ldap/slapd.conf, tests/ldap/data.ldif), the release
# build on the demo dataset with that directory and the lockout raised out of the way, and
# examples/directory_signin.rs. Prints a table.
#
# Usage: bench/directory.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
slapd=$(command -v slapd || echo /usr/sbin/slapd)
[ -x "$slapd" ] && command -v ldapadd >/dev/null || { echo "needs slapd and ldapadd: apt-get install slapd ldap-utils" >&2; exit 1; }
cargo build --release --quiet --bin poolgate --example directory_signin
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
source bench/lib.sh

lport=$(free_port)
mkdir "$dir/ldap" "$dir/ldap/db"
sed "s#@DIR@#$dir/ldap#g" tests/ldap/slapd.conf > "$dir/ldap/slapd.conf"
"$slapd" -d 0 -f "$dir/ldap/slapd.conf" -h "ldap://127.0.0.1:$lport/" >/dev/null 2>&1 &
pids+=($!)
wait_port "$lport"
ldapadd -x -H "ldap://127.0.0.1:$lport" -D cn=admin,dc=example,dc=org -w root-secret \
  -f tests/ldap/data.ldif >/dev/null

port=$(free_port)
printf 'service-secret\n' > "$dir/ldap-password"
sed -e 's/^demo = true/demo = true\nlockout_attempts = 1000000\nlockout_address_attempts = 1000000/' \
  examples/demo.toml > "$dir/poolgate.toml"
grep -q '^lockout_attempts = 1000000' "$dir/poolgate.toml" || { echo "examples/demo.toml changed: update $0" >&2; exit 1; }
cat >> "$dir/poolgate.toml" <<TOML

[directory]
url = "ldap://127.0.0.1:$lport"
bind_dn = "cn=poolgate,ou=services,dc=example,dc=org"
bind_password_file = "$dir/ldap-password"
user_base = "ou=people,dc=example,dc=org"
TOML
RUST_LOG=warn target/release/poolgate serve --config "$dir/poolgate.toml" --data-dir "$dir/data" \
  --listen "127.0.0.1:$port" 2>"$dir/log" &
pids+=($!)
wait_port "$port"
target/release/examples/directory_signin "ws://127.0.0.1:$port/" "$rounds"

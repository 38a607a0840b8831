# Shared by the bench scripts and .ci/run (sourced): a free loopback port, waiting for one to
# open, and a Redis Cluster on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# One Redis on a free loopback port, its data in $dir: appends its pid to pids and sets rport.
start_redis() {
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null &
  pids+=($!)
  wait_port "$rport"
}

# A Redis Cluster of $1 masters (default 3) on free loopback ports, nodes in $dir/cluster-<port>:
# appends the nodes' pids to pids and sets cluster_ports and cluster_url (redis-cluster://…).
start_cluster() {
  local masters=${1:-3} port addrs=()
  cluster_ports=()
  for _ in $(seq 1 "$masters"); do
    port=$(free_port)
    mkdir -p "$dir/cluster-$port"
    # The cluster bus on a port of its own (by default it is port + 10000, which may be
    # taken, or past 65535).
    (cd "$dir/cluster-$port" && exec redis-server --port "$port" --cluster-port "$(free_port)" \
      --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --save '' --appendonly no >/dev/null) &
    pids+=($!)
    cluster_ports+=("$port")
    addrs+=("127.0.0.1:$port")
  done
  for port in "${cluster_ports[@]}"; do wait_port "$port"; done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for port in "${cluster_ports[@]}"; do
    for _ in $(seq 100); do
      redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' && continue 2
      sleep 0.1
    done
    echo "the cluster never came up on port $port" >&2; exit 1
  done
  cluster_url="redis-cluster://$(IFS=,; echo "${addrs[*]}")"
}

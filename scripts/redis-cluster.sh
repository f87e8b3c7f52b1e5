#!/usr/bin/env bash
# Starts or stops a local three-node Redis Cluster for the tests (no replicas, nothing on disk).
#   scripts/redis-cluster.sh start   # prints the store URL to use
#   scripts/redis-cluster.sh stop
# Ports: REDIS_CLUSTER_PORTS (default "7101 7102 7103"); files: REDIS_CLUSTER_DIR.
set -euo pipefail

ports=${REDIS_CLUSTER_PORTS:-"7101 7102 7103"}
dir=${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/session-context-redis-cluster}

install_redis() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        echo "redis-server not found; installing Debian's redis-server" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
}

wait_for() { # port
    for _ in $(seq 1 100); do
        redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "redis node on port $1 did not start; see $dir/$1.log" >&2
    return 1
}

start() {
    install_redis
    mkdir -p "$dir"
    local nodes=()
    for port in $ports; do
        if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
            rm -f "$dir/nodes-$port.conf"
            redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
                --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
                --cluster-node-timeout 2000 --save "" --appendonly no \
                --dir "$dir" --logfile "$dir/$port.log" --pidfile "$dir/$port.pid"
        fi
        wait_for "$port"
        nodes+=("127.0.0.1:$port")
    done
    local first=${nodes[0]#*:}
    if ! redis-cli -p "$first" cluster info | grep -q "cluster_state:ok"; then
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    fi
    for port in $ports; do
        for _ in $(seq 1 100); do
            redis-cli -p "$port" cluster info | grep -q "cluster_state:ok" && break
            sleep 0.1
        done
        redis-cli -p "$port" cluster info | grep -q "cluster_state:ok" \
            || { echo "the cluster did not become ready" >&2; return 1; }
    done
    local list
    list=$(IFS=,; echo "${nodes[*]}")
    echo "redis-cluster://$list"
}

stop() {
    for port in $ports; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

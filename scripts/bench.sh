#!/usr/bin/env bash
# The benchmark: starts the service itself on each store, seeds sessions, and drives it with wrk
# side by side with its own /health/live route and with nginx serving the same session JSON as a
# static file. Prints a Markdown table (and writes it to target/bench/results.md).
#
#   scripts/bench.sh
#
# Settings (environment): BENCH_STORES="memory sqlite postgres redis", BENCH_SESSIONS=10000,
# BENCH_CONNECTIONS="16 64 256", BENCH_SECONDS=5, BENCH_THREADS=2, BENCH_BYTES=1024,
# BENCH_POSTGRES_URL, BENCH_POSTGRES_OPTIONS (store URL options, e.g. pool_size=8), BENCH_REDIS_URL. Installs wrk and nginx from Debian if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

stores=${BENCH_STORES:-"memory sqlite postgres redis"}
sessions=${BENCH_SESSIONS:-10000}
levels=${BENCH_CONNECTIONS:-"16 64 256"}
seconds=${BENCH_SECONDS:-5}
threads=${BENCH_THREADS:-2}
bytes=${BENCH_BYTES:-1024}
postgres_url=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/session_context_bench}
redis_url=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}
secret=bench-secret-bench-secret-bench-secret
out=target/bench
mkdir -p "$out"
work=$(mktemp -d)
chmod 755 "$work" # nginx's workers run as an unprivileged user
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    echo "installing wrk and nginx from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
cargo build --release --quiet
bin=target/release/session-context

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

# Tokens: one management token, and storefront tokens for the first 200 seeded sessions.
manager=$("$bin" token --secret "$secret" --tenant bench --scope session_context.context_manage --ttl 2h)
for i in $(seq 1 200); do
    "$bin" token --secret "$secret" --tenant bench --session-id "bench-$i" --ttl 2h
done > "$work/me-tokens"

# wrk: prints "rps p50_ms p99_ms non2xx" for one run.
run_wrk() { # url connections [script [delay ms]]
    local url=$1 conns=$2 script=${3:-} pause=${4:-0}
    local args=(-t"$threads" -c"$conns" -d"${seconds}s" --latency)
    [ -n "$script" ] && args+=(-s "scripts/bench/$script.lua")
    local threads_used=$threads
    [ "$conns" -lt "$threads" ] && threads_used=$conns && args[0]=-t"$conns"
    wrk "${args[@]}" "$url" -- "$sessions" "$manager" "$work/me-tokens" "$pause" > "$work/wrk.txt" 2>&1 || true
    awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, bad }' "$work/wrk.txt"
}

# nginx serving one seeded session's JSON as a static file.
nginx_port=$(free_port)
mkdir -p "$work/nginx/root" "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$nginx_port;
        location / { root $work/nginx/root; default_type application/json; }
    }
}
CONF

results="$out/results.md"
{
    echo "| store | route | connections | req/s | p50 ms | p99 ms | vs /health/live | vs nginx | non-2xx |"
    echo "|---|---|---|---|---|---|---|---|---|"
} > "$results"

declare -A nginx_rps
nginx_started=no

for store in $stores; do
    case $store in
        memory) url="memory://" ;;
        sqlite) url="sqlite://$work/bench.db" ;;
        postgres)
            psql "${postgres_url%/*}/postgres" -qc "DROP DATABASE IF EXISTS ${postgres_url##*/}" >/dev/null
            psql "${postgres_url%/*}/postgres" -qc "CREATE DATABASE ${postgres_url##*/}" >/dev/null
            url="$postgres_url${BENCH_POSTGRES_OPTIONS:+?$BENCH_POSTGRES_OPTIONS}" ;;
        redis)
            redis-cli -u "$redis_url" flushdb >/dev/null
            url="$redis_url?prefix=bench" ;;
        *) echo "unknown store $store" >&2; exit 2 ;;
    esac
    port=$(free_port)
    if [ "$store" != memory ]; then
        "$bin" seed --store "$url" --tenant bench --count "$sessions" --bytes "$bytes" >/dev/null
    fi
    RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --store "$url" --jwt-secret "$secret" \
        --anonymous-ttl 0 --max-connections 8192 2>"$work/$store.log" &
    pid=$!
    pids+=("$pid")
    base="http://127.0.0.1:$port"
    wait_http "$base/health/live"
    if [ "$store" = memory ]; then
        # memory:// lives inside the process: create the sessions through the API.
        python3 - "$port" "$manager" "$sessions" "$bytes" <<'PY'
import http.client, json, sys
port, token, count, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port)
pad = {f"attribute{n}": "x" * 48 for n in range(max(0, (size - 250) // 64))}
for i in range(1, count + 1):
    body = json.dumps({"siteCode": "main", "currency": "EUR", "context": pad, "metadata": {"version": 1}})
    conn.request("PUT", f"/session-context/bench/context/bench-{i}?upsert=true", body,
                 {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    conn.getresponse().read()
PY
    fi
    if [ "$nginx_started" = no ]; then
        curl -sf "$base/session-context/bench/context/bench-1" -H "Authorization: Bearer $manager" \
            > "$work/nginx/root/session.json"
        nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
        pids+=("$!")
        wait_http "http://127.0.0.1:$nginx_port/session.json"
        for conns in $levels; do
            read -r rps p50 p99 bad < <(run_wrk "http://127.0.0.1:$nginx_port/session.json" "$conns")
            nginx_rps[$conns]=$rps
            echo "| nginx (static file) | GET session.json | $conns | $rps | $p50 | $p99 | | 1.00 | $bad |" >> "$results"
        done
        nginx_started=yes
    fi
    best_get=0
    for conns in $levels; do
        read -r live p50 p99 bad < <(run_wrk "$base/health/live" "$conns")
        echo "| $store | /health/live | $conns | $live | $p50 | $p99 | 1.00 | $(awk -v a="$live" -v b="${nginx_rps[$conns]}" 'BEGIN{printf "%.2f", a/b}') | $bad |" >> "$results"
        for route in get put post_attribute me_get me_patch; do
            read -r rps p50 p99 bad < <(run_wrk "$base" "$conns" "$route")
            ratio_live=$(awk -v a="$rps" -v b="$live" 'BEGIN{printf "%.2f", a/b}')
            ratio_nginx=$(awk -v a="$rps" -v b="${nginx_rps[$conns]}" 'BEGIN{printf "%.2f", a/b}')
            echo "| $store | $route | $conns | $rps | $p50 | $p99 | $ratio_live | $ratio_nginx | $bad |" >> "$results"
            [ "$route" = get ] && [ "$rps" -gt "$best_get" ] && best_get=$rps
        done
    done
    # GET latency at about half the best GET throughput: 256 connections, each pausing
    # after every answer so that together they ask for half of it.
    pause=$(( 256 * 1000 * 2 / (best_get > 0 ? best_get : 1) ))
    read -r rps p50 p99 bad < <(run_wrk "$base" 256 get_paced "$pause")
    echo "| $store | get at ~half of $best_get req/s (256 conns, ${pause} ms pauses) | 256 | $rps | $p50 | $p99 | | | $bad |" >> "$results"
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "- $store: resident memory of the service after the run: $((rss / 1024)) MiB ($sessions sessions)" >> "$work/rss.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

{ echo; cat "$work/rss.txt"; } >> "$results"
cat "$results"

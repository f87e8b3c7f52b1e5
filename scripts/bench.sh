#!/usr/bin/env bash
# The benchmark: starts the service itself on each store, seeds sessions, and drives it with wrk
# side by side with its own /health/live route and with nginx serving the same session JSON as a
# static file. Prints Markdown tables (and writes them to target/bench/results.md).
#
#   scripts/bench.sh                          # both parts, every store
#   BENCH_PARTS=customer scripts/bench.sh     # only a customer's sessions (issue 11)
#   BENCH_PARTS=events scripts/bench.sh       # the outbox on the write path (issue 12)
#
# Parts (BENCH_PARTS, space-separated, default "routes customer events"):
# - routes: wrk on the single-session routes (GET, PUT, attribute POST, /me GET and PATCH).
# - customer: one customer with BENCH_CUSTOMER_SESSIONS sessions (plus BENCH_SESSIONS anonymous
#   ones and 100 of another customer): the time of GET /contexts?q=customerId:C for page 1 and a
#   deep page (pageSize=60, median of BENCH_CUSTOMER_REPEAT), of walking every page at
#   pageSize=1000, the service's resident memory (VmRSS, VmHWM) before and after the walk, and
#   the time of DELETE /contexts?q=customerId:C against the delete of one session.
# - events: the write benchmark (attribute POST, as in routes) with events off, with events on
#   (one --webhook-url: nginx answering 204 at once) and with events on and the receiver held
#   (it never answers: the outbox's write without the delivery work), interleaved off, on, held,
#   off, on, held (a service started afresh for each run, on the same seeded store): req/s, p99
#   and the ratios on/off and held/off;
#   and the delivery side of each run with events on: writes answered 2xx (by wrk, and by the
#   service's own request counter) against session_context_events_delivered_total, the backlog
#   when the load stops, and how long until every event is delivered and until
#   session_context_events_pending (sampled by the service every 5 s) reads 0. A store that
#   refuses events (the service does not start or a probe write fails) gets a row saying so.
#   After each held run, a fresh instance with the answering receiver times the backlog's delivery.
#
# Settings (environment): BENCH_STORES="memory sqlite postgres redis" (plus redis-cluster when
# BENCH_REDIS_CLUSTER_URL=redis-cluster://HOST:PORT,... is given; keys under a prefix of their own,
# removed afterwards), BENCH_SESSIONS=10000, BENCH_CONNECTIONS="16 64 256", BENCH_SECONDS=5,
# BENCH_THREADS=2, BENCH_BYTES=1024, BENCH_POSTGRES_URL, BENCH_POSTGRES_OPTIONS (store URL options,
# e.g. pool_size=8), BENCH_REDIS_URL, BENCH_CUSTOMER_SESSIONS=10000, BENCH_CUSTOMER_DEEP_PAGE=160,
# BENCH_CUSTOMER_REPEAT=5, BENCH_EVENTS_ROUNDS=2 (off/on pairs), BENCH_EVENTS_DRAIN_SECONDS=120
# (how long to wait for the dispatcher to catch up). Installs wrk and nginx from Debian if they are
# missing (routes and events).
set -euo pipefail
cd "$(dirname "$0")/.."

parts=${BENCH_PARTS:-"routes customer events"}
cluster_url=${BENCH_REDIS_CLUSTER_URL:-}
stores=${BENCH_STORES:-"memory sqlite postgres redis${cluster_url:+ redis-cluster}"}
sessions=${BENCH_SESSIONS:-10000}
levels=${BENCH_CONNECTIONS:-"16 64 256"}
seconds=${BENCH_SECONDS:-5}
threads=${BENCH_THREADS:-2}
bytes=${BENCH_BYTES:-1024}
postgres_url=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/session_context_bench}
redis_url=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}
customer_sessions=${BENCH_CUSTOMER_SESSIONS:-10000}
deep_page=${BENCH_CUSTOMER_DEEP_PAGE:-160}
repeat=${BENCH_CUSTOMER_REPEAT:-5}
event_rounds=${BENCH_EVENTS_ROUNDS:-2}
drain_seconds=${BENCH_EVENTS_DRAIN_SECONDS:-120}
customer=bench-customer
other_customer=bench-other-customer
cluster_prefix=bench-$$
secret=bench-secret-bench-secret-bench-secret
out=target/bench
mkdir -p "$out"
work=$(mktemp -d)
chmod 755 "$work" # nginx's workers run as an unprivileged user
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$cluster_url" ]; then clean_cluster || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

has_part() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for part in $parts; do
    case $part in
        routes | customer | events) ;;
        *) echo "unknown part $part (BENCH_PARTS: routes, customer, events)" >&2; exit 2 ;;
    esac
done

if { has_part routes || has_part events; } && { ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; }; then
    echo "installing wrk and nginx from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
cargo build --release --quiet
bin=target/release/session-context

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

# The primaries of the cluster BENCH_REDIS_CLUSTER_URL names, as host:port.
cluster_primaries() {
    local seed=${cluster_url#*://}
    seed=${seed%%[,/?]*}
    redis-cli -h "${seed%:*}" -p "${seed##*:}" cluster nodes | awk '/master/ && !/fail/ { sub(/@.*/, "", $2); print $2 }'
}
# Removes every key of this run's prefix from the cluster (it may be shared: nothing else is touched).
clean_cluster() {
    local node
    for node in $(cluster_primaries); do
        redis-cli -h "${node%:*}" -p "${node##*:}" --scan --pattern "$cluster_prefix:*" \
            | sed 's/^/UNLINK "/; s/$/"/' | redis-cli -h "${node%:*}" -p "${node##*:}" >/dev/null
    done
}

# A fresh, empty store of this kind (name: the SQLite file's); prints its URL.
fresh_store() { # store name
    case $1 in
        memory) echo "memory://" ;;
        sqlite) rm -f "$work/$2.db" "$work/$2.db-wal" "$work/$2.db-shm"; echo "sqlite://$work/$2.db" ;;
        postgres)
            PGOPTIONS=--client-min-messages=warning psql "${postgres_url%/*}/postgres" -qc "DROP DATABASE IF EXISTS ${postgres_url##*/}" >/dev/null
            psql "${postgres_url%/*}/postgres" -qc "CREATE DATABASE ${postgres_url##*/}" >/dev/null
            echo "$postgres_url${BENCH_POSTGRES_OPTIONS:+?$BENCH_POSTGRES_OPTIONS}" ;;
        redis)
            redis-cli -u "$redis_url" flushdb >/dev/null
            echo "$redis_url?prefix=bench" ;;
        redis-cluster)
            [ -n "$cluster_url" ] || { echo "redis-cluster needs BENCH_REDIS_CLUSTER_URL" >&2; return 2; }
            clean_cluster
            echo "$cluster_url?prefix=$cluster_prefix" ;;
        *) echo "unknown store $1" >&2; return 2 ;;
    esac
}

# Starts the service on a store (with further `serve` options if given); sets pid and base.
start_service() { # store url [option...]
    local port name=$1 store_url=$2
    shift 2
    port=$(free_port)
    RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --store "$store_url" --jwt-secret "$secret" \
        --anonymous-ttl 0 --max-connections 8192 "$@" 2>"$work/$name.log" &
    pid=$!
    pids+=("$pid")
    base="http://127.0.0.1:$port"
    wait_http "$base/health/live"
}
stop_service() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

# memory:// lives inside the process: creates sessions PREFIX1..PREFIXcount through the API
# (of a customer when one is given, with that customer's saas-token).
seed_api() { # prefix count [customer]
    local saas=""
    [ -n "${3:-}" ] && saas=$("$bin" token --secret "$secret" --tenant bench --subject "$3" --ttl 2h)
    python3 - "${base##*:}" "$manager" "$1" "$2" "$bytes" "${3:-}" "$saas" <<'PY'
import http.client, json, sys
port, token, prefix, count, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
customer, saas = sys.argv[6], sys.argv[7]
conn = http.client.HTTPConnection("127.0.0.1", port)
pad = {f"attribute{n}": "x" * 48 for n in range(max(0, (size - 250) // 64))}
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
if customer:
    headers["saas-token"] = saas
for i in range(1, count + 1):
    session = {"siteCode": "main", "currency": "EUR", "context": pad, "metadata": {"version": 1}}
    if customer:
        session["customerId"] = customer
    conn.request("PUT", f"/session-context/bench/context/{prefix}{i}?upsert=true", json.dumps(session), headers)
    response = conn.getresponse()
    response.read()
    if response.status not in (200, 201):
        sys.exit(f"seeding {prefix}{i}: HTTP {response.status}")
PY
}

manager=$("$bin" token --secret "$secret" --tenant bench --scope session_context.context_manage --ttl 2h)
results="$out/results.md"
: > "$results"

# wrk: prints "rps p50_ms p99_ms non2xx" for one run (its whole output stays in $work/wrk.txt).
run_wrk() { # url connections [script [delay ms]]
    local url=$1 conns=$2 script=${3:-} pause=${4:-0}
    local args=(-t"$threads" -c"$conns" -d"${seconds}s" --latency)
    [ -n "$script" ] && args+=(-s "scripts/bench/$script.lua")
    [ "$conns" -lt "$threads" ] && args[0]=-t"$conns"
    [ -f "$work/me-tokens" ] || : > "$work/me-tokens"
    wrk "${args[@]}" "$url" -- "$sessions" "$manager" "$work/me-tokens" "$pause" > "$work/wrk.txt" 2>&1 || true
    awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, bad }' "$work/wrk.txt"
}

# nginx: one seeded session's JSON as a static file (/session.json, routes) and a webhook
# receiver that answers every request to /events with 204 at once (events).
nginx_port=$(free_port)
nginx_running=no
start_nginx() {
    [ "$nginx_running" = yes ] && return 0
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
        location = /events { return 204; }
    }
}
CONF
    nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
    pids+=("$!")
    wait_http "http://127.0.0.1:$nginx_port/events"
    nginx_running=yes
}

routes_part() {
    # Storefront tokens for the first 200 seeded sessions.
    for i in $(seq 1 200); do
        "$bin" token --secret "$secret" --tenant bench --session-id "bench-$i" --ttl 2h
    done > "$work/me-tokens"

{
    echo "| store | route | connections | req/s | p50 ms | p99 ms | vs /health/live | vs nginx | non-2xx |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >> "$results"

declare -A nginx_rps
nginx_measured=no

for store in $stores; do
    url=$(fresh_store "$store" bench)
    if [ "$store" != memory ]; then
        "$bin" seed --store "$url" --tenant bench --count "$sessions" --bytes "$bytes" >/dev/null
    fi
    start_service "$store" "$url"
    [ "$store" = memory ] && seed_api bench- "$sessions"
    if [ "$nginx_measured" = no ]; then
        start_nginx
        curl -sf "$base/session-context/bench/context/bench-1" -H "Authorization: Bearer $manager" \
            > "$work/nginx/root/session.json"
        wait_http "http://127.0.0.1:$nginx_port/session.json"
        for conns in $levels; do
            read -r rps p50 p99 bad < <(run_wrk "http://127.0.0.1:$nginx_port/session.json" "$conns")
            nginx_rps[$conns]=$rps
            echo "| nginx (static file) | GET session.json | $conns | $rps | $p50 | $p99 | | 1.00 | $bad |" >> "$results"
        done
        nginx_measured=yes
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
    stop_service
done

{ echo; cat "$work/rss.txt"; } >> "$results"
}

# One request with curl: prints "status ms listed total" (listed: sessions in a JSON array
# answer; total: X-Total-Count, "-" when absent). The body is left in $work/body.
request() { # method path
    local status elapsed listed total
    read -r status elapsed < <(curl -s -X "$1" -o "$work/body" -D "$work/headers" \
        -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $manager" "$base/session-context/bench/$2")
    listed=$(awk -F'"sessionId"' '{ n += NF - 1 } END { print n + 0 }' "$work/body")
    total=$(awk 'tolower($1) == "x-total-count:" { gsub(/\r/, "", $2); print $2 }' "$work/headers")
    echo "$status $(awk -v s="$elapsed" 'BEGIN { printf "%.1f", s * 1000 }') $listed ${total:--}"
}
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.1f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
memory_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; } # pid VmRSS|VmHWM

customer_part() {
    local pages=$(( (customer_sessions + 999) / 1000 ))
    local last_page=$(( (customer_sessions + 59) / 60 ))
    [ "$deep_page" -gt "$last_page" ] && deep_page=$last_page
    {
        echo
        echo "A customer's sessions: $customer_sessions of one customer, $sessions anonymous and 100 of another customer, about $bytes bytes each."
        echo "List times are the median of $repeat requests (curl's time_total); the walk is pages 1 to $pages at pageSize=1000, one after another."
        echo
        echo "| store | list page 1 (60) ms | list page $deep_page (60) ms | walk $pages × 1000 ms | walked / X-Total-Count | RSS before → after walk MiB | peak RSS MiB | delete all ms | deleted | µs per session deleted | afterwards listed / X-Total-Count | delete one ms | all ÷ one | checks |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    } >> "$results"
    local store url q="contexts?q=customerId:$customer"
    for store in $stores; do
        url=$(fresh_store "$store" customer)
        local seed_start=$SECONDS
        if [ "$store" != memory ]; then
            "$bin" seed --store "$url" --tenant bench --count "$sessions" --bytes "$bytes" >/dev/null
            "$bin" seed --store "$url" --tenant bench --count 100 --prefix other- --bytes "$bytes" --customer "$other_customer" >/dev/null
            "$bin" seed --store "$url" --tenant bench --count "$customer_sessions" --prefix cust- --bytes "$bytes" --customer "$customer" >/dev/null
        fi
        start_service "$store-customer" "$url"
        if [ "$store" = memory ]; then
            seed_api bench- "$sessions"
            seed_api other- 100 "$other_customer"
            seed_api cust- "$customer_sessions" "$customer"
        fi
        echo "$store: seeded in $((SECONDS - seed_start)) s" >&2
        local checks=() status ms listed total times
        local rss_before rss_after hwm walk_ms=0 walked=0 walk_total=-
        rss_before=$(memory_kib "$pid" VmRSS)

        # (a) page 1 and a deep page.
        times=()
        for _ in $(seq 1 "$repeat"); do
            read -r status ms listed total < <(request GET "$q&pageSize=60")
            times+=("$ms")
            [ "$status $listed $total" = "200 $(( customer_sessions < 60 ? customer_sessions : 60 )) $customer_sessions" ] \
                || checks+=("page 1: $status, $listed listed, total $total")
        done
        local page1
        page1=$(printf '%s\n' "${times[@]}" | median)
        local deep_expected=$(( customer_sessions - (deep_page - 1) * 60 ))
        [ "$deep_expected" -gt 60 ] && deep_expected=60
        times=()
        for _ in $(seq 1 "$repeat"); do
            read -r status ms listed total < <(request GET "$q&pageSize=60&pageNumber=$deep_page")
            times+=("$ms")
            [ "$status $listed $total" = "200 $deep_expected $customer_sessions" ] \
                || checks+=("page $deep_page: $status, $listed listed, total $total")
        done
        local deep
        deep=$(printf '%s\n' "${times[@]}" | median)

        # Every page at pageSize=1000.
        for page in $(seq 1 "$pages"); do
            read -r status ms listed total < <(request GET "$q&pageSize=1000&pageNumber=$page")
            [ "$status" = 200 ] || checks+=("walk page $page: $status")
            walk_ms=$(awk -v a="$walk_ms" -v b="$ms" 'BEGIN { printf "%.1f", a + b }')
            walked=$(( walked + listed ))
            walk_total=$total
        done
        [ "$walked $walk_total" = "$customer_sessions $customer_sessions" ] || checks+=("walk: $walked listed, total $walk_total")
        # (b) memory: resident now, and the peak since the service started.
        rss_after=$(memory_kib "$pid" VmRSS)
        hwm=$(memory_kib "$pid" VmHWM)

        # (c) one session (an anonymous one: no saas-token needed), then all of the customer's.
        times=()
        for i in $(seq 1 "$repeat"); do
            read -r status ms _ _ < <(request DELETE "context/bench-$i")
            times+=("$ms")
            [ "$status" = 204 ] || checks+=("delete bench-$i: $status")
        done
        local one
        one=$(printf '%s\n' "${times[@]}" | median)
        local all deleted
        read -r status all _ _ < <(request DELETE "$q")
        deleted=$(sed -n 's/.*"deleted": *\([0-9]*\).*/\1/p' "$work/body")
        [ "$status ${deleted:-}" = "200 $customer_sessions" ] || checks+=("delete all: $status, deleted ${deleted:-?}")
        local after_listed after_total
        read -r status _ after_listed after_total < <(request GET "$q")
        [ "$status $after_listed $after_total" = "200 0 0" ] || checks+=("list afterwards: $status, $after_listed listed, total $after_total")
        read -r status _ listed total < <(request GET "contexts?q=customerId:$other_customer&pageSize=1000")
        [ "$status $listed $total" = "200 100 100" ] || checks+=("other customer afterwards: $status, $listed listed, total $total")

        local ratio
        ratio=$(awk -v a="$all" -v b="$one" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
        local per_session
        per_session=$(awk -v a="$all" -v n="${deleted:-0}" 'BEGIN { printf "%.1f", (n > 0 ? a * 1000 / n : 0) }')
        local verdict=ok
        [ "${#checks[@]}" -eq 0 ] || verdict=$(IFS=';'; echo "${checks[*]}")
        echo "| $store | $page1 | $deep | $walk_ms | $walked / $walk_total | $(mib "$rss_before") → $(mib "$rss_after") | $(mib "$hwm") | $all | ${deleted:-?} | $per_session | $after_listed / $after_total | $one | $ratio | $verdict |" >> "$results"
        stop_service
        if [ "$store" = redis-cluster ]; then clean_cluster; fi
    done
}

# The service's own counts, from /metrics: "writes delivered pending". writes: requests other
# than GET, HEAD and OPTIONS answered 2xx (each change records one event); delivered:
# session_context_events_delivered_total; pending: session_context_events_pending as the service
# last sampled it (every 5 s), -1 when events are off.
event_counts() {
    curl -sf "$base/metrics" | awk '
        /^session_context_http_requests_total\{/ && !/method="(GET|HEAD|OPTIONS)"/ && /status="2/ { w += $NF }
        /^session_context_events_delivered_total / { d = $NF }
        /^session_context_events_pending / { p = $NF }
        END { printf "%d %d %d\n", w, d, (p == "" ? -1 : p) }'
}
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# Polls /metrics until every write since the given counts has its event delivered, then until
# the pending gauge reads 0, at most drain_seconds. Prints "all_delivered_s pending_zero_s
# writes delivered" (seconds from the call, "-" when not reached; the last counts read).
wait_drained() { # writes_before delivered_before
    local t0=$EPOCHREALTIME w d p all=- zero=- now
    while :; do
        read -r w d p < <(event_counts)
        now=$(since "$t0")
        if [ "$all" = - ] && [ $((d - $2)) -ge $((w - $1)) ]; then all=$now; fi
        # The gauge counts only once all is delivered: an older sample may still read 0.
        if [ "$all" != - ] && [ "$p" -eq 0 ]; then zero=$now; break; fi
        awk -v n="$now" -v m="$drain_seconds" 'BEGIN { exit !(n >= m) }' && break
        sleep 0.1
    done
    echo "$all $zero $w $d"
}

events_part() {
    start_nginx
    local hook="http://127.0.0.1:$nginx_port/events"
    local on_options=(--webhook-url "$hook" --webhook-secret bench-webhook-secret-bench-webhook-secret)
    local runs="$work/events-runs"
    : > "$runs"
    {
        echo
        echo "Events: the outbox on the write path. Attribute POST on random seeded sessions ($sessions of about $bytes bytes), wrk ${seconds} s per run, with events off, on (one --webhook-url: nginx answering 204 at once, on the same machine) and on with the receiver held (never answering), interleaved off, on, held × $event_rounds; a service started afresh for each run, on the same seeded store."
        echo "2xx writes: wrk's count (requests − non-2xx) and the service's own (session_context_http_requests_total, 2xx writes); delivered: session_context_events_delivered_total; backlog: writes − delivered when wrk stopped; pending gauge: session_context_events_pending, which the service samples every 5 s (read twice a second during the load); all delivered / pending gauge 0: seconds after wrk stopped until delivered = writes, and then until the gauge read 0 (up to 5 s behind)."
        echo
        echo "| store | connections | run | events | req/s | p50 ms | p99 ms | non-2xx | 2xx writes (wrk) | 2xx writes (service) | delivered | backlog when the load stopped | pending gauge, highest during the load | all delivered after s | pending gauge 0 after s |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    } >> "$results"
    local store url round mode refused options status
    local rps p50 p99 bad requests w0 d0 w1 d1 all zero w d poller peak
    : > "$work/drains"
    # A receiver that never answers: a socket that is listened on and never accepted from.
    # The dispatcher's 64 deliveries to it wait (10 s each) and it claims nothing more, so a
    # run with it measures the outbox on the write path alone, and leaves a backlog. Closing
    # the socket resets those 64 deliveries (retried a second later, not left claimed).
    local held_port held_pid
    held_port=$(free_port)
    local held_hook="http://127.0.0.1:$held_port/events"
    hold_receiver() {
        python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096); time.sleep(1e9)' "$held_port" &
        held_pid=$!
        pids+=("$held_pid")
        sleep 0.3
    }
    # After a run with the receiver held ($w events written since that service started), a
    # fresh instance with the answering receiver delivers the backlog with no load: the time
    # until everything is delivered, and then until the pending gauge reads 0.
    drain_backlog() {
        local backlog=$w t0 dd dp all=- every=- now most=-
        start_service "$store-events-drain" "$url" "${on_options[@]}"
        t0=$EPOCHREALTIME
        while :; do
            read -r _ dd dp < <(event_counts)
            now=$(since "$t0")
            if [ "$most" = - ] && [ $((dd * 10)) -ge $((backlog * 9)) ]; then most=$now; fi
            if [ "$all" = - ] && [ "$dd" -ge "$backlog" ]; then all=$now; fi
            if [ "$all" != - ] && [ "$dp" -eq 0 ]; then every=$now; break; fi
            awk -v n="$now" -v m="$drain_seconds" 'BEGIN { exit !(n >= m) }' && break
            sleep 0.1
        done
        local rate=-
        [ "$most" != - ] && rate=$(awk -v n="$backlog" -v t="$most" 'BEGIN { printf "%.0f", (t > 0 ? n * 0.9 / t : 0) }')
        echo "| $store | $round | $backlog | $dd | $most | $rate | $all | $every |" >> "$work/drains"
        stop_service
    }
    for store in $stores; do
        url=$(fresh_store "$store" events)
        if [ "$store" != memory ]; then
            "$bin" seed --store "$url" --tenant bench --count "$sessions" --bytes "$bytes" >/dev/null
        fi
        refused=""
        for round in $(seq 1 "$event_rounds"); do
            for mode in off on held; do
                options=()
                if [ "$mode" != off ]; then
                    [ -n "$refused" ] && continue
                    options=("${on_options[@]}")
                    [ "$mode" = held ] && options=(--webhook-url "$held_hook" "${on_options[@]:2}")
                fi
                [ "$mode" = held ] && hold_receiver
                if ! start_service "$store-events-$mode" "$url" "${options[@]}"; then
                    kill "$pid" 2>/dev/null || true
                    [ "$mode" != off ] || { cat "$work/$store-events-$mode.log" >&2; return 1; }
                    refused="the service does not start with events on ($(grep -m1 -o 'panicked.*\|error.*' "$work/$store-events-$mode.log" | cut -c1-160))"
                    continue
                fi
                [ "$store" = memory ] && seed_api bench- "$sessions"
                if [ "$mode" = on ]; then
                    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $manager" \
                        -H 'Content-Type: application/json' -d '{"key":"probe","value":1}' \
                        "$base/session-context/bench/context/bench-1/attributes" || true)
                    if [ "${status:0:1}" != 2 ]; then
                        refused="a write with events on answered HTTP $status"
                        stop_service
                        continue
                    fi
                    wait_drained 0 0 >/dev/null # the seeding's and the probe's events
                fi
                for conns in $levels; do
                    read -r w0 d0 _ < <(event_counts)
                    # The pending gauge while the load runs (read twice a second, both modes alike).
                    ( while :; do event_counts; sleep 0.5; done ) > "$work/during" 2>/dev/null &
                    poller=$!
                    read -r rps p50 p99 bad < <(run_wrk "$base" "$conns" post_attribute)
                    kill "$poller"; wait "$poller" 2>/dev/null || true
                    peak=$(awk '$3 > m { m = $3 } END { print m + 0 }' "$work/during")
                    requests=$(awk '/requests in/ { print $1 }' "$work/wrk.txt")
                    read -r w1 d1 _ < <(event_counts)
                    if [ "$mode" = on ]; then
                        read -r all zero w d < <(wait_drained "$w0" "$d0")
                        echo "| $store | $conns | $round | on | $rps | $p50 | $p99 | $bad | $((requests - bad)) | $((w - w0)) | $((d - d0)) | $(( (w1 - w0) - (d1 - d0) )) | $peak | $all | $zero |" >> "$results"
                        echo "$store $conns $round on $rps $p99 $((w - w0)) $((d - d0)) $all" >> "$runs"
                    elif [ "$mode" = held ]; then
                        sleep 0.5
                        read -r w d _ < <(event_counts)
                        echo "| $store | $conns | $round | on, receiver held | $rps | $p50 | $p99 | $bad | $((requests - bad)) | $((w - w0)) | $((d - d0)) | $(( (w1 - w0) - (d1 - d0) )) | $peak | (below) | |" >> "$results"
                        echo "$store $conns $round held $rps $p99 $((w - w0)) $((d - d0)) -" >> "$runs"
                    else
                        sleep 0.5 # the requests wrk left in flight
                        read -r w _ < <(event_counts)
                        echo "| $store | $conns | $round | off | $rps | $p50 | $p99 | $bad | $((requests - bad)) | $((w - w0)) | | | | | |" >> "$results"
                        echo "$store $conns $round off $rps $p99 $((w - w0)) 0 -" >> "$runs"
                    fi
                done
                if [ "$mode" = held ]; then kill "$held_pid"; wait "$held_pid" 2>/dev/null || true; sleep 1; fi
                stop_service
                if [ "$mode" = held ] && [ "$store" != memory ]; then drain_backlog; fi
            done
        done
        if [ -n "$refused" ]; then
            echo "| $store | | | on | skipped: $refused | | | | | | | | | | |" >> "$results"
            echo "$store - - refused" >> "$runs"
        fi
    done
    {
        echo
        echo "Events on against off, side by side (means of the $event_rounds runs of each; each pair: on ÷ off of the runs next to each other). \"held\": events on with a receiver that never answers, so the dispatcher, its 64 deliveries in flight, claims nothing more: the outbox's write in the transaction without the delivery work."
        echo
        echo "| store | connections | req/s off | req/s on | on/off | each pair | req/s held | held/off | p99 ms off | p99 ms on | on/off p99 | p99 ms held | delivered / 2xx writes (service), runs with events on | slowest catch-up after the load s |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    } >> "$results"
    awk -v drain="$drain_seconds" '
        $4 == "refused" { refused[$1] = 1; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } next }
        {
            key = $1 " " $2
            if (!(key in seen)) { seen[key] = 1; order[++n] = key }
            runs[key, $4]++; rps[key, $4] += $5; p99[key, $4] += $6
            last[key, $4, $3] = $5
            if ($4 == "on") {
                writes[key] += $7; delivered[key] += $8
                if ($9 == "-") late[key] = 1
                else if ($9 + 0 > slow[key] + 0) slow[key] = $9 + 0
            }
        }
        END {
            for (i = 1; i <= n; i++) {
                key = order[i]; split(key, k, " ")
                if (key in refused) { printf "| %s | | | skipped: events refused (see the runs above) | | | | | | | | | | |\n", key; continue }
                off = rps[key, "off"] / runs[key, "off"]; on = runs[key, "on"] ? rps[key, "on"] / runs[key, "on"] : 0
                poff = p99[key, "off"] / runs[key, "off"]; pon = runs[key, "on"] ? p99[key, "on"] / runs[key, "on"] : 0
                pairs = ""
                for (r = 1; (key, "off", r) in last; r++)
                    if ((key, "on", r) in last)
                        pairs = pairs (pairs == "" ? "" : ", ") sprintf("%.2f", last[key, "on", r] / last[key, "off", r])
                if (!runs[key, "on"]) { printf "| %s | %s | %.0f | | | | | | %.2f | | | | | |\n", k[1], k[2], off, poff; continue }
                held = runs[key, "held"] ? sprintf("%.0f | %.2f", rps[key, "held"] / runs[key, "held"], rps[key, "held"] / runs[key, "held"] / off) : " | "
                pheld = runs[key, "held"] ? sprintf("%.2f", p99[key, "held"] / runs[key, "held"]) : ""
                catchup = (key in late) ? "not within " drain : sprintf("%.1f", slow[key])
                printf "| %s | %s | %.0f | %.0f | %.2f | %s | %s | %.2f | %.2f | %.2f | %s | %d / %d | %s |\n", k[1], k[2], off, on, on / off, pairs, held, poff, pon, pon / poff, pheld, delivered[key], writes[key], catchup
            }
        }' "$runs" >> "$results"
    if [ -s "$work/drains" ]; then
        {
            echo
            echo "The backlog a held run left (its receiver closed first, so no delivery stays claimed), delivered by a fresh instance with the answering receiver and no load (the memory store loses it on restart): seconds from the instance's start until 90 % of the backlog is delivered (and that rate), until all of it is, and until the pending gauge read 0 too. Events the stopped instance had claimed (its last deliveries, failing against the closed receiver), and the later events of their sessions, wait for those claims to run out (20 s)."
            echo
            echo "| store | run | backlog (2xx writes, receiver held) | delivered | 90 % delivered after s | events/s to 90 % | all delivered after s | gauge 0 after s |"
            echo "|---|---|---|---|---|---|---|---|"
            cat "$work/drains"
        } >> "$results"
    fi
}

if has_part routes; then routes_part; fi
if has_part customer; then customer_part; fi
if has_part events; then events_part; fi
cat "$results"

#!/usr/bin/env bash
# Long concurrent-history runs (tests/stores/histories/): on every store, rounds of clients hammering
# fresh sessions through the real binary (two instances on PostgreSQL, Redis and Redis
# Cluster), each round's history checked for linearizability, until the time bound; then
# HISTORY_CRASHES rounds per persistent store in which a service process is killed with
# SIGKILL mid-round and restarted.
#   scripts/histories.sh                          # 120 s per store, 10 crashes per store
#   HISTORY_SECONDS=1800 HISTORY_CLIENTS=16 scripts/histories.sh
#   HISTORY_SEED=<printed seed> scripts/histories.sh   # replay a failing run's choices
# The shared stores come from the same variables as `cargo test` (SESSION_CONTEXT_TEST_*_URL,
# see README); a store without one is skipped loudly (a failure under CI=true). Start a local
# cluster with scripts/redis-cluster.sh start.
set -euo pipefail
cd "$(dirname "$0")/.."
export HISTORY_SECONDS=${HISTORY_SECONDS:-120}
export HISTORY_CRASHES=${HISTORY_CRASHES:-10}
# One store at a time, so each gets the whole time bound and both cores.
# (The filter picks the history runs of the stores binary: `histories::<store>::..._linearizable..`.)
cargo test --test stores -- --test-threads=1 --nocapture linearizable 2>&1 \
    | grep --line-buffered -E 'SKIPPED|HISTORY_SEED|rounds|across SIGKILL|^test |panicked|not linearizable|#[0-9]+ client|None of these|test result'

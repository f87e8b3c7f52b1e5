#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of request bodies, tokens and whole HTTP
# requests through the router, each for a bounded time. Seeds are in fuzz/seeds/<target>; what
# the fuzzer learns goes to fuzz/corpus (not committed); crashes to fuzz/artifacts.
#   scripts/fuzz.sh          # 60 s per target
#   FUZZ_SECONDS=600 scripts/fuzz.sh
# Runs on the stable toolchain without a sanitizer (`--sanitizer none`); every target asserts
# its own properties, so a panic is a finding.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in request_bodies tokens http_requests; do
    mkdir -p "corpus/$target"
    echo "== $target ($seconds s)"
    cargo fuzz run --sanitizer none -O "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds"
done

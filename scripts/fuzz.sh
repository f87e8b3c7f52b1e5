#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of request bodies, tokens and whole HTTP
# requests through the router, each for a bounded time. Seeds are in fuzz/seeds/<target>; what
# the fuzzer learns goes to fuzz/corpus (not committed); crashes to fuzz/artifacts.
#   scripts/fuzz.sh                      # 60 s per target
#   FUZZ_SECONDS=600 scripts/fuzz.sh     # a longer campaign
#   scripts/fuzz.sh tokens               # one target
# Runs on the stable toolchain without a sanitizer (`--sanitizer none`); every target asserts
# its own properties (fuzz/checks.rs), so a panic is a finding.
#
# Every crash becomes a regression test: the script minimizes it and copies it to
# fuzz/regressions/<target>/, which `cargo test` replays (tests/api/fuzz_regressions.rs). It then
# exits 1. Fix the bug, check that `cargo test --test api fuzz_regressions::` passes, and commit the
# input together with the fix.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_bodies tokens http_requests)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
found=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "regressions/$target" "artifacts/$target"
    echo "== $target ($seconds s)"
    # Keep going after a crash (-fork with -ignore_crashes), so one finding does not end the
    # campaign; every crash lands in artifacts/<target>/.
    cargo fuzz run --sanitizer none -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 || true
    for artifact in "artifacts/$target"/crash-* "artifacts/$target"/timeout-* "artifacts/$target"/oom-*; do
        [ -e "$artifact" ] || continue
        name=$(basename "$artifact")
        [ -e "regressions/$target/$name" ] && continue
        echo "!! $target found $name; minimizing it"
        minimized="artifacts/$target/minimized-$name"
        if cargo fuzz tmin --sanitizer none -O "$target" "$artifact" -- -exact_artifact_path="$minimized" >/dev/null 2>&1 \
            && [ -s "$minimized" ]; then
            cp "$minimized" "regressions/$target/$name"
        else
            cp "$artifact" "regressions/$target/$name"
        fi
        echo "   -> fuzz/regressions/$target/$name (replayed by cargo test --test api fuzz_regressions::)"
        found=1
    done
done
if [ "$found" = 1 ]; then
    echo "The fuzzer found bugs: see fuzz/regressions/. Fix them, then commit the inputs with the fixes."
    exit 1
fi
echo "No crashes."

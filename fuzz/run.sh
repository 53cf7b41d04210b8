#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) with cargo-fuzz on the
# stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the sanitizer flags it needs).
# Corpora grow in fuzz/corpus/<target> (not committed); a crash stops the run
# and leaves its input in fuzz/artifacts/<target>/ — commit it as a regression
# test (see README "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
cargo fuzz build
for target in $targets; do
    mkdir -p "corpus/$target"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    echo "fuzz: $target for ${seconds}s"
    log="$(mktemp)"
    if ! cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz: $target failed; its input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
    rm -f "$log"
done

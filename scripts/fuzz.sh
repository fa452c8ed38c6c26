#!/usr/bin/env bash
# A short fuzzing run of every target in fuzz/ (docs/fuzzing.md): builds them once
# (cargo-fuzz, libFuzzer, on the stable toolchain through RUSTC_BOOTSTRAP=1; cargo-fuzz
# is installed when missing), then runs each for SECONDS (default 30), two at a time,
# from the corpus kept in fuzz/corpus/. New inputs go to a temporary directory, so the
# repository's corpus is left as it is. Fails on the first crash, with the target's
# output and the crashing input under fuzz/artifacts/<target>/.
#
# The targets are built without a sanitizer unless FUZZ_SANITIZER says otherwise
# (`address`, cargo-fuzz's own default): the code they drive has no `unsafe`, and
# without AddressSanitizer they build in two thirds of the time and run 5 to 8 times
# more inputs a second (docs/fuzzing.md, "The test script's run").
#
#   scripts/fuzz.sh            # every target, 30 s each
#   scripts/fuzz.sh 10 internal client_text
#   FUZZ_SANITIZER=address scripts/fuzz.sh 600 websocket_http
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-30}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# The fuzz crate is outside the workspace: `cargo fmt --all` at the root skips it.
cargo fmt -- --check
echo "== fuzz: building ${#targets[@]} targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin="target/$triple/release"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Runs one target; its output goes to $scratch/<target>.log.
run() {
    local t="$1"
    mkdir -p "$scratch/$t" "artifacts/$t"
    "$bin/$t" "$scratch/$t" "corpus/$t" -max_total_time="$seconds" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$scratch/$t.log" 2>&1
}

# Reports a finished target; returns non-zero for a crash.
report() {
    local t="$1" status="$2"
    local runs
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")"
    if [ "$status" -ne 0 ]; then
        echo "FAILED: fuzz target $t (exit $status); its output:" >&2
        tail -n 60 "$scratch/$t.log" >&2
        echo "The input is under fuzz/artifacts/$t/; docs/fuzzing.md says how to reproduce it." >&2
        return 1
    fi
    echo "   $t: ${runs:-?} executions in ${seconds}s, no crash"
}

echo "== fuzz: ${seconds}s per target, two at a time"
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    first="${targets[i]}"
    second="${targets[i + 1]:-}"
    run "$first" &
    first_pid=$!
    if [ -n "$second" ]; then
        run "$second" &
        second_pid=$!
    fi
    first_status=0
    wait "$first_pid" || first_status=$?
    second_status=0
    if [ -n "$second" ]; then
        wait "$second_pid" || second_status=$?
    fi
    report "$first" "$first_status"
    if [ -n "$second" ]; then
        report "$second" "$second_status"
    fi
done

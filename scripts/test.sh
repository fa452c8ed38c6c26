#!/usr/bin/env bash
# Runs every test of the workspace, against real services: it installs and starts
# MariaDB, Redis and memcached, and installs Chromium, when they are missing
# (scripts/services.sh), checks formatting and lints, that the rooms starter builds
# with only the file store (and lints clean so), then runs the whole test suite, and
# fuzzes every decoder for 20 seconds (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's heading says when it began, so a slow CI run shows where its time went.
stage() { echo "== $1 (at ${SECONDS}s)"; }

# shellcheck source=scripts/services.sh
source scripts/services.sh

echo "== services: mysql=$SWITCHBOARD_TEST_MYSQL_URL redis=$SWITCHBOARD_TEST_REDIS_URL memcached=$SWITCHBOARD_TEST_MEMCACHED"
stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
stage "cargo doc"
# The rustdoc builds without a warning: every intra-doc link resolves.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
stage "file-store-only build (cargo features)"
# An application that uses only the file store — the rooms starter, whose manifest asks
# for `file-store` alone — must build without the network store clients and the sqlx
# drivers (docs/guide.md, "Trimming the build").
trimmed=(-p rooms)
tree="$(cargo tree "${trimmed[@]}" -e normal --prefix none)"
for crate in redis async-memcached sqlx-mysql sqlx-sqlite mimalloc; do
    if grep -q "^$crate v" <<<"$tree"; then
        echo "FAILED: $crate is in the file-store-only build of the rooms starter:" >&2
        cargo tree "${trimmed[@]}" -e normal -i "$crate" >&2 || true
        exit 1
    fi
done
# Code behind a feature must be clean without it too (the workspace's lint unifies
# every feature on).
cargo clippy "${trimmed[@]}" --all-targets --quiet -- -D warnings
# Built alone, the starter refuses a configuration that needs a backend it lacks (the
# test is ignored in the workspace-wide run, where cargo unifies features).
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${trimmed[@]}" --run-ignored only --no-fail-fast
else
    cargo test "${trimmed[@]}" --test rooms -- --ignored
fi
stage "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doc-tests: every example of the rustdoc, the README and
    # docs/ (crates/doc-examples) is compiled here.
    stage "doc-tests"
    cargo test --workspace --doc --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
# Every decoder, fuzzed for 20 seconds from the corpus in fuzz/corpus/ (two targets at a
# time, built without a sanitizer; docs/fuzzing.md has the long runs).
stage "fuzz"
scripts/fuzz.sh 20
stage "done"

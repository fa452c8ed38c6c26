#!/usr/bin/env bash
# Runs every test of the workspace, against real services: it installs and starts
# MariaDB, Redis and memcached, and installs Chromium, when they are missing
# (scripts/services.sh), checks
# formatting and lints, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

echo "== services: mysql=$SWITCHBOARD_TEST_MYSQL_URL redis=$SWITCHBOARD_TEST_REDIS_URL memcached=$SWITCHBOARD_TEST_MEMCACHED"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doc-tests: every example of the rustdoc, the README and
    # docs/ (crates/doc-examples) is compiled here.
    echo "== doc-tests"
    cargo test --workspace --doc --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi

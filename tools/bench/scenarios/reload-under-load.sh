#!/usr/bin/env bash
# Reload the workers (or SIGKILL one) in the middle of steady private traffic, and
# report what the clients saw: lost messages, disconnected clients, worst latency, and
# how long the reload (or the restart of the killed worker) took.
#
#   tools/bench/scenarios/reload-under-load.sh reload|kill WORKERS [RUNS]
#
# Environment: BIN (directory holding release `chat` and `bench`, default
# target-perf/release), CLIENTS (1000), RATE (5000 msg/s), DURATION (20 s of sending;
# the disturbance comes after 8 s).
set -euo pipefail
mode=${1:?reload or kill}
workers=${2:?number of workers}
runs=${3:-3}
bin=${BIN:-target-perf/release}
clients=${CLIENTS:-1000}
rate=${RATE:-5000}
duration=${DURATION:-20}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for run in $(seq 1 "$runs"); do
    dir=$(mktemp -d)
    port=$(free_port)
    cat >"$dir/bench.toml" <<TOML
name = "reload-bench"
data_dir = "$dir/data"

[store]
backend = "file"
path = "store.sqlite"

[gateway]
count = 1
max_clients = 19000

[[gateway.listeners]]
listen = "127.0.0.1:$port"

[worker]
count = $workers

[log]
level = "warn,switchboard=info"
TOML
    chat() { "$bin/chat" --config "$dir/bench.toml" "$@"; }
    chat start -d >/dev/null
    # Ready: every worker linked to the gateway.
    for _ in $(seq 1 100); do
        if [ "$(chat status | grep -c ' gw:1 ')" -eq "$workers" ]; then break; fi
        sleep 0.1
    done
    "$bin/bench" private --addr "127.0.0.1:$port" --data-dir "$dir/data" \
        --clients "$clients" --rate "$rate" --seconds "$duration" --procs 2 --grace 5 \
        >"$dir/bench.out" 2>&1 &
    bench_pid=$!
    sleep 8
    before=$(chat status | sed -n 's/^clients connected: //p')
    log="$dir/data/run/switchboard.log"
    t0=$(date +%s.%N)
    if [ "$mode" = reload ]; then
        chat reload >/dev/null
        until grep -q "reload: done" "$log"; do sleep 0.02; done
    else
        victim=$(chat status | awk '$1 == "worker" { print $3; exit }')
        kill -9 "$victim"
        # Done when the slot runs a new, linked worker again.
        until [ "$(chat status | grep -c ' gw:1 ')" -eq "$workers" ] &&
            ! chat status | grep -q " $victim "; do sleep 0.02; done
    fi
    t1=$(date +%s.%N)
    after=$(chat status | sed -n 's/^clients connected: //p')
    wait "$bench_pid" || true
    figures=$(grep '^run 1:' "$dir/bench.out" | sed 's/^run 1: //')
    printf 'run %s: mode=%s workers=%s clients_before=%s clients_after=%s disturbance_s=%.2f %s\n' \
        "$run" "$mode" "$workers" "$before" "$after" "$(awk "BEGIN { print $t1 - $t0 }")" "$figures"
    chat stop >/dev/null
    rm -rf "$dir"
done

#!/usr/bin/env bash
# Statistics + metrics on against off, on the private-message benchmark.
#
#   CARGO_TARGET_DIR=target-bench cargo build --release -p chat -p bench
#   scripts/bench-statistics.sh [RATE] [ROUNDS]        # default 20000 msg/s, 3 rounds
#
# Each round starts the chat twice — with `[statistic]` and `[metrics]` enabled (the
# default), then with both disabled — each time a fresh deployment on free ports, runs
# one `bench private --addr` against it, and stops it. Rounds alternate on/off so that
# other load on the machine falls on both alike. Besides bench's own figures it prints
# the supervisor's CPU time during the run (it ingests the spool and merges metrics),
# read from /proc/PID/stat. Only processes this script started are signalled.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-20000}"
rounds="${2:-3}"
bin=target-bench/release
[ -x "$bin/chat" ] && [ -x "$bin/bench" ] || {
    echo "build first: CARGO_TARGET_DIR=target-bench cargo build --release -p chat -p bench" >&2
    exit 1
}
tick=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of every gateway and worker of the deployment (pids from supervisor.json).
children_ticks() {
    python3 - "$1" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
total = 0
for c in state["children"]:
    if c["pid"]:
        f = open(f"/proc/{c['pid']}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
print(total)
PY
}

run_one() {
    local mode="$1" dir port admin flag pid t0 t1 start end
    dir="$(mktemp -d)"
    port="$(free_port)"
    admin="$(free_port)"
    flag=true
    [ "$mode" = off ] && flag=false
    cat >"$dir/chat.toml" <<EOF
name = "bench-stat"
secret = "bench-secret"
data_dir = "$dir/data"
[store]
backend = "file"
path = "store.sqlite"
[[gateway.listeners]]
name = "telnet"
listen = "127.0.0.1:$port"
protocol = "text"
[worker]
count = 2
discovery_interval = "200ms"
[log]
level = "warn"
[admin]
listen = "127.0.0.1:$admin"
[statistic]
enabled = $flag
[metrics]
enabled = $flag
EOF
    "$bin/chat" --config "$dir/chat.toml" start -d >/dev/null
    pid="$(cat "$dir/data/run/supervisor.pid")"
    sleep 2
    t0="$(cpu_ticks "$pid")"
    c0="$(children_ticks "$dir/data/run/supervisor.json")"
    start="$(date +%s.%N)"
    echo "== $mode ($(date +%H:%M:%S))"
    "$bin/bench" private --addr "127.0.0.1:$port" --data-dir "$dir/data" \
        --clients 200 --rate "$rate" --seconds 10 --procs 2 --runs 1 2>/dev/null | grep -E "^run 1"
    t1="$(cpu_ticks "$pid")"
    c1="$(children_ticks "$dir/data/run/supervisor.json")"
    end="$(date +%s.%N)"
    # Whole run (sending and the grace period after), so a backlog's work counts too.
    awk -v a="$t0" -v b="$t1" -v c="$c0" -v d="$c1" -v s="$start" -v e="$end" -v hz="$tick" -v n="$((rate * 10))" \
        'BEGIN { printf "cpu per message: gateway+workers %.1f us, supervisor %.2f us (%.1f %% of a core over %.0f s)\n", 1e6 * (d - c) / hz / n, 1e6 * (b - a) / hz / n, 100 * (b - a) / hz / (e - s), e - s }'
    "$bin/chat" --config "$dir/chat.toml" stop >/dev/null
    rm -rf "$dir"
}

for ((r = 1; r <= rounds; r++)); do
    run_one on
    run_one off
done

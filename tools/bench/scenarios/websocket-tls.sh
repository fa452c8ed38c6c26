#!/usr/bin/env bash
# The set of docs/BENCHMARKS.md "WebSocket and TLS in the gateway": every figure beside
# its telnet (or plain) baseline, run one after the other in one session, 3 runs each.
#
#   tools/bench/scenarios/websocket-tls.sh [idle|handshake|private|private-ab|broadcast]...
#
# Environment: BIN (directory holding release `chat` and `bench`, default
# target/release), OUT (directory for the logs, default target/bench-ws-tls).
# With no argument every part runs (about an hour on 2 shared cores, most of it the
# logins of 10,000 clients into one room).
set -euo pipefail
bin=${BIN:-target/release}
out=${OUT:-target/bench-ws-tls}
mkdir -p "$out"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(idle handshake private broadcast)

run() {
    local name=$1
    shift
    echo "== $name: bench $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$bin/bench" "$@" --chat "$bin/chat" 2>&1 | tee "$out/$name.log" | grep -v '^run '
}

for part in "${parts[@]}"; do
    case $part in
    idle)
        # 20,000 idle clients: 2 gateways and 2 generator processes, so that no
        # process holds more than 20,000 open files.
        for p in "text" "text --tls" "websocket" "websocket --tls"; do
            run "idle-${p// /}" connect --clients 20000 --procs 2 --gateways 2 --hold 5 \
                --runs 3 --protocol $p
        done
        ;;
    handshake)
        for p in "text" "text --tls" "websocket" "websocket --tls"; do
            run "handshake-${p// /}" handshake --concurrency 32 --seconds 10 --procs 2 \
                --runs 3 --protocol $p
        done
        ;;
    private)
        for rate in 10000 20000; do
            for p in "text" "websocket" "websocket --tls"; do
                run "private-$rate-${p// /}" private --clients 200 --rate $rate --seconds 10 \
                    --procs 2 --runs 3 --protocol $p
            done
        done
        ;;
    private-ab)
        # The same, alternating text / ws / wss run by run (5 rounds), so that other
        # people's load drifts over all three alike; medians per protocol at the end.
        rate=${RATE:-10000}
        for round in 1 2 3 4 5; do
            for p in "text" "websocket" "websocket --tls"; do
                run "ab-$rate-${p// /}-$round" private --clients 200 --rate $rate \
                    --seconds 10 --procs 2 --runs 1 --json --protocol $p
            done
        done
        python3 - "$out" "$rate" <<'PY'
import json, statistics, sys, glob
out, rate = sys.argv[1], sys.argv[2]
keys = ["lost", "p50_ms", "p99_ms", "gateway_us_per_msg", "workers_us_per_msg",
        "loadgen_us_per_msg", "cpu_gateways_pct", "cpu_loadgen_pct", "cpu_others_pct"]
for p in ["text", "websocket", "websocket--tls"]:
    runs = []
    for f in sorted(glob.glob(f"{out}/ab-{rate}-{p}-[0-9].log")):
        for line in open(f):
            if line.startswith("{"):
                runs.append(json.loads(line))
    print(f"{p} ({len(runs)} runs):")
    for k in keys:
        v = [r[k] for r in runs]
        print(f"  {k:<22} {statistics.median(v):.2f} [{min(v):.2f}..{max(v):.2f}]")
PY
        ;;
    broadcast)
        # One login phase (quadratic in a browser room: 8 logins at a time per
        # process keep the chat's queries under the worker's 3 s query_timeout), then
        # 3 measured rounds.
        for p in "websocket" "text"; do
            run "broadcast-10000-${p// /}" broadcast --clients 10000 --rate ${RATE:-20} \
                --seconds 10 --procs 2 --login-concurrency 8 --rounds 3 --protocol $p
        done
        ;;
    *)
        echo "unknown part $part" >&2
        exit 2
        ;;
    esac
done

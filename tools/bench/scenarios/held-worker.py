#!/usr/bin/env python3
"""A worker held up by a long handler, and what the other clients see, per routing.

Starts a deployment of the testkit's fixture application (one gateway, two workers, a
text listener on 127.0.0.1:9480) with `gateway.routing` set to ROUTING, then for 20 s:
50 clients each send `/pid` every 20 ms (2,500 lines/s) while one more sends `/block
100` every 500 ms (a worker's only thread held 100 ms of every 500). Prints the /pid
round trips (p50, p99, p99.9, max, share of 10 ms or more) and how many lines each
worker answered, then stops the deployment. `--no-block` leaves the blocker out: the
noise floor of this client (one Python process) on the machine. `--held-up-after D`
sets `gateway.held_up_after` (least busy: how long a worker with events in flight may
acknowledge none before it is passed over; `0` turns that off).

    cargo build -p switchboard-testkit --bin fixture
    tools/bench/scenarios/held-worker.py target/debug/fixture sticky
    tools/bench/scenarios/held-worker.py target/debug/fixture least_busy
    tools/bench/scenarios/held-worker.py target/debug/fixture least_busy --held-up-after 0
    tools/bench/scenarios/held-worker.py target/debug/fixture sticky --no-block

Bounded: 20 s of load, a 10 s wait for any one answer.
"""
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time

ADDR = ("127.0.0.1", 9480)
CLIENTS, EVERY, SECONDS = 50, 0.020, 20.0
CONFIG = """
data_dir = "{dir}/data"
[gateway]
routing = "{routing}"
{held_up_after}[[gateway.listeners]]
name = "main"
protocol = "text"
listen = "127.0.0.1:9480"
[worker]
count = 2
[store]
backend = "file"
path = "store.sqlite"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
"""


async def ask(reader, writer, line):
    writer.write(line)
    await writer.drain()
    return (await asyncio.wait_for(reader.readline(), 10)).decode().strip()


async def pinger(rtts, pids, stop_at):
    reader, writer = await asyncio.open_connection(*ADDR)
    while time.monotonic() < stop_at:
        start = time.monotonic()
        pids[await ask(reader, writer, b"/pid\n")] += 1
        rtts.append(time.monotonic() - start)
        await asyncio.sleep(max(0.0, EVERY - (time.monotonic() - start)))
    writer.close()


async def blocker(blocks, stop_at):
    reader, writer = await asyncio.open_connection(*ADDR)
    while time.monotonic() < stop_at:
        start = time.monotonic()
        blocks[await ask(reader, writer, b"/block 100\n")] += 1
        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - start)))
    writer.close()


async def load(block):
    rtts, pids, blocks = [], collections.Counter(), collections.Counter()
    stop_at = time.monotonic() + SECONDS
    tasks = [pinger(rtts, pids, stop_at) for _ in range(CLIENTS)]
    if block:
        tasks.append(blocker(blocks, stop_at))
    await asyncio.gather(*tasks)
    return sorted(rtts), pids, blocks


def main():
    if len(sys.argv) < 3 or sys.argv[2] not in ("sticky", "least_busy"):
        sys.exit(__doc__)
    fixture, routing = os.path.abspath(sys.argv[1]), sys.argv[2]
    options = sys.argv[3:]
    block = "--no-block" not in options
    held_up_after = ""
    if "--held-up-after" in options:
        at = options.index("--held-up-after") + 1
        if at >= len(options):
            sys.exit("--held-up-after needs a duration (10ms, 0, ...)")
        held_up_after = f'held_up_after = "{options[at]}"\n'
    with tempfile.TemporaryDirectory() as dir:
        config = os.path.join(dir, "fixture.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(dir=dir, routing=routing, held_up_after=held_up_after))
        run = lambda *args: subprocess.run(
            [fixture, "--config", config, *args], check=True, capture_output=True
        )
        run("start", "-d")
        try:
            time.sleep(3)  # the workers link to the gateway
            rtts, pids, blocks = asyncio.run(load(block))
        finally:
            run("stop")
    q = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1000
    slow = sum(1 for r in rtts if r >= 0.010)
    print(
        f"{routing}{'' if block else ' (no blocker)'}"
        f"{' ' + held_up_after.strip() if held_up_after else ''}: {len(rtts)} lines, "
        f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, p99.9 {q(0.999):.2f} ms, "
        f"max {rtts[-1] * 1000:.1f} ms, >= 10 ms: {slow} ({100 * slow / len(rtts):.2f} %); "
        f"lines per worker {sorted(pids.values())}; blocks per worker {sorted(blocks.values())}"
    )


if __name__ == "__main__":
    main()

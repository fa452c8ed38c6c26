#!/usr/bin/env python3
"""Turns the CSV of `bench soak --csv FILE` into a Markdown table (one row per sample)
and, with --svg, a plot of every server process's resident memory over time.

    tools/bench/scenarios/soak-report.py target/soak/soak-60.csv --svg docs/soak-rss.svg

Standard library only. The table gives VmRSS in MiB (two decimals: 10 KiB steps show)
and, where the CSV has it, RssAnon (heap and stacks) in parentheses; a `*` where a
worker is a new process (after a reload); CPU as percent of one core,
messages of the sample's minute and the run's running totals of losses, duplicates
and unexpected disconnects.
"""

import argparse
import csv
import sys

COLORS = ["#1b6ac9", "#d2452b", "#2a9d3c", "#9b59b6", "#e08e0b", "#555555"]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def processes(rows):
    return [k[len("rss_"):-len("_kib")] for k in rows[0] if k.startswith("rss_")]


def mib(kib):
    return f"{int(kib) / 1024:.2f}"


def table(rows):
    procs = processes(rows)
    head = (
        ["min", "load"]
        + [f"{p} MiB" + (" (anon)" if f"anon_{p}_kib" in rows[0] else "") for p in procs]
        + ["CPU gw/wk/sup/bench/others %", "private sent/recv", "bcast deliveries",
           "p99 priv/bcast ms", "conn/disc", "lost", "dup", "unexp. disc.", "reloads"]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous = {}
    for r in rows:
        cells = [f"{float(r['minute']):g}", r["load1"]]
        for p in procs:
            cell = mib(r[f"rss_{p}_kib"])
            if r.get(f"anon_{p}_kib"):
                cell += f" ({mib(r[f'anon_{p}_kib'])})"
            pid = r.get(f"pid_{p}")
            if pid is not None and p in previous and previous[p] != pid:
                cell += "*"
            previous[p] = pid
            cells.append(cell)
        cpu = "/".join(
            f"{float(r[k]):.0f}" if k == "cpu_others_pct" else f"{float(r[k]):.1f}"
            for k in ["cpu_gateway_pct", "cpu_worker_pct", "cpu_supervisor_pct",
                      "cpu_bench_pct", "cpu_others_pct"]
        )
        cells += [
            cpu,
            f"{r['private_sent']}/{r['private_received']}",
            r["broadcast_received"],
            f"{r['private_p99_ms']}/{r['broadcast_p99_ms']}",
            f"{r['connects']}/{r['disconnects']}",
            str(int(r["lost_private_total"]) + int(r["lost_broadcast_total"])),
            r["duplicates_total"],
            r["unexpected_disconnects_total"],
            r["reloads_total"],
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def svg(rows, title):
    procs = processes(rows)
    width, height = 760, 380
    left, right, top, bottom = 60, 150, 30, 45
    xs = [float(r["minute"]) for r in rows]
    series = {p: [int(r[f"rss_{p}_kib"]) / 1024 for r in rows] for p in procs}
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    lo, hi = max(0.0, lo - 1.0), hi + 1.0
    x0, x1 = 0.0, max(xs)

    def px(x):
        return left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)

    def py(y):
        return top + (hi - y) / ((hi - lo) or 1) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">{title}</text>',
    ]
    step = 1 if hi - lo <= 12 else 2 if hi - lo <= 24 else 5
    y = int(lo) + 1
    while y < hi:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" '
                     f'y2="{py(y):.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}</text>')
        y += step
    x = 0
    while x <= x1:
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" '
                     f'y2="{height - bottom}" stroke="#f0f0f0"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle">{x}</text>')
        x += 5 if x1 <= 60 else 10
    # Reloads: where the running count goes up.
    reloads = [r["reloads_total"] for r in rows]
    for i in range(1, len(rows)):
        if reloads[i] != reloads[i - 1]:
            parts.append(f'<line x1="{px(xs[i]):.1f}" x2="{px(xs[i]):.1f}" y1="{top}" '
                         f'y2="{height - bottom}" stroke="#bbbbbb" stroke-dasharray="3,3"/>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" '
                 f'text-anchor="middle">minutes (dashed: a reload happened in that minute)</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2})">VmRSS, MiB</text>')
    for i, p in enumerate(procs):
        color = COLORS[i % len(COLORS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, series[p]))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
                     f'points="{points}"/>')
        ly = top + 14 + 18 * i
        parts.append(f'<line x1="{width - right + 12}" x2="{width - right + 32}" '
                     f'y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2.5"/>')
        parts.append(f'<text x="{width - right + 38}" y="{ly}">{p}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--svg", help="write a plot of RSS over time here")
    ap.add_argument("--title", default="bench soak: resident memory of every server process")
    args = ap.parse_args()
    rows = read(args.csv)
    if not rows:
        sys.exit("no samples in " + args.csv)
    print(table(rows))
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg(rows, args.title))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draws the scaling curve from several benchmark reports (scripts/bench --curve).

Usage: bench-curve.py OUT.png OUT.txt REPORT.json...

Panel 1: seconds per 100,000 doctors against N for C (rebuilder run end to
end), the machine's bound L, A (raw _bulk), S_tcs and S_gmc, so that one
sees how the cost grows with the work (flat lines grow linearly).
Panel 2: the rebuilder's peak resident memory against N, with the 256 MB
target at 1M doctors.
The text file holds the same figures as a table.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MEMORY_TARGET_MB = 256


def figures(path):
    with open(path) as f:
        r = json.load(f)
    n = r["dataset"]["doctors"]
    c = r.get("c_rebuilder") or {}
    a = (r.get("a_ceiling") or {}).get("best") or {}
    bound = r.get("bound") or {}
    row = {
        "doctors": n,
        "C": c.get("wall_secs"),
        "L": bound.get("secs"),
        "L term": bound.get("term", "n/a"),
        "A": a.get("secs"),
        "S_tcs": (r.get("s_tcs") or {}).get("secs"),
        "S_gmc": (r.get("s_gmc") or {}).get("secs"),
        "E": r.get("efficiency"),
        "peak MB": c.get("peak_rss_mb"),
    }
    return row


def per_100k(row, key):
    v = row.get(key)
    return None if v is None else v * 100_000 / row["doctors"]


def main(png, txt, paths):
    rows = sorted((figures(p) for p in paths), key=lambda r: r["doctors"])
    if not rows:
        sys.exit("no reports given")
    ns = [r["doctors"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), constrained_layout=True)
    styles = {"C": ("#1f77b4", "o-"), "L": ("#d62728", "s--"), "A": ("#2ca02c", "^:"),
              "S_tcs": ("#9467bd", "v:"), "S_gmc": ("#8c564b", "d:")}
    for key, (colour, style) in styles.items():
        pts = [(r["doctors"], per_100k(r, key)) for r in rows if r.get(key) is not None]
        if pts:
            top.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, label=key)
    top.set_xscale("log")
    top.set_xticks(ns, [f"{n // 1000}k" for n in ns])
    top.set_ylabel("seconds per 100,000 doctors")
    top.set_title("cost per 100,000 doctors against the size of the data set")
    top.grid(True, alpha=0.3)
    top.legend()
    mem = [(r["doctors"], r["peak MB"]) for r in rows if r.get("peak MB") is not None]
    bottom.plot([m[0] for m in mem], [m[1] for m in mem], "o-", color="#1f77b4",
                label="rebuilder peak RSS")
    bottom.axhline(MEMORY_TARGET_MB, color="#d62728", linestyle="--",
                   label=f"target {MEMORY_TARGET_MB} MB at 1M")
    bottom.set_xscale("log")
    bottom.set_xticks(ns, [f"{n // 1000}k" for n in ns])
    bottom.set_ylabel("MB")
    bottom.set_xlabel("doctors")
    bottom.set_title("peak memory of the rebuilder process")
    bottom.grid(True, alpha=0.3)
    bottom.legend()
    fig.savefig(png, dpi=110)

    def cell(v, fmt):
        return "n/a" if v is None else fmt.format(v)

    lines = ["doctors      C s   C s/100k     L s  L set by   E     A s   S_tcs s  S_gmc s  peak MB"]
    for r in rows:
        lines.append(
            f"{r['doctors']:>8} {cell(r['C'], '{:>8.1f}')} {cell(per_100k(r, 'C'), '{:>10.1f}')} "
            f"{cell(r['L'], '{:>7.1f}')}  {r['L term']:<8} {cell(r['E'], '{:>4.2f}')} "
            f"{cell(r['A'], '{:>6.1f}')} {cell(r['S_tcs'], '{:>9.1f}')} {cell(r['S_gmc'], '{:>8.1f}')} "
            f"{cell(r['peak MB'], '{:>8.0f}')}"
        )
    with open(txt, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

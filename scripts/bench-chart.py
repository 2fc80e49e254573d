#!/usr/bin/env python3
"""Draws the benchmark's chart from its JSON report (scripts/bench runs this).

Usage: bench-chart.py REPORT.json OUT.png

Panels, on one time axis (seconds since each measurement started):
  1. documents written over time: A (the raw _bulk ceiling, best config) and
     C (rebuilder run, the new generation's indexing total), with C's phases
     shaded, the alias swap marked, and B's extrapolated rate for scale;
  2. the probe's latency on current_connections, errors in red, swap marked;
  3. the cores each part of the stack used during C (where the time goes);
  4. the rebuilder process's resident memory against the 256 MB target.
Needs only matplotlib (its wheel ships its own fonts).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

PHASE_COLOURS = ["#f2f2f2", "#e3ecf7"]


def thousands(x, _pos):
    if abs(x) >= 1_000_000:
        return f"{x / 1_000_000:g}M"
    if abs(x) >= 1_000:
        return f"{x / 1_000:g}k"
    return f"{x:.0f}"


def main(report_path, png_path):
    with open(report_path) as f:
        r = json.load(f)
    a = (r.get("a_ceiling") or {}).get("best")
    b = r.get("b_old_path")
    c = r.get("c_rebuilder")
    probe = r.get("probe")
    ds = r["dataset"]
    machine = r["machine"]

    fig, axes = plt.subplots(
        4, 1, figsize=(12, 12.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.8, 1.3]}
    )
    docs_ax, probe_ax, cpu_ax, mem_ax = axes
    title = (
        f"rebuilder benchmark: {ds['doctors']:,} doctors, OpenSearch {machine['opensearch_version']} "
        f"({machine['opensearch_heap_mb']} MB heap), {machine['cores']} cores"
    )
    if r.get("smoke"):
        title += " (SMOKE: figures mean nothing)"
    fig.suptitle(title + f"\n{r['command']}  ({r['generated_at'][:19]}Z)", fontsize=11)

    swap = None
    if probe and probe["summary"].get("swap_at_secs") is not None:
        swap = probe["summary"]["swap_at_secs"]

    # 1. Documents written over time.
    end = 0.0
    if c:
        for i, p in enumerate(c.get("phases") or []):
            if p.get("start_secs") is None:
                continue
            x0, x1 = p["start_secs"], p["start_secs"] + p["secs"]
            for ax in axes:
                ax.axvspan(x0, x1, color=PHASE_COLOURS[i % 2], zorder=0)
            if p["secs"] >= 0.04 * max(c["wall_secs"], 1):
                docs_ax.text(
                    (x0 + x1) / 2, 1.0, p["phase"], transform=docs_ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color="#555555", rotation=0,
                )
        series = c["run"].get("series") or []
        if series:
            t, v = zip(*series)
            docs_ax.plot(t, v, color="#d62728", lw=2,
                         label=f"C rebuilder run end to end: {c['docs_per_sec']:,.0f} docs/s "
                               f"({c['docs']:,} docs in {c['wall_secs']:.1f} s)")
            end = max(end, t[-1])
    if a:
        series = a.get("series") or []
        if series:
            t, v = zip(*series)
            docs_ax.plot(t, v, color="#1f77b4", lw=2,
                         label=f"A ceiling, raw _bulk {a['batch_docs']} docs x {a['concurrency']} in flight: "
                               f"{a['docs_per_sec']:,.0f} docs/s")
            end = max(end, t[-1])
    if b and end > 0:
        docs_ax.plot([0, end], [0, b["docs_per_sec"] * end], color="#7f7f7f", lw=1.5, ls="--",
                     label=f"B old path, one upsert per doc: {b['docs_per_sec']:,.1f} docs/s "
                           f"(extrapolated from {b['sample_docs']:,} docs in {b['sample_secs']:.0f} s)")
    d = r.get("d_reindex")
    if d:
        docs_ax.plot([], [], " ", label=f"D server-side _reindex (reference): {d['docs_per_sec']:,.0f} docs/s")
    ratios = r.get("ratios") or {}
    if ratios.get("c_over_a") is not None:
        docs_ax.plot([], [], " ", label=f"C/A = {ratios['c_over_a'] * 100:.0f}%   "
                                        f"C/B = {ratios.get('c_over_b') or 0:,.0f}x")
    docs_ax.set_ylabel("documents written")
    docs_ax.yaxis.set_major_formatter(FuncFormatter(thousands))
    docs_ax.set_ylim(bottom=0)
    docs_ax.legend(loc="lower right", fontsize=8)
    docs_ax.grid(alpha=0.3)

    # 2. Probe latency.
    if probe and probe.get("samples"):
        s = probe["samples"]
        ok = [x for x in s if x["ok"]]
        bad = [x for x in s if not x["ok"]]
        summ = probe["summary"]
        probe_ax.plot([x["t"] for x in ok], [x["latency_ms"] for x in ok], ".", ms=3, color="#2ca02c",
                      label=f"{summ['alias']} every {summ['interval_ms']} ms: {summ['queries']} queries, "
                            f"p50 {summ['p50_ms']:.1f} ms, p99 {summ['p99_ms']:.1f} ms, max {summ['max_ms']:.1f} ms")
        probe_ax.plot([x["t"] for x in bad], [x["latency_ms"] for x in bad], "x", ms=6, color="#d62728",
                      label=f"errors: {summ['errors']}")
        probe_ax.set_yscale("log")
        # Head room above the slowest query, so the legend hides no point.
        lat = [x["latency_ms"] for x in s] or [1.0]
        probe_ax.set_ylim(max(min(lat) / 2, 0.1), max(lat) * 12)
        probe_ax.legend(loc="upper left", fontsize=8)
    else:
        probe_ax.text(0.5, 0.5, "no probe (C not measured)", transform=probe_ax.transAxes, ha="center")
    probe_ax.set_ylabel("probe latency (ms)")
    probe_ax.grid(alpha=0.3, which="both")

    # 3. CPU by part of the stack.
    cpu_series = (c or {}).get("run", {}).get("cpu_series") or []
    if cpu_series:
        groups = [
            ("mongo (SecantusDB)", "mongo (SecantusDB)", "#8c564b"),
            ("opensearch", "opensearch", "#1f77b4"),
            ("rebuilder run (measured)", "rebuilder run", "#d62728"),
            ("rabbitmq", "rabbitmq", "#ff7f0e"),
            ("tcs-simulator", "tcs-simulator", "#bcbd22"),
            ("bench", "bench (loader, probe)", "#17becf"),
            ("other", "other work on the machine", "#c7c7c7"),
        ]

        def group_of(role):
            for key, _, _ in groups:
                if role.startswith(key):
                    return key
            return "other"

        t = [p[0] for p in cpu_series]
        stacks = {key: [0.0] * len(t) for key, _, _ in groups}
        for i, (_, load) in enumerate(cpu_series):
            for role, cores in load.items():
                stacks[group_of(role)][i] += cores
        # Each point covers the interval that ends at its time: the first
        # one covers the run's start too.
        t = [0.0] + t
        stacks = {k: v[:1] + v for k, v in stacks.items()}
        used = [(key, label, colour) for key, label, colour in groups if any(stacks[key])]
        cpu_ax.stackplot(t, [stacks[k] for k, _, _ in used], labels=[lab for _, lab, _ in used],
                         colors=[col for _, _, col in used], step="pre", alpha=0.85)
        cores = machine["cores"]
        cpu_ax.axhline(cores, color="black", lw=0.8, ls=":")
        cpu_ax.set_ylim(0, cores * 1.15)
        cpu_ax.legend(loc="upper left", fontsize=7, ncol=4)
    else:
        cpu_ax.text(0.5, 0.5, "no CPU samples (C not measured)", transform=cpu_ax.transAxes, ha="center")
    cpu_ax.set_ylabel("cores used during C")
    cpu_ax.grid(alpha=0.3)

    # 4. Memory.
    if c and c["run"]["usage"].get("rss_series"):
        t, v = zip(*c["run"]["usage"]["rss_series"])
        mem_ax.plot(t, v, color="#9467bd", lw=1.5, label=f"rebuilder RSS (peak {c['peak_rss_mb']:.0f} MB)")
        mem_ax.axhline(256, color="#9467bd", ls=":", lw=1, label="target at 1M doctors: 256 MB")
        mem_ax.set_ylim(0, max(320, max(v) * 1.1))
        mem_ax.legend(loc="upper left", fontsize=8)
    mem_ax.set_ylabel("MB")
    mem_ax.set_xlabel("seconds since the start of each measurement")
    mem_ax.grid(alpha=0.3)

    if swap is not None:
        for ax in axes:
            ax.axvline(swap, color="black", lw=1, ls="--")
        docs_ax.annotate("alias swap", xy=(swap, 0.5), xycoords=("data", "axes fraction"),
                         xytext=(4, 0), textcoords="offset points", fontsize=8)

    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    print(f"Wrote {png_path}.")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

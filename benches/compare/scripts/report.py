#!/usr/bin/env python3
"""Writes the benchmark table (markdown) from one run of scripts/bench: criterion medians
(target/criterion/<scenario>_<row>/new/estimates.json), instruction counts
(target/instructions.tsv), allocations (target/mem.tsv) and the end-to-end ratio
(target/e2e.tsv). Usage: report.py <target dir> > table.md"""
import json
import os
import sys

target = sys.argv[1]
ROWS = ["baseline", "floor", "sketch", "ours", "ours-time", "ours-slow", "ours-fallback",
        "baseline-oneshot", "ours-oneshot",
        "failsafe", "recloser", "tower-resilience", "seatbelt"]
LABEL = {
    "baseline": "raw service (no breaker)",
    "floor": "floor: 1 shared load + 1 fetch_add",
    "sketch": "sketch: floor + a response future owning an `Arc`",
    "ours": "**tower-circuit-breaker** (count window)",
    "ours-time": "tower-circuit-breaker, time window 30 s",
    "ours-slow": "tower-circuit-breaker, + slow calls",
    "ours-fallback": "tower-circuit-breaker, fallback (C)",
    "baseline-oneshot": "raw service, cloned per call (`oneshot`, as hyper and axum call it)",
    "ours-oneshot": "tower-circuit-breaker, cloned per call (`oneshot`)",
    "failsafe": "failsafe 1.3",
    "recloser": "recloser 1.4",
    "tower-resilience": "tower-resilience-circuitbreaker 0.14",
    "seatbelt": "seatbelt 0.11 (tower-service)",
}


def ns(scenario, row):
    path = os.path.join(target, "criterion", f"{scenario}_{row}", "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def tsv(name):
    path = os.path.join(target, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    head = lines[0]
    return [dict(zip(head, l)) for l in lines[1:]]


ir = {(r["row"], r["scenario"]): r for r in tsv("instructions.tsv")}
mem = {r["row"]: r for r in tsv("mem.tsv")}
e2e = {r["mode"]: r["requests_per_s"] for r in tsv("e2e.tsv")}


def f(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


base_a, base_b = ns("A", "baseline"), ns("B", "baseline")
base_ir_a = float(ir[("baseline", "A")]["Ir/call"]) if ("baseline", "A") in ir else None
base_ir_b = float(ir[("baseline", "B")]["Ir/call"]) if ("baseline", "B") in ir else None

print("| row | A ns (+ns over raw) | A Ir (+Ir) | B ns (+ns) | B Ir (+Ir) | C ns rejected | C Ir | "
      "clock reads/call A·B·C | D ns/call/thread | D÷A (2 = perfect) | allocs/call A·B·C | "
      "heap/breaker B (live) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for row in ROWS:
    a, b, c, d = ns("A", row), ns("B", row), ns("C", row), ns("D", row)

    def irv(s):
        r = ir.get((row, s))
        return None if r is None else float(r["Ir/call"])

    def clock(s):
        r = ir.get((row, s))
        return "–" if r is None else f"{float(r['clock_gettime/call']):.2g}"

    ia, ib, ic = irv("A"), irv("B"), irv("C")
    a_cell = "–" if a is None else f"{a:.1f} (+{a - base_a:.1f})" if base_a and row != "baseline" else f(a)
    b_cell = "–" if b is None else f"{b:.1f} (+{b - base_b:.1f})" if base_b and row != "baseline" else f(b)
    ia_cell = "–" if ia is None else f"{ia:.0f} (+{ia - base_ir_a:.0f})" if base_ir_a is not None and row != "baseline" else f"{ia:.0f}"
    ib_cell = "–" if ib is None else f"{ib:.0f} (+{ib - base_ir_b:.0f})" if base_ir_b is not None and row != "baseline" else f"{ib:.0f}"
    ratio = "–" if (a is None or d is None) else f"{2 * a / d:.2f}"
    m = mem.get(row, {})
    allocs = "·".join(m.get(k, "–") for k in ("allocs_A", "allocs_B", "allocs_C")) if m else "–"
    heap = f"{m['heap_bytes']} in {m['heap_allocs']} ({m['live_bytes']})" if m else "–"
    print(f"| {LABEL[row]} | {a_cell} | {ia_cell} | {b_cell} | {ib_cell} | {f(c)} | "
          f"{'–' if ic is None else f'{ic:.0f}'} | {clock('A')}·{clock('B')}·{clock('C')} | {f(d)} | "
          f"{ratio} | {allocs} | {heap} |")

if e2e:
    raw, br = float(e2e["raw"]), float(e2e["breaker"])
    print()
    print(f"End to end (hyper, 127.0.0.1, interleaved batches): raw {raw:.0f} req/s, with the "
          f"breaker {br:.0f} req/s (ratio of the totals {float(e2e['ratio']):.3f}); median of the "
          f"batches' paired ratios **{float(e2e['median_batch_ratio']):.3f}**.")

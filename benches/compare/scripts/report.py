#!/usr/bin/env python3
"""Writes the benchmark tables (markdown) from one run of scripts/bench: criterion medians
(target/criterion/<scenario>_<row>/new/estimates.json), instruction counts
(target/instructions.tsv), allocations (target/mem.tsv) and the end-to-end figures
(target/e2e.tsv). The rows, their order and their labels come from `target/release/cg --list`
(src/lib.rs, `ROWS`). Two tables: the rows as applications call them (`<row>-await`) first, then
the same rows polled in line. Usage: report.py <target dir> > table.md"""
import json
import os
import subprocess
import sys

target = sys.argv[1]


def tsv_lines(text):
    lines = [l.rstrip("\n").split("\t") for l in text.splitlines() if l.strip()]
    return [dict(zip(lines[0], l)) for l in lines[1:]] if lines else []


def tsv(name):
    path = os.path.join(target, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return tsv_lines(f.read())


ROWS = tsv_lines(subprocess.run([os.path.join(target, "release", "cg"), "--list"],
                                check=True, capture_output=True, text=True).stdout)


def ns(scenario, row):
    path = os.path.join(target, "criterion", f"{scenario}_{row}", "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


ir = {(r["row"], r["scenario"]): r for r in tsv("instructions.tsv")}
mem = {r["row"]: r for r in tsv("mem.tsv")}
e2e = {r["mode"]: r for r in tsv("e2e.tsv")}


def f(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def table(suffix):
    """One table: every row of `cg --list` whose name ends in `suffix` ("-await" or "")."""
    base = f"baseline{suffix}"
    base_a, base_b = ns("A", base), ns("B", base)
    base_ir_a = float(ir[(base, "A")]["Ir/call"]) if (base, "A") in ir else None
    base_ir_b = float(ir[(base, "B")]["Ir/call"]) if (base, "B") in ir else None

    print("| row | A ns (+ns over raw) | A Ir (+Ir) | B ns (+ns) | B Ir (+Ir) | C ns rejected | C Ir | "
          "clock reads/call A·B·C | D ns/call/thread | D÷A (2 = perfect) | allocs/call A·B·C | "
          "heap/breaker B (live) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in ROWS:
        row = spec["row"]
        if row.endswith("-await") != (suffix == "-await"):
            continue
        a, b, c, d = ns("A", row), ns("B", row), ns("C", row), ns("D", row)

        def irv(s):
            r = ir.get((row, s))
            return None if r is None else float(r["Ir/call"])

        def clock(s):
            r = ir.get((row, s))
            return "–" if r is None else f"{float(r['clock_gettime/call']):.2g}"

        ia, ib, ic = irv("A"), irv("B"), irv("C")
        a_cell = "–" if a is None else f"{a:.1f} (+{a - base_a:.1f})" if base_a and row != base else f(a)
        b_cell = "–" if b is None else f"{b:.1f} (+{b - base_b:.1f})" if base_b and row != base else f(b)
        ia_cell = "–" if ia is None else f"{ia:.0f} (+{ia - base_ir_a:.0f})" if base_ir_a is not None and row != base else f"{ia:.0f}"
        ib_cell = "–" if ib is None else f"{ib:.0f} (+{ib - base_ir_b:.0f})" if base_ir_b is not None and row != base else f"{ib:.0f}"
        ratio = "–" if (a is None or d is None) else f"{2 * a / d:.2f}"
        # `mem` measures each row once (polled in line): the driver allocates nothing.
        m = mem.get(row.removesuffix("-await"), {})
        allocs = "·".join(m.get(k, "–") for k in ("allocs_A", "allocs_B", "allocs_C")) if m else "–"
        heap = f"{m['heap_bytes']} in {m['heap_allocs']} ({m['live_bytes']})" if m else "–"
        print(f"| {spec['label']} | {a_cell} | {ia_cell} | {b_cell} | {ib_cell} | {f(c)} | "
              f"{'–' if ic is None else f'{ic:.0f}'} | {clock('A')}·{clock('B')}·{clock('C')} | {f(d)} | "
              f"{ratio} | {allocs} | {heap} |")


def end_to_end():
    """The end-to-end sentence (src/bin/e2e.rs): server CPU figures with their confidence
    interval, then wall clock; from an e2e.tsv of an older e2e (no `pinned` line), wall clock
    only."""
    wall = {k: float(v["requests_per_s"]) for k, v in e2e.items() if k != "pinned"}
    if "pinned" not in e2e:
        return (f"End to end (hyper, 127.0.0.1, interleaved batches): raw {wall['raw']:.0f} req/s, "
                f"with the breaker {wall['breaker']:.0f} req/s (ratio of the totals "
                f"{wall['ratio']:.3f}); median of the batches' paired ratios "
                f"**{wall['median_batch_ratio']:.3f}**.")
    cpu = {k: float(e2e[k]["server_cpu_us_per_request"])
           for k in ("raw", "breaker", "ratio", "median_batch_ratio", "ci95_low", "ci95_high")}
    busy = min(float(e2e["raw"]["server_busy"]), float(e2e["breaker"]["server_busy"]))
    pinned = ("server and load generator pinned to a CPU each"
              if e2e["pinned"]["requests_per_s"] == "1" else "unpinned")
    return (
        f"End to end (hyper HTTP/1.1 on 127.0.0.1, both modes on one server thread, {pinned}; "
        f"{int(wall['pairs'])} interleaved pairs of {int(wall['requests_per_batch'])}-request "
        f"batches on {int(wall['connections'])} connections): server CPU per request raw "
        f"{cpu['raw']:.2f} µs, with the breaker {cpu['breaker']:.2f} µs; throughput ratio from CPU "
        f"time, median of the pairs, **{cpu['median_batch_ratio']:.3f}** (95 % CI "
        f"{cpu['ci95_low']:.3f}–{cpu['ci95_high']:.3f}; over all batches {cpu['ratio']:.3f}). "
        f"Wall clock: raw {wall['raw']:.0f} req/s, with the breaker {wall['breaker']:.0f} req/s "
        f"(over all batches {wall['ratio']:.3f}); median of the paired ratios "
        f"{wall['median_batch_ratio']:.3f} (95 % CI {wall['ci95_low']:.3f}–{wall['ci95_high']:.3f}); "
        f"server busy {busy * 100:.0f} % of the time."
    )


print("As applications call it (`<row>-await`: `svc.ready().await` + `svc.call(x).await`, polled "
      "as an executor polls a task):")
print()
table("-await")
print()
print("Polled in line (`<row>`: the compiler sees through the future; the least a call can cost):")
print()
table("")
if e2e:
    print()
    print(end_to_end())

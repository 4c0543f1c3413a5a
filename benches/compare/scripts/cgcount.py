#!/usr/bin/env python3
"""Reads a callgrind output file; prints total Ir and the number of calls made to clock_gettime and
malloc (by any caller). Used by scripts/instructions."""
import re
import sys

names = {}
totals = {"clock": 0, "malloc": 0}
ir = 0
current = None
with open(sys.argv[1]) as f:
    for line in f:
        if line.startswith("cfn="):
            m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
            if m.group(2):
                names[m.group(1)] = m.group(2)
            name = names.get(m.group(1), "")
            if "clock_gettime" in name:
                current = "clock"
            elif re.search(r"(^|\W)(malloc|__libc_malloc)(\W|$)", name):
                current = "malloc"
            else:
                current = None
        elif line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.strip())
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
        elif line.startswith("calls=") and current:
            totals[current] += int(line.split("=")[1].split()[0])
            current = None
        elif line.startswith("summary:") or line.startswith("totals:"):
            ir = int(line.split()[1])
print(ir, totals["clock"], totals["malloc"])

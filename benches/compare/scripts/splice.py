#!/usr/bin/env python3
"""Puts a run's tables into a markdown file, between the markers <!-- table:begin --> and
<!-- table:end -->, under a line saying which run they come from; the rest of the file (the
prose) is kept. Used by scripts/bench. Usage: splice.py <file.md> <meta line> <table>"""
import sys

path, meta, table = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path) as f:
    text = f.read()
begin, end = "<!-- table:begin -->", "<!-- table:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
with open(path, "w") as f:
    f.write(f"{head}{begin}\n{meta}\n\n{table}\n{end}{tail}")

"""Print a Markdown table (time and rows/s) from a pytest-benchmark JSON file.

Usage: ``python bench/rows_per_second.py bench/baseline/Linux-CPython-3.11-64bit/0001_small.json``

rows/s uses ``extra_info["rows"]``; both the best round (min, the least disturbed by other
processes on a shared machine) and the mean are shown.
"""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    with open(path) as handle:
        data = json.loads(handle.read())
    lines = [
        (
            f"Size: {data.get('dtpm_fast', {}).get('bench_size', '?')}; "
            f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}"
        ),
        "",
        "| group | benchmark | rows | min s | mean s | rows/s (min) | rows/s (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["name"])):
        rows = b["extra_info"].get("rows")
        st = b["stats"]

        def rate(t, rows=rows):
            return f"{rows / t:,.0f}" if rows else "-"

        lines.append(
            f"| {b['group']} | {b['name']} | {rows or '-'} | {st['min']:.4f} | {st['mean']:.4f} | "
            f"{rate(st['min'])} | {rate(st['mean'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(arg))

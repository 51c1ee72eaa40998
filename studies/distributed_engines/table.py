"""Print results/all_runs.jsonl as the Markdown table of README.md."""

from __future__ import annotations

import json
from pathlib import Path


def main() -> None:
    runs = [
        json.loads(line) for line in Path(__file__).with_name("results").joinpath("all_runs.jsonl").open()
    ]
    print(
        "| UTC, end of run | command (in studies/distributed_engines/) | load (1 min) | rows/s | read+score+write s "
        "| start-up s | peak PSS MiB | peak RSS MiB | threads per worker | same batches | vs reference |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        command = r["command"].replace("python studies/distributed_engines/", "")
        seconds = r.get("score_and_write_s", r.get("read_and_score_s", r.get("score_s")))
        if "same_batches_bit_identical" in r:
            same = (
                "bit-identical"
                if r["same_batches_bit_identical"]
                else f"{r['same_batches_rows_differing']} differ"
            )
            ref = (
                f"{r['reference_rows_differing']:,} rows differ, max {r['reference_max_abs_diff']:.1e}"
                if r["reference_rows_differing"]
                else "bit-identical"
            )
        else:
            same = "-"
            ref = "bit-identical" if r.get("reference_bit_identical", True) else "differs"
            if command.startswith("make_data"):
                ref = "(is the reference)"
        threads = r.get("dtpm_threads_per_worker", r.get("threads", ""))
        print(
            f"| {r['date_utc'][11:16]} | `{command}` | {r['loadavg_1_5_15'][0]} | {r['rows_per_s']:,} | {seconds} "
            f"| {r.get('startup_s', '-')} | {r['peak_pss_mib']:,} | {r['peak_rss_mib']:,} | {threads} | {same} | {ref} |"
        )


if __name__ == "__main__":
    main()

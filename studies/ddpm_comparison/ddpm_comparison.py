"""DDPM reconstruction vs. DTPM: AUC-ROC and inference speed on the same data and machine.

For every (dataset, seed) the ADBench protocol of docs/METHOD.md section 6 prepares the split;
each model is fitted on the training rows (timed) and scores the test rows (timed, AUC-ROC).
For the first seed of each dataset the inference throughput is also measured on a fixed-size
batch (the test rows tiled to ``--bench-rows`` rows) so that every model is timed on the same
work, not on a test set so small that per-call overhead dominates.

Rows are appended to ``--out`` (CSV) as each run finishes; a rerun skips what is there, so the
job can be stopped and resumed, and models can be added later. ``--report`` turns the CSV into
the markdown table of ``studies/ddpm_comparison/ddpm_comparison.md``.

Usage (what produced studies/ddpm_comparison/ddpm_comparison.md)::

    OMP_NUM_THREADS=1 nice -n 10 python studies/ddpm_comparison/ddpm_comparison.py \
        --datasets 42_WBC 39_vertebral 14_glass 45_wine 15_Hepatitis 21_Lymphography \
        --seeds 0 1 2 --models ddpm categorical np --out studies/ddpm_comparison/ddpm_runs.csv
    python studies/ddpm_comparison/ddpm_comparison.py --report studies/ddpm_comparison/ddpm_runs.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "adbench"
DEFAULT_PAPER = REPO / "tests" / "data" / "dte_paper_semi_aucroc.csv"
COLUMNS = (
    "dataset",
    "seed",
    "model",
    "auc_roc",
    "auc_pr",
    "fit_s",
    "score_s",
    "n_train",
    "n_test",
    "n_features",
    "bench_rows",
    "bench_s",
    "bench_rows_per_s",
    "epochs_run",
    "budget",
    "threads",
)
MODEL_LABELS = {
    "ddpm": "DDPM (ours)",
    "ddpm-ancestral": "DDPM ancestral (ours)",
    "categorical": "DTPM-C (ours)",
    "np": "DTPM-NP (ours)",
}
PAPER_COLUMNS = {"ddpm": "DDPM", "ddpm-ancestral": "DDPM", "categorical": "DTE-C", "np": "DTE-NP"}


# ------------------------------------------------------------------------------------ models
def build_model(name: str, seed: int, epochs: int | None, device: str):
    """An unfitted detector. The protocol already standardised the data, as the authors did."""
    import dtpm_fast

    if name == "ddpm":
        kwargs = {} if epochs is None else {"epochs": epochs}
        return dtpm_fast.DDPMReconstruction(standardize=False, random_state=seed, device=device, **kwargs)
    if name == "categorical":
        kwargs = {} if epochs is None else {"epochs": epochs}
        return dtpm_fast.DTPMCategorical(standardize=False, random_state=seed, device=device, **kwargs)
    if name == "np":
        return dtpm_fast.DTPMNonParametric(score="mean", standardize=False, device=device)
    raise ValueError(f"unknown model {name!r}; choose from ddpm, categorical, np")


def measure_throughput(
    model, X_test: np.ndarray, n_rows: int, min_seconds: float = 1.0
) -> tuple[float, float]:
    """(seconds per call, rows/s) of ``decision_function`` on ``n_rows`` rows (test rows tiled).

    One warm-up call on a few rows first; fast models are called repeatedly until
    ``min_seconds`` have passed and the best call is kept (the least disturbed by the other
    processes on a shared machine).
    """
    X_bench = np.ascontiguousarray(np.resize(X_test, (n_rows, X_test.shape[1])), dtype=np.float32)
    model.decision_function(X_bench[:8])
    best = float("inf")
    spent = 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        model.decision_function(X_bench)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
    return best, n_rows / best


def run_one(name, split, seed, epochs, device, bench_rows) -> list[dict]:
    """Rows for one fitted model. ``ddpm`` also yields ``ddpm-ancestral``: the same network scored
    with the sampling noise z of docs/METHOD.md section 5 (no extra training)."""
    from dtpm_fast.evaluation.metrics import all_metrics

    X_train = np.ascontiguousarray(split.X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(split.X_test, dtype=np.float32)
    model = build_model(name, seed, epochs, device)
    start = time.perf_counter()
    model.fit(X_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = model.decision_function(X_test)
    score_s = time.perf_counter() - start
    metrics = all_metrics(split.y_test, scores)
    row = {
        "dataset": None,
        "seed": seed,
        "model": name,
        "auc_roc": round(metrics["auc_roc"], 4),
        "auc_pr": round(metrics["auc_pr"], 4),
        "fit_s": round(fit_s, 4),
        "score_s": round(score_s, 5),
        "n_train": len(X_train),
        "n_test": len(X_test),
        "n_features": X_train.shape[1],
        "bench_rows": "",
        "bench_s": "",
        "bench_rows_per_s": "",
        "epochs_run": getattr(model, "n_epochs_", ""),
        "budget": json.dumps({"epochs": epochs if epochs is not None else "default"}),
        "threads": _threads(),
    }
    rows = [row]
    if name == "ddpm":
        model.set_params(sampling_noise=True)
        start = time.perf_counter()
        noisy = model.decision_function(X_test)
        noisy_s = time.perf_counter() - start
        noisy_metrics = all_metrics(split.y_test, noisy)
        rows.append(
            {
                **row,
                "model": "ddpm-ancestral",
                "auc_roc": round(noisy_metrics["auc_roc"], 4),
                "auc_pr": round(noisy_metrics["auc_pr"], 4),
                "score_s": round(noisy_s, 5),
            }
        )
        model.set_params(sampling_noise=False)
    if bench_rows:
        bench_s, rate = measure_throughput(model, X_test, bench_rows)
        row.update(bench_rows=bench_rows, bench_s=round(bench_s, 5), bench_rows_per_s=round(rate, 1))
    return rows


def _threads() -> str:
    import torch

    return f"torch={torch.get_num_threads()},OMP={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def run(args) -> None:
    from dtpm_fast.evaluation import protocol

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["dataset"], int(r["seed"]), r["model"]) for r in read_rows(out)}
    available = protocol.find_datasets(args.data)
    for dataset in args.datasets:
        if dataset not in available:
            raise ValueError(f"data set {dataset!r} not in {args.data}")
        X, y = protocol.load_npz(available[dataset])
        for seed in args.seeds:
            todo = [m for m in args.models if (dataset, seed, m) not in done]
            if not todo:
                continue
            split = protocol.prepare(X, y, seed, "semi")
            for name in todo:
                bench_rows = args.bench_rows if seed == args.seeds[0] else 0
                try:
                    rows = run_one(name, split, seed, args.epochs, args.device, bench_rows)
                except Exception as exc:  # noqa: BLE001 - a missing optional model must not stop the others
                    print(f"FAILED {dataset} seed={seed} {name}: {type(exc).__name__}: {exc}", flush=True)
                    continue
                for row in rows:
                    row["dataset"] = dataset
                    append_row(out, row)
                    print(
                        f"{dataset} seed={seed} {row['model']}: AUC {row['auc_roc']:.2f} fit {row['fit_s']:.2f}s "
                        f"score {row['score_s']:.3f}s ({row['n_test']} rows) "
                        f"bench {row['bench_rows_per_s'] or '-'} rows/s epochs {row['epochs_run']}",
                        flush=True,
                    )


# ------------------------------------------------------------------------------------ report
def _paper_table(path: Path) -> dict[str, dict[str, float]]:
    with path.open(newline="") as fh:
        return {r["dataset"].lower(): r for r in csv.DictReader(fh)}


def _paper_name(dataset: str) -> str:
    return dataset.split("_", 1)[1].lower() if "_" in dataset else dataset.lower()


def _fmt(values: list[float]) -> str:
    """Mean ± std of AUC values (already in percent, as evaluation.metrics returns them)."""
    if not values:
        return "-"
    arr = np.asarray(values)
    return f"{arr.mean():.2f} ± {arr.std():.2f}" if len(arr) > 1 else f"{arr.mean():.2f}"


def report(csv_path: Path, paper_path: Path, part: str = "all") -> str:
    """Markdown tables of ``csv_path``: ``part`` is "auc", "speed" or "all"."""
    rows = read_rows(csv_path)
    paper = _paper_table(paper_path)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = [m for m in MODEL_LABELS if any(r["model"] == m for r in rows)]

    auc_lines = auc_table(rows, paper, datasets, models)
    speed_lines = speed_table(rows, datasets, models)
    chosen = {"auc": auc_lines, "speed": speed_lines, "all": auc_lines + [""] + speed_lines}[part]
    return "\n".join(chosen) + "\n"


def _select(rows, dataset, model, key):
    return [float(r[key]) for r in rows if r["dataset"] == dataset and r["model"] == model and r[key] != ""]


def auc_table(rows, paper, datasets, models) -> list[str]:
    def select(dataset, model, key):
        return _select(rows, dataset, model, key)

    lines = ["### AUC-ROC (%, semi-supervised protocol, mean ± std over seeds)", ""]
    header = ["dataset", "seeds"]
    for m in models:
        header += [MODEL_LABELS[m], f"paper {PAPER_COLUMNS[m]}"]
    header.append("DDPM ours - paper")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    means = {m: [] for m in models}
    paper_means = {m: [] for m in models}
    for d in datasets:
        p = paper.get(_paper_name(d), {})
        n_seeds = len(select(d, models[0], "auc_roc"))
        cells = [d, str(n_seeds)]
        for m in models:
            ours = select(d, m, "auc_roc")
            cells.append(_fmt(ours))
            col = PAPER_COLUMNS[m]
            cells.append(f"{float(p[col]):.2f} ± {float(p[col + '_std']):.2f}" if col in p else "-")
            if ours and col in p:
                means[m].append(np.mean(ours))
                paper_means[m].append(float(p[col]))
        ours_ddpm = select(d, "ddpm", "auc_roc")
        diff = np.mean(ours_ddpm) - float(p["DDPM"]) if ours_ddpm and "DDPM" in p else None
        cells.append(f"{diff:+.2f}" if diff is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**mean**", ""]
    for m in models:
        cells += [f"**{np.mean(means[m]):.2f}**", f"**{np.mean(paper_means[m]):.2f}**"]
    if "ddpm" in models:
        cells.append(f"**{np.mean(means['ddpm']) - np.mean(paper_means['ddpm']):+.2f}**")
    lines.append("| " + " | ".join(cells) + " |")
    epochs = [int(r["epochs_run"]) for r in rows if r["model"] == "ddpm" and r["epochs_run"]]
    if epochs:
        lines += [
            "",
            (
                f"DDPM epochs actually run (authors' early stop, max 400): min {min(epochs)}, "
                f"median {int(np.median(epochs))}, max {max(epochs)} over {len(epochs)} fits."
            ),
        ]
    return lines


def speed_table(rows, datasets, models) -> list[str]:
    def select(dataset, model, key):
        return _select(rows, dataset, model, key)

    models = [m for m in models if m != "ddpm-ancestral"]  # same network and cost as ddpm
    lines = [
        "### Inference throughput (first seed; test rows tiled to a fixed batch) and fit time (mean over seeds)",
        "",
    ]
    header = ["dataset", "d", "rows"]
    header += [f"{MODEL_LABELS[m]} rows/s" for m in models]
    header += [f"DDPM / {MODEL_LABELS[m].split(' ')[0]} time" for m in models if m != "ddpm"]
    header += [f"{MODEL_LABELS[m]} fit s" for m in models]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratios = {m: [] for m in models}
    for d in datasets:
        rate = {m: select(d, m, "bench_rows_per_s") for m in models}
        bench_rows = select(d, models[0], "bench_rows")
        d_feat = select(d, models[0], "n_features")
        cells = [d, str(int(d_feat[0])) if d_feat else "-", str(int(bench_rows[0])) if bench_rows else "-"]
        cells += [f"{rate[m][0]:,.0f}" if rate[m] else "-" for m in models]
        for m in models:
            if m == "ddpm":
                continue
            if rate[m] and rate["ddpm"]:
                ratio = rate[m][0] / rate["ddpm"][0]
                ratios[m].append(ratio)
                cells.append(f"{ratio:,.0f}x")
            else:
                cells.append("-")
        cells += [f"{np.mean(select(d, m, 'fit_s')):.2f}" for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m in models:
        if m != "ddpm" and ratios[m]:
            g = float(np.exp(np.mean(np.log(ratios[m]))))
            lines.append(
                f"DDPM needs {g:,.0f}x the inference time of {MODEL_LABELS[m]} "
                f"(geometric mean over {len(ratios[m])} datasets; range {min(ratios[m]):,.0f}x-{max(ratios[m]):,.0f}x)."
            )
    threads = sorted({r["threads"] for r in rows})
    lines.append(f"Threads: {', '.join(threads)}. Machine: {platform.processor() or platform.machine()}.")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["42_WBC", "39_vertebral", "14_glass"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--models", nargs="+", default=["ddpm", "categorical", "np"])
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: each model's, 400)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bench-rows", type=int, default=2048, help="rows per throughput call")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "studies" / "ddpm_comparison" / "ddpm_runs.csv"))
    parser.add_argument("--report", metavar="CSV", help="print the markdown report of CSV and exit")
    parser.add_argument("--paper", default=str(DEFAULT_PAPER))
    parser.add_argument(
        "--part", choices=("all", "auc", "speed"), default="all", help="report tables to print"
    )
    args = parser.parse_args(argv)
    if args.report:
        sys.stdout.write(report(Path(args.report), Path(args.paper), args.part))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

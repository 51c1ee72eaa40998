"""Run models over data sets and seeds under one protocol, writing ``runs.csv`` as it goes.

Every finished (dataset, model, seed) appends a row and rewrites ``runs.csv`` atomically (a
temporary file renamed over the old one), so an interrupted run loses at most the row in
progress and a rerun with the same ``--out`` skips what is already there. ``run.json`` records
the protocol and the training budgets; resuming with different ones is refused, because the
rows would no longer be comparable.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from dtpm_fast.evaluation import protocol as proto
from dtpm_fast.evaluation.metrics import all_metrics
from dtpm_fast.evaluation.models import ModelOptions, budget, get_model
from dtpm_fast.io.atomic import atomic_output

RUNS_FILE = "runs.csv"
MANIFEST_FILE = "run.json"
COLUMNS = (
    "dataset",
    "model",
    "seed",
    "protocol",
    "auc_roc",
    "auc_pr",
    "f1",
    "fit_s",
    "score_s",
    "score_rows_per_s",
    "n_train",
    "n_test",
    "n_features",
    "device",
    "budget",
)


@dataclass
class RunConfig:
    """What to evaluate. ``datasets=None`` means every ``.npz`` in ``data_dir``."""

    data_dir: Path
    out_dir: Path
    models: list[str]
    protocol: str = "semi"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    datasets: list[str] | None = None
    device: str = "auto"
    epochs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    n_neighbors: int | None = None
    command: str = ""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.out_dir = Path(self.out_dir)
        if self.protocol not in proto.PROTOCOLS:
            raise ValueError(f"protocol must be one of {proto.PROTOCOLS}, got {self.protocol!r}")
        if not self.models:
            raise ValueError("models is empty; pass at least one model name")
        for name in self.models:
            get_model(name)  # raises with the list of known names
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=[0]")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative, got {self.seeds}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs}")
        if self.n_neighbors is not None and self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {self.n_neighbors}")


# ----------------------------------------------------------------------------- runs.csv I/O


_KEY_COLUMNS = ("dataset", "model", "seed", "protocol")
_NUMBER_COLUMNS = tuple(c for c in COLUMNS if c not in (*_KEY_COLUMNS, "device", "budget"))


def read_runs(out_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``out_dir/runs.csv`` as dicts of strings ([] when the file does not exist).

    The file is checked as it is read: its header must be this version's columns, and every
    row must be complete, with a data set and model name, a non-negative integer seed, a
    known protocol, numbers where numbers belong, and no (dataset, model, seed) twice.
    Anything else is a ValueError naming the file and line -- resuming from rows that
    cannot be trusted would mix them into the report.
    """
    path = Path(out_dir) / RUNS_FILE
    if not path.exists():
        return []
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(
            f"{path} is not a readable runs.csv ({exc}); move it away or use another out_dir"
        ) from None
    if header is None:
        raise ValueError(f"{path} is empty; delete it (it holds no runs) or use another out_dir")
    if tuple(header) != COLUMNS:
        raise ValueError(
            f"{path} has the columns {list(header)}, not those of a runs.csv ({list(COLUMNS)}); "
            "move it away or use another out_dir"
        )
    seen: dict[tuple[str, str, int], int] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}, line {line}"
        if None in row or any(value is None for value in row.values()):
            raise ValueError(
                f"{where}: expected {len(COLUMNS)} fields; the file is damaged -- delete that line"
            )
        if not row["dataset"] or not row["model"]:
            raise ValueError(f"{where}: empty dataset or model name; the file is damaged -- delete that line")
        try:
            seed = int(row["seed"])
        except ValueError:
            seed = -1
        if seed < 0:
            raise ValueError(f"{where}: seed {row['seed']!r} is not a non-negative integer; delete that line")
        if row["protocol"] not in proto.PROTOCOLS:
            raise ValueError(f"{where}: unknown protocol {row['protocol']!r}; delete that line")
        for name in _NUMBER_COLUMNS:
            try:
                float(row[name])
            except ValueError:
                raise ValueError(f"{where}: {name} {row[name]!r} is not a number; delete that line") from None
        key = (row["dataset"], row["model"], seed)
        if key in seen:
            raise ValueError(f"{where} repeats {key} of line {seen[key]}; delete one of them")
        seen[key] = line
    return rows


def _write_atomically(path: Path, write) -> None:
    """``write(file)`` into a temporary file that replaces ``path`` once complete."""
    with atomic_output(path, overwrite=True) as temporary, open(temporary, "w", newline="") as fh:
        write(fh)


def write_runs(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``runs.csv`` with ``rows`` atomically."""

    def write(fh: TextIO) -> None:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    _write_atomically(out_dir / RUNS_FILE, write)


def _options(config: RunConfig, seed: int) -> ModelOptions:
    return ModelOptions(
        seed=seed,
        device=config.device,
        epochs=config.epochs,
        extra=config.extra,
        n_neighbors=config.n_neighbors,
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    """``run.json`` as a dict ({} when absent), checked: a JSON object with a known protocol,
    budgets as an object per model and a list of commands."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, IsADirectoryError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it or use another out_dir") from None
    problem = None
    if not isinstance(manifest, dict):
        problem = f"holds a {type(manifest).__name__}, not an object"
    elif "protocol" in manifest and manifest["protocol"] not in proto.PROTOCOLS:
        problem = f"names the unknown protocol {manifest['protocol']!r}"
    elif not isinstance(manifest.get("budgets", {}), dict) or not all(
        isinstance(b, dict) for b in manifest.get("budgets", {}).values()
    ):
        problem = "has budgets that are not an object of objects per model"
    elif not isinstance(manifest.get("commands", []), list):
        problem = "has commands that are not a list"
    if problem is not None:
        raise ValueError(
            f"{path} {problem}; it is not a run.json of this harness -- restore it or use another out_dir"
        )
    return manifest


def _check_manifest(config: RunConfig, budgets: dict[str, dict]) -> dict[str, Any]:
    """Merge this run into ``run.json``; refuse a protocol or budget that differs from before."""
    path = config.out_dir / MANIFEST_FILE
    manifest = _read_manifest(path)
    if not manifest and (config.out_dir / RUNS_FILE).exists() and read_runs(config.out_dir):
        raise ValueError(
            f"{config.out_dir / RUNS_FILE} holds runs but {path} is missing, so their protocol and "
            "budgets are unknown; restore run.json or use another out_dir"
        )
    if manifest.get("protocol", config.protocol) != config.protocol:
        raise ValueError(
            f"{config.out_dir} holds a '{manifest['protocol']}' run; resuming it with protocol "
            f"'{config.protocol}' would mix protocols -- use another out_dir"
        )
    recorded = manifest.get("budgets", {})
    for model, this_budget in budgets.items():
        if model in recorded and recorded[model] != this_budget:
            raise ValueError(
                f"{config.out_dir} holds '{model}' rows made with {recorded[model]}, not {this_budget}; "
                "use another out_dir or the same budget"
            )
    manifest["protocol"] = config.protocol
    manifest["budgets"] = {**recorded, **budgets}
    manifest["data_dir"] = str(config.data_dir)
    manifest.setdefault("commands", []).append(config.command)
    _write_atomically(path, lambda fh: fh.write(json.dumps(manifest, indent=2) + "\n"))
    return manifest


# -------------------------------------------------------------------------------- running


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def evaluate_one(spec_name: str, split: proto.Split, options: ModelOptions) -> dict[str, Any]:
    """Fit one model on ``split.X_train``, score ``split.X_test``; metrics and timings."""
    detector = get_model(spec_name).factory(options)
    X_train = np.ascontiguousarray(split.X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(split.X_test, dtype=np.float32)
    start = time.perf_counter()
    detector.fit(X_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = np.asarray(detector.decision_function(X_test), dtype=np.float64)
    score_s = time.perf_counter() - start
    result = all_metrics(split.y_test, scores)
    result.update(
        fit_s=fit_s,
        score_s=score_s,
        score_rows_per_s=len(X_test) / score_s if score_s > 0 else float("inf"),
        n_train=len(X_train),
        n_test=len(X_test),
        n_features=X_train.shape[1],
    )
    return result


def run(config: RunConfig, progress: TextIO | None = None) -> list[dict[str, Any]]:
    """Evaluate every (dataset, model, seed) of ``config`` not already in ``runs.csv``.

    Returns all rows of ``runs.csv`` afterwards (finished before and now). A model that raises
    on a data set is reported on ``progress`` and in ``errors.log`` and left out of
    ``runs.csv`` (a rerun tries it again); the other runs continue.
    """
    progress = sys.stderr if progress is None else progress
    available = proto.find_datasets(config.data_dir)
    names = list(available) if config.datasets is None else list(config.datasets)
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"data set(s) {missing} not found in {config.data_dir}; available: {', '.join(available) or '(none)'}"
        )
    if not names:
        raise ValueError(f"no .npz files in {config.data_dir} (or its ADBench sub-folders)")

    config.out_dir.mkdir(parents=True, exist_ok=True)
    budgets = {m: budget(get_model(m), _options(config, seed=0)) for m in config.models}
    _check_manifest(config, budgets)

    rows: list[dict[str, Any]] = read_runs(config.out_dir)
    other = [r for r in rows if r["protocol"] != config.protocol]
    if other:
        raise ValueError(
            f"{config.out_dir / RUNS_FILE} holds {other[0]['protocol']!r} rows, not {config.protocol!r} "
            "(run.json says otherwise: the files do not belong together); use another out_dir"
        )
    done = {(r["dataset"], r["model"], int(r["seed"])) for r in rows}
    todo = [(d, s, m) for d in names for s in config.seeds for m in config.models if (d, m, s) not in done]
    print(
        f"evaluate: {len(names)} data set(s) x {len(config.models)} model(s) x {len(config.seeds)} seed(s), "
        f"protocol {config.protocol}; {len(todo)} to run, {len(done)} already in {config.out_dir / RUNS_FILE}",
        file=progress,
        flush=True,
    )

    started = time.perf_counter()
    finished = 0
    loaded: tuple[str, np.ndarray, np.ndarray] | None = None
    prepared: tuple[str, int, proto.Split] | None = None
    for dataset, seed, model in todo:
        if loaded is None or loaded[0] != dataset:
            loaded = (dataset, *proto.load_npz(available[dataset]))
        if prepared is None or prepared[:2] != (dataset, seed):
            prepared = (dataset, seed, proto.prepare(loaded[1], loaded[2], seed, config.protocol))
        options = _options(config, seed)
        label = f"{dataset} {model} seed={seed}"
        try:
            result = evaluate_one(model, prepared[2], options)
        except Exception as exc:  # noqa: BLE001 - one failing model must not stop a long run; it is reported
            message = f"{label}: {type(exc).__name__}: {exc}"
            print(f"  FAILED {message}", file=progress, flush=True)
            with (config.out_dir / "errors.log").open("a") as fh:
                fh.write(message + "\n")
            continue
        row = {
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "protocol": config.protocol,
            "device": config.device,
            "budget": json.dumps(budgets[model], sort_keys=True),
            **{k: _rounded(v) for k, v in result.items()},
        }
        rows.append(row)
        write_runs(config.out_dir, rows)
        finished += 1
        elapsed = time.perf_counter() - started
        eta = elapsed / finished * (len(todo) - finished)
        print(
            f"[{finished}/{len(todo)}] {label}: AUC-ROC {result['auc_roc']:.2f} "
            f"fit {result['fit_s']:.3f}s score {result['score_s']:.3f}s (eta {_format_eta(eta)})",
            file=progress,
            flush=True,
        )
    return read_runs(config.out_dir)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value

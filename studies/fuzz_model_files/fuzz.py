"""Fuzz dtpm_fast.load with mutated model files; count outcomes by kind, detect crashes and hangs.

Usage (from the repository root, with dtpm_fast importable):

    python studies/fuzz_model_files/fuzz.py run --cases 300000 --out studies/fuzz_model_files/result.json

``run`` writes valid files of every kind (np with flat/hnsw/ivf, categorical, inverse-gamma,
ddpm, exported pt2 and TorchScript) into a work folder, then starts worker processes that load
mutated copies in-process. Case i is fully determined by (seed, i), so a crash is reproduced by
``python fuzz.py one --case i``. Outcomes:

* ``identical``: loaded, and scores equal the original's on a fixed query matrix;
* ``value_error``: ValueError / NotFittedError raised (the documented outcome for a bad file);
* ``different_forged``: loaded with other scores after a mutation that recomputed the checksums
  or edited the manifest's values (a consistent file of another model: the right result);
* ``different``: loaded but scores differ (or NaN) after any other mutation -- a defect;
* ``other_exception``: any other exception type -- a defect;
* ``crash``: the worker died on a signal (SIGSEGV, SIGABRT) -- a defect;
* ``hang``: no progress for ``--hang-seconds``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import zipfile
import zlib
from pathlib import Path

import numpy as np

KINDS = (
    "np_flat",
    "np_hnsw",
    "np_ivf",
    "categorical",
    "inverse_gamma",
    "ddpm",
    "export_pt2",
    "export_torchscript",
)
MUTATIONS = (
    "flip_bytes",
    "truncate",
    "insert_bytes",
    "member_edit_resigned",
    "member_truncate_resigned",
    "member_swap_resigned",
    "manifest_value_edit",
    "deflate_member",
    "duplicate_member",
)


#: Mutations that recompute the checksums (the manifest's SHA-256 and the zip CRCs) or edit the
#: manifest's own values: the file is then a consistent file of another model, so loading it
#: with other scores is the right result ("different_forged"); a changed score after any other
#: mutation is a defect.
FORGED = {"member_edit_resigned", "member_truncate_resigned", "member_swap_resigned", "manifest_value_edit"}


def make_originals(work: Path) -> None:
    import dtpm_fast

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    Q = np.vstack([rng.normal(size=(16, 5)), rng.normal(size=(4, 5)) * 10]).astype(np.float32)
    np.save(work / "query.npy", Q)
    small = {"hidden_sizes": (8, 8), "epochs": 2, "batch_size": 32, "random_state": 0, "device": "cpu"}
    models = {
        "np_flat": dtpm_fast.DTPMNonParametric(index="flat"),
        "np_hnsw": dtpm_fast.DTPMNonParametric(index="hnsw", index_params={"M": 8}),
        "np_ivf": dtpm_fast.DTPMNonParametric(index="ivf", index_params={"nlist": 3}),
        "categorical": dtpm_fast.DTPMCategorical(**small),
        "inverse_gamma": dtpm_fast.DTPMInverseGamma(**small),
        "ddpm": dtpm_fast.DDPMReconstruction(
            epochs=2,
            width=8,
            block_hidden=8,
            n_blocks=1,
            T=20,
            reconstruction_steps=5,
            random_state=0,
            device="cpu",
        ),
    }
    for name, model in models.items():
        model.fit(X)
        model.save(work / f"{name}.bin")
    models["categorical"].export(work / "export_pt2.bin", format="pt2")
    models["inverse_gamma"].export(work / "export_torchscript.bin", format="torchscript")
    for name in KINDS:
        loaded = dtpm_fast.load(work / f"{name}.bin")
        np.save(work / f"{name}.scores.npy", loaded.decision_function(Q))


def _members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info, z.read(info)) for info in z.infolist()]


def _zip(members, compress: set[str] = frozenset()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info, payload in members:
            method = zipfile.ZIP_DEFLATED if info.filename in compress else zipfile.ZIP_STORED
            z.writestr(
                zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0)), payload, compress_type=method
            )
    return out.getvalue()


def _resign(members):
    """Recompute the manifest's byte counts and SHA-256 (a model file), so edits reach the parsers."""
    names = [info.filename for info, _ in members]
    if "manifest.json" not in names:
        return members
    i = names.index("manifest.json")
    manifest = json.loads(members[i][1])
    by_name = dict(zip(names, (p for _, p in members), strict=False))
    for section in ("arrays", "blobs"):
        for entry in manifest.get(section, {}).values():
            payload = by_name.get(entry.get("member"))
            if payload is not None:
                entry["bytes"] = len(payload)
                entry["sha256"] = hashlib.sha256(payload).hexdigest()
    members[i] = (members[i][0], json.dumps(manifest).encode())
    return members


def _edit_bytes(rnd: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    if not b:
        return bytes([rnd.randrange(256)])
    for _ in range(rnd.choice((1, 1, 2, 4, 16))):
        pos = rnd.randrange(len(b))
        b[pos] = rnd.choice((b[pos] ^ (1 << rnd.randrange(8)), rnd.randrange(256), 0, 0xFF))
    return bytes(b)


def _edit_json_value(rnd: random.Random, value):
    """Replace one random leaf of a JSON value."""
    containers = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            containers += [(item, k) for k in item]
            stack += list(item.values())
        elif isinstance(item, list):
            containers += [(item, k) for k in range(len(item))]
            stack += item
    if not containers:
        return value
    parent, key = rnd.choice(containers)
    old = parent[key]
    choices = [
        None,
        0,
        -1,
        1,
        2,
        10**9,
        2**63,
        1.5,
        float("nan"),
        float("inf"),
        -1e308,
        "",
        "x",
        [],
        {},
        True,
    ]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        choices += [old + 1, old - 1, old * 2, -old, old // 2 if isinstance(old, int) else old / 2]
    if isinstance(old, list):
        choices += [old[:-1], old + old[-1:] if old else [1], old[::-1]]
    parent[key] = rnd.choice(choices)
    return value


def mutate(original: bytes, others: dict[str, bytes], rnd: random.Random, how: str) -> bytes:
    if how == "flip_bytes":
        return _edit_bytes(rnd, original)
    if how == "truncate":
        return original[: rnd.randrange(len(original))]
    if how == "insert_bytes":
        pos = rnd.randrange(len(original))
        return original[:pos] + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9))) + original[pos:]
    members = _members(original)
    names = [info.filename for info, _ in members]
    target = rnd.randrange(len(members))
    if how == "member_edit_resigned":
        info, payload = members[target]
        members[target] = (info, _edit_bytes(rnd, payload))
        return _zip(_resign(members))
    if how == "member_truncate_resigned":
        info, payload = members[target]
        members[target] = (info, payload[: rnd.randrange(len(payload) + 1)])
        return _zip(_resign(members))
    if how == "member_swap_resigned":
        other = _members(others[rnd.choice(sorted(others))])
        same = [(i, p) for i, p in other if i.filename in names]
        if same and rnd.random() < 0.7:
            info, payload = rnd.choice(same)
            members[names.index(info.filename)] = (members[names.index(info.filename)][0], payload)
        else:
            i, j = rnd.randrange(len(members)), rnd.randrange(len(members))
            members[i], members[j] = (members[i][0], members[j][1]), (members[j][0], members[i][1])
        return _zip(_resign(members))
    if how == "manifest_value_edit":
        for candidate in ("manifest.json", "extra/dtpm_meta.json", "extra/dtpm_train_scores.json"):
            hits = [k for k, n in enumerate(names) if n == candidate or n.endswith("/" + candidate)]
            if hits:
                k = hits[0]
                value = _edit_json_value(rnd, json.loads(members[k][1]))
                members[k] = (members[k][0], json.dumps(value).encode())
                if candidate != "manifest.json" or rnd.random() < 0.5:
                    break
        return _zip(members)
    if how == "deflate_member":
        return _zip(members, compress={names[target]})
    if how == "duplicate_member":
        members.append(members[target])
        return _zip(members)
    raise ValueError(how)


def case(seed: int, i: int, originals: dict[str, bytes]) -> tuple[str, str, bytes]:
    rnd = random.Random(seed * 1_000_003 + i)
    kind = KINDS[i % len(KINDS)]
    how = MUTATIONS[(i // len(KINDS)) % len(MUTATIONS)]
    try:
        data = mutate(originals[kind], originals, rnd, how)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, zlib.error):
        data = _edit_bytes(rnd, originals[kind])
    return kind, how, data


def classify(path: str, reference: np.ndarray, Q: np.ndarray, original: str | None = None) -> tuple[str, str]:
    import dtpm_fast

    try:
        model = dtpm_fast.load(path)
        scores = model.decision_function(Q)
    except ValueError as exc:  # NotFittedError is a ValueError
        return "value_error", type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - counted
        return "other_exception", f"{type(exc).__name__}: {str(exc)[:200]}"
    if scores.shape == reference.shape and np.array_equal(scores, reference):
        return "identical", ""
    if original is not None and classify(original, reference, Q)[0] != "identical":
        return "different", "the unmutated file scores differently in this process too"
    return "different", "scores differ from the original's"


def worker(args) -> None:
    work = Path(args.work)
    originals = {k: (work / f"{k}.bin").read_bytes() for k in KINDS}
    references = {k: np.load(work / f"{k}.scores.npy") for k in KINDS}
    Q = np.load(work / "query.npy")
    target = str(work / f"case.{os.getpid()}.bin")
    progress = open(args.progress, "a", buffering=1)  # noqa: SIM115 - one line per case, flushed
    import warnings

    warnings.simplefilter("ignore")
    for i in range(args.start, args.stop):
        kind, how, data = case(args.seed, i, originals)
        Path(target).write_bytes(data)
        progress.write(f"start {i}\n")
        outcome, detail = classify(target, references[kind], Q, str(work / f"{kind}.bin"))
        if outcome == "different" and how in FORGED:
            outcome = "different_forged"
        progress.write(
            json.dumps({"i": i, "kind": kind, "how": how, "outcome": outcome, "detail": detail}) + "\n"
        )
    os.unlink(target)


def run(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    make_originals(work)
    counts: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    defects: list[dict] = []
    started = time.time()
    chunks = [(s, min(s + args.chunk, args.cases)) for s in range(0, args.cases, args.chunk)]
    running: list[tuple[subprocess.Popen, Path, int, int]] = []

    def launch(start, stop):
        progress = work / f"progress.{start}.jsonl"
        progress.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "worker",
            "--work",
            str(work),
            "--seed",
            str(args.seed),
            "--start",
            str(start),
            "--stop",
            str(stop),
            "--progress",
            str(progress),
        ]
        running.append(
            (
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                progress,
                start,
                stop,
            )
        )

    def harvest(progress: Path) -> int | None:
        """Count finished cases; return the case in flight (started, never finished), if any."""
        in_flight = None
        for line in progress.read_text().splitlines():
            if line.startswith("start "):
                in_flight = int(line.split()[1])
                continue
            rec = json.loads(line)
            in_flight = None
            counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
            by_kind.setdefault(rec["kind"], {}).setdefault(rec["outcome"], 0)
            by_kind[rec["kind"]][rec["outcome"]] += 1
            if rec["outcome"] not in ("identical", "value_error", "different_forged"):
                defects.append(rec)
        return in_flight

    pending = list(chunks)
    while pending or running:
        while pending and len(running) < args.workers:
            launch(*pending.pop(0))
        time.sleep(0.5)
        for entry in list(running):
            proc, progress, _start, stop = entry
            stalled = (
                time.time() - progress.stat().st_mtime > args.hang_seconds if progress.exists() else False
            )
            if proc.poll() is None and not stalled:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            running.remove(entry)
            in_flight = harvest(progress)
            if in_flight is not None:
                outcome = "hang" if stalled else "crash"
                detail = "no progress" if stalled else f"signal {-proc.returncode}"
                counts[outcome] = counts.get(outcome, 0) + 1
                kind = KINDS[in_flight % len(KINDS)]
                by_kind.setdefault(kind, {}).setdefault(outcome, 0)
                by_kind[kind][outcome] += 1
                defects.append({"i": in_flight, "kind": kind, "outcome": outcome, "detail": detail})
                if in_flight + 1 < stop:
                    pending.insert(0, (in_flight + 1, stop))
            progress.unlink(missing_ok=True)
    result = {
        "cases": args.cases,
        "seed": args.seed,
        "seconds": round(time.time() - started, 1),
        "counts": counts,
        "by_kind": by_kind,
        "defects": defects[:200],
        "n_defects": len(defects),
    }
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("cases", "seconds", "counts", "n_defects")}))


def one(args) -> None:
    work = Path(args.work)
    originals = {k: (work / f"{k}.bin").read_bytes() for k in KINDS}
    kind, how, data = case(args.seed, args.case, originals)
    target = work / "one.bin"
    target.write_bytes(data)
    print(kind, how, target)
    try:
        import dtpm_fast

        dtpm_fast.load(target).decision_function(np.load(work / "query.npy"))
    except Exception:  # noqa: BLE001 - shown
        traceback.print_exc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "worker", "one"):
        p = sub.add_parser(name)
        p.add_argument("--work", default="/tmp/dtpm_fuzz_model_files")
        p.add_argument("--seed", type=int, default=20261204)
    r = sub.choices["run"]
    r.add_argument("--cases", type=int, default=300_000)
    r.add_argument("--chunk", type=int, default=5_000)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--hang-seconds", type=float, default=120.0)
    r.add_argument("--out", default="studies/fuzz_model_files/result.json")
    w = sub.choices["worker"]
    for flag in ("--start", "--stop"):
        w.add_argument(flag, type=int, required=True)
    w.add_argument("--progress", required=True)
    sub.choices["one"].add_argument("--case", type=int, required=True)
    args = parser.parse_args()
    {"run": run, "worker": worker, "one": one}[args.command](args)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()

"""The package's shape: layers without import cycles, one registry, public seams, old files load."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dtpm_fast
from dtpm_fast import _registry

PACKAGE = Path(dtpm_fast.__file__).parent
DATA = Path(__file__).parent / "data"
NATIVE = {"dtpm_fast._core", "dtpm_fast._cuda"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """dtpm_fast modules imported anywhere in the file, inside functions included."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules or sub in NATIVE else node.module)
    return {name for name in found if name in modules and name != _module_name(path)}


def _dynamic_edges() -> dict[str, set[str]]:
    """Imports by a name held in a table: the registry's modules, from whoever resolves them."""
    kinds = {kind.module for kind in _registry.KINDS}
    return {"dtpm_fast": kinds, "dtpm_fast.io.load": kinds, "dtpm_fast.evaluation.models": kinds}


def test_no_import_cycle_counting_imports_inside_functions():
    modules = _modules()
    graph = {name: _imports(path, set(modules)) for name, path in modules.items()}
    for name, targets in _dynamic_edges().items():
        graph[name] |= targets
    # A module implicitly needs its package's __init__; an __init__ that imports a submodule
    # which imports that __init__ back is the cycle to avoid, so both kinds of edge count.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_base_and_model_files_import_nothing_above_them():
    modules = _modules()
    allowed = {
        "dtpm_fast._validation",
        "dtpm_fast._registry",
        "dtpm_fast.io",
        "dtpm_fast.io.model_files",
        "dtpm_fast.io.atomic",
        "dtpm_fast",
    }
    for name in ("dtpm_fast.base", "dtpm_fast.io.model_files", "dtpm_fast._registry"):
        assert _imports(modules[name], set(modules)) <= allowed, name


def test_front_ends_use_only_public_attributes_of_detectors():
    """cli/, evaluation/, integrations/, plotting never read or set a detector's private attribute."""
    offenders = []
    front_ends = [PACKAGE / "plotting.py"]
    for folder in ("cli", "evaluation", "integrations"):
        front_ends += (PACKAGE / folder).rglob("*.py")
    for path in front_ends:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "sys"))
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert not offenders


def test_public_names_come_from_the_registry():
    for kind in _registry.KINDS:
        assert kind.class_name in dtpm_fast.__all__
        cls = getattr(dtpm_fast, kind.class_name)
        assert cls.__module__.startswith(kind.module)
    from dtpm_fast.cli import build_parser
    from dtpm_fast.evaluation.models import model_names

    assert {kind.key for kind in _registry.KINDS} <= set(model_names())
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    model_choices = next(a.choices for a in fit._actions if a.dest == "model")
    assert list(model_choices) == [kind.key for kind in _registry.KINDS]


@pytest.mark.parametrize("name", ["np_hnsw", "np_mode", "categorical", "inverse_gamma", "ddpm"])
def test_model_files_saved_by_version_0_1_0_still_load_and_score_the_same(name):
    if name != "np_hnsw" and name != "np_mode":
        pytest.importorskip("torch")
    expected = np.load(DATA / "model_0.1.0_scores.npz")
    model = dtpm_fast.load(DATA / f"model_0.1.0_{name}.dtpm")
    np.testing.assert_allclose(model.decision_function(expected["queries"]), expected[name], rtol=1e-6)


def _fit_file(tmp_path, key: str) -> Path:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "train.npy", rng.standard_normal((120, 4)).astype(np.float32))
    model = tmp_path / f"{key}.dtpm"
    extra = ["--epochs", "1"] if _registry.BY_KEY[key].needs_torch else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dtpm_fast",
            "fit",
            str(tmp_path / "train.npy"),
            "--model",
            key,
            "-o",
            str(model),
            "-q",
            *extra,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return model


@pytest.mark.parametrize("key", [kind.key for kind in _registry.KINDS])
def test_score_device_is_honoured_for_every_model_kind(tmp_path, key):
    if _registry.BY_KEY[key].needs_torch:
        pytest.importorskip("torch")
    from dtpm_fast._device import cuda_status
    from dtpm_fast.cli import main

    model = _fit_file(tmp_path, key)
    np.save(tmp_path / "rows.npy", np.random.default_rng(2).standard_normal((30, 4)).astype(np.float32))
    rows = str(tmp_path / "rows.npy")
    assert main(["score", str(model), rows, "-o", str(tmp_path / "cpu.csv"), "--device", "cpu", "-q"]) == 0
    if not cuda_status(native=not _registry.BY_KEY[key].needs_torch)[0] or key == "plus":
        # Asked for a GPU that is not there: refused, never silently scored on the CPU.
        code = main(["score", str(model), rows, "-o", str(tmp_path / "gpu.csv"), "--device", "cuda", "-q"])
        assert code == 1 and not (tmp_path / "gpu.csv").exists()
    detector = dtpm_fast.load(model).to_device("cpu")
    import pandas as pd

    written = pd.read_csv(tmp_path / "cpu.csv")["score"].to_numpy()
    if key != "ddpm":  # DDPM's scoring noise is seeded per call; its scores agree anyway (no sampling noise)
        np.testing.assert_allclose(written, detector.decision_function(np.load(rows)), rtol=1e-6)

"""Registry of the models the harness can evaluate: name -> factory and the paper's column.

Each factory takes :class:`ModelOptions` and returns an unfitted detector with ``fit(X)`` and
``decision_function(X)`` (higher = more anomalous). Detectors that need optional packages
(torch, pyod) are imported inside the factory, so listing or running other models never
imports them. Every detector kind of ``dtpm_fast._registry`` is registered under its key; the
variants the reports compare with (np-mode, PyOD's knn) are registered below it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dtpm_fast._registry import BY_KEY, KINDS, DetectorKind


@dataclass(frozen=True)
class ModelOptions:
    """Options shared by every factory; each factory uses the ones that apply to it.

    Attributes
    ----------
    seed : int
        The protocol seed, used as the model's random seed where it has one.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    epochs : int or None
        Training epochs for the trained models (None = the model's default, the paper's budget).
    extra : dict
        Further keyword arguments passed to every trained model that accepts them.
    n_neighbors : int or None
        K of the neighbour models (np, np-mode, knn); None = theirs (5). The paper's
        unsupervised KNN column was computed with 32 (studies/adbench_evaluation/evaluation.md).
    """

    seed: int = 0
    device: str = "auto"
    epochs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    n_neighbors: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model and which column of the paper's table it corresponds to."""

    name: str
    paper_column: str | None
    factory: Callable[[ModelOptions], Any]
    description: str
    trained: bool = False  # True when `epochs` applies
    neighbours: bool = False  # True when `n_neighbors` applies


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add (or replace) a model under ``spec.name``."""
    _REGISTRY[spec.name] = spec


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """The spec registered as ``name``; ValueError listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def budget(spec: ModelSpec, options: ModelOptions) -> dict[str, Any]:
    """The options that shaped this model's result, for recording beside it."""
    if spec.neighbours:
        return {} if options.n_neighbors is None else {"n_neighbors": options.n_neighbors}
    if not spec.trained:
        return {}
    recorded: dict[str, Any] = {"epochs": options.epochs if options.epochs is not None else "default"}
    recorded.update(options.extra)
    return recorded


# ---------------------------------------------------------------------------------- helpers


def _accepted_kwargs(cls: type, candidates: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``candidates`` that ``cls.__init__`` names explicitly (None values dropped)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in candidates.items() if v is not None and k in params}


def _detector_class(kind: DetectorKind) -> type:
    if kind.needs_torch:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                f"model {kind.key} needs PyTorch, which is not installed: pip install 'dtpm-fast[torch]'"
            ) from exc
    return getattr(importlib.import_module(kind.module), kind.class_name)


def _detector(kind: DetectorKind, **fixed: Any) -> Callable[[ModelOptions], Any]:
    """A factory for a registered detector kind; ``fixed`` parameters define a variant."""

    def build(options: ModelOptions) -> Any:
        cls = _detector_class(kind)
        # The seed argument is named by the model's author; pass whichever exists.
        # standardize=False: the protocol has already scaled the rows on the training rows, as
        # the authors did; a second standardisation (on a bootstrap sample, in "unsup") would
        # change it.
        candidates = {
            "epochs": options.epochs,
            "n_neighbors": options.n_neighbors,
            "device": options.device,
            "standardize": False,
            "random_state": options.seed,
            "seed": options.seed,
        }
        kwargs = {**_accepted_kwargs(cls, candidates), **fixed}
        unknown = set(options.extra) - set(inspect.signature(cls.__init__).parameters)
        if unknown:
            raise ValueError(
                f"{kind.class_name} has no parameter(s) {sorted(unknown)}; check the model options"
            )
        return cls(**kwargs, **options.extra)

    return build


def _pyod_knn(options: ModelOptions) -> Any:
    try:
        from pyod.models.knn import KNN
    except ImportError as exc:
        raise ValueError(
            "model 'knn' needs PyOD: pip install 'dtpm-fast[eval]' (or pip install pyod)"
        ) from exc
    # PyOD's defaults, as the paper's semi-supervised column was run: 5 neighbours, distance to
    # the 5th. Its unsupervised column matches n_neighbors=32 exactly (studies: evaluation).
    return KNN() if options.n_neighbors is None else KNN(n_neighbors=options.n_neighbors)


# Every registered detector kind under its key, then the variants the reports compare with.
for _kind in KINDS:
    register_model(
        ModelSpec(
            _kind.key,
            _kind.paper_column,
            _detector(_kind),
            f"{_kind.class_name}: {_kind.description}",
            trained=_kind.needs_torch,
            neighbours=_kind.key in ("np", "plus"),
        )
    )
register_model(
    ModelSpec(
        "np-mode",
        "DTE-NP",
        _detector(BY_KEY["np"], score="mode"),
        "DTPMNonParametric, posterior-mode score (K=5, T=300)",
        neighbours=True,
    )
)
register_model(ModelSpec("knn", "KNN", _pyod_knn, "PyOD KNN (n_neighbors=5, largest)", neighbours=True))

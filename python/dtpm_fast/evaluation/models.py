"""Registry of the models the harness can evaluate: name -> factory and the paper's column.

Each factory takes :class:`ModelOptions` and returns an unfitted detector with ``fit(X)`` and
``decision_function(X)`` (higher = more anomalous). Detectors that need optional packages
(torch, pyod) are imported inside the factory, so listing or running other models never
imports them. To add a model, call :func:`register_model` (see the ``ddpm`` entry).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
        unsupervised KNN column was computed with 32 (bench/results/evaluation.md).
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


def _import_torch_model(class_name: str) -> type:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            f"model {class_name} needs PyTorch, which is not installed: pip install 'dtpm-fast[torch]'"
        ) from exc
    import dtpm_fast

    try:
        return getattr(dtpm_fast, class_name)
    except (AttributeError, ImportError) as exc:
        raise ValueError(f"dtpm_fast.{class_name} is not available in this build: {exc}") from exc


def _trained_model(class_name: str) -> Callable[[ModelOptions], Any]:
    def build(options: ModelOptions) -> Any:
        cls = _import_torch_model(class_name)
        # The trained models' seed argument is named by their author; pass whichever exists.
        # standardize=False: the protocol has already scaled the rows, as in the authors' runs.
        candidates = {
            "epochs": options.epochs,
            "device": options.device,
            "standardize": False,
            "random_state": options.seed,
            "seed": options.seed,
        }
        kwargs = _accepted_kwargs(cls, candidates)
        unknown = set(options.extra) - set(inspect.signature(cls.__init__).parameters)
        if unknown:
            raise ValueError(f"{class_name} has no parameter(s) {sorted(unknown)}; check --model-option")
        return cls(**kwargs, **options.extra)

    return build


def _nonparametric(score: str) -> Callable[[ModelOptions], Any]:
    def build(options: ModelOptions) -> Any:
        from dtpm_fast import DTPMNonParametric

        # The protocol has already standardised the data on the training rows, as the authors
        # did; a second standardisation (on a bootstrap sample, in "unsup") would change it.
        k = {} if options.n_neighbors is None else {"n_neighbors": options.n_neighbors}
        return DTPMNonParametric(score=score, standardize=False, device=options.device, **k)

    return build


def _multiscale(options: ModelOptions) -> Any:
    from dtpm_fast.plus import DTPMMultiScale

    # CPU only; standardize=False for the reason given in _nonparametric.
    return DTPMMultiScale(standardize=False, device="cpu")


def _pyod_knn(options: ModelOptions) -> Any:
    try:
        from pyod.models.knn import KNN
    except ImportError as exc:
        raise ValueError(
            "model 'knn' needs PyOD: pip install 'dtpm-fast[eval]' (or pip install pyod)"
        ) from exc
    # PyOD's defaults, as the paper's semi-supervised column was run: 5 neighbours, distance to
    # the 5th. Its unsupervised column matches n_neighbors=32 exactly (bench/results/evaluation.md).
    return KNN() if options.n_neighbors is None else KNN(n_neighbors=options.n_neighbors)


register_model(
    ModelSpec(
        "np",
        "DTE-NP",
        _nonparametric("mean"),
        "DTPMNonParametric, posterior-mean score (K=5, T=300)",
        neighbours=True,
    )
)
register_model(
    ModelSpec(
        "np-mode",
        "DTE-NP",
        _nonparametric("mode"),
        "DTPMNonParametric, posterior-mode score (K=5, T=300)",
        neighbours=True,
    )
)
register_model(
    ModelSpec(
        "plus",
        None,
        _multiscale,
        "DTPMMultiScale: DTE-NP posterior-mean time averaged over K = 1, 2, 4, 8, 16, 32 (T=300, CPU)",
    )
)
register_model(
    ModelSpec(
        "categorical", "DTE-C", _trained_model("DTPMCategorical"), "DTPMCategorical (torch)", trained=True
    )
)
register_model(
    ModelSpec(
        "inverse-gamma",
        "DTE-IG",
        _trained_model("DTPMInverseGamma"),
        "DTPMInverseGamma (torch)",
        trained=True,
    )
)
register_model(ModelSpec("knn", "KNN", _pyod_knn, "PyOD KNN (n_neighbors=5, largest)", neighbours=True))
register_model(
    ModelSpec(
        "ddpm", "DDPM", _trained_model("DDPMReconstruction"), "DDPMReconstruction (torch)", trained=True
    )
)

"""Pictures of a fitted detector: posterior over diffusion time, per-feature explanation, scores.

Needs matplotlib (``pip install "dtpm-fast[plot]"``), imported when a function is called, so
``import dtpm_fast`` never loads it. Each ``plot_*`` function draws on the given Axes (or on a
new one from ``matplotlib.pyplot``) and returns it; :func:`plot_overview` puts the three
panels in one figure and can write it to a file (rendered with the Agg backend, no display
needed).

- :func:`plot_posterior`: ``detector.posterior(X)`` of a few rows against the diffusion step,
  with the noise schedule's sigma_t on a second axis. A normal row's mass sits at small t (a
  little noise already makes it look like a noisy training row), an anomaly's at large t.
- :func:`plot_explanation`: ``detector.explain(x)`` of one row as bars, one per feature (the
  largest first); they sum to the row's D2.
- :func:`plot_scores`: histogram of the training scores (``decision_scores_``) with
  ``threshold_`` marked, optionally with the scores of given rows (split by labels ``y``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["plot_explanation", "plot_overview", "plot_posterior", "plot_scores"]

MAX_POSTERIOR_ROWS = 10
_NORMAL_COLOUR = "tab:blue"
_ANOMALY_COLOUR = "tab:red"


# ---- argument checks ------------------------------------------------------------------------
def _check_fitted(detector, *attributes: str) -> None:
    for name in attributes:
        if not hasattr(detector, name):
            what = "a method" if name in ("posterior", "explain") else "the attribute"
            raise ValueError(
                f"detector must be a fitted dtpm_fast detector with {what} {name!r}; "
                f"got {type(detector).__name__} without it (not fitted, or a detector that lacks it)"
            )


def _check_ax(ax):
    if ax is None:
        return None
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        # ValueError, as for every bad argument in dtpm_fast
        raise ValueError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _new_ax(ax, figsize):
    ax = _check_ax(ax)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _rows(X, name: str = "X") -> np.ndarray:
    """X as a 2-D array of rows (a single row may be 1-D); the detector checks the values."""
    if X is None:
        raise ValueError(f"{name} must be an array of rows, got None")
    if hasattr(X, "to_numpy"):  # pandas
        X = X.to_numpy()
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[np.newaxis, :]
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row (shape (n, n_features)), got shape {X.shape}")
    return X


def _labels(y, n: int) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y).ravel()
    if y.shape[0] != n:
        raise ValueError(f"y must have one label per row of X ({n}), got {y.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold 0 (normal) and 1 (anomaly) only")
    return y.astype(np.int64)


def _feature_names(feature_names, detector, d: int) -> list[str]:
    if feature_names is None:
        names = getattr(detector, "feature_names_in_", None)
        return (
            [str(n) for n in names] if names is not None and len(names) == d else [f"x{j}" for j in range(d)]
        )
    if isinstance(feature_names, str):
        raise ValueError("feature_names must be a sequence of names, one per feature, not a string")
    names = [str(n) for n in feature_names]
    if len(names) != d:
        raise ValueError(f"feature_names has {len(names)} names but the rows have {d} features")
    return names


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---- the panels -----------------------------------------------------------------------------
def plot_posterior(
    detector,
    X,
    *,
    names=None,
    colors=None,
    x_axis: str = "t",
    show_schedule: bool = True,
    log: bool = False,
    ax=None,
):
    """Posterior over the diffusion time of up to 10 rows, one line each, on ``ax``.

    Parameters
    ----------
    detector : fitted detector with ``posterior`` (e.g. ``DTPMNonParametric``)
    X : array-like of shape (n_rows, n_features), 1 <= n_rows <= 10 (or one 1-D row)
    names : list of str, optional
        Legend entry per row (default ``"row i"``); the row's score is appended.
    colors : list of matplotlib colours, optional
        One per row (default: the colour cycle).
    x_axis : {"t", "sigma"}
        Diffusion step t, or the noise level sigma_t of the schedule (log scale).
    show_schedule : bool
        With ``x_axis="t"``: draw sigma_t of the noise schedule on a second y axis.
    log : bool
        Logarithmic probability axis (down to 1e-6 of the highest value): shows where every
        row's mass sits even when one row piles it on a few steps.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    _check_fitted(detector, "posterior")
    if x_axis not in ("t", "sigma"):
        raise ValueError(f"x_axis must be 't' or 'sigma', got {x_axis!r}")
    X = _rows(X)
    n = X.shape[0]
    if n > MAX_POSTERIOR_ROWS:
        raise ValueError(
            f"X has {n} rows; plot_posterior draws at most {MAX_POSTERIOR_ROWS} (pass a few rows)"
        )
    if names is not None:
        names = [str(s) for s in names]
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries but X has {n} rows")
    if colors is not None and len(colors) != n:
        raise ValueError(f"colors has {len(colors)} entries but X has {n} rows")
    ax = _new_ax(ax, (7, 4))

    posterior = np.asarray(detector.posterior(X), dtype=np.float64)
    scores = np.asarray(detector.decision_function(X), dtype=np.float64)
    steps = posterior.shape[1]
    t = np.arange(steps)
    T = getattr(detector, "T", None)
    sigma = None
    if steps == T:  # the non-parametric grid: one point per diffusion step of the schedule
        from dtpm_fast.schedule import ve_sigma2

        sigma = np.sqrt(ve_sigma2(steps))
    elif x_axis == "sigma":
        raise ValueError(
            f"x_axis='sigma' needs a posterior over the T={T} diffusion steps; this detector's has {steps} bins"
        )

    x = sigma if x_axis == "sigma" else t
    for i in range(n):
        label = f"{names[i] if names else f'row {i}'} (score {scores[i]:.1f})"
        colour = colors[i] if colors is not None else None
        (line,) = ax.plot(x, posterior[i], lw=1.8, color=colour, label=label)
        if not log:
            ax.fill_between(x, posterior[i], alpha=0.15, color=line.get_color())
    ax.set_ylabel("posterior probability")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(1e-6 * posterior.max(), 2.0 * posterior.max())
    else:
        ax.set_ylim(bottom=0)
    if x_axis == "sigma":
        ax.set_xscale("log")
        ax.set_xlabel(r"noise level $\sigma_t$ of the diffusion schedule")
    else:
        ax.set_xlim(0, steps - 1)
        ax.set_xlabel("diffusion step t" if sigma is not None else "diffusion-time bin")
    handles, labels = ax.get_legend_handles_labels()
    if show_schedule and sigma is not None and x_axis == "t":
        twin = ax.twinx()
        (sched,) = twin.plot(
            t, sigma, color="0.45", ls="--", lw=1.2, label=r"schedule $\sigma_t$ (right axis)"
        )
        twin.set_ylabel(r"noise level $\sigma_t$", color="0.35")
        twin.set_ylim(0, 1.05 * sigma.max())
        twin.tick_params(axis="y", colors="0.35")
        handles, labels = [*handles, sched], [*labels, sched.get_label()]
    ax.legend(handles, labels, fontsize="small", loc="upper left")
    ax.set_title("Posterior over the diffusion time")
    return ax


def plot_explanation(detector, x, *, feature_names=None, max_features: int = 12, title=None, ax=None):
    """Per-feature contributions of one row (``detector.explain``) as horizontal bars, largest first.

    Parameters
    ----------
    detector : fitted detector with ``explain`` (e.g. ``DTPMNonParametric``)
    x : array-like of shape (n_features,) or (1, n_features)
    feature_names : list of str, optional
        Bar labels (default: the detector's ``feature_names_in_``, else ``x0, x1, ...``).
    max_features : int
        Bars drawn; the remaining features are summed into one "other" bar.
    title : str, optional
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    _check_fitted(detector, "explain")
    x = _rows(x, "x")
    if x.shape[0] != 1:
        raise ValueError(f"x must be one row, got {x.shape[0]} rows")
    max_features = _positive_int(max_features, "max_features")
    names = _feature_names(feature_names, detector, x.shape[1])
    ax = _new_ax(ax, (6, 4))

    contributions = np.asarray(detector.explain(x), dtype=np.float64)[0]
    d2 = float(contributions.sum())
    order = np.argsort(-contributions, kind="stable")
    shown = order[:max_features]
    values = list(contributions[shown])
    labels = [names[j] for j in shown]
    if order.size > max_features:
        values.append(float(contributions[order[max_features:]].sum()))
        labels.append(f"other {order.size - max_features}")
    position = np.arange(len(values))
    bars = ax.barh(position, values, color=_ANOMALY_COLOUR, alpha=0.8)
    if order.size > max_features:
        bars[-1].set_color("0.6")
    ax.set_yticks(position, labels)
    ax.invert_yaxis()  # largest at the top
    for bar, value in zip(bars, values, strict=False):
        share = 100.0 * value / d2 if d2 > 0 else 0.0
        ax.annotate(
            f"{share:.0f}%",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
        )
    ax.set_xlim(0, 1.15 * max(max(values), 1e-12))
    ax.set_xlabel("mean squared difference to the K neighbours (standardised units)")
    ax.set_title(title if title is not None else f"Per-feature explanation (sum = D2 = {d2:.3g})")
    return ax


def plot_scores(detector, X=None, y=None, *, bins: int = 50, log: bool = False, ax=None):
    """Histogram of the training scores with ``threshold_``; optionally the scores of rows ``X``.

    Parameters
    ----------
    detector : any fitted dtpm_fast detector (needs ``decision_scores_`` and ``threshold_``)
    X : array-like of shape (n_rows, n_features), optional
        Rows whose scores are drawn as step histograms (split by ``y`` when given).
    y : array-like of 0/1, optional
        Labels of X (1 = anomaly).
    bins : int
        Number of bins, shared by all histograms.
    log : bool
        Logarithmic count axis.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    _check_fitted(detector, "decision_scores_", "threshold_")
    bins = _positive_int(bins, "bins")
    if X is None and y is not None:
        raise ValueError("y was given without X: labels need the rows they belong to")
    train = np.asarray(detector.decision_scores_, dtype=np.float64)
    groups = []
    if X is not None:
        X = _rows(X)
        y = _labels(y, X.shape[0])
        scores = np.asarray(detector.decision_function(X), dtype=np.float64)
        if y is None:
            groups.append(("scored rows", scores, "black"))
        else:
            groups.append(("scored rows, normal", scores[y == 0], _NORMAL_COLOUR))
            groups.append(("scored rows, anomaly", scores[y == 1], _ANOMALY_COLOUR))
    ax = _new_ax(ax, (6, 4))

    everything = np.concatenate([train, *(g[1] for g in groups)])
    edges = np.histogram_bin_edges(everything, bins=bins)
    ax.hist(train, bins=edges, color="0.75", label=f"training rows ({train.size})")
    for label, values, colour in groups:
        if values.size:
            ax.hist(
                values, bins=edges, histtype="step", lw=1.8, color=colour, label=f"{label} ({values.size})"
            )
    threshold = float(detector.threshold_)
    contamination = getattr(detector, "contamination", None)
    suffix = f", contamination {contamination:g}" if isinstance(contamination, (int, float)) else ""
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold_ = {threshold:.1f}{suffix}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("rows")
    ax.legend(fontsize="small")
    ax.set_title("Anomaly scores and the detector's threshold")
    return ax


# ---- all three ------------------------------------------------------------------------------
def plot_overview(
    detector, X, y=None, *, path=None, feature_names=None, max_features: int = 12, dpi: int = 120
):
    """One figure: scores histogram, posteriors of three rows, explanation of the top row.

    The posterior panel (log scale) shows the row of X with the lowest score, the one with the
    median score and the one with the highest score (with ``y``: the median normal row, the
    median anomaly and the highest-scoring row). The explanation panel explains the
    highest-scoring row (with ``y``: the median anomaly, a more typical one).

    Parameters
    ----------
    detector : fitted ``DTPMNonParametric`` (or a detector with ``posterior`` and ``explain``)
    X : array-like of shape (n_rows, n_features)
    y : array-like of 0/1, optional
        Labels of X (1 = anomaly), for the histogram and the choice of rows.
    path : str or os.PathLike, optional
        Write the figure there (format from the suffix, e.g. ``.png``, ``.svg``, ``.pdf``).
    feature_names : list of str, optional
    max_features : int
        Bars in the explanation panel.
    dpi : int
        Resolution of a written raster file.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_fitted(detector, "posterior", "explain", "decision_scores_", "threshold_")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    dpi = _positive_int(dpi, "dpi")
    X = _rows(X)
    y = _labels(y, X.shape[0])
    names = _feature_names(feature_names, detector, X.shape[1])
    from matplotlib.figure import Figure  # not pyplot: no backend or display involved

    scores = np.asarray(detector.decision_function(X), dtype=np.float64)
    top = int(np.argmax(scores))
    if y is not None and (y == 0).any() and (y == 1).any():
        picks = [_median_row(scores, y == 0), _median_row(scores, y == 1), top]
        what = ["median normal row", "median anomaly", "highest score"]
    else:
        picks = [int(np.argmin(scores)), _median_row(scores, np.ones(scores.size, bool)), top]
        what = ["lowest score", "median score", "highest score"]
    row_names = [f"row {r}: {w}" for r, w in zip(picks, what, strict=False)]
    explained = picks[1] if y is not None and what[1] == "median anomaly" else top

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.05])
    plot_scores(detector, X, y, ax=fig.add_subplot(grid[0, 0]))
    plot_explanation(
        detector,
        X[explained],
        feature_names=names,
        max_features=max_features,
        title=f"Why row {explained} scores {scores[explained]:.1f}: per-feature share of its D2",
        ax=fig.add_subplot(grid[0, 1]),
    )
    plot_posterior(
        detector,
        X[picks],
        names=row_names,
        colors=[_NORMAL_COLOUR, "tab:orange", _ANOMALY_COLOUR],
        log=True,
        ax=fig.add_subplot(grid[1, :]),
    )
    fig.suptitle(f"{type(detector).__name__}: {X.shape[0]} rows scored, {X.shape[1]} features")
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        path = Path(path)
        FigureCanvasAgg(fig)  # render with Agg whatever pyplot's backend is
        fig.savefig(path, dpi=dpi)
    return fig


def _median_row(scores: np.ndarray, mask: np.ndarray) -> int:
    candidates = np.flatnonzero(mask)
    order = candidates[np.argsort(scores[candidates], kind="stable")]
    return int(order[order.size // 2])

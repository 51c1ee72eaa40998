"""dtpm_fast.plotting: figures render to valid PNGs, arguments are checked, the demo writes one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before pyplot is imported anywhere in this process

import matplotlib.image
from matplotlib.figure import Figure

from dtpm_fast import DTPMNonParametric
from dtpm_fast.plotting import plot_explanation, plot_overview, plot_posterior, plot_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X_train = rng.standard_normal((300, 6)).astype(np.float32)
    X = np.vstack([rng.standard_normal((40, 6)), rng.standard_normal((10, 6)) * 0.5 + 4.0]).astype(np.float32)
    y = np.r_[np.zeros(40, dtype=np.int64), np.ones(10, dtype=np.int64)]
    return DTPMNonParametric(contamination=0.05).fit(X_train), X, y


def assert_png(path, min_side=200):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_importing_plotting_does_not_import_matplotlib():
    code = "import sys, dtpm_fast, dtpm_fast.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_overview_writes_the_figure(fitted, tmp_path, suffix):
    detector, X, y = fitted
    path = tmp_path / f"overview{suffix}"
    fig = plot_overview(detector, X, y, path=path, feature_names=[f"feature {j}" for j in range(6)])
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # scores, explanation, posterior + its twin
    if suffix == ".png":
        assert_png(path)
    else:
        assert path.read_text().lstrip().startswith("<?xml") and "feature 3" in path.read_text()


def test_overview_without_labels_or_path(fitted):
    detector, X, _ = fitted
    fig = plot_overview(detector, X)
    legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert any("lowest score" in t for t in legend) and any("highest score" in t for t in legend)


def test_panels_draw_on_the_given_axes(fitted, tmp_path):
    detector, X, y = fitted
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    assert plot_scores(detector, X, y, ax=axes[0]) is axes[0]
    assert (
        plot_explanation(detector, X[-1], feature_names=list("abcdef"), max_features=3, ax=axes[1]) is axes[1]
    )
    assert (
        plot_posterior(detector, X[[0, -1]], names=["normal", "anomaly"], x_axis="sigma", ax=axes[2])
        is axes[2]
    )
    # explanation: 3 largest features + "other 3", labelled by name, largest first
    labels = [t.get_text() for t in axes[1].get_yticklabels()]
    assert len(labels) == 4 and labels[-1] == "other 3" and set(labels[:3]) <= set("abcdef")
    widths = [bar.get_width() for bar in axes[1].patches]
    assert widths[:3] == sorted(widths[:3], reverse=True)
    assert np.isclose(sum(widths), detector.explain(X[-1:]).sum(), rtol=1e-5)
    # threshold drawn where the detector has it; posterior on the sigma axis (log scale)
    assert any(np.allclose(line.get_xdata(), detector.threshold_) for line in axes[0].get_lines())
    assert axes[2].get_xscale() == "log"
    path = tmp_path / "panels.png"
    fig.savefig(path)
    assert_png(path)


def test_panels_make_their_own_axes(fitted):
    import matplotlib.pyplot as plt

    detector, X, _ = fitted
    for ax in (
        plot_scores(detector),
        plot_explanation(detector, X[0]),
        plot_posterior(detector, X[:2], log=True),
    ):
        assert ax.has_data()
        plt.close(ax.figure)


def test_posterior_shows_the_schedule(fitted):
    detector, X, _ = fitted
    ax = plot_posterior(detector, X[[0, -1]], ax=Figure().subplots())
    lines = ax.get_lines()
    assert len(lines) == 2 and len(lines[0].get_xdata()) == detector.T
    # the anomaly's posterior mass sits at larger t than the normal row's
    means = [np.sum(line.get_xdata() * line.get_ydata()) for line in lines]
    assert means[1] > means[0]
    twin = [a for a in ax.figure.axes if a is not ax]
    assert len(twin) == 1 and "sigma" in twin[0].get_ylabel()


def test_scores_histogram_works_for_training_scores_alone(fitted):
    detector, _, _ = fitted
    ax = plot_scores(detector, bins=20, log=True, ax=Figure().subplots())
    assert ax.get_yscale() == "log"
    assert sum(p.get_height() for p in ax.patches) == detector.decision_scores_.size


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d, X, y: plot_scores(DTPMNonParametric(), X), "detector"),
        (lambda d, X, y: plot_posterior(object(), X[:2]), "detector"),
        (lambda d, X, y: plot_posterior(d, X), "X has 50 rows"),
        (lambda d, X, y: plot_posterior(d, X[:2], names=["one"]), "names"),
        (lambda d, X, y: plot_posterior(d, X[:2], colors=["red"]), "colors"),
        (lambda d, X, y: plot_posterior(d, X[:2], x_axis="sigma2"), "x_axis"),
        (lambda d, X, y: plot_posterior(d, X[:0]), "X must hold at least one row"),
        (lambda d, X, y: plot_posterior(d, None), "X must be"),
        (lambda d, X, y: plot_explanation(d, X[:2]), "x must be one row"),
        (lambda d, X, y: plot_explanation(d, X[0], feature_names=["a", "b"]), "feature_names has 2"),
        (lambda d, X, y: plot_explanation(d, X[0], feature_names="abcdef"), "feature_names"),
        (lambda d, X, y: plot_explanation(d, X[0], max_features=0), "max_features"),
        (lambda d, X, y: plot_explanation(d, X[0], ax="left"), "ax must be a matplotlib Axes"),
        (lambda d, X, y: plot_scores(d, X, y[:3]), "y must have one label per row"),
        (lambda d, X, y: plot_scores(d, X, y + 1), "y must hold 0"),
        (lambda d, X, y: plot_scores(d, None, y), "y was given without X"),
        (lambda d, X, y: plot_scores(d, X, bins=1.5), "bins"),
        (lambda d, X, y: plot_overview(d, X, path=3), "path must be"),
        (lambda d, X, y: plot_overview(d, X, dpi=0), "dpi"),
        (lambda d, X, y: plot_posterior(d, X[:2, :4]), "X"),  # the detector's own feature-count check
    ],
)
def test_bad_arguments_raise_value_error_naming_them(fitted, call, match):
    detector, X, y = fitted
    with pytest.raises(ValueError, match=match):
        call(detector, X, y)


def test_demo_writes_the_overview(tmp_path):
    path = tmp_path / "demo.png"
    out = subprocess.run(
        [sys.executable, "-m", "dtpm_fast", "--plot", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "AUC-ROC" in out.stdout and f"figure written to {path}" in out.stdout
    assert_png(path, min_side=600)

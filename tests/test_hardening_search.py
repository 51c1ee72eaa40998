"""Neighbour search on extreme but valid input: every index agrees with the exact ones, FAISS is
never handed what makes it abort, and bad ``index_params`` fail at fit naming ``index_params``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dtpm_fast

F32_MAX = float(np.finfo(np.float32).max)
INDEXES = ("flat", "kdtree", "hnsw", "ivf")
# Exact candidates for the approximate indexes at this size, so any difference is a defect.
EXACT_PARAMS = {"hnsw": {"ef_search": 400, "candidates": 4}, "ivf": {"nlist": 4, "nprobe": 4}}


@pytest.fixture(scope="module")
def train():
    return np.random.default_rng(3).normal(size=(240, 5)).astype(np.float32)


def _far_rows(train):
    far = np.array(
        [
            np.full(5, F32_MAX),
            np.full(5, -F32_MAX),
            [F32_MAX, -F32_MAX, 0, 1, -1],
            [1e20, 0, 0, 0, 0],
            [3e19, 3e19, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    return np.vstack([far, train[2:32] * np.float32(1.5)])  # mixed with ordinary rows: the batched FAISS path


def _model(index, **kwargs):
    return dtpm_fast.DTPMNonParametric(
        index=index, index_params=EXACT_PARAMS.get(index), device="cpu", **kwargs
    )


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("index", INDEXES)
def test_far_query_rows_score_as_the_brute_force(train, index, standardize):
    Q = _far_rows(train)
    exact = _model("brute", standardize=standardize).fit(train)
    model = _model(index, standardize=standardize).fit(train)
    np.testing.assert_array_equal(model.decision_function(Q), exact.decision_function(Q))
    np.testing.assert_array_equal(model.posterior(Q), exact.posterior(Q))
    np.testing.assert_array_equal(model.explain(Q), exact.explain(Q))


@pytest.mark.parametrize("index", INDEXES)
def test_extreme_training_row_leave_one_out_as_the_brute_force(train, index):
    # One extreme value per row: the other features still rank the neighbours (a row extreme in
    # every feature is equally far from all others, and ties may go either way).
    X = train.copy()
    X[0, 0] = F32_MAX
    X[1, 1] = -F32_MAX
    exact = _model("brute").fit(X)
    model = _model(index).fit(X)
    np.testing.assert_array_equal(model.decision_scores_, exact.decision_scores_)
    Q = _far_rows(X)[:2]  # still beyond float32 after standardising with the wide scales
    np.testing.assert_array_equal(model.decision_function(Q), exact.decision_function(Q))
    np.testing.assert_array_equal(model.explain(Q), exact.explain(Q))


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("value", [1e19, F32_MAX])
def test_faiss_index_refuses_unindexable_rows_without_aborting(index, value):
    # IVF's k-means aborted the process (std::terminate) on such rows: run in a child.
    code = (
        "import numpy as np, dtpm_fast\n"
        "X = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)\n"
        f"X[0] = {value!r}\n"
        "try:\n"
        f"    dtpm_fast.DTPMNonParametric(index={index!r}, standardize=False, device='cpu').fit(X)\n"
        "except ValueError as exc:\n"
        "    print('ValueError:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ValueError:" in result.stdout
    assert "standardize=True" in result.stdout or "too far" in result.stdout


@pytest.mark.parametrize(
    ("index", "params", "match"),
    [
        ("hnsw", "M=8", "index_params must be a dict"),
        ("ivf", ["nlist", 4], "index_params must be a dict"),
        ("hnsw", {"m": 8}, "not a parameter of the 'hnsw' index"),
        ("hnsw", {8: 8}, "not a parameter"),
        ("hnsw", {"M": -3}, r"index_params\['M'\] must be an int"),
        ("hnsw", {"M": 1}, r"index_params\['M'\] must be an int"),
        ("hnsw", {"M": 2**31 - 1}, r"index_params\['M'\] must be an int"),
        ("hnsw", {"M": 8.0}, r"index_params\['M'\] must be an int"),
        ("hnsw", {"ef_construction": 2**31 - 1}, r"index_params\['ef_construction'\]"),
        ("hnsw", {"ef_search": True}, r"index_params\['ef_search'\]"),
        ("ivf", {"nlist": 1000}, r"index_params\['nlist'\]=1000 is larger than the 240 training rows"),
        ("ivf", {"nlist": 0}, r"index_params\['nlist'\] must be an int"),
        ("ivf", {"nprobe": "8"}, r"index_params\['nprobe'\] must be an int"),
        ("kdtree", {"leafsize": -1}, r"index_params\['leafsize'\]"),
        ("flat", {"M": 8}, "not a parameter of the 'flat' index"),
        ("auto", "M=8", "index_params must be a dict"),
    ],
)
def test_bad_index_params_fail_at_fit_naming_index_params(train, index, params, match):
    model = dtpm_fast.DTPMNonParametric(index=index, index_params=params, device="cpu")
    with pytest.raises(ValueError, match=match):
        model.fit(train)


@pytest.mark.parametrize("params", [{"M": 2}, {"M": 512, "ef_search": 1, "ef_construction": 1}])
def test_index_params_at_their_bounds_work(train, params):
    model = dtpm_fast.DTPMNonParametric(index="hnsw", index_params=params, device="cpu").fit(train)
    assert np.isfinite(model.decision_function(train[:5])).all()


def test_ivf_nlist_equal_to_rows_works(train):
    small = train[:40]
    model = dtpm_fast.DTPMNonParametric(index="ivf", index_params={"nlist": 40}, device="cpu").fit(small)
    assert np.isfinite(model.decision_scores_).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_far_row_leaves_the_other_rows_of_its_batch_unchanged(dtype):
    # Small training scales put a float32-representable query beyond float32 once standardised;
    # the ordinary rows batched with it must score as they do alone.
    X = (np.random.default_rng(4).normal(size=(300, 4)) * 1e-3).astype(dtype)
    model = dtpm_fast.DTPMNonParametric(device="cpu").fit(X)
    Q = np.vstack([X[:6], np.full((1, 4), 3e38, dtype=dtype), -np.full((1, 4), 3e38, dtype=dtype)])
    together = model.decision_function(Q)
    alone = np.concatenate([model.decision_function(Q[i : i + 1]) for i in range(len(Q))])
    np.testing.assert_array_equal(together, alone)
    assert (together[6:] == model.T - 1).all()

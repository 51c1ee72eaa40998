"""The native brute-force k-NN (_core.BruteForceIndex, index="brute") against exact oracles."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from dtpm_fast import DTPMNonParametric, _core
from oracles import knn_sqdist_oracle


def all_sqdist(Q, X):
    """(m, n) squared distances in float64 by explicit differences."""
    return ((Q[:, None, :].astype(np.float64) - X[None, :, :].astype(np.float64)) ** 2).sum(axis=2)


def check_against_oracle(Q, X, k, rtol=1e-5):
    sqdist, ids = _core.BruteForceIndex(X).search(Q, k)
    check_result(Q, X, k, sqdist, ids, rtol)
    return sqdist, ids


def check_result(Q, X, k, sqdist, ids, rtol=1e-5):
    assert sqdist.dtype == np.float32 and ids.dtype == np.int64
    assert sqdist.shape == ids.shape == (len(Q), k)
    assert ((ids >= 0) & (ids < len(X))).all()
    assert all(len(set(row)) == k for row in ids)  # never the same row twice, never padding
    expected = knn_sqdist_oracle(Q, X, k)
    full = all_sqdist(Q, X)
    scale = full.max(axis=1, keepdims=True)
    # the ids give the oracle's k smallest distances; the distances returned are those of the ids
    of_ids = np.take_along_axis(full, ids, axis=1)
    assert (np.abs(of_ids - expected) <= rtol * scale).all()  # rounding scales with the row's largest
    assert (np.abs(sqdist - of_ids) <= 1e-6 * (of_ids + 1e-30)).all()
    assert (np.diff(sqdist, axis=1) >= 0).all()
    # where the k-th and (k+1)-th distances are well apart, the set of ids is the oracle's
    order = np.argsort(full, axis=1, kind="stable")
    if k < len(X):
        sorted_d = np.take_along_axis(full, order, axis=1)
        clear = sorted_d[:, k] - sorted_d[:, k - 1] > 1e-4 * scale[:, 0]
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(np.sort(ids[clear], axis=1), np.sort(order[clear, :k], axis=1))


# n_train and n_query off every multiple of the lanes (4/8/16), group (x2), query tile (4/8)
# and cache chunk; n_train below one group; k = 1 and k = n_train.
@pytest.mark.parametrize(
    "n_train, n_query, d, k",
    [
        (1, 3, 1, 1),
        (3, 5, 3, 3),
        (7, 9, 17, 1),
        (31, 33, 32, 6),
        (97, 13, 100, 97),
        (1000, 37, 3, 6),
        (4099, 101, 17, 7),
        (2051, 65, 100, 5),
    ],
)
def test_matches_oracle_at_odd_sizes(n_train, n_query, d, k):
    rng = np.random.default_rng(n_train * 7 + d)
    X = rng.standard_normal((n_train, d), dtype=np.float32)
    Q = rng.standard_normal((n_query, d), dtype=np.float32)
    check_against_oracle(Q, X, k)


ISA_CASES = [(1, 3, 1, 1), (7, 9, 17, 1), (97, 13, 100, 97), (4099, 101, 17, 7), (2051, 65, 3, 5)]
ISA_CHILD = """
import sys, numpy as np, dtpm_fast
from dtpm_fast import _core
out = {"simd": np.array(dtpm_fast.build_info()["simd"])}
for i, (n, m, d, k) in enumerate(eval(sys.argv[2])):
    rng = np.random.default_rng(n * 7 + d)
    X = rng.standard_normal((n, d), dtype=np.float32)
    Q = rng.standard_normal((m, d), dtype=np.float32)
    out[f"d{i}"], out[f"i{i}"] = _core.BruteForceIndex(X).search(Q, k)
np.savez(sys.argv[1], **out)
"""


@pytest.mark.parametrize("isa, name", [("baseline", "baseline"), ("x86-64-v3", "AVX2")])
def test_lower_instruction_sets_match_oracle(tmp_path, isa, name):
    # Every compiled variant of the scan (lane width 4 / 8 / 16) on this machine, in a child
    # process because the instruction set is chosen once per process.
    path = tmp_path / "out.npz"
    env = {**os.environ, "DTPM_FORCE_ISA": isa}
    subprocess.run([sys.executable, "-c", ISA_CHILD, str(path), repr(ISA_CASES)], env=env, check=True)
    with np.load(path) as out:
        if name not in str(out["simd"]):
            pytest.skip(f"this CPU or build has no {isa} variant (got {out['simd']})")
        for i, (n, m, d, k) in enumerate(ISA_CASES):
            rng = np.random.default_rng(n * 7 + d)
            X = rng.standard_normal((n, d), dtype=np.float32)
            Q = rng.standard_normal((m, d), dtype=np.float32)
            check_result(Q, X, k, out[f"d{i}"], out[f"i{i}"])


def test_training_set_larger_than_a_cache_chunk():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((9000, 32), dtype=np.float32)  # > 512 KiB packed: several chunks
    Q = np.vstack([rng.standard_normal((50, 32), dtype=np.float32), X[-20:], X[:20]])
    sqdist, ids = check_against_oracle(Q, X, 6)
    np.testing.assert_array_equal(ids[50:, 0], np.r_[np.arange(8980, 9000), np.arange(20)])
    np.testing.assert_array_equal(sqdist[50:, 0], 0.0)


def test_ties_go_to_the_smaller_id():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((40, 5), dtype=np.float32)
    X = np.vstack([base] * 4)  # row i has copies at i + 40, i + 80, i + 120
    sqdist, ids = _core.BruteForceIndex(X).search(base, 6)
    np.testing.assert_array_equal(ids[:, :4], np.arange(40)[:, None] + 40 * np.arange(4)[None, :])
    np.testing.assert_array_equal(sqdist[:, :4], 0.0)
    # a query at the same distance from several rows: the ids come in increasing order
    X = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 0]], dtype=np.float32)
    sqdist, ids = _core.BruteForceIndex(X).search(np.zeros((1, 2), dtype=np.float32), 4)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(sqdist, [[1, 1, 1, 1]])


def test_large_coordinates_and_a_common_offset():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((500, 10)) * 1e3 + 1e5  # norm expansion alone would lose every digit
    Q = rng.standard_normal((60, 10)) * 1e3 + 1e5
    check_against_oracle(Q.astype(np.float32), X.astype(np.float32), 5, rtol=1e-4)


def test_properties_and_empty_query_batch():
    X = np.ones((10, 4), dtype=np.float32)
    index = _core.BruteForceIndex(X)
    assert index.ntotal == 10 and index.d == 4
    sqdist, ids = index.search(np.empty((0, 4), dtype=np.float32), 3)
    assert sqdist.shape == ids.shape == (0, 3)


def test_index_keeps_its_training_rows_alive():
    """The index reads the caller's rows (no copy): it must hold them after the caller lets go."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((300, 7)).astype(np.float32)
    Q = rng.standard_normal((20, 7)).astype(np.float32)
    expected = X.copy()
    index = _core.BruteForceIndex(X)
    del X
    gc.collect()
    np.ones((300, 7), dtype=np.float32)  # likely to reuse freed memory if it had been released
    sqdist, ids = index.search(Q, 4)
    check_result(Q, expected, 4, sqdist, ids)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _core.BruteForceIndex(np.ones((5, 3))), "float32"),
        (lambda: _core.BruteForceIndex(np.ones((5, 3), dtype=np.float32).T), "C-contiguous"),
        (lambda: _core.BruteForceIndex(np.ones(5, dtype=np.float32)), "2-D"),
        (lambda: _core.BruteForceIndex(np.ones((0, 3), dtype=np.float32)), "at least 1 training row"),
        (lambda: _core.BruteForceIndex(np.ones((5, 0), dtype=np.float32)), "at least 1 feature"),
        (lambda: _core.BruteForceIndex(np.array([[1.0, np.nan]], dtype=np.float32)), "non-finite"),
        (
            lambda: _core.BruteForceIndex(np.ones((5, 3), dtype=np.float32)).search(
                np.ones((2, 4), np.float32), 1
            ),
            "4 features but the index has 3",
        ),
        (
            lambda: _core.BruteForceIndex(np.ones((5, 3), dtype=np.float32)).search(
                np.ones((2, 3), np.float32), 0
            ),
            r"k must be in \[1, 5\]",
        ),
        (
            lambda: _core.BruteForceIndex(np.ones((5, 3), dtype=np.float32)).search(
                np.ones((2, 3), np.float32), 6
            ),
            r"k must be in \[1, 5\]",
        ),
        (
            lambda: _core.BruteForceIndex(np.ones((5, 3), dtype=np.float32)).search(np.ones((2, 3)), 1),
            "float32",
        ),
        (
            lambda: _core.BruteForceIndex(np.ones((5, 3), dtype=np.float32)).search(
                np.full((2, 3), np.inf, dtype=np.float32), 1
            ),
            "non-finite",
        ),
    ],
)
def test_bad_input_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_leave_one_out_scores_equal_flat_on_random_data():
    rng = np.random.default_rng(8)
    X_train = rng.standard_normal((3001, 21)).astype(np.float32)
    X_test = rng.standard_normal((777, 21)).astype(np.float32) * 1.5
    assert_same_scores(X_train, X_test)


def test_leave_one_out_scores_equal_flat_on_adbench(shared_dir):
    from dtpm_fast.evaluation.protocol import load_dataset, prepare_split

    X, y = load_dataset(shared_dir / "data" / "adbench", "6_cardio")
    X_train, X_test, _ = prepare_split(X, y, seed=0, protocol="semi")
    assert_same_scores(X_train.astype(np.float32), X_test.astype(np.float32))


def assert_same_scores(X_train, X_test):
    for score in ("mean", "mode"):
        flat = DTPMNonParametric(index="flat", score=score).fit(X_train)
        brute = DTPMNonParametric(index="brute", score=score).fit(X_train)
        assert brute.index_kind_ == "brute"
        for a, b in (
            (flat.decision_scores_, brute.decision_scores_),
            (flat.decision_function(X_test), brute.decision_function(X_test)),
        ):
            if score == "mean":
                np.testing.assert_allclose(b, a, rtol=1e-6)
            else:
                np.testing.assert_array_equal(b, a)

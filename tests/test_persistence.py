"""Saving, loading and pickling detectors: exact round trips and clear errors on bad files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import dtpm_fast
from dtpm_fast.io import model_files
from dtpm_fast.io.load import load as load_model
from dtpm_fast._validation import NotFittedError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X_train = rng.standard_normal((400, 8)).astype(np.float32)
    X_test = (rng.standard_normal((97, 8)) * 1.5).astype(np.float32)
    return X_train, X_test


@pytest.fixture(scope="module")
def fitted(data):
    return dtpm_fast.DTPMNonParametric(n_neighbors=5, index="flat", contamination=0.05).fit(data[0])


def _rewrite(path, src, edit_member=None, manifest_edit=None):
    """Copy zip ``src`` to ``path``, changing one member's bytes or the manifest JSON."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            payload = zin.read(name)
            if name == "manifest.json" and manifest_edit is not None:
                manifest = json.loads(payload)
                manifest_edit(manifest)
                payload = json.dumps(manifest).encode()
            elif edit_member is not None and name == edit_member[0]:
                payload = edit_member[1](payload)
            zout.writestr(name, payload)


@pytest.mark.parametrize("index", ["flat", "kdtree", "hnsw", "ivf"])
def test_save_load_scores_identically(tmp_path, data, index):
    X_train, X_test = data
    model = dtpm_fast.DTPMNonParametric(index=index, score="mode" if index == "kdtree" else "mean").fit(
        X_train
    )
    path = tmp_path / "model.dtpm"
    model.save(path)
    loaded = dtpm_fast.load(path)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.decision_function(X_test), model.decision_function(X_test))
    np.testing.assert_array_equal(loaded.decision_scores_, model.decision_scores_)
    assert loaded.threshold_ == model.threshold_
    np.testing.assert_array_equal(loaded.predict(X_test), model.predict(X_test))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_saved_model_scores_identically_in_a_fresh_process(tmp_path, data, fitted):
    X_test = data[1]
    model_path, query_path, out_path = tmp_path / "m.dtpm", tmp_path / "q.npy", tmp_path / "s.npy"
    fitted.save(model_path)
    np.save(query_path, X_test)
    script = (
        "import sys, numpy as np, dtpm_fast\n"
        "m = dtpm_fast.load(sys.argv[1])\n"
        "np.save(sys.argv[3], m.decision_function(np.load(sys.argv[2])))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(model_path), str(query_path), str(out_path)], check=True
    )
    np.testing.assert_array_equal(np.load(out_path), fitted.decision_function(X_test))


def test_file_contains_no_pickle_and_a_manifest(tmp_path, fitted):
    path = tmp_path / "m.dtpm"
    fitted.save(path)
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        names = archive.namelist()
    assert manifest["format"] == model_files.FORMAT_NAME
    assert manifest["format_version"] == model_files.FORMAT_VERSION
    assert manifest["kind"] == "DTPMNonParametric"
    assert manifest["library_version"] == dtpm_fast.__version__
    assert all(n == "manifest.json" or n.endswith((".npy", ".bin")) for n in names)


def test_feature_names_travel_with_the_model(tmp_path, data):
    model = dtpm_fast.DTPMNonParametric(index="flat").fit(data[0])
    model.feature_names_in_ = np.array([f"f{j}" for j in range(8)], dtype=object)
    model.save(tmp_path / "m.dtpm")
    assert list(dtpm_fast.load(tmp_path / "m.dtpm").feature_names_in_) == [f"f{j}" for j in range(8)]
    assert list(pickle.loads(pickle.dumps(model)).feature_names_in_) == [f"f{j}" for j in range(8)]


def test_save_replaces_an_existing_file_atomically(tmp_path, data, fitted):
    path = tmp_path / "m.dtpm"
    path.write_bytes(b"old contents")
    fitted.save(path)
    np.testing.assert_array_equal(
        dtpm_fast.load(path).decision_function(data[1]), fitted.decision_function(data[1])
    )
    assert sorted(os.listdir(tmp_path)) == ["m.dtpm"]


def test_saving_an_unfitted_detector_raises(tmp_path):
    with pytest.raises(NotFittedError):
        dtpm_fast.DTPMNonParametric().save(tmp_path / "m.dtpm")
    assert not os.listdir(tmp_path)


# ---- bad files ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dtpm_fast.load(tmp_path / "nope.dtpm")


def test_not_a_zip_file(tmp_path):
    path = tmp_path / "m.dtpm"
    path.write_text("id,a,b\n1,2,3\n")
    with pytest.raises(ValueError, match="not a dtpm_fast model file"):
        dtpm_fast.load(path)


def test_truncated_file(tmp_path, fitted):
    path = tmp_path / "m.dtpm"
    fitted.save(path)
    contents = path.read_bytes()
    for keep in (len(contents) // 2, len(contents) - 10):
        path.write_bytes(contents[:keep])
        with pytest.raises(ValueError, match="truncated|not a dtpm_fast model"):
            dtpm_fast.load(path)


def test_flipped_byte_is_detected(tmp_path, fitted):
    path = tmp_path / "m.dtpm"
    fitted.save(path)
    contents = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("arrays/train.npy")
    contents[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # inside the stored data
    path.write_bytes(bytes(contents))
    with pytest.raises(ValueError, match="corrupted"):
        dtpm_fast.load(path)


def test_checksum_mismatch_is_detected(tmp_path, fitted):
    good, bad = tmp_path / "good.dtpm", tmp_path / "bad.dtpm"
    fitted.save(good)

    def perturb(npy: bytes) -> bytes:  # a valid .npy with one changed value: only SHA-256 can tell
        return npy[:-4] + bytes(4)

    _rewrite(bad, good, edit_member=("arrays/train.npy", perturb))
    with pytest.raises(ValueError, match="checksum mismatch in 'arrays/train.npy'"):
        dtpm_fast.load(bad)


def test_newer_format_version_is_refused(tmp_path, fitted):
    good, bad = tmp_path / "good.dtpm", tmp_path / "bad.dtpm"
    fitted.save(good)
    _rewrite(bad, good, manifest_edit=lambda m: m.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99, newer than this dtpm_fast supports"):
        dtpm_fast.load(bad)


def test_wrong_format_name_is_refused(tmp_path, fitted):
    good, bad = tmp_path / "good.dtpm", tmp_path / "bad.dtpm"
    fitted.save(good)
    _rewrite(bad, good, manifest_edit=lambda m: m.update(format="something-else"))
    with pytest.raises(ValueError, match="not a dtpm_fast model file"):
        dtpm_fast.load(bad)


def test_unknown_kind_is_refused_without_importing_it(tmp_path, fitted):
    good, bad = tmp_path / "good.dtpm", tmp_path / "bad.dtpm"
    fitted.save(good)
    _rewrite(bad, good, manifest_edit=lambda m: m.update(kind="os.system"))
    with pytest.raises(ValueError, match="unknown detector kind 'os.system'"):
        dtpm_fast.load(bad)


def test_wrong_expected_kind(tmp_path, fitted):
    path = tmp_path / "m.dtpm"
    fitted.save(path)
    with pytest.raises(ValueError, match="holds a DTPMNonParametric model, not a DTPMCategorical"):
        load_model(path, expected_kind="DTPMCategorical")


def test_object_array_in_file_is_not_unpickled(tmp_path, fitted):
    import hashlib
    import io

    good, bad = tmp_path / "good.dtpm", tmp_path / "bad.dtpm"
    fitted.save(good)
    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    payload = buffer.getvalue()

    def fix_manifest(m):
        m["arrays"]["train"].update(bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())

    _rewrite(bad, good, edit_member=("arrays/train.npy", lambda _: payload), manifest_edit=fix_manifest)
    with pytest.raises(ValueError, match="not a plain numeric .npy array"):
        dtpm_fast.load(bad)


def test_missing_member_is_reported(tmp_path, fitted):
    good, bad = tmp_path / "good.dtpm", tmp_path / "bad.dtpm"
    fitted.save(good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for name in zin.namelist():
            if name != "arrays/decision_scores.npy":
                zout.writestr(name, zin.read(name))
    with pytest.raises(ValueError, match="member 'arrays/decision_scores.npy' is missing"):
        dtpm_fast.load(bad)


def test_exported_torch_archives_are_recognised_by_name_only(tmp_path):
    torch = pytest.importorskip("torch")
    import warnings

    module = torch.nn.Linear(3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in torch >= 2.11; we only need a file
        torch.jit.script(module).save(str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(module, (torch.zeros(2, 3),)), str(tmp_path / "m.pt2"))
    for name, expected in (("m.ts", "torchscript"), ("m.pt2", "pt2")):
        assert model_files.exported_format(tmp_path / name) == expected
    with zipfile.ZipFile(tmp_path / "model.dtpm", "w") as archive:
        archive.writestr("manifest.json", "{}")
    assert model_files.exported_format(tmp_path / "model.dtpm") is None


# ---- pickling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_pickle_round_trip(data, index):
    X_train, X_test = data
    model = dtpm_fast.DTPMNonParametric(index=index).fit(X_train)
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.decision_function(X_test), model.decision_function(X_test))
    assert clone.threshold_ == model.threshold_


def test_pickle_carries_only_the_state(fitted, data):
    # Flat index: rebuilt from the training rows, so the pickle is the rows plus the training scores.
    needed = data[0].nbytes + fitted.decision_scores_.nbytes
    assert len(pickle.dumps(fitted)) < needed + 16_384


def test_pickle_unfitted_detector_keeps_params():
    model = dtpm_fast.DTPMNonParametric(n_neighbors=9, index="hnsw", index_params={"M": 16})
    clone = pickle.loads(pickle.dumps(model))
    assert clone.get_params() == model.get_params()
    assert not hasattr(clone, "threshold_")


class _UserSubclass(dtpm_fast.DTPMNonParametric):
    """A user's subclass: not a known kind for files, but it must still pickle."""


def test_user_subclass_pickles_but_is_not_saved(tmp_path, data):
    model = _UserSubclass(index="flat").fit(data[0])
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is _UserSubclass
    np.testing.assert_array_equal(clone.decision_function(data[1]), model.decision_function(data[1]))
    with pytest.raises(ValueError, match="cannot save a _UserSubclass"):
        model.save(tmp_path / "m.dtpm")

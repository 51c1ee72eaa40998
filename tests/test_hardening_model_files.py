"""Model files that lie: inconsistent members, bombs, damaged headers, forged checksums, bad
FAISS blobs, exported networks that disagree with their metadata -- each a ValueError naming
the file, at load; and everything ``load`` returns pickles and scores the same in another process."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dtpm_fast
from dtpm_fast.io import model_files

torch = pytest.importorskip("torch")

SMALL_NET = {"hidden_sizes": (8, 8), "epochs": 2, "batch_size": 32, "random_state": 0, "device": "cpu"}
KINDS = ("np_flat", "np_hnsw", "np_ivf", "categorical", "inverse_gamma", "ddpm")
EXPORTS = ("export_pt2", "export_torchscript")


def _fit(kind, X):
    if kind.startswith("np_"):
        params = {"np_hnsw": {"M": 8}, "np_ivf": {"nlist": 3}}.get(kind)
        return dtpm_fast.DTPMNonParametric(index=kind[3:], index_params=params, device="cpu").fit(X)
    if kind == "categorical":
        return dtpm_fast.DTPMCategorical(**SMALL_NET).fit(X)
    if kind == "inverse_gamma":
        return dtpm_fast.DTPMInverseGamma(**SMALL_NET).fit(X)
    return dtpm_fast.DDPMReconstruction(
        epochs=2,
        width=8,
        block_hidden=8,
        n_blocks=1,
        T=20,
        reconstruction_steps=5,
        random_state=0,
        device="cpu",
    ).fit(X)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files of every kind, and each loaded model's scores on a fixed query matrix."""
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(11)
    X = rng.normal(size=(90, 5)).astype(np.float32)
    Q = np.vstack([rng.normal(size=(12, 5)), rng.normal(size=(3, 5)) * 8]).astype(np.float32)
    out = {"X": X, "Q": Q, "paths": {}, "scores": {}}
    models = {}
    for kind in KINDS:
        models[kind] = _fit(kind, X)
        out["paths"][kind] = root / f"{kind}.dtpm"
        models[kind].save(out["paths"][kind])
    out["paths"]["export_pt2"] = root / "c.pt2"
    models["categorical"].export(out["paths"]["export_pt2"], format="pt2")
    out["paths"]["export_torchscript"] = root / "ig.pt"
    models["inverse_gamma"].export(out["paths"]["export_torchscript"], format="torchscript")
    for kind, path in out["paths"].items():
        out["scores"][kind] = dtpm_fast.load(path).decision_function(Q)
    return out


def _rewrite_state(src, dst, edit):
    """A consistent container (checksums, manifest dtype/shape recomputed) with edited content."""
    state = model_files.read(src)
    edit(state)
    model_files.write(dst, state, "test")
    return dst


def _members(path):
    with zipfile.ZipFile(path) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _zip(path, members, compress=()):
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in members:
            method = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(name, payload, compress_type=method)
    return path


def _resign(members):
    """Recompute the manifest's byte counts and SHA-256 for the members as they are."""
    by_name = dict(members)
    manifest = json.loads(by_name["manifest.json"])
    for section in ("arrays", "blobs"):
        for entry in manifest[section].values():
            payload = by_name.get(entry["member"])
            if payload is not None:
                entry["bytes"], entry["sha256"] = len(payload), hashlib.sha256(payload).hexdigest()
    return [(n, json.dumps(manifest).encode() if n == "manifest.json" else p) for n, p in members]


def _load_fails(path, match=None):
    with pytest.raises(ValueError, match=match) as info:
        dtpm_fast.load(path)
    assert str(path) in str(info.value) or repr(str(path)) in str(info.value)
    return info


# ----------------------------------------------------------------- members inconsistent with each other


def _set(section, key, value):
    def edit(state):
        state[section][key] = value

    return edit


def _set_param(name, value):
    def edit(state):
        state["meta"]["params"][name] = value

    return edit


NP_EDITS = {
    "scaler of the wrong length": (
        lambda s: _set("arrays", "scaler_mean", s["arrays"]["scaler_mean"][:-1])(s),
        "scaler_mean",
    ),
    "scale not positive": (
        lambda s: _set("arrays", "scaler_scale", -s["arrays"]["scaler_scale"])(s),
        "scaler_scale",
    ),
    "fewer training rows than n_neighbors": (
        lambda s: _set("arrays", "train", s["arrays"]["train"][:5])(s),
        "n_neighbors",
    ),
    "2-D training scores": (
        lambda s: _set("arrays", "decision_scores", s["arrays"]["decision_scores"][:, None])(s),
        "decision_scores",
    ),
    "scores of another length": (
        lambda s: _set("arrays", "decision_scores", s["arrays"]["decision_scores"][1:])(s),
        "decision_scores",
    ),
    "non-finite training row": (lambda s: s["arrays"]["train"].__setitem__((3, 1), np.nan), "train"),
    "training rows of the wrong width": (
        lambda s: _set("arrays", "train", s["arrays"]["train"][:, :4])(s),
        "train",
    ),
    "integer training rows": (
        lambda s: _set("arrays", "train", s["arrays"]["train"].astype(np.int32))(s),
        "train",
    ),
    "params failing _check_params": (_set_param("n_neighbors", 0), "n_neighbors"),
    "unknown parameter": (_set_param("neighbours", 3), "neighbours"),
    "T too large to tabulate": (_set_param("T", 10**9), "T must be an integer in"),
    "index_params a string": (lambda s: s["meta"].__setitem__("index_params", "M=8"), "index_params"),
    "an extra array": (_set("arrays", "other", np.zeros(3)), "unexpected"),
    "a blob for an index without one": (_set("blobs", "index", b"IHNf"), "blob"),
    "non-finite threshold": (lambda s: s["meta"].__setitem__("threshold", float("nan")), "threshold"),
    "feature names of the wrong count": (
        lambda s: s["extras"].__setitem__("feature_names", ["a", "b"]),
        "feature names",
    ),
}


@pytest.mark.parametrize("case", sorted(NP_EDITS))
def test_inconsistent_nonparametric_file_fails_at_load(files, tmp_path, case):
    edit, match = NP_EDITS[case]
    path = _rewrite_state(files["paths"]["np_flat"], tmp_path / "bad.dtpm", edit)
    _load_fails(path, match)


def _other_index_blob(files, **change):
    X = files["X"]
    rows, cols = change.get("rows", X.shape[0]), change.get("cols", X.shape[1])
    other = np.random.default_rng(5).normal(size=(rows, cols)).astype(np.float32)
    params = {"np_hnsw": {"M": 8}, "np_ivf": {"nlist": 3}}
    return lambda kind: (
        dtpm_fast.DTPMNonParametric(index=kind[3:], index_params=params[kind], device="cpu")
        .fit(other)
        ._backend.index_bytes()
    )


@pytest.mark.parametrize("kind", ["np_hnsw", "np_ivf"])
@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("garbage", lambda blob: b"not a faiss index at all" * 3),
        ("truncated", lambda blob: blob[: len(blob) // 2]),
        ("header only", lambda blob: blob[:4]),
        ("flipped tail", lambda blob: blob[:-40] + bytes(b ^ 0xFF for b in blob[-40:])),
    ],
)
def test_damaged_faiss_blob_is_a_value_error(files, tmp_path, kind, what, make):
    path = _rewrite_state(
        files["paths"][kind],
        tmp_path / "bad.dtpm",
        lambda s: _set("blobs", "index", make(s["blobs"]["index"]))(s),
    )
    _load_fails(path)


@pytest.mark.parametrize("kind", ["np_hnsw", "np_ivf"])
@pytest.mark.parametrize("change", [{"cols": 6}, {"rows": 80}, {}])
def test_faiss_blob_of_another_index_is_refused(files, tmp_path, kind, change):
    blob = _other_index_blob(files, **change)(kind)  # {}: same shape, other rows
    path = _rewrite_state(files["paths"][kind], tmp_path / "bad.dtpm", _set("blobs", "index", blob))
    _load_fails(path, "index")


def _length_field(blob: bytes, kind: str) -> int:
    """Offset of the length of the IVF direct map / the HNSW neighbour lists in a saved index."""
    from dtpm_fast.nonparametric import faiss_blob

    reader = faiss_blob._Reader(blob)
    reader.fourcc()
    reader.index_header()
    if kind == "np_ivf":
        reader.take(16)
        faiss_blob._flat(reader, "quantizer")
        reader.u8()
        return reader.at
    for item in (8, 4, 4, 8):
        reader.vector(item, "skipped")
    return reader.at


@pytest.mark.parametrize("kind", ["np_hnsw", "np_ivf"])
@pytest.mark.parametrize("claimed", [2**36, 10**9, 2**40 - 1])
def test_forged_faiss_array_length_is_refused_before_faiss_allocates(files, tmp_path, kind, claimed):
    # A 2.5e9-entry direct map in a 2.7 kB blob (checksum recomputed) asked FAISS for 20 GB and
    # took 37 s before failing; longer claims could exhaust the machine's memory.
    def forge(state):
        blob = bytearray(state["blobs"]["index"])
        at = _length_field(bytes(blob), kind)
        blob[at : at + 8] = struct.pack("<Q", claimed)
        state["blobs"]["index"] = bytes(blob)

    _load_fails(_rewrite_state(files["paths"][kind], tmp_path / "forged.dtpm", forge), "claims")


@pytest.mark.parametrize("claimed", [10**9, 2**40 - 1])
def test_forged_ivf_list_count_is_refused_before_faiss_allocates(files, tmp_path, claimed):
    # FAISS allocates the inverted lists' containers from this count before reading any size.
    def forge(state):
        blob = bytearray(state["blobs"]["index"])
        at = bytes(blob).rfind(b"ilar") + 4
        blob[at : at + 8] = struct.pack("<Q", claimed)
        state["blobs"]["index"] = bytes(blob)

    _load_fails(_rewrite_state(files["paths"]["np_ivf"], tmp_path / "forged.dtpm", forge), "claim")


def test_hnsw_blob_swapped_for_ivf_is_refused(files, tmp_path):
    ivf_blob = model_files.read(files["paths"]["np_ivf"])["blobs"]["index"]
    path = _rewrite_state(files["paths"]["np_hnsw"], tmp_path / "bad.dtpm", _set("blobs", "index", ivf_blob))
    _load_fails(path, "index")


def _weight_key(state, prefix):
    return next(k for k in sorted(state["arrays"]) if k.startswith(prefix) and state["arrays"][k].ndim == 2)


NET_EDITS = {
    "scaler of the wrong length": lambda s, p, m, sc: _set("arrays", m, s["arrays"][m][:-1])(s),
    "scale not positive": lambda s, p, m, sc: _set("arrays", sc, np.zeros_like(s["arrays"][sc]))(s),
    "NaN weight": lambda s, p, m, sc: s["arrays"][_weight_key(s, p)].__setitem__((0, 0), np.nan),
    "float64 weight": lambda s, p, m, sc: _set(
        "arrays", _weight_key(s, p), s["arrays"][_weight_key(s, p)].astype(np.float64)
    )(s),
    "weight of another shape": lambda s, p, m, sc: _set(
        "arrays", _weight_key(s, p), s["arrays"][_weight_key(s, p)][:, :-1]
    )(s),
    "2-D training scores": lambda s, p, m, sc: _set(
        "arrays", "decision_scores", s["arrays"]["decision_scores"][:, None]
    )(s),
    "empty training scores": lambda s, p, m, sc: _set("arrays", "decision_scores", np.zeros(0))(s),
    "params failing _check_params": lambda s, p, m, sc: s["meta"]["params"].__setitem__("T", 1),
    "n_features_in a string": lambda s, p, m, sc: s["meta"].__setitem__("n_features_in", "5"),
    "a network far wider than its weights": lambda s, p, m, sc: s["meta"]["params"].__setitem__(
        "width" if p == "network." else "hidden_sizes", 10**9 if p == "network." else [10**9, 8]
    ),
    "an extra array": lambda s, p, m, sc: _set("arrays", "other", np.zeros(3))(s),
    # One Python module per layer even on the "meta" device: 10^9 of them never finished.
    "far more layers than weights": lambda s, p, m, sc: s["meta"]["params"].__setitem__(
        "n_blocks" if p == "network." else "hidden_sizes", 10**9 if p == "network." else [8] * 100_000
    ),
}


@pytest.mark.parametrize("case", sorted(NET_EDITS))
@pytest.mark.parametrize("kind", ["categorical", "inverse_gamma", "ddpm"])
def test_inconsistent_network_file_fails_at_load(files, tmp_path, kind, case):
    names = (
        ("network.", "standardizer_mean", "standardizer_scale")
        if kind == "ddpm"
        else ("module.", "module.mean", "module.scale")
    )
    path = _rewrite_state(files["paths"][kind], tmp_path / "bad.dtpm", lambda s: NET_EDITS[case](s, *names))
    _load_fails(path)


def _edit_export_meta(src, dst, edit, member="extra/dtpm_meta.json"):
    members = []
    for name, payload in _members(src):
        if name.endswith(member):
            value = json.loads(payload)
            edit(value)
            payload = json.dumps(value).encode()
        members.append((name, payload))
    return _zip(dst, members)


@pytest.mark.parametrize("kind", EXPORTS)
@pytest.mark.parametrize(
    ("case", "edit"),
    [
        ("n_features of another graph", lambda m: m.__setitem__("n_features", m["n_features"] + 2)),
        (
            "kind of another head",
            lambda m: m.__setitem__(
                "kind", "categorical" if m["kind"] == "inverse_gamma" else "inverse_gamma"
            ),
        ),
        ("num_bins below the head's range", lambda m: m.__setitem__("num_bins", 2)),
        ("T not an int", lambda m: m.__setitem__("T", "400")),
        ("contamination out of range", lambda m: m.__setitem__("contamination", 0.9)),
        ("threshold NaN", lambda m: m.__setitem__("threshold", float("nan"))),
    ],
)
def test_exported_metadata_disagreeing_with_graph_fails_at_load(files, tmp_path, kind, case, edit):
    meta = json.loads(
        dict((n.rsplit("/", 1)[-1], p) for n, p in _members(files["paths"][kind]))["dtpm_meta.json"]
    )
    if case.startswith("num_bins") and meta["kind"] != "categorical":
        pytest.skip("num_bins is the categorical head's")
    path = _edit_export_meta(files["paths"][kind], tmp_path / "bad.pt", edit)
    _load_fails(path)


@pytest.mark.parametrize("kind", EXPORTS)
def test_exported_non_finite_training_scores_fail_at_load(files, tmp_path, kind):
    def edit(scores):
        scores[0] = float("inf")

    path = _edit_export_meta(files["paths"][kind], tmp_path / "bad.pt", edit, "extra/dtpm_train_scores.json")
    _load_fails(path, "training scores")


@pytest.mark.parametrize("kind", EXPORTS)
def test_exported_tensor_storage_truncated_with_valid_crc_fails_at_load(files, tmp_path, kind):
    # A shortened weight member (the zip CRC recomputed) loaded and then read past its buffer.
    members = _members(files["paths"][kind])
    data = [i for i, (n, p) in enumerate(members) if ("/data/" in n or "/weights/" in n) and len(p) >= 4]
    for i in data:
        edited = list(members)
        edited[i] = (members[i][0], members[i][1][: len(members[i][1]) // 2])
        path = _zip(tmp_path / f"bad{i}.pt", edited)
        try:
            model = dtpm_fast.load(path)
        except ValueError:
            continue
        np.testing.assert_array_equal(model.decision_function(files["Q"]), files["scores"][kind])


# ----------------------------------------------------------------- the reader's resources and the zip layer


def test_deflate_bomb_is_refused_before_it_is_inflated(files, tmp_path):
    # 400 MB of zeros deflate to ~400 kB; the manifest declares the member's real (small) size.
    path = tmp_path / "bomb.dtpm"
    members = _members(files["paths"]["np_flat"])
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in members:
            if name == "arrays/train.npy":
                with z.open(zipfile.ZipInfo(name), "w", force_zip64=True) as stream:
                    pass
                continue
            z.writestr(name, payload)
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in members:
            if name != "arrays/train.npy":
                z.writestr(name, payload)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as stream:
                chunk = bytes(1 << 20)
                for _ in range(400):
                    stream.write(chunk)
    assert path.stat().st_size < 5 << 20
    tracemalloc.start()
    try:
        _load_fails(path, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"the reader held {peak / 2**20:.0f} MiB while refusing the bomb"


def test_npy_header_claiming_a_huge_shape_is_refused_without_allocating(files, tmp_path):
    def edit(members):
        out = []
        for name, payload in members:
            if name == "arrays/decision_scores.npy":
                header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (4000000000,), }"
                header += b" " * (118 - len(header)) + b"\n"
                payload = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64)
            out.append((name, payload))
        return out

    members = _resign(edit(_members(files["paths"]["np_flat"])))
    _load_fails(_zip(tmp_path / "bad.dtpm", members), "decision_scores")


def test_deeply_nested_manifest_is_a_value_error(files, tmp_path):
    members = _members(files["paths"]["np_flat"])
    for depth in (40, 100_000):
        manifest = dict(members)["manifest.json"].decode()
        nested = "[" * depth + "]" * depth
        manifest = manifest.replace('"meta": {', '"deep": ' + nested + ', "meta": {', 1)
        path = _zip(
            tmp_path / f"deep{depth}.dtpm",
            [(n, manifest.encode() if n == "manifest.json" else p) for n, p in members],
        )
        _load_fails(path, "manifest")


@pytest.mark.parametrize("kind", ["np_flat", "categorical"])
def test_zip_header_bit_flips_are_value_errors(files, tmp_path, kind):
    # Every bit of the flag and compression-method fields of every local and central header:
    # encryption flags, unknown methods, data descriptors -- never NotImplementedError/RuntimeError.
    data = files["paths"][kind].read_bytes()
    offsets = []
    for signature, fields in ((b"PK\x03\x04", (6, 7, 8, 9)), (b"PK\x01\x02", (8, 9, 10, 11))):
        start = data.find(signature)
        while start >= 0:
            offsets += [start + f for f in fields]
            start = data.find(signature, start + 4)
    for n, offset in enumerate(offsets[:48]):
        for bit in (0, 3, 6):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            path = tmp_path / f"flip{n}_{bit}.dtpm"
            path.write_bytes(bytes(damaged))
            try:
                model = dtpm_fast.load(path)
            except ValueError:
                continue
            np.testing.assert_array_equal(model.decision_function(files["Q"]), files["scores"][kind])


@pytest.mark.parametrize("kind", EXPORTS)
def test_exported_central_directory_attribute_edits_never_change_the_weights(files, tmp_path, kind):
    # Fields of the central directory that Python's zipfile ignores (version made by, internal
    # and external file attributes): a 0xff in the external attributes of a weight's entry made
    # PyTorch's reader load that weight from the wrong bytes, with every CRC intact.
    data = files["paths"][kind].read_bytes()
    offsets = []
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        offsets += [start + f for f in (4, 5, 36, 37, 38, 39, 40, 41)]
        start = data.find(b"PK\x01\x02", start + 4)
    for n, offset in enumerate(offsets):
        damaged = bytearray(data)
        damaged[offset] = 0xFF
        path = tmp_path / f"attr{n}.bin"
        path.write_bytes(bytes(damaged))
        _check_outcome(files, kind, path)


@pytest.mark.parametrize("kind", KINDS + EXPORTS)
def test_zip64_end_record_offsets_beyond_the_file_are_value_errors(files, tmp_path, kind):
    # A ZIP64 end record's central-directory offset (and its locator's pointer to the record)
    # edited to ~2^63: zipfile's seek raised OverflowError.
    data = files["paths"][kind].read_bytes()
    fields = []
    for signature, offsets in ((b"PK\x06\x06", range(48, 56)), (b"PK\x06\x07", range(8, 16))):
        start = data.rfind(signature)
        if start >= 0:
            fields += [start + o for o in offsets]
    if not fields:
        pytest.skip("this file has no ZIP64 end record")
    for n, offset in enumerate(fields):
        damaged = bytearray(data)
        damaged[offset] = 0xFF
        path = tmp_path / f"z64_{n}.bin"
        path.write_bytes(bytes(damaged))
        _check_outcome(files, kind, path)


def test_two_members_of_the_same_name_are_refused(files, tmp_path):
    members = _members(files["paths"]["np_flat"])
    path = tmp_path / "dup.dtpm"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _zip(path, [*members, members[1]])
    _load_fails(path, "more than once")


def test_truncated_member_with_valid_crc_is_refused(files, tmp_path):
    members = _members(files["paths"]["np_flat"])
    for target in ("arrays/train.npy", "arrays/scaler_mean.npy", "manifest.json"):
        edited = [(n, p[: len(p) - 7] if n == target else p) for n, p in members]
        _load_fails(_zip(tmp_path / "stale.dtpm", edited))  # manifest's checksum now stale
        if target != "manifest.json":
            _load_fails(_zip(tmp_path / "forged.dtpm", _resign(edited)))  # checksum forged: the .npy is short


# ----------------------------------------------------------------- property-based: mutated files of each kind

ALL = KINDS + EXPORTS


def _check_outcome(files, kind, path):
    try:
        model = dtpm_fast.load(path)
    except ValueError as exc:  # NotFittedError is one too
        assert str(exc)
        return
    scores = model.decision_function(files["Q"])
    np.testing.assert_array_equal(scores, files["scores"][kind])


_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@_SETTINGS
@given(
    kind=st.sampled_from(ALL),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_random_byte_edits_give_value_error_or_the_same_scores(files, tmp_path_factory, kind, edits):
    data = bytearray(files["paths"][kind].read_bytes())
    for where, value in edits:
        data[int(where * len(data))] = value
    path = tmp_path_factory.mktemp("edit") / "m.bin"
    path.write_bytes(bytes(data))
    _check_outcome(files, kind, path)


@_SETTINGS
@given(kind=st.sampled_from(ALL), keep=st.floats(0, 1, exclude_max=True))
def test_truncated_files_give_value_error(files, tmp_path_factory, kind, keep):
    data = files["paths"][kind].read_bytes()
    path = tmp_path_factory.mktemp("cut") / "m.bin"
    path.write_bytes(data[: int(keep * len(data))])
    _check_outcome(files, kind, path)


@_SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    donor=st.sampled_from(KINDS),
    pick=st.floats(0, 1, exclude_max=True),
    resign=st.booleans(),
)
def test_member_swaps_give_value_error_or_the_same_scores(files, tmp_path_factory, kind, donor, pick, resign):
    members = _members(files["paths"][kind])
    donors = dict(_members(files["paths"][donor]))
    shared = [i for i, (n, _) in enumerate(members) if n in donors and n != "manifest.json"]
    if shared:
        i = shared[int(pick * len(shared))]
        members[i] = (members[i][0], donors[members[i][0]])
    else:  # nothing in common: swap two members' contents
        i = int(pick * len(members))
        j = (i + 1) % len(members)
        members[i], members[j] = (members[i][0], members[j][1]), (members[j][0], members[i][1])
    path = _zip(tmp_path_factory.mktemp("swap") / "m.bin", _resign(members) if resign else members)
    try:
        model = dtpm_fast.load(path)
    except ValueError as exc:
        assert str(exc)
        return
    scores = model.decision_function(files["Q"])
    assert scores.shape == files["scores"][kind].shape and np.isfinite(scores).all()
    if not resign:  # with forged checksums the file may be another valid model
        np.testing.assert_array_equal(scores, files["scores"][kind])


@_SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    which=st.floats(0, 1, exclude_max=True),
    method=st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]),
)
def test_recompressed_members_load_identically_or_fail(files, tmp_path_factory, kind, which, method):
    members = _members(files["paths"][kind])
    target = members[int(which * len(members))][0]
    path = tmp_path_factory.mktemp("z") / "m.bin"
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in members:
            z.writestr(name, payload, compress_type=method if name == target else zipfile.ZIP_STORED)
    _check_outcome(files, kind, path)


# ----------------------------------------------------------------- everything load returns travels


def _score_in_worker(payload: bytes, Q: np.ndarray):
    model = pickle.loads(payload)
    if type(model).__name__ == "ExportedScorer":
        model.to_device("cpu")  # reloads from the pickled bytes
    return model.decision_function(Q)


def test_every_loaded_kind_scores_the_same_in_spawned_workers(files):
    loaded = {kind: dtpm_fast.load(path) for kind, path in files["paths"].items()}
    payloads = {kind: pickle.dumps(model) for kind, model in loaded.items()}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {
            kind: pool.submit(_score_in_worker, payload, files["Q"]) for kind, payload in payloads.items()
        }
        for kind, future in futures.items():
            np.testing.assert_array_equal(
                future.result(timeout=600), loaded[kind].decision_function(files["Q"])
            )


@pytest.mark.parametrize("kind", EXPORTS)
def test_exported_scorer_pickles_and_moves_after_unpickling(files, kind):
    scorer = dtpm_fast.load(files["paths"][kind])
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy.format_ == scorer.format_ and copy.meta_ == scorer.meta_
    np.testing.assert_array_equal(copy.decision_function(files["Q"]), files["scores"][kind])
    copy.to_device("cpu")
    np.testing.assert_array_equal(copy.decision_function(files["Q"]), files["scores"][kind])
    np.testing.assert_array_equal(copy.decision_scores_, scorer.decision_scores_)


def test_unpickling_a_damaged_exported_scorer_is_a_value_error(files):
    state = dtpm_fast.load(files["paths"]["export_pt2"]).__getstate__()
    state["exported"] = state["exported"][: len(state["exported"]) // 2]
    scorer = object.__new__(type(dtpm_fast.load(files["paths"]["export_pt2"])))
    with pytest.raises(ValueError):
        scorer.__setstate__(state)


def test_unpickled_exported_scorer_keeps_its_bytes(files):
    scorer = pickle.loads(pickle.dumps(dtpm_fast.load(files["paths"]["export_torchscript"])))
    again = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(again.decision_function(files["Q"]), files["scores"]["export_torchscript"])
    assert io.BytesIO(scorer._file_bytes).read(4) == b"PK\x03\x04"

"""``CompiledPattern.save`` / ``patternc.load``: round trips, and every way a file can be wrong."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import patternc
from patternc.compiled import clear_cache
from patternc.export import file as layout_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
STACK_FILES = sorted((ROOT / "conf" / "pattern").glob("*.yaml"))


def per_head_random_stack():
    return patternc.Stack(default="causal & (window($w) | random(1 + h, seed=4))", layers=2, heads=3,
                          params=(("w", 9),),
                          overrides=(patternc.Override(expr="tokens([3]) | diagonals([0, -5])",
                                                       layers=(1, 2), heads=(0, 1)),))


ROUND_TRIPS = [
    *(pytest.param(str(p), 512, None, None, id=p.stem) for p in STACK_FILES),
    pytest.param("causal & window($w)", 300, (32, 16), {"w": 40}, id="params_rect_ragged"),
    pytest.param(per_head_random_stack(), 100, (8, 16), {"w": 12}, id="per_head_random"),
    pytest.param("none", 64, 16, None, id="none"),
]


def fresh_load(path):
    """load() after forgetting every compiled pattern, so nothing comes back from the cache."""
    clear_cache()
    return patternc.load(path)


@pytest.mark.parametrize("spec, n, block, params", ROUND_TRIPS)
def test_round_trip(tmp_path, spec, n, block, params):
    cp = patternc.compile(spec, n, block=block, params=params)
    path = tmp_path / "pattern.safetensors"
    cp.save(path)
    loaded = fresh_load(path)
    assert loaded is not cp
    assert (loaded.stack, loaded.n, loaded.block, loaded.params) == (cp.stack, cp.n, cp.block, cp.params)
    for l in range(cp.layers):
        for h in range(cp.heads):
            assert loaded.node(l, h) == cp.node(l, h)  # the same predicates
            for a, b in zip(loaded.layout(l, h), cp.layout(l, h), strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_loaded_pattern_works_like_the_original(tmp_path):
    torch = pytest.importorskip("torch")
    cp = patternc.compile(per_head_random_stack(), 100, block=(8, 16))
    cp.save(tmp_path / "p.safetensors")
    loaded = fresh_load(tmp_path / "p.safetensors")
    np.testing.assert_array_equal(loaded.to_dense(), cp.to_dense())
    q, k = torch.arange(100)[:, None], torch.arange(100)[None, :]
    got = loaded.mask_mod(1, 0)(torch.tensor(0), torch.tensor(0), q, k).numpy()
    np.testing.assert_array_equal(got, cp.to_dense(1, 0))
    assert loaded.stats().to_dict() == cp.stats().to_dict()


def test_identical_layouts_are_stored_once(tmp_path):
    path = tmp_path / "lf.safetensors"
    patternc.compile(str(ROOT / "conf/pattern/longformer.yaml"), 512).save(path)
    tensors = safetensors.numpy.load_file(path)
    assert sorted(tensors) == ["layout.0.full", "layout.0.indices", "layout.0.indptr",
                               "layout.1.full", "layout.1.indices", "layout.1.indptr", "table"]
    table = tensors["table"]
    assert table.dtype == np.int32 and table.shape == (12, 12)
    assert (table[6:, :2] == table[6, 0]).all() and (table[:6] == table[0, 0]).all()
    assert table[6, 0] != table[0, 0]


def test_metadata(tmp_path):
    cp = patternc.compile("causal & window($w)", 300, block=(32, 16), params={"w": 40})
    path = tmp_path / "p.safetensors"
    cp.save(path)
    with safe_open(path, "numpy") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    assert metadata["format"] == "patternc-layout" and metadata["format_version"] == "2"
    assert metadata["patternc_version"] == patternc.__version__
    assert json.loads(metadata["stack"]) == cp.stack.to_dict()
    assert json.loads(metadata["stack"])["default"] == "causal & window($w)"
    assert (metadata["n"], json.loads(metadata["block"])) == ("300", [32, 16])
    assert (metadata["layers"], metadata["heads"], json.loads(metadata["params"])) == ("1", "1", {"w": 40})
    assert len(metadata["content_hash"]) == 64
    assert metadata["content_hash"] == layout_file.content_hash(tensors, metadata)


# ---- files that must be refused ------------------------------------------------------------------


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.safetensors"
    patternc.compile("causal & (window(6) | tokens([2]))", 40, block=8).save(path)
    return path


def assert_refused(path, match):
    with pytest.raises(patternc.LayoutFileError, match=match) as err:
        fresh_load(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, patternc.PatternError)


def test_every_flipped_byte_is_refused(small_file, tmp_path):
    data = small_file.read_bytes()
    bad = tmp_path / "flipped.safetensors"
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        with pytest.raises(patternc.LayoutFileError) as err:
            patternc.load(bad)
        assert str(bad) in str(err.value), f"byte {position}"


@pytest.mark.parametrize("keep", [0, 7, 8, 40, 0.5, -1], ids=lambda keep: f"keep_{keep}")
def test_truncated_files_are_refused(small_file, tmp_path, keep):
    data = small_file.read_bytes()
    keep = int(len(data) * keep) if isinstance(keep, float) else keep if keep >= 0 else len(data) + keep
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:keep])
    assert_refused(bad, "not a readable safetensors file")


def test_files_of_other_formats_are_refused(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("causal & window(8)\n")
    assert_refused(text, "not a readable safetensors file")
    npy = tmp_path / "layout.npy"
    np.save(npy, np.zeros((2, 2)))
    assert_refused(npy, "not a readable safetensors file")
    bare = tmp_path / "bare.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(3)}, bare)
    assert_refused(bare, "no metadata")
    other = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(3)}, other, metadata={"format": "pt"})
    assert_refused(other, "not a patternc layout file")
    bsr = tmp_path / "bsr.safetensors"
    from patternc.export.bsr import save_bsr

    save_bsr(patternc.compile("causal", 64, block=16), bsr)
    assert_refused(bsr, "'patternc-bsr'")
    assert_refused(tmp_path / "missing.safetensors", "cannot read layout file")
    assert_refused(tmp_path, "cannot read layout file: it is a directory")


def test_a_stale_content_hash_is_refused(small_file):
    tensors = safetensors.numpy.load_file(small_file)
    with safe_open(small_file, "numpy") as f:
        metadata = f.metadata()
    indices = tensors["layout.0.indices"].copy()
    indices[-1] -= 1  # one block moved one column left
    safetensors.numpy.save_file({**tensors, "layout.0.indices": indices}, small_file, metadata=metadata)
    assert_refused(small_file, "content hash mismatch")
    metadata["n"] = "48"  # the metadata alone edited
    safetensors.numpy.save_file(tensors, small_file, metadata=metadata)
    assert_refused(small_file, "content hash mismatch")


def _rewrite(path, edit):
    """Rewrite a file with edited tensors or metadata and a *valid* hash over the edit, as a
    different compiler version or a careful forger would produce."""
    tensors = dict(safetensors.numpy.load_file(path))
    with safe_open(path, "numpy") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "content_hash"}
    edit(tensors, metadata)
    layout_file.write(path, tensors, metadata)


def _moved_block(t, m):
    indices = t["layout.0.indices"].copy()
    indices[-1] -= 1
    t["layout.0.indices"] = indices


def test_a_version_1_file_with_int64_indptr_still_loads(small_file):
    def as_version_1(tensors, metadata):
        tensors["layout.0.indptr"] = tensors["layout.0.indptr"].astype(np.int64)
        metadata["format_version"] = "1"

    _rewrite(small_file, as_version_1)
    fresh = patternc.compile("causal & (window(6) | tokens([2]))", 40, block=8)
    np.testing.assert_array_equal(patternc.load(small_file).layout().indptr, fresh.layout().indptr)


@pytest.mark.parametrize("edit, match", [
    pytest.param(_moved_block, "stored indices of layer 0, head 0 differs", id="moved_block"),
    pytest.param(lambda t, m: t.update({"layout.0.full": ~t["layout.0.full"]}),
                 "stored full of layer 0, head 0 differs", id="kinds_flipped"),
    pytest.param(lambda t, m: m.update(n="48"), "'layout.0.indptr' has 6 entries, but n = 48 in blocks of "
                 "8 x 8 has 6 block rows: 7 expected", id="n_edited"),
    pytest.param(lambda t, m: t.update({"layout.0.indptr": t["layout.0.indptr"].astype(np.int64)}),
                 "'layout.0.indptr' is int64", id="indptr_dtype"),
    pytest.param(lambda t, m: m.update(layers="2"), "metadata 'layers' is 2", id="layers_edited"),
    pytest.param(lambda t, m: t.update(table=np.zeros((1, 2), np.int32)), "tensor 'table'", id="table_shape"),
    pytest.param(lambda t, m: t.update(table=np.ones((1, 1), np.int32)), "unexpected or missing",
                 id="table_points_nowhere"),
    pytest.param(lambda t, m: t.update(extra=np.zeros(2)), "unexpected or missing", id="extra_tensor"),
    pytest.param(lambda t, m: m.update(stack="{not json"), "metadata 'stack' is malformed", id="stack_json"),
    pytest.param(lambda t, m: m.update(stack=json.dumps({"default": "causal & windw(6)"})),
                 "does not compile.*windw", id="stack_misspelt"),
    pytest.param(lambda t, m: m.update(params=json.dumps({"w": 3})), "unknown parameter 'w'",
                 id="params_unknown"),
    pytest.param(lambda t, m: m.update(block="[8, 0]"), "does not compile.*block", id="block_zero"),
    pytest.param(lambda t, m: m.pop("n"), "metadata 'n' is missing", id="n_missing"),
    pytest.param(lambda t, m: m.update(n="forty"), "metadata 'n' is malformed", id="n_text"),
    pytest.param(lambda t, m: m.update(format_version="3"), "format version '3' is not supported",
                 id="future_version"),
])
def test_metadata_that_does_not_match_the_arrays_is_refused(small_file, edit, match):
    patternc.load(small_file)  # sound before the edit
    _rewrite(small_file, edit)
    assert_refused(small_file, match)


def test_save_into_a_missing_directory_raises_oserror(tmp_path):
    cp = patternc.compile("causal", 64, block=16)
    with pytest.raises(FileNotFoundError):
        cp.save(tmp_path / "no" / "such" / "dir.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites(tmp_path):
    path = tmp_path / "p.safetensors"
    patternc.compile("causal", 64, block=16).save(path)
    patternc.compile("causal & window(3)", 64, block=16).save(path)
    assert fresh_load(path).expression() == "causal & window(3)"
    assert list(tmp_path.iterdir()) == [path]

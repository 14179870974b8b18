"""patternc.hf.load_llama2c: llama2.c's legacy .bin files as transformers models, checked against an
independent implementation of the format (tests/llama2c_reference.py, from llama2.c's run.c) on
the real stories260K and on random files of other shapes, and bad files refused with the fault."""

from __future__ import annotations

import hashlib
import pathlib
import re

import numpy as np
import pytest
import torch

from patternc.hf import ModelFileError, llama2c_config, load_llama2c, read_llama2c_header
from tests import llama2c_reference as reference
from tests.hf_models import transformers  # noqa: F401 (skips the module without transformers)

DATA = pathlib.Path(__file__).resolve().parent / "data" / "stories260K"
STORIES = DATA / "stories260K.bin"
SHA256 = "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6"  # the published file's


def test_the_carried_model_is_the_published_file_with_its_licence():
    assert hashlib.sha256(STORIES.read_bytes()).hexdigest() == SHA256
    assert SHA256 in (DATA / "README.md").read_text()
    licence = (DATA / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Andrej Karpathy" in licence


def test_the_header_and_the_config():
    h = read_llama2c_header(STORIES)
    assert (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len) == \
        (64, 172, 5, 8, 4, 512, 512)
    assert h.shared_classifier and h.nbytes == STORIES.stat().st_size
    config = llama2c_config(STORIES)
    assert (config.head_dim, config.max_position_embeddings, config.rms_norm_eps) == (8, 512, 1e-5)


@pytest.fixture(scope="module")
def stories():
    return load_llama2c(STORIES)


# float32 against float64: transformers' Llama keeps RMSNorm and the rotary angles in float32 in any
# dtype, so the logits (of magnitude 10) agree to about 5e-5; a wrong layout or rotation is off by O(1)
ATOL = 3e-4


def _tokens(vocab: int, n: int, seed: int = 0) -> list[int]:
    return [1, *np.random.default_rng(seed).integers(0, vocab, n - 1).tolist()]  # BOS, then anything


def test_stories260k_logits_are_those_of_the_format(stories):
    tokens = _tokens(512, 48)
    expected = reference.Transformer(STORIES).logits(tokens)  # (48, 512), float64
    with torch.no_grad():
        got = stories(torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    assert np.abs(expected).max() > 5  # logits of a trained model, not of zeros
    assert load_llama2c(STORIES, dtype=torch.bfloat16).model.embed_tokens.weight.dtype == torch.bfloat16


def test_stories260k_greedy_continuation_from_bos_is_the_formats(stories):
    expected = reference.Transformer(STORIES).greedy(32)
    got = stories.generate(torch.tensor([[1]]), max_new_tokens=32, do_sample=False)  # with its KV cache
    assert got[0].tolist() == expected
    assert len(set(expected)) > 5  # a continuation, not one token repeated


@pytest.mark.parametrize("shape", [
    pytest.param(dict(dim=48, hidden_dim=100, n_layers=2, n_heads=4, n_kv_heads=4, vocab=37, seq_len=64,
                      shared=False), id="multi_head_unshared"),
    pytest.param(dict(dim=64, hidden_dim=96, n_layers=3, n_heads=8, n_kv_heads=2, vocab=50, seq_len=32,
                      shared=True), id="gqa_4_to_1_shared"),
    pytest.param(dict(dim=32, hidden_dim=70, n_layers=1, n_heads=2, n_kv_heads=1, vocab=29, seq_len=40,
                      shared=False), id="multi_query_unshared"),
])
def test_other_shapes_and_an_unshared_classifier(tmp_path, shape):
    path = tmp_path / "model.bin"
    reference.write(path, **shape)
    model = load_llama2c(path)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == shape["shared"]
    assert model.config.tie_word_embeddings == shape["shared"]
    tokens = _tokens(shape["vocab"], 24, seed=1)
    with torch.no_grad():
        got = model(torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_allclose(got, reference.Transformer(path).logits(tokens), rtol=0, atol=ATOL)


def _header(data: bytes) -> np.ndarray:
    return np.frombuffer(data[:28], "<i4").copy()


def _with_header(data: bytes, index: int, value: int) -> bytes:
    header = _header(data)
    header[index] = value
    return header.tobytes() + data[28:]


def _nan_in_wq(data: bytes) -> bytes:
    floats = np.frombuffer(data[28:], "<f4").copy()
    floats[512 * 64 + 5 * 64 + 7] = np.nan  # past the embedding and the attention norms: wq
    return data[:28] + floats.tobytes()


def _set(index: int, value: int):
    """A copy of the file with header value ``index`` (dim, hidden_dim, ..., seq_len) set to ``value``."""
    return lambda data: _with_header(data, index, value)


E = re.escape  # the messages below are regular expressions; E() for the literal ones
SIZE = E("holds 1,056,540 bytes, but its header (dim 64, hidden 172, 5 layers, 8 heads, 4 KV heads, "
         "vocabulary 512, context 512, ")
SHAPE = "the head size dim / n_heads must be a whole, even number"


@pytest.mark.parametrize("make, message", [
    pytest.param(lambda d: d[:-4], SIZE.replace("1,056,540", "1,056,536")
                 + E("shared classifier) implies 1,056,540: truncated"), id="truncated"),
    pytest.param(lambda d: d + bytes(8), SIZE.replace("1,056,540", "1,056,548")
                 + E("shared classifier) implies 1,056,540: 8 bytes longer than that"), id="longer"),
    pytest.param(lambda d: d[:10], E("holds 10 bytes, fewer than llama2.c's header of 28"), id="no_header"),
    pytest.param(_set(5, -512), SIZE + E("classifier stored apart) implies 1,187,612: truncated"),
                 id="unshared_claimed"),
    pytest.param(_set(2, 2**31 - 1), E("hidden 172, 2,147,483,647 layers") + r".* implies [0-9,]{15,}: "
                 "truncated", id="absurd_layers"),  # refused from the header: nothing allocated
    pytest.param(_set(0, 0), E("its header says dim = 0, which must be positive"), id="dim_zero"),
    pytest.param(_set(6, -1), E("its header says seq_len = -1, which must be positive"),
                 id="seq_len_negative"),
    pytest.param(_set(5, 0), E("vocab_size = 0, which must be positive (negative: the classifier is stored "
                               "apart)"), id="vocab_zero"),
    pytest.param(_set(3, 3), E(f"dim = 64 and n_heads = 3: {SHAPE}"), id="heads_do_not_divide_dim"),
    pytest.param(_set(3, 64), E(f"dim = 64 and n_heads = 64: {SHAPE}"), id="odd_head_size"),
    pytest.param(_set(4, 3), E("n_heads = 8 and n_kv_heads = 3: the KV heads must divide the query heads"),
                 id="kv_heads_do_not_divide"),
    pytest.param(_set(4, 16), E("n_heads = 8 and n_kv_heads = 16: the KV heads"), id="more_kv_heads"),
    pytest.param(_set(0, 0x616B3432), E("magic 'ak42': a versioned export"), id="version_1"),
    pytest.param(_nan_in_wq, E("its wq weights hold non-finite values"), id="nan"),
    pytest.param(lambda d: b"PK\x03\x04" + d[4:], E("is a zip, as torch.save writes (a PyTorch checkpoint?)"),
                 id="zip"),
    pytest.param(lambda d: b"\x80\x04" + d[2:], E("but its header (dim 1,152, hidden 172,") + ".*: truncated",
                 id="pickle"),  # a pickle's PROTO opcode read as dim: refused by size, never unpickled
])
def test_bad_files_are_refused_naming_the_file_and_the_fault(tmp_path, make, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(make(STORIES.read_bytes()))
    with pytest.raises(ModelFileError, match=f"^{E(str(path))}: .*{message}"):
        load_llama2c(path)


def test_what_is_not_a_file_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match=re.escape(f"{tmp_path}/none.bin: no such llama2.c file")):
        read_llama2c_header(tmp_path / "none.bin")
    with pytest.raises(ModelFileError, match=re.escape(f"{tmp_path}: is not a regular file")):
        read_llama2c_header(tmp_path)

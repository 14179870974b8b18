"""llama2.c's legacy ``.bin`` checkpoints as a transformers ``LlamaForCausalLM``, read as data.

Andrej Karpathy's llama2.c writes a Llama as one little-endian file (``export.py``, the "legacy"
version 0): a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; vocab_size is negative when the classifier is not the token embedding), then float32
arrays, linear weights as (out, in):

    token embedding (vocab, dim); attention RMSNorm (layers, dim); wq (layers, heads*hs, dim);
    wk, wv (layers, kv_heads*hs, dim); wo (layers, dim, heads*hs); FFN RMSNorm (layers, dim);
    w1 (layers, hidden, dim); w2 (layers, dim, hidden); w3 (layers, hidden, dim); final RMSNorm
    (dim); two RoPE tables (seq_len, hs/2), skipped; the classifier (vocab, dim) if not shared.

The file is read with ``struct`` and numpy, never unpickled, and checked before anything is
allocated: the header's values positive and consistent (heads divide dim, KV heads divide heads,
an even head size for the rotary pairs), and the file exactly as long as they say. llama2.c
rotates interleaved pairs (x[2i], x[2i+1]) of each head; transformers' Llama rotates halves
(x[i], x[i + hs/2]), so the rows of wq and wk are permuted per head (``_halves``): the attention
scores, and so the model, are the same.

>>> model = load_llama2c("tests/data/stories260K/stories260K.bin")
>>> config = model.config
>>> (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.vocab_size)
(5, 8, 4, 512)
>>> config.max_position_embeddings, config.tie_word_embeddings
(512, True)
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from patternc.errors import ModelFileError

if TYPE_CHECKING:  # imported where used: transformers takes a second to import
    from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["Llama2cHeader", "llama2c_config", "load_llama2c", "read_llama2c_header"]

HEADER = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
MAGIC = 0x616B3432  # "ak42": llama2.c's versioned exports (version 1 and 2), another layout
# torch.save's zip: transformers' pytorch_model.bin is named .bin too (a bare pickle has no magic that
# a dim could not also spell, 0x80 is dim 128: the header checks refuse it, and it is never unpickled)
ZIP = b"PK\x03\x04"
FLOAT = 4  # bytes of each stored float32
BOS = 1  # llama2.c's tokenizer (SentencePiece): a story starts with BOS, and ends at the next one
RMS_EPS = 1e-5  # llama2.c's rmsnorm
ROPE_THETA = 10000.0  # llama2.c's rotary base


@dataclass(frozen=True, slots=True)
class Llama2cHeader:
    """A checked header: every value positive and consistent with the others and the file's size."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool  # the classifier is the token embedding (vocab_size was positive)

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def arrays(self) -> list[tuple[str, tuple[int, ...]]]:
        """The file's arrays after the header, in order, with their shapes (RoPE tables included)."""
        L, d, f, hs, V = self.n_layers, self.dim, self.hidden_dim, self.head_size, self.vocab_size
        q, kv = self.n_heads * hs, self.n_kv_heads * hs
        out = [("embed", (V, d)), ("attn_norm", (L, d)), ("wq", (L, q, d)), ("wk", (L, kv, d)),
               ("wv", (L, kv, d)), ("wo", (L, d, q)), ("ffn_norm", (L, d)), ("w1", (L, f, d)),
               ("w2", (L, d, f)), ("w3", (L, f, d)), ("norm", (d,)),
               ("rope_cos", (self.seq_len, hs // 2)), ("rope_sin", (self.seq_len, hs // 2))]
        return out + ([] if self.shared_classifier else [("classifier", (V, d))])

    @property
    def nbytes(self) -> int:
        """The file's size these values imply (Python integers: no overflow, whatever the header says)."""
        return HEADER.size + FLOAT * sum(math.prod(shape) for _, shape in self.arrays())


def read_llama2c_header(path: str | os.PathLike) -> Llama2cHeader:
    """The header of the llama2.c file at ``path``, checked against itself and the file's size; only
    its 28 bytes are read. A fault raises ``ModelFileError`` naming the file.

    >>> read_llama2c_header("tests/data/stories260K/stories260K.bin").head_size
    8
    """
    where = os.fspath(path)
    if not os.path.isfile(where):  # a FIFO would block, a device would never end
        raise ModelFileError("no such llama2.c file (a regular file)" if not os.path.exists(where)
                             else "is not a regular file", where=where)
    size = os.path.getsize(where)
    if size < HEADER.size:
        raise ModelFileError(f"holds {size} bytes, fewer than llama2.c's header of {HEADER.size} "
                             f"(7 int32): not a llama2.c checkpoint, or truncated", where=where)
    with open(where, "rb") as f:
        head = f.read(HEADER.size)
    if head.startswith(ZIP):
        raise ModelFileError("is a zip, as torch.save writes (a PyTorch checkpoint?), not a llama2.c file; "
                             "it is not opened: unpickling can run code", where=where)
    values = HEADER.unpack(head)
    if values[0] == MAGIC:
        raise ModelFileError("starts with llama2.c's magic 'ak42': a versioned export (export.py "
                             "--version 1 or 2), not the legacy format this loader reads "
                             "(export.py --version 0)", where=where)
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    header = dict(zip(names, values, strict=True))
    for name, value in header.items():
        if value == 0 or (value < 0 and name != "vocab_size"):
            raise ModelFileError(f"its header says {name} = {value}, which must be positive"
                                 + (" (negative: the classifier is stored apart)" if name == "vocab_size"
                                    else "") + ": not a llama2.c legacy checkpoint", where=where)
    dim, heads, kv_heads = header["dim"], header["n_heads"], header["n_kv_heads"]
    if dim % heads or (dim // heads) % 2:
        raise ModelFileError(f"its header says dim = {dim} and n_heads = {heads}: the head size dim / "
                             f"n_heads must be a whole, even number (rotary pairs)", where=where)
    if kv_heads > heads or heads % kv_heads:
        raise ModelFileError(f"its header says n_heads = {heads} and n_kv_heads = {kv_heads}: the KV "
                             f"heads must divide the query heads", where=where)
    vocab = header.pop("vocab_size")
    out = Llama2cHeader(**header, vocab_size=abs(vocab), shared_classifier=vocab > 0)
    if size != out.nbytes:  # before any array exists: a forged header cannot ask for memory
        state = "truncated" if size < out.nbytes else f"{size - out.nbytes:,} bytes longer than that"
        raise ModelFileError(f"holds {size:,} bytes, but its header ({_describe(out)}) implies "
                             f"{out.nbytes:,}: {state}", where=where)
    return out


def _describe(h: Llama2cHeader) -> str:
    classifier = "shared classifier" if h.shared_classifier else "classifier stored apart"
    return (f"dim {h.dim:,}, hidden {h.hidden_dim:,}, {h.n_layers:,} layers, {h.n_heads:,} heads, "
            f"{h.n_kv_heads:,} KV heads, vocabulary {h.vocab_size:,}, context {h.seq_len:,}, {classifier}")


def llama2c_config(path: str | os.PathLike) -> LlamaConfig:
    """The transformers ``LlamaConfig`` of the llama2.c file at ``path`` (its header checked; no
    weights read).

    >>> llama2c_config("tests/data/stories260K/stories260K.bin").intermediate_size
    172
    """
    from transformers import LlamaConfig

    h = read_llama2c_header(path)
    return LlamaConfig(
        vocab_size=h.vocab_size, hidden_size=h.dim, intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers, num_attention_heads=h.n_heads, num_key_value_heads=h.n_kv_heads,
        head_dim=h.head_size, max_position_embeddings=h.seq_len, rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=h.shared_classifier,
        # llama2.c ends a story at the next BOS, but generate() stopping there would cut samples
        # short: no end-of-sequence token, generate() gives the length asked
        bos_token_id=BOS, eos_token_id=None, pad_token_id=None)


def _halves(w: np.ndarray, heads: int) -> np.ndarray:
    """(heads*hs, dim) rows of interleaved rotary pairs -> the same rows as halves per head: row
    2i + c of a head goes to row c*hs/2 + i (transformers' convert_llama_weights_to_hf permute)."""
    rows, dim = w.shape
    return w.reshape(heads, rows // heads // 2, 2, dim).transpose(0, 2, 1, 3).reshape(rows, dim)


def load_llama2c(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """The llama2.c legacy checkpoint at ``path`` as a transformers ``LlamaForCausalLM`` in eval mode,
    its weights in ``dtype``. Refuses, with ``ModelFileError`` naming the file, a file that is not
    exactly what its header describes or whose weights are not all finite.

    >>> model = load_llama2c("tests/data/stories260K/stories260K.bin")
    >>> model(torch.tensor([[BOS]])).logits.shape  # (batch, tokens, vocabulary)
    torch.Size([1, 1, 512])
    """
    from transformers import LlamaForCausalLM

    where = os.fspath(path)
    h = read_llama2c_header(where)
    floats = (h.nbytes - HEADER.size) // FLOAT
    flat = np.fromfile(where, dtype="<f4", count=floats, offset=HEADER.size)
    if flat.size != floats:  # the file changed since its size was checked
        raise ModelFileError(f"holds {flat.size:,} floats after its header, {floats:,} expected", where=where)
    raw: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in h.arrays():
        count = math.prod(shape)
        raw[name] = flat[start:start + count].reshape(shape)
        start += count
    for name, array in raw.items():
        if not np.isfinite(array).all():
            raise ModelFileError(f"its {name} weights hold non-finite values (NaN or infinity)", where=where)
    config = llama2c_config(where)
    state = {"model.embed_tokens.weight": raw["embed"], "model.norm.weight": raw["norm"],
             "lm_head.weight": raw["embed"] if h.shared_classifier else raw["classifier"]}
    for l in range(h.n_layers):
        p = f"model.layers.{l}."
        state |= {p + "input_layernorm.weight": raw["attn_norm"][l],
                  p + "self_attn.q_proj.weight": _halves(raw["wq"][l], h.n_heads),
                  p + "self_attn.k_proj.weight": _halves(raw["wk"][l], h.n_kv_heads),
                  p + "self_attn.v_proj.weight": raw["wv"][l], p + "self_attn.o_proj.weight": raw["wo"][l],
                  p + "post_attention_layernorm.weight": raw["ffn_norm"][l],
                  p + "mlp.gate_proj.weight": raw["w1"][l], p + "mlp.down_proj.weight": raw["w2"][l],
                  p + "mlp.up_proj.weight": raw["w3"][l]}
    model = LlamaForCausalLM(config)
    # every tensor the model has, and no other (strict); a tied classifier is given the embedding
    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in state.items()}
    model.load_state_dict(tensors, strict=True)
    return model.to(dtype).eval()

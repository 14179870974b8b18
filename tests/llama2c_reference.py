"""An independent llama2.c: its file format read with numpy and its forward pass written straight
from ``run.c`` (one token at a time with a KV cache, interleaved rotary pairs, RMSNorm, SwiGLU,
grouped-query heads), in float64. It shares nothing with ``patternc.hf.llama2c`` or transformers,
so a loader checked against it is checked against the format, not against itself.
"""

from __future__ import annotations

import numpy as np

NAMES = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def read(path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """(the header, the arrays as run.c's memory_map_weights lays them out), float64."""
    data = np.fromfile(path, dtype=np.uint8)
    p = dict(zip(NAMES, (int(v) for v in data[:28].view("<i4")), strict=True))
    shared = p["vocab_size"] > 0
    p["vocab_size"] = abs(p["vocab_size"])
    floats = data[28:].view("<f4").astype(np.float64)
    L, d, f, V, S = p["n_layers"], p["dim"], p["hidden_dim"], p["vocab_size"], p["seq_len"]
    hs = d // p["n_heads"]
    kv = p["n_kv_heads"] * hs
    w, at = {}, 0
    for name, shape in [("token_embedding_table", (V, d)), ("rms_att_weight", (L, d)), ("wq", (L, d, d)),
                        ("wk", (L, kv, d)), ("wv", (L, kv, d)), ("wo", (L, d, d)), ("rms_ffn_weight", (L, d)),
                        ("w1", (L, f, d)), ("w2", (L, d, f)), ("w3", (L, f, d)), ("rms_final_weight", (d,)),
                        ("freq_cis_real", (S, hs // 2)), ("freq_cis_imag", (S, hs // 2))]:
        size = int(np.prod(shape))
        w[name] = floats[at:at + size].reshape(shape)
        at += size
    w["wcls"] = w["token_embedding_table"] if shared else floats[at:at + V * d].reshape(V, d)
    assert at + (0 if shared else V * d) == len(floats)
    return p, w


def _rmsnorm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x) + 1e-5))


class Transformer:
    """run.c's ``forward(transformer, token, pos)``: the logits at ``pos`` given every earlier token."""

    def __init__(self, path) -> None:
        self.p, self.w = read(path)
        L, S = self.p["n_layers"], self.p["seq_len"]
        kv = self.p["n_kv_heads"] * (self.p["dim"] // self.p["n_heads"])
        self.key_cache = np.zeros((L, S, kv))
        self.value_cache = np.zeros((L, S, kv))

    def forward(self, token: int, pos: int) -> np.ndarray:
        p, w = self.p, self.w
        hs = p["dim"] // p["n_heads"]
        group = p["n_heads"] // p["n_kv_heads"]
        x = w["token_embedding_table"][token].copy()
        for l in range(p["n_layers"]):
            xb = _rmsnorm(x, w["rms_att_weight"][l])
            q, k, v = w["wq"][l] @ xb, w["wk"][l] @ xb, w["wv"][l] @ xb
            for i in range(0, p["dim"], 2):  # rotate each interleaved pair (i, i + 1) by pos * freq
                freq = 1.0 / 10000.0 ** ((i % hs) / hs)
                fcr, fci = np.cos(pos * freq), np.sin(pos * freq)
                for vec in (q, k) if i < len(k) else (q,):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = v0 * fcr - v1 * fci, v0 * fci + v1 * fcr
            self.key_cache[l, pos], self.value_cache[l, pos] = k, v
            out = np.zeros(p["dim"])
            for h in range(p["n_heads"]):
                kvh = h // group  # the KV head this query head reads
                keys = self.key_cache[l, :pos + 1, kvh * hs:(kvh + 1) * hs]  # (pos + 1, hs)
                values = self.value_cache[l, :pos + 1, kvh * hs:(kvh + 1) * hs]
                scores = keys @ q[h * hs:(h + 1) * hs] / np.sqrt(hs)
                att = np.exp(scores - scores.max())
                out[h * hs:(h + 1) * hs] = (att / att.sum()) @ values
            x = x + w["wo"][l] @ out
            xb = _rmsnorm(x, w["rms_ffn_weight"][l])
            h1, h3 = w["w1"][l] @ xb, w["w3"][l] @ xb
            x = x + w["w2"][l] @ (h1 / (1.0 + np.exp(-h1)) * h3)  # SwiGLU: silu(w1 x) * w3 x
        return w["wcls"] @ _rmsnorm(x, w["rms_final_weight"])

    def logits(self, tokens) -> np.ndarray:
        """(len(tokens), vocab): the logits after each token, fed one at a time from position 0."""
        return np.stack([self.forward(int(t), pos) for pos, t in enumerate(tokens)])

    def greedy(self, steps: int, start: int = 1) -> list[int]:
        """run.c's generate at temperature 0 from ``start``: ``steps`` tokens after it (no stop at BOS)."""
        out = [start]
        for pos in range(steps):
            out.append(int(np.argmax(self.forward(out[-1], pos))))
        return out


def write(path, dim: int, hidden_dim: int, n_layers: int, n_heads: int, n_kv_heads: int, vocab: int,
          seq_len: int, shared: bool, seed: int = 0) -> None:
    """A random llama2.c legacy file of this shape, laid out as export.py's legacy_export writes it
    (vocab_size negative when the classifier is stored apart; the RoPE tables llama2.c's own)."""
    rng = np.random.default_rng(seed)
    hs = dim // n_heads
    kv = n_kv_heads * hs

    def normal(*shape, scale=1.0):
        return rng.normal(0.0, scale / np.sqrt(shape[-1]), shape)

    freqs = 1.0 / 10000.0 ** (np.arange(0, hs, 2) / hs)
    angles = np.arange(seq_len)[:, None] * freqs  # (seq_len, hs/2)
    def norm(*shape):
        return 1 + 0.1 * rng.normal(size=shape)

    # sharp q and k (scale 3), so that where attention looks matters
    arrays = [normal(vocab, dim, scale=8.0), norm(n_layers, dim), normal(n_layers, dim, dim, scale=3.0),
              normal(n_layers, kv, dim, scale=3.0), normal(n_layers, kv, dim), normal(n_layers, dim, dim),
              norm(n_layers, dim), normal(n_layers, hidden_dim, dim), normal(n_layers, dim, hidden_dim),
              normal(n_layers, hidden_dim, dim), norm(dim), np.cos(angles), np.sin(angles)]
    if not shared:
        arrays.append(normal(vocab, dim, scale=8.0))
    header = np.array([dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab if shared else -vocab, seq_len],
                      "<i4")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for array in arrays:
            f.write(np.asarray(array, "<f4").tobytes())

"""Hugging Face transformers models under a patternc pattern (the ``hf`` extra: ``pip install
'patternc[hf]'``). Torch and transformers are imported here, never by ``import patternc``.

>>> from transformers import AutoModelForCausalLM                        # doctest: +SKIP
>>> import patternc.hf                                                   # doctest: +SKIP
>>> model = AutoModelForCausalLM.from_pretrained("outputs/calibration_demo/model")   # doctest: +SKIP
>>> patternc.hf.sparsify(model, "causal & (sink(64) | window(512))")     # doctest: +SKIP
>>> logits = model(input_ids).logits      # every layer and head under the pattern   # doctest: +SKIP
>>> out = model.generate(input_ids, max_new_tokens=64)   # keeps only the keys still read   # doctest: +SKIP
>>> patternc.hf.densify(model)            # the model's own attention, bit for bit   # doctest: +SKIP

- ``sparsify(model, spec, *, block=None, params=None, backend="auto", max_length=None)`` and
  ``densify(model)``: ``patternc.hf.sparsify``;
- the KV cache that keeps only the keys the pattern still reads (``generate()`` uses it):
  ``patternc.hf.cache.PatternCache``;
- the pattern each call computes: ``patternc.hf.backends``; which kernel runs it (``backend``):
  ``patternc.kernels.dispatch``;
- padding, caches and decode steps: ``patternc.hf.calls``; the state a sparsified model carries
  (``sparsified(model)``): ``patternc.hf.state``;
- llama2.c's legacy ``.bin`` checkpoints as a ``LlamaForCausalLM`` (``load_llama2c``), read as data:
  ``patternc.hf.llama2c``;
- a model's own attention as a stack, and a stack as a model's own config (``native_stack``,
  ``to_native``): ``patternc.hf.native``.
"""

from patternc.errors import ModelError, ModelFileError
from patternc.hf.attention import NAME, PREFILL_CHUNK, densify, sparsify
from patternc.hf.cache import PatternCache
from patternc.hf.llama2c import Llama2cHeader, llama2c_config, load_llama2c, read_llama2c_header
from patternc.hf.native import native_stack, native_support, to_native
from patternc.hf.state import SparsifiedAttention, sparsified
from patternc.kernels.dispatch import BACKENDS

__all__ = ["BACKENDS", "NAME", "PREFILL_CHUNK", "Llama2cHeader", "ModelError", "ModelFileError",
           "PatternCache", "SparsifiedAttention", "densify", "llama2c_config", "load_llama2c", "native_stack",
           "native_support", "read_llama2c_header", "sparsified", "sparsify", "to_native"]


def __getattr__(name: str):
    # 0.2.0 renamed the state sparsify hangs on a model: patternc.nn.SparseAttention is the module
    if name == "SparseAttention":
        import warnings

        warnings.warn("patternc.hf.SparseAttention is now patternc.hf.SparsifiedAttention (the name "
                      "SparseAttention is patternc.nn's attention module)", DeprecationWarning, stacklevel=2)
        return SparsifiedAttention
    raise AttributeError(f"module 'patternc.hf' has no attribute {name!r}")

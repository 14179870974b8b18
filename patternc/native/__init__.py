"""Models' own attention, both ways: read a model's configuration as a stack, and write a stack as
the configuration serving engines run natively.

- ``read_config``: a ``config.json`` (or a model directory, or a config's dict) -> ``NativeStack``;
- ``native_layers``: which layers of a compiled stack a serving target can express, per layer
  (full, one sliding window, chunked), refusing the rest by layer, head and term or widening them
  to the smallest superset the target takes;
- ``to_hf_config`` / ``to_trtllm`` and ``from_trtllm``: the Hugging Face ``layer_types`` fields and
  TensorRT-LLM's ``max_attention_window`` list.

>>> native = read_config({"num_hidden_layers": 2, "num_attention_heads": 4, "sliding_window": 64,
...                       "num_key_value_heads": 4, "layer_types": ["sliding_attention", "full_attention"]})
>>> to_hf_config(patternc.compile(native.stack, n=1024))["layer_types"]
['sliding_attention', 'full_attention']
"""

from patternc.native.family import TARGETS, native_layers
from patternc.native.layers import LayerAttention, layer_stack
from patternc.native.read import LAYER_TYPES, NativeStack, load_config, read_config
from patternc.native.write import FORMATS, from_trtllm, save_native, to_hf_config, to_trtllm

__all__ = ["FORMATS", "LAYER_TYPES", "TARGETS", "LayerAttention", "NativeStack", "from_trtllm", "layer_stack",
           "load_config", "native_layers", "read_config", "save_native", "to_hf_config", "to_trtllm"]

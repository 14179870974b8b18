"""The model directory of ``task=calibrate``, checked against its ``config.json`` before anything loads.

A directory from elsewhere is data. Its weights must make exactly the model its config describes:
transformers fills a tensor the weights lack with random values (a config that claims more layers
than the weights hold is scored with random layers, and says nothing), and fails deep inside a
trial on a tensor of another shape. So at start-up, from the safetensors headers alone (nothing
else is read, nothing is allocated):

- the weights are safetensors files: ``model.safetensors``, or the shards that
  ``model.safetensors.index.json`` names, each a regular file of the directory; pickled weights
  (``pytorch_model.bin``) are refused and never opened: unpickling can run code;
- every tensor the model needs is there with its shape, and no other. The names and shapes are
  those ``save_pretrained`` writes for the config's model, built on the meta device (no memory):
  tied weights stored once, transformers' own checkpoint conversions reverted.

>>> check_weights("outputs/calibration_demo/model", config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from search.errors import ConfigError

__all__ = ["INDEX", "WEIGHTS", "check_weights"]

WEIGHTS = "model.safetensors"  # what save_pretrained writes for a model under its shard size
INDEX = "model.safetensors.index.json"  # ... and for a larger one: tensor name -> shard file
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # transformers' pickled weights
INDEX_LIMIT = 64 << 20  # bytes: an index is a few MB for the largest models; more is not an index

Shapes = dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, file it is in)


def check_weights(directory: str, config: Any, prefix: str = "task.") -> None:
    """Refuse, with a ``ConfigError`` naming the file and the tensor, weights in ``directory`` that
    are not exactly those of the model ``config`` (its whole transformers config) describes."""
    where = f"{prefix}model: {directory}"
    source, found = _weights_on_disk(directory, where)
    # the model is built on the meta device below; a forged config.json could ask for a million
    # layers, and each layer holds tensors of its own: more layers than tensors cannot be these weights
    layers = config.get_text_config(decoder=True).num_hidden_layers
    if isinstance(layers, int) and layers > len(found):
        raise ConfigError(f"{where}: its config.json claims {layers:,} layers (num_hidden_layers) but "
                          f"{source} holds {len(found):,} tensors in all: the config does not describe these "
                          f"weights")
    model, needed = _needed(config, where)
    skip_missing, skip_unexpected = _ignored(model)
    missing = sorted(n for n in needed if n not in found and not skip_missing(n))
    if missing:
        plural = "s" * (len(missing) > 1)
        raise ConfigError(f"{where}: {source} lacks {len(missing):,} tensor{plural} that its config.json "
                          f"({type(model).__name__}) needs, first {missing[0]}: is config.json the one saved "
                          f"with these weights?")
    for name, (shape, file) in sorted(found.items()):
        if name in needed and tuple(needed[name]) != tuple(shape):
            raise ConfigError(f"{where}: {file} holds {name} of shape {list(shape)}, but its config.json "
                              f"({type(model).__name__}) needs {list(needed[name])}")
    unexpected = sorted(n for n in found if n not in needed and not skip_unexpected(n))
    if unexpected:
        more = len(unexpected) - 1
        raise ConfigError(f"{where}: {found[unexpected[0]][1]} holds {unexpected[0]}, which the model its "
                          f"config.json describes ({type(model).__name__}) has no place for"
                          + (f" ({more:,} more such tensors)" if more else ""))


def _weights_on_disk(directory: str, where: str) -> tuple[str, Shapes]:
    """(what holds the weights, in words; every tensor's shape and file), from the headers."""
    single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
    if os.path.exists(single):
        return WEIGHTS, _header(single, WEIGHTS, where)
    if not os.path.exists(index):
        pickles = [name for name in PICKLES if os.path.exists(os.path.join(directory, name))]
        if pickles:
            raise ConfigError(f"{where}: {pickles[0]} is a pickle, which calibration never loads (unpickling "
                              f"can run code): write the weights as safetensors, "
                              f"model.save_pretrained(directory, safe_serialization=True)")
        raise ConfigError(f"{where}: holds no weights: no {WEIGHTS} (nor {INDEX})")
    found: Shapes = {}
    for shard in _shards(index, where):
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise ConfigError(f"{where}: {shard}, named by {INDEX}, is not there"
                              + (" as a regular file" if os.path.exists(path) else ""))
        found.update(_header(path, shard, where))
    return f"the shards of {INDEX}", found


def _shards(index: str, where: str) -> list[str]:
    """The shard files an index names, in order; each must be a plain name in the directory."""
    if not os.path.isfile(index) or os.path.getsize(index) > INDEX_LIMIT:
        raise ConfigError(f"{where}: {INDEX} is not a regular file of at most {INDEX_LIMIT:,} bytes")
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{where}: {INDEX} is not a safetensors index ({type(error).__name__}: "
                          f"{error})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConfigError(f"{where}: {INDEX}'s weight_map must map tensor names to shard file names")
    shards = list(dict.fromkeys(weight_map.values()))
    for shard in shards:  # a name from elsewhere must not reach outside the directory
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ConfigError(f"{where}: {INDEX} names the shard {shard!r}, which is not a file name of "
                              f"the directory")
    return shards


def _header(path: str, name: str, where: str) -> Shapes:
    """Every tensor's shape in one safetensors file, from its header (the data is not read)."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):  # a FIFO would block, /dev/zero would never end
        raise ConfigError(f"{where}: {name} is not a regular file")
    try:
        with safe_open(path, framework="pt") as f:
            return {key: (tuple(f.get_slice(key).get_shape()), name) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"{where}: {name} is not a safetensors file ({error})") from None


def _needed(config: Any, where: str):
    """(the config's model on the meta device, {tensor name: shape} as save_pretrained writes it)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    try:
        with torch.device("meta"):  # shapes only: no memory, whatever the sizes
            model = AutoModelForCausalLM.from_config(config)
    except Exception as error:  # a config from elsewhere can fail a constructor in any way: ValueError,
        # RuntimeError, even torch's AssertionError for a padding id past the vocabulary
        raise ConfigError(f"{where}: its config.json describes no causal language model transformers can "
                          f"build ({type(error).__name__}: {error})") from None
    state = {k: v for k, v in model.state_dict().items() if k not in (model._keys_to_ignore_on_save or ())}
    state = revert_weight_conversion(model, remove_tied_weights_from_state_dict(state, model))
    return model, {name: tuple(tensor.shape) for name, tensor in state.items()}


def _ignored(model):
    """(is this missing name fine, is this unexpected name fine): the model's own exceptions, as
    transformers applies them on loading (a buffer older checkpoints kept, say)."""
    def matcher(patterns):
        pattern = re.compile("|".join(f"({p})" for p in patterns)) if patterns else None
        return lambda name: pattern is not None and pattern.search(name) is not None

    unexpected = set(model._keys_to_ignore_on_load_unexpected or ())
    buffers = [name for name, _ in model.named_buffers()]
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):  # as transformers' loader
        unexpected.add(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        unexpected.add(r"(^|\.)position_ids$")
    return matcher(set(model._keys_to_ignore_on_load_missing or ())), matcher(unexpected)

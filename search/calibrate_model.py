"""What ``task.model`` of ``task=calibrate`` names, its config and its model.

- a ``save_pretrained`` directory: ``config.json`` and safetensors weights, the weights checked
  against the config at start-up (``search.calibrate_weights``), loaded by transformers;
- a llama2.c legacy checkpoint, a file ending in ``.bin`` (Karpathy's llama2.c export, e.g. the
  repository's ``tests/data/stories260K/stories260K.bin``): its header checked against itself and
  the file's size at start-up (which fixes every array's shape), read by our own loader
  (``patternc.hf.load_llama2c``) as data, never unpickled.

>>> read_config("tests/data/stories260K/stories260K.bin").num_hidden_layers
5
"""

from __future__ import annotations

import os
from typing import Any

from search.errors import ConfigError

__all__ = ["LLAMA2C", "check_model", "is_llama2c", "load_model", "read_config"]

LLAMA2C = ".bin"  # llama2.c's checkpoints; transformers' pickled pytorch_model.bin lives in a directory


def is_llama2c(path: str) -> bool:
    """Does ``task.model`` name a llama2.c checkpoint (a ``.bin`` path that is not a directory)?"""
    return path.endswith(LLAMA2C) and not os.path.isdir(path)


def read_config(path: str, prefix: str = "task.") -> Any:
    """The model's whole transformers config, checked as far as it can be without loading weights:
    for a directory its ``config.json`` (weights: ``search.calibrate_weights.check_weights``), for a
    llama2.c file its header against the file's size (weights and their shapes included)."""
    if is_llama2c(path):
        from patternc.hf import ModelFileError, llama2c_config

        try:
            return llama2c_config(path)
        except ModelFileError as error:
            raise ConfigError(f"{prefix}model: {error}") from None
    from transformers import AutoConfig

    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{prefix}model must be a save_pretrained directory (with config.json) or a "
                          f"llama2.c {LLAMA2C} file, got {path!r}"
                          + ("" if path else ": give task.model=<path>"))
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{prefix}model: {path} holds no readable transformers config: {error}") from None


def check_model(path: str, config: Any, prefix: str = "task.") -> None:
    """A directory's weights against its config; a llama2.c file was checked whole by ``read_config``."""
    if not is_llama2c(path):
        from search.calibrate_weights import check_weights

        check_weights(path, config, prefix)


def load_model(path: str, dtype: Any) -> Any:
    """The causal language model at ``path`` in ``dtype`` (a torch dtype), on the CPU, in eval mode."""
    if is_llama2c(path):
        from patternc.hf import ModelFileError, load_llama2c

        try:
            return load_llama2c(path, dtype=dtype)
        except ModelFileError as error:  # non-finite weights: the header was checked at start-up
            raise ConfigError(f"task.model: {error}") from None
    from transformers import AutoModelForCausalLM

    # safetensors only: check_weights has compared them with config.json, and a pickle is never opened
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                use_safetensors=True).eval()

"""Calibration sequences for ``task=calibrate``: token ids from a file, or a proxy task's generator.

- ``data: path/to/ids.npy``: an integer array, a 1-d stream (cut into consecutive sequences of
  ``n``) or 2-d rows of at least ``n`` tokens (each row's first ``n``);
- ``data: path/to/ids.txt``: integers separated by white space, one stream;
- ``data: mqar`` (or ``majority``, ``hops``): sequences drawn from that proxy task at length ``n``,
  with ``generator`` holding the task's own settings (``{pairs: 64, distances: [2, 64, 512, 4096]}``).

What is scored: for a file, every position's next-token distribution (a language model's outputs),
in buckets by position (quarters of ``n``); for a task, its answer positions (where the model was
trained to give the answer), in the task's own buckets (distance, margin).

>>> data = load_data(CalibrateConfig(data="mqar", n=4096, sequences=4), vocab=97)   # doctest: +SKIP
>>> data.tokens.shape, int(data.scored.sum())                                     # doctest: +SKIP
((4, 4096), 256)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from search.config import TASK_SCHEMAS
from search.errors import ConfigError
from search.tasks import IGNORE, TASKS, make_task

__all__ = ["QUARTERS", "TOKEN_LIMIT", "CalibrationData", "load_data"]

QUARTERS = 4  # position buckets of a token file
# task.sequences x task.n: the data is held as three int64 arrays (tokens, targets, buckets), 400 MB at
# the limit, and every token goes through the model once per trial
TOKEN_LIMIT = 1 << 24
_DATA_STREAM = 3  # numpy seed sequence [seed, stream]: calibration sequences (0-2: search.evaluate's)


@dataclass(frozen=True)
class CalibrationData:
    """``tokens`` (N, n) int64 (a file's, in its own dtype until ``load_data`` has checked them);
    ``targets`` (N, n) int64, the token each scored position should give
    and ``IGNORE`` elsewhere; ``buckets`` (N, n) int64, each scored position's bucket, -1 elsewhere."""

    tokens: np.ndarray
    targets: np.ndarray
    buckets: np.ndarray
    bucket_names: tuple[str, ...]
    source: str  # what the sequences are, for the result

    @property
    def scored(self) -> np.ndarray:
        """(N, n) bool: the positions whose outputs are compared."""
        return self.targets != IGNORE


def load_data(cfg, vocab: int, seed: int = 0) -> CalibrationData:
    """``cfg.sequences`` sequences of ``cfg.n`` tokens, every id below the model's ``vocab``; their
    size is checked before anything is drawn or read."""
    tokens = cfg.sequences * cfg.n
    if tokens > TOKEN_LIMIT:
        raise ConfigError(f"task.sequences x task.n = {cfg.sequences:,} x {cfg.n:,} = {tokens:,} tokens is "
                          f"over the {TOKEN_LIMIT:,} a calibration holds (three int64 arrays of that many, "
                          f"and a forward pass over each token every trial): lower task.sequences")
    if cfg.data in TASKS:
        data = _from_task(cfg, seed)
    elif cfg.data.endswith((".npy", ".txt")):
        data = _from_file(cfg)
    else:
        raise ConfigError(f"task.data must be a .npy or .txt file of token ids, or a proxy task "
                          f"({', '.join(TASKS)}), got {cfg.data!r}")
    # in the ids' own dtype: a uint64 id of 2**64 - 1 is that, not the -1 it would be as int64
    low, high = int(data.tokens.min()), int(data.tokens.max())
    if low < 0 or high >= vocab:
        raise ConfigError(f"task.data: token ids must lie in [0, {vocab}) (the model's vocabulary), got "
                          f"ids from {low} to {high} in {data.source}")
    return dataclasses.replace(data, tokens=data.tokens.astype(np.int64, copy=False))


def _from_task(cfg, seed: int) -> CalibrationData:
    schema = TASK_SCHEMAS[cfg.data]
    fields = {f.name for f in dataclasses.fields(schema)} - {"name", "n", "model", "train"}
    unknown = sorted(set(cfg.generator) - fields)
    if unknown:
        raise ConfigError(f"task.generator.{unknown[0]} is not a setting of task {cfg.data} (it has "
                          f"{', '.join(sorted(fields))})")
    try:
        task = make_task(schema(n=cfg.n, **dict(cfg.generator)))
        batch = task.batch(np.random.default_rng([seed, _DATA_STREAM]), cfg.sequences)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"task.generator: {error}") from None
    return CalibrationData(batch.tokens, batch.labels, batch.buckets, task.bucket_names,
                           f"{cfg.sequences} sequences of task {cfg.data} at n = {cfg.n}")


def _read_ids(path: str) -> np.ndarray:
    """The file's ids in their own dtype; a .npy file is mapped, not read: only the sequences
    taken from it are."""
    if not os.path.isfile(path):
        raise ConfigError(f"task.data: no such file {path!r}")
    try:
        if path.endswith(".npy"):
            _check_npy_size(path)
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            ids = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as error:
        raise ConfigError(f"task.data: {path} is not a file of token ids: {error}") from None
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
        raise ConfigError(f"task.data: {path} must hold integer token ids, 1-d (a stream) or 2-d (rows), got "
                          f"{ids.dtype} of shape {ids.shape}")
    return ids


def _check_npy_size(path: str) -> None:
    """The data a .npy header claims must be in the file: a 1 KB file can claim 10^10 ids."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        # 2.0 and 3.0 headers differ from 1.0 in their length field only (3.0 allows utf-8 names)
        formats = np.lib.format
        read = formats.read_array_header_1_0 if version == (1, 0) else formats.read_array_header_2_0
        shape, _, dtype = read(f)
        start = f.tell()
    claimed = math.prod(shape) * dtype.itemsize
    held = os.path.getsize(path) - start
    if claimed > held:
        raise ConfigError(f"task.data: {path}: its header claims {math.prod(shape):,} ids of {dtype} "
                          f"({claimed:,} bytes), but the file holds {held:,} bytes of data")


def _from_file(cfg) -> CalibrationData:
    ids, n, count = _read_ids(cfg.data), cfg.n, cfg.sequences
    available = len(ids) // n if ids.ndim == 1 else (len(ids) if ids.shape[1] >= n else 0)
    if available < count:
        shape = f"{len(ids):,} tokens" if ids.ndim == 1 else f"{ids.shape[0]} rows of {ids.shape[1]} tokens"
        raise ConfigError(f"task.data: {cfg.data} holds {shape}, which make {available} sequences of "
                          f"n = {n}; task.sequences asks for {count}")
    # only these sequences are read from a mapped file, in the file's dtype (load_data checks them)
    tokens = np.array(ids[: count * n].reshape(count, n) if ids.ndim == 1 else ids[:count, :n])
    targets = np.full(tokens.shape, IGNORE, np.int64)
    # a language model's output at t is its guess of token t + 1 (an id out of int64's range is
    # refused by load_data before these targets are used)
    targets[:, :-1] = tokens[:, 1:].astype(np.int64)
    edges = np.linspace(0, n, QUARTERS + 1).astype(int)
    buckets = np.searchsorted(edges, np.arange(n), side="right") - 1  # (n,)
    buckets = np.where(targets != IGNORE, buckets[None, :], -1)
    names = tuple(f"positions {a}-{b - 1}" for a, b in pairwise(edges))
    return CalibrationData(tokens, targets, buckets, names, f"{count} sequences of {cfg.data} at n = {n}")

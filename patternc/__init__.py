"""patternc: write a sparse-attention pattern as one line of text, compile it exactly to blocks.

>>> import patternc
>>> cp = patternc.compile("causal & (window(512) | global(4))", n=8192)
>>> round(cp.stats().per_head[0].block_density, 4)
0.0901
"""

import importlib

from patternc.compiled import CompiledPattern, PatternStats, compile, load
from patternc.errors import (
    KernelInputError,
    LayoutFileError,
    PatternError,
    PatternMeaningError,
    PatternSizeError,
    PatternSyntaxError,
    StackError,
)
from patternc.export.bsr import BlockCSR
from patternc.kv_analysis import KVReport, kv
from patternc.lang import ast, parse, unparse
from patternc.layout import HeadStats, Layout
from patternc.reachability import ReachReport, reach
from patternc.stack import Override, Stack, load_stack
from patternc.version import __version__

# The torch-facing parts load on first use: parsing, compiling, checking and exporting to files
# never pay for importing torch (about 1 s).
_LAZY_NAMES = {"Measurement": "patternc.cost", "layout_hash": "patternc.cost", "measure": "patternc.cost",
               "resolve_device": "patternc.cost"}
_LAZY_MODULES = ("cost", "kernels", "nn")


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"patternc.{name}")
    raise AttributeError(f"module 'patternc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_NAMES, *_LAZY_MODULES])


__all__ = [
    "BlockCSR",
    "CompiledPattern",
    "HeadStats",
    "KVReport",
    "KernelInputError",
    "Layout",
    "LayoutFileError",
    "Measurement",
    "Override",
    "PatternError",
    "PatternMeaningError",
    "PatternSizeError",
    "PatternStats",
    "PatternSyntaxError",
    "ReachReport",
    "Stack",
    "StackError",
    "__version__",
    "ast",
    "compile",
    "cost",
    "kernels",
    "kv",
    "layout_hash",
    "load",
    "load_stack",
    "measure",
    "nn",
    "parse",
    "reach",
    "resolve_device",
    "unparse",
]

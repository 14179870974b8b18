"""patternc: write a sparse-attention pattern as one line of text, compile it exactly to blocks.

>>> import patternc
>>> cp = patternc.compile("causal & (window(512) | global(4))", n=8192)
>>> round(cp.stats().per_head[0].block_density, 4)
0.0901
"""

from patternc.compiled import CompiledPattern, PatternStats, compile, load
from patternc.cost import Measurement, measure
from patternc.errors import (
    LayoutFileError,
    PatternError,
    PatternMeaningError,
    PatternSizeError,
    PatternSyntaxError,
    StackError,
)
from patternc.export.bsr import BlockCSR
from patternc.lang import ast, parse, unparse
from patternc.layout import HeadStats, Layout
from patternc.reach import ReachReport, reach
from patternc.stack import Override, Stack, load_stack

__version__ = "0.1.0"

__all__ = [
    "BlockCSR",
    "CompiledPattern",
    "HeadStats",
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
    "load",
    "load_stack",
    "measure",
    "parse",
    "reach",
    "unparse",
]

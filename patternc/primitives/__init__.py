"""The language's primitives, one entry each (see ``registry``): ``PRIMITIVES`` maps a name to its
definition. Importing this package registers every entry; the families live in their modules:

- ``offsets``: causal, window, band, dilated, stride, diagonals (sets of offsets ``q - k``);
- ``positions``: all, none, chunk, fixed, sink, global, tokens, columns, prefix;
- ``documents``: documents (packed sequences, the starts bound per batch);
- ``random_blocks``: random (BigBird's blocks);
- ``neighborhood``: neighborhood (2-D and 3-D windows over image and video tokens).

To add a primitive: write its node (a ``Lowered``) and its ``@primitive`` entry in one of these
modules (or a new one imported here), and its oracle test in ``tests/test_lowering_oracle.py``.
The explorer page evaluates predicates in JavaScript: a new node type also needs its record in
``patternc/explore/evaluator.py`` and its case in ``static/arrays.js`` (``tests/test_explore.py``
fails until both exist, and the browser test checks them pair by pair).

>>> sorted(PRIMITIVES)[:4]
['all', 'band', 'causal', 'chunk']
"""

from patternc.primitives import documents, neighborhood, offsets, positions, random_blocks  # noqa: F401
from patternc.primitives.registry import KINDS, LIST_KINDS, PRIMITIVES, Arg, Definition, primitive

__all__ = ["KINDS", "LIST_KINDS", "PRIMITIVES", "Arg", "Definition", "primitive"]

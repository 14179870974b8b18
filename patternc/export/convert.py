"""What the converters back to a dense mask share (``flashinfer_variable_to_dense``,
``flashmask_to_dense``, ``fa4_to_dense``): they build a full ``(heads, n, n)`` grid, to check a
consumer's input against ``cp.to_dense``, so its size is refused first, as ``to_dense`` refuses it.

>>> dense_size((2, 3, 1000, 1000), 10**6)  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
patternc.errors.PatternSizeError: a dense mask of 2 x 3 x 1000 x 1000 = 6,000,000 booleans exceeds ...
"""

from __future__ import annotations

import math

from patternc.errors import PatternSizeError

__all__ = ["dense_size"]


def dense_size(shape: tuple[int, ...], max_elements: int) -> None:
    """Refuse a dense boolean mask of ``shape`` above ``max_elements``."""
    size = math.prod(shape)
    if size > max_elements:
        raise PatternSizeError(f"a dense mask of {' x '.join(map(str, shape))} = {size:,} booleans exceeds "
                               f"the limit of {max_elements:,}; pass max_elements")

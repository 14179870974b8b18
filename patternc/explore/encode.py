"""Arrays for the page: little-endian bytes, zlib-compressed, base64 text.

The page inflates them with the browser's own ``DecompressionStream("deflate")`` (zlib format), so
nothing is fetched and no library is inlined. Block layouts compress well: a window is the same
run in every row, a causal mask one run per row.

>>> packed(np.zeros((2, 3), np.uint8))["shape"]
[2, 3]
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

__all__ = ["DTYPES", "packed", "smallest_unsigned", "unpacked"]

DTYPES = ("uint8", "uint16", "int32", "uint32", "float32")  # the typed arrays the page decodes


def packed(array: np.ndarray) -> dict:
    """``{"dtype", "shape", "data"}`` for the page; ``data`` is base64 of zlib of the raw bytes."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<")
    if dtype.name not in DTYPES:
        raise TypeError(f"the page decodes {', '.join(DTYPES)} arrays, not {array.dtype}")
    raw = array.astype(dtype, copy=False).tobytes()
    return {"dtype": dtype.name, "shape": list(array.shape),
            "data": base64.b64encode(zlib.compress(raw, 6)).decode("ascii")}


def unpacked(item: dict) -> np.ndarray:
    """The array back from ``packed`` (for tests and tools reading a page's data)."""
    raw = zlib.decompress(base64.b64decode(item["data"]))
    return np.frombuffer(raw, np.dtype(item["dtype"]).newbyteorder("<")).reshape(item["shape"])


def smallest_unsigned(maximum: int) -> type:
    """The narrowest unsigned dtype the page decodes that holds ``maximum``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if maximum <= np.iinfo(dtype).max:
            return dtype
    raise OverflowError(f"{maximum} does not fit in 32 bits")

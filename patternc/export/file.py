"""A compiled layout as a file: safetensors tensors plus JSON metadata, loaded back identically.

Tensors (each distinct layout stored once, however many heads share it):

- ``layout.{u}.indptr`` int64 (nbq + 1,), ``layout.{u}.indices`` int32 (nnz,),
  ``layout.{u}.full`` bool (nnz,): the block CSR of distinct layout ``u``;
- ``table`` int32 (layers, heads): which ``u`` each (layer, head) uses.

Header metadata (strings): ``format`` (``patternc-layout``), ``format_version``,
``patternc_version``, ``stack`` (the stack as JSON, expressions included), ``n``, ``block``
(JSON ``[bq, bk]``), ``layers``, ``heads``, ``params`` (JSON), ``first_query`` (the first compiled
query; 0 unless a query range was compiled) and ``content_hash``: the sha256 of the canonical
metadata and every tensor's name, dtype, shape and bytes.

``read`` reads a regular file of bounded size, checks the hash and parses the stored stack;
``check_arrays`` holds the arrays to the sizes the header claims; ``patternc.load`` then recompiles
the stack (the token predicates come from there) and ``verify`` checks that every stored array
equals the recompiled one, so a loaded pattern is the saved one.

>>> patternc.compile("conf/pattern/longformer.yaml", n=4096).save(tmp_path / "lf.safetensors")
>>> patternc.load(tmp_path / "lf.safetensors").layout(6, 0).nnz
177
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from patternc.errors import LayoutFileError, PatternError, PatternSizeError, brief
from patternc.limits import MAX_LAYOUT_FILE_BYTES, MAX_STACK_BYTES, MAX_TOTAL_BLOCKS, require
from patternc.stack import Stack
from patternc.version import __version__

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["FORMAT", "FORMAT_VERSION", "READS", "LayoutFile", "check_arrays", "content_hash", "pack", "read",
           "save", "verify", "write"]

FORMAT = "patternc-layout"
FORMAT_VERSION = "2"  # 2: int32 indptr (1 stored int64; still read)
READS = ("1", "2")
_DTYPES = {"indptr": np.dtype(np.int32), "indices": np.dtype(np.int32), "full": np.dtype(np.bool_)}


def save(cp: CompiledPattern, path: str | os.PathLike) -> None:
    """Write ``cp`` to ``path`` (atomically: a crash leaves the old file or none, never half)."""
    write(path, *pack(cp))


def pack(cp: CompiledPattern) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata (without its hash) that ``save`` writes."""
    tensors: dict[str, np.ndarray] = {}
    table = np.zeros((cp.layers, cp.heads), np.int32)  # (L, H) -> distinct layout
    seen: dict[bytes, int] = {}
    for l in range(cp.layers):
        for h in range(cp.heads):
            arrays = dict(zip(_DTYPES, cp.layout(l, h), strict=True))
            digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays.values())).digest()
            if digest not in seen:  # indptr has a fixed length, so the concatenation is unambiguous
                seen[digest] = len(seen)
                tensors.update({f"layout.{seen[digest]}.{name}": a for name, a in arrays.items()})
            table[l, h] = seen[digest]
    tensors["table"] = table
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "patternc_version": __version__,
        "stack": json.dumps(cp.stack.to_dict(), sort_keys=True),
        "n": str(cp.n),
        "block": json.dumps(list(cp.block)),
        "layers": str(cp.layers),
        "heads": str(cp.heads),
        "params": json.dumps(dict(cp.params), sort_keys=True),
        "first_query": str(cp.first_query),
    }
    return tensors, metadata


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write tensors and metadata, adding the content hash."""
    metadata = {**metadata, "content_hash": content_hash(tensors, metadata)}
    data = safetensors.numpy.save(tensors, metadata=metadata)
    path = os.fspath(path)
    partial = f"{path}.{os.getpid()}.tmp"  # written in full first, then renamed over the target
    try:
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def content_hash(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    """sha256 (hex) of the metadata (less its hash) and every tensor's name, dtype, shape, bytes."""
    digest = hashlib.sha256()
    canonical = {key: value for key, value in metadata.items() if key != "content_hash"}
    digest.update(json.dumps(canonical, sort_keys=True).encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# ---- read ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class LayoutFile:
    """What a layout file holds, checked against its hash: the arrays, and the stack and settings
    that ``patternc.load`` recompiles and compares them with (``verify``)."""

    path: str
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]
    stack: Stack
    n: int
    block: tuple[int, int]
    params: dict
    first_query: int = 0


def read(path: str | os.PathLike) -> LayoutFile:
    """Read and check a file written by ``save``; every fault is a ``LayoutFileError`` naming it."""
    path = os.fspath(path)
    data = _contents(path)
    try:
        tensors = safetensors.numpy.load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError) as err:  # its parser's words
        raise LayoutFileError(f"not a readable safetensors file ({err}); truncated or corrupted?",
                              where=path) from None
    metadata = _metadata(data, path)
    if metadata.get("format") != FORMAT:
        raise LayoutFileError(f"not a patternc layout file (metadata 'format' is "
                              f"{brief(metadata.get('format'))}, expected {FORMAT!r})", where=path)
    if metadata.get("format_version") not in READS:
        raise LayoutFileError(f"format version {brief(metadata.get('format_version'))} is not supported; "
                              f"this patternc reads versions {', '.join(READS)}", where=path)
    if metadata.get("content_hash") != content_hash(tensors, metadata):
        raise LayoutFileError("content hash mismatch: the file was modified or corrupted after it was"
                              " written", where=path)
    params = _field(metadata, "params", path, json.loads)
    if not isinstance(params, dict):
        raise LayoutFileError(f"metadata 'params' must be a JSON object, got {brief(params)}", where=path)
    try:
        stack = Stack.from_dict(_field(metadata, "stack", path, json.loads))
    except PatternError as err:
        raise LayoutFileError(f"the stored pattern does not compile: {err}", where=path) from None
    block = _field(metadata, "block", path, json.loads)
    if not (isinstance(block, list) and len(block) == 2 and all(type(b) is int for b in block)):
        raise LayoutFileError(f"metadata 'block' must be [bq, bk], got {brief(block)}", where=path)
    first = _field(metadata, "first_query", path, int) if "first_query" in metadata else 0  # format 1: 0
    return LayoutFile(path, tensors, metadata, stack, _field(metadata, "n", path, int), tuple(block), params,
                      first)


def check_arrays(file: LayoutFile, nbq: int) -> None:
    """The arrays must have the sizes the header claims (``nbq``: the block rows of its ``n``, block and
    first query), before anything is recompiled: a header is free to forge, a recompile is not."""
    path, tensors, metadata, stack = file.path, file.tensors, file.metadata, file.stack
    for key, value in (("layers", stack.layers), ("heads", stack.heads)):
        stored = _field(metadata, key, path, int)
        if stored != value:
            raise LayoutFileError(f"metadata '{key}' is {brief(stored)} but the stored stack has {value}",
                                  where=path)
    table = tensors.get("table")
    if table is None or table.dtype != np.int32 or table.shape != (stack.layers, stack.heads):
        shape = None if table is None else f"{table.dtype} {table.shape}"
        raise LayoutFileError(f"tensor 'table' is {shape}, expected int32 ({stack.layers}, {stack.heads})",
                              where=path)
    distinct = sorted({int(u) for u in table.flat})
    expected = {f"layout.{u}.{name}" for u in distinct for name in _DTYPES} | {"table"}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise LayoutFileError(f"tensors do not match the table: unexpected or missing {odd[:3]}",
                              where=path)
    dtypes = _dtypes(metadata)
    for u in distinct:
        arrays = {name: tensors[f"layout.{u}.{name}"] for name in _DTYPES}
        for name, array in arrays.items():
            if array.dtype != dtypes[name] or array.ndim != 1:
                raise LayoutFileError(f"tensor 'layout.{u}.{name}' is {array.dtype} {array.shape}, expected "
                                      f"{dtypes[name]} (length,)", where=path)
        indptr, nnz, kinds = arrays["indptr"], len(arrays["indices"]), len(arrays["full"])
        if len(indptr) != nbq + 1:
            bq, bk = file.block
            raise LayoutFileError(f"tensor 'layout.{u}.indptr' has {len(indptr):,} entries, but n = "
                                  f"{file.n:,} in blocks of {bq} x {bk} has {nbq:,} block rows: "
                                  f"{nbq + 1:,} expected", where=path)
        if indptr[0] != 0 or indptr[-1] != nnz or kinds != nnz:
            raise LayoutFileError(f"layout {u} is inconsistent: indptr runs from {indptr[0]} to {indptr[-1]} "
                                  f"over {nnz:,} indices and {kinds:,} kinds", where=path)
    try:
        require(sum(len(tensors[f"layout.{u}.indices"]) for u in distinct), MAX_TOTAL_BLOCKS,
                "blocks stored by the distinct layouts of the file", "no compile stores more")
    except PatternSizeError as err:
        raise LayoutFileError(str(err), where=path) from None


def verify(cp: CompiledPattern, file: LayoutFile) -> None:
    """Every (layer, head) must read back exactly the layout this compiler gives the stored stack
    (``check_arrays`` has checked the file's shapes)."""
    path, tensors, metadata = file.path, file.tensors, file.metadata
    table, dtypes = tensors["table"], _dtypes(metadata)
    for l in range(cp.layers):
        for h in range(cp.heads):
            for name, want in zip(_DTYPES, cp.layout(l, h), strict=True):
                got = tensors[f"layout.{table[l, h]}.{name}"]
                if got.dtype != dtypes[name] or not np.array_equal(got, want):

                    raise LayoutFileError(
                        f"the stored {name} of layer {l}, head {h} differs from what patternc "
                        f"{__version__} compiles from the stored stack (the file was written by "
                        f"patternc {brief(metadata.get('patternc_version'))}); recompile and save it again",
                        where=path,
                    )


def _dtypes(metadata: dict[str, str]) -> dict[str, np.dtype]:
    return _DTYPES if metadata["format_version"] != "1" else {**_DTYPES, "indptr": np.dtype(np.int64)}


def _contents(path: str) -> bytes:
    """The bytes of a regular file no larger than ``MAX_LAYOUT_FILE_BYTES``. Anything else is refused
    before it is read: a FIFO would block until a writer came, a device (``/dev/zero``) never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait
    except OSError as err:
        raise LayoutFileError(f"cannot read layout file: {err.strerror}", where=path) from None
    mode, size = os.fstat(fd).st_mode, os.fstat(fd).st_size
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"
        raise LayoutFileError(f"cannot read layout file: it is {kind}, not a regular file", where=path)
    with os.fdopen(fd, "rb") as f:
        try:
            require(size, MAX_LAYOUT_FILE_BYTES, "bytes in the layout file", "no compile writes a larger one")
        except PatternSizeError as err:
            raise LayoutFileError(str(err), where=path) from None
        try:
            data = f.read(size + 1)  # the size checked, and a byte to tell that it grew meanwhile
        except OSError as err:
            raise LayoutFileError(f"cannot read layout file: {err.strerror}", where=path) from None
    if len(data) > size:
        raise LayoutFileError(f"grew past {size:,} bytes while it was read", where=path)
    return data


def _metadata(data: bytes, path: str) -> dict[str, str]:
    # safetensors has already validated the header: 8 bytes of length, then JSON
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        raise LayoutFileError("not a patternc layout file (no metadata in its header)", where=path)
    return metadata


def _field(metadata: dict[str, str], key: str, path: str, parse):
    if key not in metadata:
        raise LayoutFileError(f"metadata '{key}' is missing", where=path)
    if len(metadata[key]) > MAX_STACK_BYTES:  # a stack is configuration, however many heads it has
        raise LayoutFileError(f"metadata '{key}' is {len(metadata[key]):,} characters, over the limit of "
                              f"{MAX_STACK_BYTES:,}", where=path)
    try:
        return parse(metadata[key])
    except (ValueError, TypeError, RecursionError) as err:  # JSONDecodeError is a ValueError
        what = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise LayoutFileError(f"metadata '{key}' is malformed: {what}", where=path) from None

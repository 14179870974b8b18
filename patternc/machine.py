"""This machine, as measurements see it: its CPU's name (the key of every cached timing: CPUs of
one kind differ) and where timings are cached on disk. A leaf module: it imports nothing of
patternc, so the cost model and the kernels' path measurements both build on it.

>>> isinstance(cpu_model(), str) and cache_dir().name == "cost"  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "cpu_model", "write_json"]

CACHE_ENV = "PATTERNC_CACHE_DIR"


def cache_dir() -> Path:
    """Where timings are cached: ``$PATTERNC_CACHE_DIR``, else ``~/.cache/patternc/cost``.

    >>> os.environ[CACHE_ENV] = "/tmp/patternc-cost"; cache_dir()
    PosixPath('/tmp/patternc-cost')
    >>> del os.environ[CACHE_ENV]
    """
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "patternc" / "cost")


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, data: dict) -> None:
    """Write a cache entry atomically (temp file + rename), so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        # A read-only or full cache only costs a re-measure next time: not worth failing for.
        return

"""The explorer as one HTML file: the template, styles, scripts and data inlined, nothing fetched.

>>> text = explorer_html(patternc.compile("conf/pattern/longformer.yaml", n=1024))
>>> write_page(tmp_path / "longformer.html", text).name
'longformer.html'
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from importlib.resources import files
from pathlib import Path

from patternc.compiled import CompiledPattern
from patternc.errors import PatternError, PatternSizeError
from patternc.explore.model import page_data
from patternc.reachability import EXACT_LIMIT

__all__ = ["PAGE_LIMIT", "SCRIPTS", "check_destination", "explorer_html", "fill_template", "static_text",
           "write_page"]

PAGE_LIMIT = 5_000_000  # bytes: an explorer page opens quickly and can be mailed or attached
SCRIPTS = ("arrays.js", "canvas.js", "hover.js", "panels.js", "growth.js", "main.js")  # in this order


def static_text(name: str) -> str:
    """A file of ``patternc/explore/static/`` (package data)."""
    return (files("patternc.explore") / "static" / name).read_text(encoding="utf-8")


def _json_for_script(data: dict) -> str:
    # Inside <script>, "</" could close the element: every "<" is written as its JSON escape.
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


_MARKER = re.compile(r"__([A-Z]+)__")  # __TITLE__, __DATA__, ... in a page template


def fill_template(template: str, values: dict[str, str]) -> str:
    """Replace every ``__NAME__`` marker of the template by ``values[NAME]``, as given, in one pass
    over the template: a value is never searched for markers, so a title, an expression or a file
    name that holds ``__DATA__`` stays text. A marker without a value, or a value without a marker,
    is a ``KeyError`` (the template and its caller out of step).

    >>> fill_template("<h1>__TITLE__</h1><p>__DATA__</p>", {"TITLE": "__DATA__", "DATA": "1"})
    '<h1>__DATA__</h1><p>1</p>'
    """
    names = set(_MARKER.findall(template))
    if names != set(values):
        missing, unused = sorted(names - set(values)), sorted(set(values) - names)
        raise KeyError("the template and its values differ: "
                       + "; ".join([*(f"no value for __{n}__" for n in missing),
                                    *(f"the template has no __{n}__" for n in unused)]))
    return _MARKER.sub(lambda m: values[m.group(1)], template)


def explorer_html(cp: CompiledPattern, layer: int = 0, head: int = 0, title: str | None = None,
                  exact_limit: int = EXACT_LIMIT) -> str:
    """The explorer page of ``cp``, opening on (``layer``, ``head``), as HTML text."""
    from patternc import __version__

    data = page_data(cp, layer, head, title, exact_limit)
    bq, bk = cp.block
    subtitle = (f"n = {cp.n:,}, block {bq} x {bk}, {cp.layers} layers x {cp.heads} heads, "
                f"{'causal' if data['causal'] else 'not causal'}"
                + (f". {cp.stack.description}" if cp.stack.description else ""))
    scripts = "\n".join(static_text(name) for name in SCRIPTS)
    text = fill_template(static_text("explorer.html"), {
        "VERSION": html.escape(__version__), "CSS": static_text("explorer.css"),
        "TITLE": html.escape(data["title"]), "SUBTITLE": html.escape(subtitle), "N": f"{cp.n:,}",
        "DATA": _json_for_script(data), "JS": scripts})
    size = len(text.encode("utf-8"))
    if size > PAGE_LIMIT:  # the budgets in model.py keep every shipped stack far below this
        raise PatternSizeError(f"the explorer page would take {size:,} bytes, over its limit of "
                               f"{PAGE_LIMIT:,}")
    return text


def check_destination(path: str | os.PathLike) -> tuple[Path, Path]:
    """(path, its folder), or a ``PatternError`` when the folder is missing or not writable or the
    path is a folder: checked before a page is built, which can take a while at large ``n``."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a directory" if folder.exists() else "does not exist"
        raise PatternError(f"cannot write {path}: {folder} {problem}")
    if path.is_dir():
        raise PatternError(f"cannot write {path}: it is a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PatternError(f"cannot write {path}: the directory {folder} is not writable")
    return path, folder


def write_page(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all: into a temporary file of the same folder,
    then renamed over the target. The folder must exist and be writable."""
    path, folder = check_destination(path)
    try:
        fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
    except OSError as err:
        raise PatternError(f"cannot write {path}: {err.strerror or err} in {folder}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(partial, 0o644)  # mkstemp makes it private; a page is for reading
        os.replace(partial, path)
    except BaseException as err:
        os.unlink(partial)
        if isinstance(err, OSError):
            raise PatternError(f"cannot write {path}: {err.strerror or err}") from None
        raise
    return path

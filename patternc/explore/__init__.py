"""The explorer: one self-contained HTML page per compiled stack, to look at a pattern.

A layer x head navigator; one canvas that shows the head's allowed pairs or dense attention's,
from the whole sequence down to single tokens; what allows each cell (the expression's terms);
the receptive field of a key growing layer by layer; the statistics; and the stack beside MHA,
MQA and GQA. Everything is computed here and inlined: the page fetches nothing.

>>> import patternc
>>> from patternc.explore import write_explorer
>>> page = write_explorer(patternc.compile("conf/pattern/longformer.yaml", n=1024), tmp_path / "lf.html")
>>> html = page.read_text(encoding="utf-8")
>>> html.startswith("<!DOCTYPE html>"), any(tag in html for tag in ("<link", "<script src", "<img"))
(True, False)

From the command line: ``patternc show conf/pattern/longformer.yaml --n 8192 --html lf.html``.
"""

from __future__ import annotations

import os
from pathlib import Path

from patternc.compiled import CompiledPattern
from patternc.explore.html import PAGE_LIMIT, check_destination, explorer_html, fill_template, write_page
from patternc.explore.model import page_data
from patternc.reachability import EXACT_LIMIT

__all__ = ["PAGE_LIMIT", "check_destination", "explorer_html", "fill_template", "page_data", "write_explorer",
           "write_page"]


def write_explorer(cp: CompiledPattern, path: str | os.PathLike, layer: int = 0, head: int = 0,
                   title: str | None = None, exact_limit: int = EXACT_LIMIT) -> Path:
    """Write the explorer page of ``cp`` to ``path`` (whole or not at all; the folder must exist)."""
    check_destination(path)  # before the work, not after it
    return write_page(path, explorer_html(cp, layer, head, title, exact_limit))

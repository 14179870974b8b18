"""Explorer pages of every shipped stack, built once per test session with the command a user
runs (``patternc show STACK --n N --html FILE``), two at a time: at n = 1,048,576 a page takes
from a few seconds to a minute (the reachability bounds dominate). Shared by test_explore.py (sizes)
and test_browser_explorer.py (opening them)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted((ROOT / "conf" / "pattern").glob("*.yaml"))
WORKERS = 2  # the project's machines have 2 cores


@functools.cache
def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="patternc-explorer-pages-"))


def _build(stack: Path, n: int) -> Path:
    page = _folder() / f"{stack.stem}_{n}.html"
    done = subprocess.run([sys.executable, "-m", "patternc.cli", "show", str(stack), "--n", str(n),
                           "--html", str(page)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"{stack.name} at n = {n}: {done.stderr}"
    return page


@functools.cache
def _pages(n: int) -> dict[str, Path]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip([s.name for s in STACKS], pool.map(lambda s: _build(s, n), STACKS), strict=True))


def built_page(stack: Path, n: int) -> Path:
    """The page of ``stack`` at ``n`` (every stack at that ``n`` is built on the first call)."""
    return _pages(n)[stack.name]


def page_json(text: str) -> dict:
    """The data a page embeds."""
    start = text.index('<script type="application/json" id="explorer-data">')
    body = text[text.index(">", start) + 1 : text.index("</script>", start)]
    return json.loads(body)

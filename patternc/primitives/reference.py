"""The primitives' part of the language reference, written from their entries.

``docs/language.md`` holds this text between two marker lines; ``tests/test_docs.py`` fails when it
is stale, and ``python -m patternc.primitives.reference docs/language.md`` rewrites it in place.

>>> print(markdown().splitlines()[2])
| `causal` | `k <= q` | decoders |
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from patternc.primitives import PRIMITIVES

__all__ = ["BEGIN", "END", "markdown", "rewrite"]

BEGIN = "<!-- primitives: written from patternc/primitives by patternc.primitives.reference; do not edit -->"
END = "<!-- end of primitives -->"
GROUPS = {"offsets": "Offsets: patterns of q - k", "positions": "Positions: patterns tied to token indices",
          "blocks": "Blocks: patterns drawn on the block grid", "grids": "Grids: image and video tokens"}


def _order() -> list:
    return [d for group in GROUPS for d in PRIMITIVES.values() if d.group == group]


def markdown() -> str:
    """The table of every primitive, then one section each: signature, arguments, docstring."""
    lines = ["| primitive | allowed pairs | source of the idea |", "|---|---|---|"]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (a pipe would end the cell)
    lines += [f"| `{d.signature}` | `{cell(d.allows)}` | {cell(d.source)} |" for d in _order()]
    for group, title in GROUPS.items():
        lines += ["", f"### {title}"]
        for d in (d for d in _order() if d.group == group):
            lines += ["", f"#### `{d.signature}`", ""]
            for arg in d.args:
                default = "" if arg.default is None else f", default {arg.default}"
                lines.append(f"- `{arg.name}` ({arg.kind}{default}): {arg.doc}")
            if d.args:
                lines.append("")
            lines += _doc_as_markdown(d.doc)
    return "\n".join(lines)


def _doc_as_markdown(doc: str) -> list[str]:
    """A docstring's prose, and its examples as a fenced Python block."""
    prose, example = [], []
    for line in doc.splitlines():
        text = line.strip() if not example else line.removeprefix("    ")
        (example if text.startswith(">>>") or example else prose).append(text)
    out = [" ".join(" ".join(prose).split()).replace("``", "`")]  # reST literals -> Markdown
    if example:
        out += ["", "```python", *[line.rstrip() for line in example if line.strip()], "```"]
    return out


def rewrite(path: str | Path) -> bool:
    """Replace the text between the markers of ``path`` with ``markdown()``; True if it changed."""
    path = Path(path)
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN!r} ... {END!r} section to rewrite")
    fresh = pattern.sub(lambda _: f"{BEGIN}\n{markdown()}\n{END}", text)
    path.write_text(fresh)
    return fresh != text


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {'rewritten' if rewrite(name) else 'up to date'}")

"""Pictures of a block layout: text for terminals and logs, PNG for papers and reviews.

Large layouts are drawn in cells of several blocks each, counted from the stored blocks alone (a
million-token layout has 67 million blocks; the picture never builds that matrix).

>>> print(draw_text(patternc.compile("causal & window(300)", n=1024).layout()))
+.......
#+......
+#+.....
++#+....
.++#+...
..++#+..
...++#+.
....++#+
"""

from __future__ import annotations

import os

import numpy as np

from patternc.layout import Layout

__all__ = ["cell_counts", "cell_fill", "draw_growth_png", "draw_png", "draw_text"]

TEXT_LEGEND = "# full   + partial (or mixed)   . empty"


def cell_counts(layout: Layout, max_cells: int, blocks=None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Aggregate blocks into at most ``max_cells`` cells a side, counting.

    Returns ``(full, stored, area, (ci, cj))``: per cell, how many of its blocks are FULL, how many
    are stored at all, how many it holds, and how many block rows and columns a cell spans.
    ``blocks`` (rows, cols, full) counts other blocks on the same grid (one term of a pattern).
    """
    grid = layout.grid
    rows, cols, full = blocks if blocks is not None else (layout.rows(), layout.indices, layout.full)
    ci, cj = -(-grid.nbq // max_cells), -(-grid.nbk // max_cells)
    rows_c, cols_c = -(-grid.nbq // ci), -(-grid.nbk // cj)
    cell = (rows // ci) * cols_c + cols // cj
    stored = np.bincount(cell, minlength=rows_c * cols_c).reshape(rows_c, cols_c)
    full = np.bincount(cell, weights=full, minlength=rows_c * cols_c).reshape(rows_c, cols_c)
    # Blocks per cell: the last row and column of cells may be short.
    height = np.minimum(ci, grid.nbq - np.arange(rows_c) * ci)
    width = np.minimum(cj, grid.nbk - np.arange(cols_c) * cj)
    area = height[:, None] * width[None, :]
    return full.astype(np.int64), stored, area, (ci, cj)


def cell_fill(layout: Layout, max_cells: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Aggregate blocks into at most ``max_cells`` cells a side.

    Returns ``(full, stored, (ci, cj))``: per cell, the fraction of its blocks that are FULL and
    the fraction that are stored at all, and how many block rows and columns a cell spans.
    """
    full, stored, area, spans = cell_counts(layout, max_cells)
    return full / area, stored / area, spans


def draw_text(layout: Layout, max_width: int = 96) -> str:
    """The layout as characters, one per cell: ``#`` all full, ``.`` none stored, ``+`` otherwise."""
    full, stored, (ci, cj) = cell_fill(layout, max_width)
    chars = np.where(full == 1.0, "#", np.where(stored == 0.0, ".", "+"))
    lines = ["".join(row) for row in chars]
    if ci > 1 or cj > 1:
        lines.append(f"(each character is {ci} x {cj} blocks)")
    return "\n".join(lines)


def draw_png(layout: Layout, path: str | os.PathLike, title: str = "", max_pixels: int = 1024) -> None:
    """Save the layout as a PNG: black FULL, grey PARTIAL, white EMPTY (shaded by mixture)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    full, stored, (ci, cj) = cell_fill(layout, max_pixels)
    darkness = 0.5 * stored + 0.5 * full  # full -> 1, partial -> 0.5, empty -> 0
    grid = layout.grid
    fig, ax = plt.subplots(figsize=(6, 6), dpi=150)
    ax.imshow(darkness, cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
              extent=(0, grid.n, grid.n, 0))
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    cells = f", {ci}x{cj} blocks per pixel" if ci > 1 or cj > 1 else ""
    ax.set_title(f"{title}\nblock {grid.bq}x{grid.bk}: black full, grey partial{cells}", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def draw_growth_png(report, path: str | os.PathLike) -> None:
    """Plot a ``ReachReport``'s covered fraction of the envelope after each layer (a band between
    the bounds when the report is not exact)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(1, len(report.growth) + 1)
    low = np.array([g[0] for g in report.growth])
    high = np.array([g[1] for g in report.growth])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    if report.exact:
        ax.plot(layers, low, marker="o", label="covered (exact)")
    else:
        ax.fill_between(layers, low, high, alpha=0.3, step="mid", label="between the bounds")
        ax.plot(layers, low, marker="o", label="lower bound (certain)")
        ax.plot(layers, high, marker=".", linestyle="--", label="upper bound (possible)")
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of the envelope covered")
    ax.set_ylim(0, 1.05)
    depth = report.mixing_depth
    ax.set_title(f"receptive field, n = {report.n}: mixing depth "
                 f"{depth if depth is not None else 'never' if report.never else 'unknown'}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | os.PathLike) -> None:
    """Save as PNG through a temporary file renamed over ``path``: a failure leaves no partial file."""
    import matplotlib.pyplot as plt

    partial = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        fig.savefig(partial, format="png")
        os.replace(partial, path)
    finally:
        plt.close(fig)
        if os.path.exists(partial):
            os.remove(partial)

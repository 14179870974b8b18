"""How wide FlexAttention's block tables must be, per device and torch version: found by experiment.

A ``BlockMask`` lists each query block's key blocks in ``kv_indices (B, H, nbq, width)``. Before
torch 2.6 the sequence length was read off ``width``, so every table was ``nbk`` wide
(``create_block_mask`` still makes them so): at n = 1M with 32 heads, 16 GiB for a layout that
stores a few dozen blocks per row. Since 2.6 a ``BlockMask`` carries ``seq_lengths`` and a kernel
may take narrower tables. Three forms (``to_block_mask(width=...)``):

- ``"compact"``: ``width`` is the widest row's count; memory follows the stored blocks.
- ``"padded"``: shaped ``nbk`` wide, as a kernel that checks the width expects, but a strided
  view over the compact tables whose rows overlap in memory: past its count, a row shows the next
  row's entries. Memory as compact; right for kernels that read only each row's first ``count``
  entries (FlexAttention's kernels do; ``BlockMask.to_dense`` masks by the count too).
- ``"full"``: ``nbk`` wide and dense, as ``create_block_mask`` makes them; for anything else.

``WIDTH_RULES`` records, per device, which form the compiled kernel needs (eager FlexAttention
evaluates the ``mask_mod`` on every pair and never reads the tables, so it takes any form).
``tests/test_export_flex_widths.py`` runs the running torch against its row and fails when the row
is wrong, so a torch upgrade that changes the behaviour is noticed, not assumed.

>>> table_form("cpu", "2.13.0+cpu"), table_form("cuda", "2.13.0"), table_form("mps", "2.13.0")
('padded', 'compact', 'full')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from patternc.errors import PatternMeaningError

__all__ = ["FORMS", "WIDTH_RULES", "WidthRule", "check_form", "table_form"]

FORMS = ("compact", "padded", "full")


@dataclass(frozen=True, slots=True)
class WidthRule:
    """On ``device``, for torch ``first`` <= version < ``stop`` (None: no end yet), the compiled
    FlexAttention kernel needs block tables of ``form``; ``evidence`` says how that is known."""

    device: str
    first: tuple[int, int]
    stop: tuple[int, int] | None
    form: str
    evidence: str


WIDTH_RULES = (
    WidthRule("cpu", (2, 6), None, "padded",
              "torch/_inductor/kernel/flex/flex_cpu.py asserts seq_len_kv <= kv_indices.shape[-1] * "
              "KV_BLOCK_SIZE, so a compact table is refused at compile time; its C++ kernel reads only "
              "each row's first count entries, through the tables' strides (run on torch 2.13.0: compact "
              "refused, padded identical to full)"),
    WidthRule("cuda", (2, 6), None, "compact",
              "the Triton templates (flex_attention.py.jinja, flex_backwards.py.jinja) index the tables by "
              "their strides and stop at each row's count, and no lowering checks the width (read in torch "
              "2.13.0's source; benchmarks/gpu_check.py runs compact against full on a GPU)"),
)


def table_form(device: str, version: str | None = None) -> str:
    """The form ``to_block_mask(width="auto")`` builds for ``device`` (``"cpu"``, ``"cuda:1"``, ...)
    under torch ``version`` (default: the running one): the rule's, else ``"full"``."""
    if version is None:
        import torch

        version = torch.__version__
    kind = device.split(":")[0]
    release = _release(version)
    for rule in WIDTH_RULES:
        if rule.device == kind and rule.first <= release and (rule.stop is None or release < rule.stop):
            return rule.form
    return "full"


def check_form(width: str) -> str:
    """``width`` as ``to_block_mask`` takes it: ``"auto"`` or one of ``FORMS``."""
    if width != "auto" and width not in FORMS:
        raise PatternMeaningError(f"width must be 'auto' or one of {', '.join(FORMS)}, got {width!r}")
    return width


def _release(version: str) -> tuple[int, int]:
    """``"2.13.0+cpu"`` -> (2, 13); a development build ``"2.14.0a0+git..."`` counts as 2.14."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        return (0, 0)
    return int(found.group(1)), int(found.group(2))

"""The registry of the language's primitives: one entry per primitive, everything about it.

An entry is a builder function decorated with ``@primitive``: the decorator records the name
(the function's, less a trailing ``_``: ``global_`` is ``global``), the arguments with their kinds
and defaults, the allowed pairs in words and where the idea comes from; the function's body clamps
the checked values and returns the lowered node (which carries the token predicate, the block
enumeration and, for offset sets, the view reachability uses); its docstring, with an example that
runs, is the user's reference. The parser's checks (``patternc.lang.check``), the binding
(``patternc.lower.bind``) and ``docs/language.md`` all read ``PRIMITIVES``.

Argument kinds (checked before a builder runs, so builders see valid values):

- ``count``: an integer >= 1;   ``offset``: any integer;   ``seed``: an integer >= 0;
- ``indices``: a list of positions in [0, n);   ``offsets``: a list of offsets in (-n, n);
- ``counts``: a list of integers >= 1 (sizes, kernels).

>>> PRIMITIVES["window"].signature
'window(w)'
>>> PRIMITIVES["random"].args[1]
Arg(name='seed', kind='seed', default=0, doc='seed of the draw')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from patternc.lower.node import Lowered

__all__ = ["KINDS", "LIST_KINDS", "PRIMITIVES", "Arg", "Definition", "primitive"]

KINDS = ("count", "offset", "seed", "indices", "offsets", "counts")
LIST_KINDS = ("indices", "offsets", "counts")


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a primitive: its name, kind (see the module docstring), default, meaning."""

    name: str
    kind: str = "count"
    default: int | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        assert self.kind in KINDS, f"unknown argument kind {self.kind!r}"

    @property
    def is_list(self) -> bool:
        return self.kind in LIST_KINDS


@dataclass(frozen=True, slots=True)
class Definition:
    """A primitive: what the parser checks, what the binder calls, what the reference shows."""

    name: str
    args: tuple[Arg, ...]
    allows: str  # the allowed pairs, in the notation of docs/language.md
    source: str  # where the idea comes from
    build: Callable[..., Lowered]  # build(scope, **checked values) -> the lowered node
    group: str  # the reference's section: offsets, positions, blocks, grids

    @property
    def signature(self) -> str:
        """``window(w)``, ``random(r, seed=0)``; a primitive without arguments is its bare name."""
        if not self.args:
            return self.name
        shown = [a.name if a.default is None else f"{a.name}={a.default}" for a in self.args]
        return f"{self.name}({', '.join(shown)})"

    @property
    def doc(self) -> str:
        return (self.build.__doc__ or "").strip()


PRIMITIVES: dict[str, Definition] = {}


def primitive(*args: Arg, allows: str, source: str, group: str) -> Callable:
    """Register the decorated builder ``f(scope, **values) -> Lowered`` as a primitive.

    The builder may raise ``PatternMeaningError`` (without a position) for values that are fine
    one by one but not together (``band(5, 2)``); the binder points it at the primitive.
    """

    def register(build: Callable[..., Lowered]) -> Callable[..., Lowered]:
        name = build.__name__.rstrip("_")
        assert name not in PRIMITIVES, f"primitive {name!r} is defined twice"
        PRIMITIVES[name] = Definition(name, tuple(args), allows, source, build, group)
        return build

    return register

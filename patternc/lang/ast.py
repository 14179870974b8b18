"""The syntax tree of a pattern: frozen values, one class per grammar form.

Two kinds of expression live here. *Pattern* nodes denote a set of (q, k) pairs:
``Primitive`` (``window(512)``, ``causal``), ``Union`` (``|``), ``Intersect`` (``&``),
``Difference`` (``-``) and ``Complement`` (``~``). *Number* nodes are the arguments of primitives:
``Num`` (literal), ``Name`` (``n``, ``l``, ``h``, ``L``, ``H``), ``Param`` (``$w``), ``Unary``,
``Binary`` and ``Call`` (``sqrt(n)``), plus ``ListArg`` (``[0, 1, 2]``).

Every node keeps its source ``span`` (start, end offsets) for error messages, out of equality and
hashing, so ``parse("a|b") == parse("a | b")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Arg",
    "Binary",
    "Call",
    "Complement",
    "Difference",
    "Intersect",
    "ListArg",
    "Name",
    "Num",
    "Number",
    "Param",
    "Pattern",
    "Primitive",
    "Span",
    "Unary",
    "Union",
    "children",
    "walk",
]

Span = tuple[int, int]
_NO_SPAN: Span = (0, 0)


def _span() -> Span:
    return field(default=_NO_SPAN, compare=False, repr=False)


# ---- numbers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Num:
    """A non-negative literal: ``512``, ``0.5``, ``1e-3`` (a minus sign is a ``Unary``)."""

    value: int | float
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Name:
    """A name bound by the compiler: ``n``, ``l``, ``h``, ``L`` or ``H``."""

    id: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Param:
    """A free parameter ``$name``, bound at compile time (the search binds these)."""

    id: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Unary:
    """``-x`` or ``+x``."""

    op: str
    operand: Number
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Binary:
    """``a op b`` with op one of ``+ - * / // % **``."""

    op: str
    left: Number
    right: Number
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Call:
    """A numeric function: ``min``, ``max``, ``sqrt``, ``log2``, ``ceil``, ``floor``, ``round``."""

    func: str
    args: tuple[Number, ...]
    span: Span = _span()


Number = Num | Name | Param | Unary | Binary | Call


@dataclass(frozen=True, slots=True)
class ListArg:
    """A list of numbers, ``[0, n - 1]``, for ``tokens``, ``columns`` and ``diagonals``."""

    items: tuple[Number, ...]
    span: Span = _span()


Arg = Number | ListArg


# ---- patterns ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Primitive:
    """A primitive pattern: ``causal``, ``window(512)``, ``random(2, seed=7)``.

    ``kwargs`` is a tuple of (name, value) pairs in source order, so the node stays hashable.
    """

    name: str
    args: tuple[Arg, ...] = ()
    kwargs: tuple[tuple[str, Arg], ...] = ()
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Union:
    """``left | right``: pairs allowed by either side."""

    left: Pattern
    right: Pattern
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Intersect:
    """``left & right``: pairs allowed by both sides."""

    left: Pattern
    right: Pattern
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Difference:
    """``left - right``: pairs allowed by the left side and not by the right."""

    left: Pattern
    right: Pattern
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Complement:
    """``~operand``: every pair the operand does not allow."""

    operand: Pattern
    span: Span = _span()


Pattern = Primitive | Union | Intersect | Difference | Complement


def children(node: Pattern | Arg) -> tuple[Pattern | Arg, ...]:
    """The direct sub-expressions of a node, in source order."""
    if isinstance(node, (Union, Intersect, Difference)):
        return node.left, node.right
    if isinstance(node, Complement):
        return (node.operand,)
    if isinstance(node, Primitive):
        return (*node.args, *(value for _, value in node.kwargs))
    if isinstance(node, ListArg):
        return node.items
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return node.left, node.right
    if isinstance(node, Call):
        return node.args
    return ()


def walk(node: Pattern | Arg):
    """Every node of a tree, parents before children, without recursion."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))

"""Errors that point at the fault.

Every error a user can cause is a :class:`PatternError` (a ``ValueError``). It carries the source
text and the span of the fault, and prints the offending line with a caret under it::

    unknown primitive 'windw' (did you mean 'window'?)
      causal & windw(512)
               ^^^^^

Subclasses say which phase found the fault: :class:`PatternSyntaxError` (the text does not parse),
:class:`PatternMeaningError` (it parses but means nothing: unknown names, bad counts, unbound
parameters), :class:`PatternSizeError` (a request too large to honour), :class:`StackError`
(a stack file is malformed) and :class:`LayoutFileError` (a saved layout file is unreadable, corrupted
or does not match what it claims to hold).
"""

from __future__ import annotations

import reprlib
from numbers import Integral

__all__ = [
    "ConfigError",
    "KernelInputError",
    "LayoutFileError",
    "ModelError",
    "ModelFileError",
    "PatternError",
    "PatternMeaningError",
    "PatternSizeError",
    "PatternSyntaxError",
    "StackError",
    "brief",
    "check_int",
]

CONTEXT = 60  # characters of the source line shown either side of a fault


class _Brief(reprlib.Repr):
    """``reprlib`` with small limits, and integers sized by their bits: ``repr`` of an integer of
    more than 4,300 digits raises in Python 3.11+, and formatting it as a float overflows."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 2, 60, 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 4

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 64:
            return repr(x)
        digits = int((abs(x).bit_length() - 1) * 0.30102999566398120) + 1  # exact or one short
        if abs(x) >= 10**digits:
            digits += 1
        return f"an integer of {digits:,} digits"


_BRIEF = _Brief()


def brief(value: object) -> str:
    """A short ``repr`` of a value for an error message: a message never formats a huge value
    (an integer of 10,000 digits, a list built by YAML aliases) in full.

    >>> brief(10**400), brief(10**400 - 1)
    ('an integer of 401 digits', 'an integer of 400 digits')
    >>> brief(list(range(100)))
    '[0, 1, 2, 3, ...]'
    """
    return _BRIEF.repr(value)


class PatternError(ValueError):
    """Root of every user-facing error in patternc.

    ``pos``/``end`` are 0-based offsets into ``text``; ``where`` names the place the text came
    from (a file and key, for stacks). Any of them may be missing when the fault has no location.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str | None = None,
        pos: int | None = None,
        end: int | None = None,
        where: str | None = None,
    ) -> None:
        self.message = message
        self.text = text
        self.pos = pos
        self.end = end
        self.where = where
        super().__init__(message)

    def with_source(self, text: str | None = None, where: str | None = None) -> PatternError:
        """A copy of this error that knows the whole source text and where it came from."""
        err = type(self)(
            self.message,
            text=self.text if self.text is not None else text,
            pos=self.pos,
            end=self.end,
            where=self.where if self.where is not None else where,
        )
        return err

    @property
    def line(self) -> int | None:
        """1-based line of the fault in ``text``."""
        if self.text is None or self.pos is None:
            return None
        return self.text.count("\n", 0, self.pos) + 1

    @property
    def column(self) -> int | None:
        """1-based column of the fault within its line."""
        if self.text is None or self.pos is None:
            return None
        return self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1

    def __str__(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        if self.text is None or self.pos is None:
            return head
        start = self.text.rfind("\n", 0, self.pos) + 1
        stop = self.text.find("\n", self.pos)
        stop = len(self.text) if stop < 0 else stop
        end = min(self.end if self.end is not None else self.pos + 1, stop)
        # a long line is shown around the fault: CONTEXT characters either side, the caret clipped
        clipped_end = max(self.pos + 1, min(end, self.pos + 2 * CONTEXT))
        first = max(start, self.pos - CONTEXT)
        last = min(stop, clipped_end + CONTEXT)
        source_line = "..." * (first > start) + self.text[first:last] + "..." * (last < stop)
        indent = self.pos - first + (3 if first > start else 0)
        caret = " " * indent + "^" * (min(clipped_end, stop) - self.pos or 1)
        return f"{head}\n  {source_line}\n  {caret}"


class PatternSyntaxError(PatternError):
    """The text is not a well-formed pattern: a bad character, a missing ')', a stray operator."""


class PatternMeaningError(PatternError):
    """The text parses but means nothing: unknown name, wrong arguments, a count out of range."""


class PatternSizeError(PatternError):
    """A request too large to honour, such as a dense mask of 10**12 booleans."""


class StackError(PatternError):
    """A stack file (YAML) is malformed: a missing key, a bad range, an unknown field."""


class LayoutFileError(PatternError):
    """A saved layout file (``CompiledPattern.save``) cannot be loaded: unreadable, truncated,
    corrupted, of another format, or its arrays differ from what its metadata compiles to."""


class KernelInputError(PatternError):
    """Tensors or settings given to a kernel that do not fit each other or the compiled pattern:
    a shape, dtype or device that disagrees (the message names the argument and both values), an
    unsupported dtype, or an unknown compute path."""


class ConfigError(PatternError):
    """A model's configuration (``config.json``) that patternc cannot read as a stack, or a stack
    that a serving configuration cannot express (``patternc.native``): the message names the key,
    or the layer, head and term."""


class ModelError(PatternError):
    """A model and a pattern that do not fit together (``patternc.hf``): a stack whose layers or
    heads differ from the model's, a non-causal stack on a causal model, a model that does not route
    attention through transformers' ``AttentionInterface``, or attention settings the pattern's
    kernels cannot honour (the message names both sides)."""


class ModelFileError(PatternError):
    """A model file that patternc reads itself (a llama2.c ``.bin``, ``patternc.hf.load_llama2c``) is
    not what its format says: missing, truncated or longer than its header, a header out of range or
    inconsistent, non-finite weights. ``where`` is the file; the message names the fault."""


def check_int(value: object, name: str | None, *, low: int = 1, high: int | None = None,
              error: type[PatternError] = PatternMeaningError, where: str | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number (a Python or numpy integer, never a bool)
    in ``[low, high]``; otherwise ``error`` naming ``name``, the range and a brief of the value
    (``name=None`` where ``where`` names the value: a key of a file).
    The one integer guard of patternc's public functions, so that each says the same thing.

    >>> check_int(8, "head_dim")
    8
    >>> check_int(True, "head_dim")
    Traceback (most recent call last):
      ...
    patternc.errors.PatternMeaningError: head_dim must be a positive integer, got True
    >>> check_int(5, "layer", low=0, high=3, error=PatternSizeError)
    Traceback (most recent call last):
      ...
    patternc.errors.PatternSizeError: layer must be an integer in [0, 3], got 5
    """
    if isinstance(value, Integral) and not isinstance(value, bool) \
            and low <= value and (high is None or value <= high):
        return int(value)
    if high is not None:
        wanted = f"an integer in [{low:,}, {high:,}]"
    else:
        wanted = "a positive integer" if low == 1 else f"an integer >= {low:,}"
    said = f"{name} must be {wanted}" if name is not None else f"expected {wanted}"
    raise error(f"{said}, got {brief(value)}", where=where)

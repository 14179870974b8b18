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

__all__ = [
    "LayoutFileError",
    "PatternError",
    "PatternMeaningError",
    "PatternSizeError",
    "PatternSyntaxError",
    "StackError",
]


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
        source_line = self.text[start:stop]
        end = self.end if self.end is not None else self.pos + 1
        width = max(1, min(end, stop) - self.pos)
        caret = " " * (self.pos - start) + "^" * width
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

"""The pattern language: text -> syntax tree -> canonical text."""

from patternc.lang import ast
from patternc.lang.parser import parse
from patternc.lang.unparse import identifier, unparse

__all__ = ["ast", "identifier", "parse", "unparse"]

"""patternc's version, in a leaf module: layout files record it, and the exporters that write them
import it from here rather than from the package that imports them. ``pyproject.toml`` and
``CHANGELOG.md`` say the same (``tests/test_docs.py``).

>>> __version__.count(".")
2
"""

__all__ = ["__version__"]

__version__ = "0.2.0"

"""Composed ``patternc-search`` configs for the search's tests: the tiny experiment on a study file
of the test's own."""

from __future__ import annotations

from search.app import compose_config
from search.config import config_objects as objects  # (task, space, kernel, search), as run_search takes them

__all__ = ["objects", "tiny"]


def tiny(tmp_path, *overrides: str):
    """``experiment=tiny`` with its study in ``tmp_path/s.db``, then ``overrides``."""
    return compose_config(["experiment=tiny", f"search.storage=sqlite:///{tmp_path}/s.db", *overrides])

"""pytest at the repository root: the names every docstring example may use, so that the examples
in ``patternc/`` and ``search/`` run as doctests (``--doctest-modules`` in pyproject.toml)."""

import numpy as np
import pytest

import patternc

collect_ignore = ["search/__main__.py"]  # importing it runs the app


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    doctest_namespace.update(np=np, patternc=patternc)
    if isinstance(request.node, pytest.DoctestItem):
        tmp_path = request.getfixturevalue("tmp_path")  # a fresh directory for examples that write files
        doctest_namespace["tmp_path"] = tmp_path
        env = request.getfixturevalue("monkeypatch")
        # what an example measures (kernel paths, patternc.measure, a search trial's cost) is cached
        # there, never in ~/.cache; and the examples show the default compute path, whatever the shell says
        env.setenv("PATTERNC_CACHE_DIR", str(tmp_path / "cost-cache"))
        env.delenv("PATTERNC_KERNEL_PATH", raising=False)

"""What the search keeps beside its studies: the dense reference's weights and scores that any study
of the same definition may reuse, in an Optuna artifact store (``search.artifacts``).

Artifacts are named by what they depend on (a hash of the scorer's definition, and of the layout
scored), not by the study, so a second study of another space with the same task, proxy and seed
finds them: the dense proxy is trained once, a classic pattern scored once. Every worker of a
PostgreSQL study must see the same store: give ``search.artifacts`` a directory they share.

>>> store = open_store(SearchConfig(artifacts=str(tmp_path / "artifacts")))
>>> store.get("score-abc.json") is None
True
>>> store.put("score-abc.json", b'{"score": 0.9}')
>>> store.get("score-abc.json")
b'{"score": 0.9}'
>>> open_store(SearchConfig(artifacts="/proc/no/such/place"))  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
search.errors.ConfigError: search.artifacts = '/proc/no/such/place' cannot be written: ...
"""

from __future__ import annotations

import io
import os
import pathlib
import uuid

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from search.config import SearchConfig
from search.errors import ConfigError
from search.storage import DEFAULT_STORAGE_DIR

__all__ = ["Store", "open_store", "store_path"]


def store_path(settings: SearchConfig) -> pathlib.Path:
    """``search.artifacts``; else ``artifacts/`` beside the study's sqlite file (``outputs/search/``
    by default), or ``outputs/search/artifacts`` for a server's study."""
    if settings.artifacts is not None:
        return pathlib.Path(settings.artifacts)
    url = settings.storage or ""
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return pathlib.Path(url.removeprefix("sqlite:///")).parent / "artifacts"
    return DEFAULT_STORAGE_DIR / "artifacts"


class Store:
    """Named artifacts in an Optuna ``FileSystemArtifactStore`` at ``path``; a write appears whole
    (written under a private name, then renamed), so a worker never reads half a file."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._store = FileSystemArtifactStore(path)

    def get(self, name: str) -> bytes | None:
        """The artifact's bytes, or None when there is none of that name."""
        try:
            with self._store.open_reader(name) as reader:
                return reader.read()
        except ArtifactNotFound:
            return None

    def put(self, name: str, data: bytes) -> None:
        part = f"{name}.part-{uuid.uuid4().hex}"
        self._store.write(part, io.BytesIO(data))
        os.replace(self.path / part, self.path / name)


def open_store(settings: SearchConfig) -> Store:
    """The search's store, checked writable now (a store that cannot be written would lose the
    dense reference's weights after its training): a ``ConfigError`` naming ``search.artifacts``."""
    path = store_path(settings)
    shown = settings.artifacts if settings.artifacts is not None else str(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        store = Store(path)
        probe = f"probe-{uuid.uuid4().hex}"
        store.put(probe, b"")
        (path / probe).unlink()
    except OSError as error:
        raise ConfigError(f"search.artifacts = {shown!r} cannot be written: {error.strerror or error} "
                          f"(the dense reference's weights and reusable scores are kept there): give a "
                          f"writable directory, shared by every worker of the study") from None
    return store

"""What a search run refuses or gives up on, each a ``SearchError`` (a ``ValueError``).

The app prints every one as ``patternc-search: error: ...`` and exits with status 2, as ``patternc``
does for a bad pattern; the message names the config key, the study or the file at fault.

>>> from search.config import SearchConfig, SpaceConfig
>>> from search.validate import check_settings
>>> check_settings(SearchConfig(workers=2), SpaceConfig())  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
search.errors.ConfigError: search.workers = 2 share one study, which an embedded sqlite file cannot hold ...
>>> issubclass(ConfigError, SearchError) and issubclass(SearchError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["ConfigError", "SearchError", "SpaceRejectsAll", "StorageError", "StudyMismatch"]


class SearchError(ValueError):
    """Root of the search's own errors."""


class ConfigError(SearchError):
    """A config value that cannot work, found before the first trial (the message names the key)."""


class StudyMismatch(SearchError):
    """An existing study was defined by another space, task, kernel or seed than this run's."""


class StorageError(SearchError):
    """The study's storage cannot be opened (damaged or foreign file) or was lost for too long."""


class SpaceRejectsAll(SearchError):
    """A worker stopped on ``search.max_rejected`` rejections before the budget was spent.

    ``study`` is the study as it stands, so that the run can still write its report.
    """

    def __init__(self, message: str, study=None):
        super().__init__(message)
        self.study = study

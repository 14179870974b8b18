"""The search around patternc: proxy tasks, the tiny model, evaluation, and the ``patternc-search``
Hydra app.

>>> import search
>>> result = search.evaluate("causal & window(16)", search.MQARConfig(), seed=0)   # doctest: +SKIP
>>> result.accuracy, result.buckets                                              # doctest: +SKIP
"""

from search.config import (
    HopsConfig,
    MajorityConfig,
    ModelConfig,
    MQARConfig,
    PatternConfig,
    TaskConfig,
    TrainConfig,
)
from search.errors import ConfigError, SearchError, SpaceRejectsAll, StorageError, StudyMismatch
from search.evaluate import EvalResult, evaluate, resolve_pattern
from search.model import TinyTransformer
from search.tasks import TASKS, make_task

__all__ = [
    "TASKS",
    "ConfigError",
    "EvalResult",
    "HopsConfig",
    "MQARConfig",
    "MajorityConfig",
    "ModelConfig",
    "PatternConfig",
    "SearchError",
    "SpaceRejectsAll",
    "StorageError",
    "StudyMismatch",
    "TaskConfig",
    "TinyTransformer",
    "TrainConfig",
    "evaluate",
    "make_task",
    "resolve_pattern",
]

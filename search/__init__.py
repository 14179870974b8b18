"""The search around patternc: proxy tasks, the tiny model, evaluation, and the ``patternc-search``
Hydra app.

>>> import search
>>> task = search.MQARConfig(n=32, pairs=3, distances=[2, 8, 32],  # a smoke-test size
...                          model=search.ModelConfig(d_model=16, head_dim=4),
...                          train=search.TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1))
>>> result = search.evaluate("causal & window(16)", task, seed=0)
>>> result.status, result.steps, result.bucket_counts  # 16 held-out sequences x 3 answers, per distance
('ok', 4, {'2-7': 19, '8-31': 29})
>>> 0 <= result.buckets["8-31"] <= 1  # accuracy over those answers (4 steps learn next to nothing)
True
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

"""Config schemas: what a task, the tiny model, training and the app accept, with defaults and why.

Each schema is a dataclass registered with Hydra's ConfigStore, so a YAML file under ``conf/`` that
names a key the schema lacks, or gives a value of the wrong type, fails at start-up with the key and
the file, never inside a run. The same dataclasses are the Python API:

>>> task = MQARConfig(n=64, train=TrainConfig(steps=200))
>>> task.name, task.pairs, task.model.layers, task.train.lr  # the rest keeps its defaults
('mqar', 8, 2, 0.005)

and Hydra checks a YAML file (or an override) against the same schema:

>>> from omegaconf import OmegaConf
>>> OmegaConf.merge(OmegaConf.structured(MQARConfig), {"pairz": 3})  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
omegaconf.errors.ConfigKeyError: Key 'pairz' not in 'MQARConfig'
...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "DTYPES",
    "MODES",
    "SAMPLERS",
    "AppConfig",
    "HopsConfig",
    "KernelConfig",
    "MQARConfig",
    "MajorityConfig",
    "ModelConfig",
    "ParamSpec",
    "PatternConfig",
    "ProxyConfig",
    "SearchConfig",
    "SpaceConfig",
    "TargetConfig",
    "TaskConfig",
    "TrainConfig",
    "config_objects",
]


@dataclass
class ModelConfig:
    """The tiny decoder. ``layers`` and ``heads`` are used for a bare expression; a stack brings its
    own."""

    d_model: int = 64  # residual width: enough for 64 keys and 64 values, small enough for 2 cores
    layers: int = 2  # recall needs two hops: the value learns its key, the query finds the value
    heads: int = 4
    head_dim: int = 16  # per head, so that any head count works with any width
    mlp_ratio: int = 4  # GPT-2's 4x hidden width
    attention: str = "auto"  # auto | kernel | sdpa | flex: search.model.attention_backend


@dataclass
class TrainConfig:
    """AdamW with linear warm-up and cosine decay; every batch freshly drawn."""

    steps: int = 400
    batch: int = 32
    lr: float = 5e-3  # tiny models learn these tasks fastest at a high rate, once warmed up
    warmup: int = 30  # steps of linear warm-up: without it the first large updates stall recall
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient-norm clip
    eval_sequences: int = 512  # held-out sequences (from a different seed) for the reported accuracy
    log_every: int = 10  # one point of the loss curve per this many steps (their mean loss)
    threads: int | None = None  # torch threads during the run; None keeps the process's setting
    device: str = "cpu"  # cpu or cuda: where the proxy model trains (bit-exact reruns on cpu only)
    # where a search's candidate starts: scratch (trained from its initialisation for `steps`) or
    # dense (the dense reference, trained once for `steps`, adapted `adapt_steps` under the pattern)
    init: str = "scratch"
    adapt_steps: int = 50  # K: 0 scores the dense proxy zero-shot, exp(-KL) against it
    # screening rungs: fractions of a candidate's steps (of the full schedule, so overriding `steps`
    # moves them along) at which it is scored and goes on only if no earlier trial at that rung
    # was better by `promote_within` at no more cost; []: every trial in full
    rungs: list[float] = field(default_factory=list)
    promote_within: float = 0.05
    screen_sequences: int = 128  # held-out sequences for a rung's score


@dataclass
class TaskConfig:
    """Fields every task has; each task adds its own."""

    name: str = "?"
    n: int = 256  # proxy sequence length
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class MQARConfig(TaskConfig):
    """Multi-query associative recall: key-value pairs at random positions, each key asked once
    later; the answer is its value. Query-to-key distances are drawn evenly over ``distances``
    buckets, so accuracy per bucket shows how far a pattern can route."""

    name: str = "mqar"
    n: int = 128  # long enough that distances 48-127 are out of reach of a 16-token window in 2 layers
    pairs: int = 8  # pairs per sequence, each queried once: 8 answers per sequence
    keys: int = 32  # key vocabulary; the keys of one sequence are distinct
    values: int = 32  # value vocabulary; chance is 1 / values
    distances: list[int] = field(default_factory=lambda: [2, 16, 48, 128])  # bucket edges, half-open


@dataclass
class MajorityConfig(TaskConfig):
    """Aggregation: marker tokens of several groups are scattered over the sequence; at the end, one
    question per group asks which of its markers occurred most often. The answer depends on every
    position, so it rewards full mixing rather than point-to-point recall."""

    name: str = "majority"
    groups: int = 4  # questions per sequence, one per group, asked in the last positions
    markers: int = 4  # marker types per group; chance is 1 / markers
    n: int = 128
    count: list[int] = field(default_factory=lambda: [6, 12])  # markers per group, drawn in [lo, hi]
    noise: int = 16  # filler token types between the markers
    margins: list[int] = field(default_factory=lambda: [1, 2, 3])  # buckets of max - runner-up: 1, 2, 3+


@dataclass
class HopsConfig(TaskConfig):
    """Pointer chasing: each question names a variable bound through ``hops`` assignments to a value.
    Depth and reach decide it: every hop is one more position the information passes through.
    Buckets are hop counts (``search.tasks.hops``)."""

    name: str = "hops"
    n: int = 256
    chains: int = 4  # questions per sequence, one per chain, asked in the last positions
    hops: list[int] = field(default_factory=lambda: [1, 2, 3])  # hop counts drawn evenly: the buckets
    variables: int = 48  # variable vocabulary (distinct within a sequence: chains * max(hops) at most)
    values: int = 16  # value vocabulary; chance is 1 / values


@dataclass
class PatternConfig:
    """A stack as in ``conf/pattern/*.yaml`` (``pattern=longformer``) or one inline expression
    (``pattern.expr='causal & window(16)'``), which then gets the model's layers and heads."""

    expr: str | None = None
    description: str | None = None
    layers: int | None = None
    heads: int | None = None
    block: Any = None  # an int or [bq, bk]
    causal: bool | None = None
    default: str | None = None
    overrides: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParamSpec:
    """One ``$param`` of a space and its distribution (Optuna's suggest_* arguments).

    ``{type: float, low: 0.01, high: 0.5, log: true}``, ``{type: int, low: 1, high: 16}``,
    ``{type: int, low: 2, high: 64, log: true}`` (log-int), ``{type: categorical, choices: [1, 2]}``.
    """

    type: str = "float"  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class TargetConfig:
    """The model the pattern is for: reach, density, cost and the KV cache are checked on its stack
    at its length. The defaults are a GPT-2-small-sized decoder at 8k tokens."""

    layers: int = 12  # the depth within which every causal pair must be reached
    heads: int = 8
    kv_heads: int | None = None  # grouped-query attention (its KV cache); None: one per head
    head_dim: int = 64  # the cost is measured at this head size
    n: int = 8192  # the deployment length, where cost is measured
    block: int = 128  # the kernel's tile at n (FlexAttention's default)


@dataclass
class ProxyConfig:
    """The small model trained for accuracy (its width and budget are ``task.model`` and
    ``task.train``). Its layer p stands for a group of the target's layers (``search.space.build``)."""

    layers: int = 2  # the tasks need two hops (recall: the value learns its key, the query finds it)
    heads: int = 4
    n: int = 256  # where accuracy is measured (the task's n)
    block: int = 32  # 8 x 8 blocks at n (random() is drawn on these blocks)


@dataclass
class SpaceConfig:
    """A search space: a template expression over ``$params``, per-layer choices, limits, and the
    target and proxy it describes.

    Templates are written relative to ``n`` (``window(ceil($w * n))``), so the proxy length and the
    target length see the same shape of pattern.
    """

    name: str = "?"
    description: str = ""
    template: str = "causal"  # the pattern of every layer and head, over $params and n, l, h, L, H
    params: dict[str, ParamSpec] = field(default_factory=dict)
    layer_choices: list[str] = field(default_factory=list)  # per proxy layer: "template" or an expression
    head_choices: list[str] = field(default_factory=list)  # per (proxy layer, head): the same (search.space)
    target: TargetConfig = field(default_factory=TargetConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    density_budget: float = 0.5  # max mean block density at target.n, as a fraction of dense causal's
    kv_budget: float | None = None  # max KV-cache bytes as a fraction of a dense cache's; None: any
    require_mixing: bool = True  # reject patterns that certainly do not mix within target.layers
    references: dict[str, Any] = field(default_factory=dict)  # name -> {params: ...} or {expr: ...}


DTYPES = ("float32", "bfloat16", "float16")  # kernel.dtype: torch dtypes by name


@dataclass
class KernelConfig:
    """How cost is measured at space.target.n with the target's heads and head size
    (``patternc.measure``), per distinct layer, cached on disk."""

    backend: str = "kernel"  # kernel (our block-sparse kernel), flex, sdpa, auto (patternc.kernels)
    dtype: str = "float32"  # one of DTYPES; float32 on CPUs without fast bf16 matmuls; bfloat16 on GPU
    batch: int = 1
    repeats: int = 9  # median of 9 kernel/baseline ratios taken in turns: repeat calls agree within 5%
    warmup: int = 1
    device: str = "cpu"  # where cost is measured: cpu, or cuda for the GPU you deploy on
    # prefill: the whole sequence at target.n; decode: one decode step at position `context`
    # (default target.n - 1) over a cache that keeps what the pattern reads, against dense decode
    phase: str = "prefill"
    context: int | None = None  # >= 1: the step reads the keys cached before it


SAMPLERS = ("tpe", "nsga2", "gp", "random")  # search.sampler (search.study.make_sampler builds them)


@dataclass
class SearchConfig:
    """The Optuna study: budget, sampler, storage, study name, workers."""

    # None: named from what defines the study (search.definition.study_name): space, task, target.n,
    # seed and a hash of every value that changes a trial's result. A given name is kept, and a run whose
    # definition differs from the named study's is refused.
    study: str | None = None
    n_trials: int = 12  # total finished trials in the study (all workers, all runs together)
    sampler: str = "tpe"  # one of SAMPLERS
    seed: int = 0  # the sampler's; each worker draws from its own stream of it
    storage: str | None = None  # an Optuna storage URL; None: sqlite under outputs/search/
    heartbeat: int = 30  # seconds between a running trial's heartbeats; a silent one is failed
    retries: int = 1  # how many times a trial whose worker died is retried
    references: bool = True  # enqueue the space's classic patterns as the first trials
    timeout: float | None = None  # seconds for this worker, or None
    max_rejected: int = 500  # rejected candidates in this worker before it gives up on the space
    workers: int = 1  # workers sharing the study (at most 64); with -m, the launcher starts this many jobs
    worker: int = 0  # this worker's index in [0, workers): its seed stream (set per job with -m)
    storage_retry: float = 60  # seconds a worker keeps retrying a lost database server before giving up
    # where the dense reference's weights and scores reusable across studies are kept (an Optuna
    # artifact store on this path); None: outputs/search/artifacts beside the sqlite studies
    artifacts: str | None = None
    design: bool = True  # first sample a design covering each layer choice and each parameter's ends


MODES = {"evaluate": "train and score one pattern on one task",
         "search": "an Optuna study over a space: accuracy up, measured cost down",
         "report": "the report of search.study as it stands (after workers finished), running no trial"}


@dataclass
class AppConfig:
    """``patternc-search``: the top-level config (``conf/config.yaml``)."""

    mode: str = "search"  # one of MODES
    seed: int = 0
    task: Any = None  # a task schema, chosen by the task group
    pattern: PatternConfig = field(default_factory=PatternConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


TASK_SCHEMAS: dict[str, type[TaskConfig]] = {"mqar": MQARConfig, "majority": MajorityConfig,
                                              "hops": HopsConfig}


def config_objects(cfg: DictConfig) -> list:
    """(task, space, kernel, search) of a composed config, as ``search.study.run_search`` takes them."""
    return [OmegaConf.to_object(cfg[key]) for key in ("task", "space", "kernel", "search")]

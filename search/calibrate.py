"""``task=calibrate``: a pattern's quality on a pretrained dense model, measured without training.

The model is a local ``save_pretrained`` directory or a llama2.c ``.bin`` checkpoint (``task.model``,
``search.calibrate_model``; nothing is downloaded). In a
search it *is* the target: ``space.target``'s layers, heads, KV heads and head size must be the
model's, and so must the proxy's layers and heads (nothing is trained). Two lengths: the candidate
runs inside the model at the calibration length ``space.proxy.n`` (within the model's context:
quality is measured there), while its cost and KV cache are measured at the deployment length
``space.target.n`` (which may exceed the context), so a pattern that saves at deployment is not
charged for the kernel's fixed costs at a short calibration length. The dense model runs once per
process over the calibration sequences (``search.calibrate_data``) and its outputs are kept; each
candidate then runs the same model through ``patternc.hf.sparsify`` (our block-sparse kernel on the
CPU, FlexAttention on CUDA) and is compared with them at the scored positions:

- ``metric: kl`` (default): quality retained = exp(-KL), KL(dense || sparse) of the next-token
  distributions, averaged over the scored positions. It is 1 exactly when the sparse model gives
  the dense model's distributions and falls towards 0 as they part; 0.99 is a loss of 0.01 nats
  per position. Where the dense model is sure of its answer, exp(-KL) is about the probability the
  sparse model still gives that answer (a geometric mean over positions). It needs no labels and
  never exceeds 1, which a ratio of losses against the data can (a pattern can be lucky).
- ``metric: nll``: quality retained = exp(NLL_dense - NLL_sparse) = perplexity_dense /
  perplexity_sparse, against the data's own next tokens (can exceed 1; for data the model was not
  trained on, where its own distribution is not the thing to keep).

Per bucket (distance for MQAR, position quarter for a token file) the gap is averaged and mapped
the same way; the search maximises their mean (``EvalResult.score``), so the far bucket weighs as
much as the near one. A pattern whose layout at n is dense causal is the dense model: it retains
exactly 1.0 and is not run (the kernel would only add rounding). The result's ``extra`` holds the
mean KL, both NLLs and both models' accuracy on the targets.

>>> r = calibrate("causal & (sink(4) | window(512))", CalibrateConfig(model="outputs/calibration_demo/model"))
... # doctest: +SKIP
>>> r.score, r.extra["kl"]                                                            # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

import patternc
from patternc import CompiledPattern, resolve_device
from search.calibrate_data import CalibrationData, load_data
from search.calibrate_model import check_model, load_model, read_config
from search.config import DTYPES, ModelConfig, SpaceConfig
from search.errors import ConfigError
from search.evaluate import EvalResult, _threads, describe, resolve_pattern
from search.validate import backend_choice

__all__ = ["METRICS", "CalibrateConfig", "calibrate", "check_calibration", "check_calibration_space"]

METRICS = ("kl", "nll")
DENSE_LIMIT = 1 << 28  # float32 log-probabilities of the dense model kept for KL (1 GiB)


@dataclass
class CalibrateConfig:
    """``task=calibrate`` (``conf/task/calibrate.yaml``): score patterns on a pretrained model."""

    name: str = "calibrate"
    n: int = 4096  # calibration length; a search calibrates at space.proxy.n (the spaces: task.n)
    model: str = ""  # a save_pretrained directory (config.json and the weights), or a llama2.c .bin file
    data: str = "mqar"  # a .npy / .txt file of token ids, or a proxy task (mqar, majority, hops)
    generator: dict[str, Any] = field(default_factory=dict)  # that task's settings, e.g. {pairs: 64}
    sequences: int = 4  # calibration sequences of n tokens
    batch: int = 1  # sequences per forward pass
    metric: str = "kl"  # kl (against the dense model's outputs) or nll (against the data's tokens)
    dtype: str = "float32"  # the model's weights and activations, one of search.config.DTYPES
    device: str = "cpu"  # where the model runs: cpu, or cuda (FlexAttention with our BlockMask)
    threads: int | None = None  # torch threads; None keeps the process's setting
    backend: str = "auto"  # patternc.hf backend: auto, kernel, flex, sdpa (patternc.kernels)
    # the calibration length may pass the model's context (max_position_embeddings) only when asked:
    # positions it never saw in training measure the model's extrapolation as much as the pattern
    past_context: bool = False


# ---- checks (search.scorer.Calibrate calls these at start-up) ---------------------------------------

def _model_config(cfg: CalibrateConfig, prefix: str):
    """The model's text config (layers, heads, vocabulary), read without loading the weights."""
    return _full_config(cfg, prefix).get_text_config(decoder=True)


def _full_config(cfg: CalibrateConfig, prefix: str):
    """The model's whole transformers config (a directory's ``config.json``, a llama2.c file's header)."""
    return read_config(cfg.model, prefix)


def _check_context(cfg: CalibrateConfig, config, n: int, key: str) -> None:
    """A calibration length ``n`` (the value of ``key``) within the model's context, or ``past_context``."""
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and n > context and not cfg.past_context:
        raise ConfigError(f"{key} = {n} is longer than the model's context (config.max_position_embeddings "
                          f"= {context} in {cfg.model}): lower it, or set task.past_context=true to "
                          f"calibrate at positions the model was not trained on")


def _shape(config) -> dict[str, int]:
    heads = config.num_attention_heads
    return {"layers": config.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads}


def check_calibration(cfg: CalibrateConfig, prefix: str = "task.", devices: bool = True) -> None:
    """Every value of ``cfg`` before any work: the settings, the model directory (its weights
    against its config, ``search.calibrate_weights``) and the data (its size, its dtype, its length
    against ``n``, its ids against the model's vocabulary)."""
    def count(low: int):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low

    rules = [("n", count(8), "an integer >= 8"), ("sequences", count(1), "an integer >= 1"),
             ("batch", count(1), "an integer >= 1"),
             ("metric", lambda v: v in METRICS, "one of " + ", ".join(METRICS)),
             ("dtype", lambda v: v in DTYPES, "one of " + ", ".join(DTYPES)),
             ("threads", lambda v: v is None or count(1)(v), "null or an integer >= 1"),
             ("past_context", lambda v: isinstance(v, bool), "true or false")]
    for key, test, needs in rules:
        if not test(getattr(cfg, key)):
            raise ConfigError(f"{prefix}{key} must be {needs}, got {getattr(cfg, key)!r}")
    cfg.backend = backend_choice(cfg.backend, f"{prefix}backend")
    if devices:
        resolve_device(cfg.device, where=f"{prefix}device")
    full = _full_config(cfg, prefix)
    config = full.get_text_config(decoder=True)
    _check_context(cfg, config, cfg.n, f"{prefix}n")
    check_model(cfg.model, full, prefix)
    calibration_data(cfg, config.vocab_size, seed=0)


def check_calibration_space(cfg: CalibrateConfig, space: SpaceConfig) -> None:
    """The space's target must be the model; its proxy is the model too (nothing is trained), at the
    calibration length ``space.proxy.n``, within the model's context: quality is measured there,
    while cost and the KV cache are the target's, at the deployment length ``space.target.n``
    (which may exceed the context: nothing runs the model there)."""
    config = _model_config(cfg, "task.")
    model = _shape(config)
    target = {key: getattr(space.target, key) for key in model}
    if target["kv_heads"] is None:
        target["kv_heads"] = target["heads"]
    wrong = [key for key in model if target[key] != model[key]]
    if wrong:
        raise ConfigError("task=calibrate runs the space's target stack inside the model, but "
                          + ", ".join(f"space.target.{key} = {target[key]}" for key in wrong)
                          + f" while the model {cfg.model} has "
                          + ", ".join(f"{key} = {model[key]}" for key in wrong)
                          + ": set " + " ".join(f"space.target.{key}={model[key]}" for key in wrong))
    proxy = [key for key in ("layers", "heads") if getattr(space.proxy, key) != getattr(space.target, key)]
    if proxy:
        raise ConfigError("task=calibrate trains no proxy: the model is scored under the target's stack, so "
                          + ", ".join(f"space.proxy.{key} = {getattr(space.proxy, key)} must equal "
                                      f"space.target.{key} = {getattr(space.target, key)}" for key in proxy))
    # the calibration length: the deployment length space.target.n may exceed the context (cost is
    # measured there, the model never runs there)
    _check_context(cfg, config, space.proxy.n, "space.proxy.n")


# ---- the model, the data and the dense outputs, each loaded once per process -----------------------

@lru_cache(maxsize=2)
def _model(path: str, dtype: str, device: str):
    return load_model(path, getattr(torch, dtype)).to(device).eval()


def _data_key(cfg: CalibrateConfig, vocab: int, seed: int) -> tuple:
    return (cfg.data, cfg.n, cfg.sequences, repr(sorted(cfg.generator.items())), vocab, seed)


_DATA: dict[tuple, CalibrationData] = {}  # the last data set drawn or read


def calibration_data(cfg: CalibrateConfig, vocab: int, seed: int) -> CalibrationData:
    """The calibration sequences of ``cfg`` (drawn or read once per process)."""
    key = _data_key(cfg, vocab, seed)
    if key not in _DATA:
        _DATA.clear()  # one run calibrates on one data set: keep no stale arrays
        _DATA[key] = load_data(cfg, vocab, seed)
    return _DATA[key]


@dataclass(frozen=True)
class _Outputs:
    """One model's outputs at the scored positions: log-probabilities (P, V) (None unless KL needs
    them), the log-probability of each target (P,) and whether its top guess is the target (P,)."""

    log_probs: torch.Tensor | None
    target_log_prob: torch.Tensor
    hits: torch.Tensor


_DENSE: dict[tuple, tuple[_Outputs, float]] = {}  # the dense model's outputs on it, and their seconds


@torch.no_grad()
def _outputs(model, data: CalibrationData, batch: int, keep: bool) -> _Outputs:
    device = next(model.parameters()).device
    parts: list[_Outputs] = []
    for start in range(0, len(data.tokens), batch):
        tokens = torch.from_numpy(data.tokens[start:start + batch]).to(device)  # (b, n)
        scored = torch.from_numpy(data.scored[start:start + batch]).to(device)  # (b, n)
        targets = torch.from_numpy(data.targets[start:start + batch]).to(device)[scored]  # (p,)
        logits = model(tokens, use_cache=False).logits[scored].float()  # (p, V)
        log_probs = torch.log_softmax(logits, dim=-1)
        parts.append(_Outputs(log_probs.cpu() if keep else None,
                              log_probs.gather(1, targets[:, None])[:, 0].cpu(),
                              (logits.argmax(-1) == targets).cpu()))
    return _Outputs(torch.cat([p.log_probs for p in parts]) if keep else None,
                    torch.cat([p.target_log_prob for p in parts]), torch.cat([p.hits for p in parts]))


def _dense(cfg: CalibrateConfig, device: str, data_key: tuple,
           data: CalibrationData) -> tuple[_Outputs, float]:
    """The dense model's outputs on the data and the seconds they took, computed once per process."""
    key = (cfg.model, cfg.dtype, device, cfg.batch, cfg.metric, data_key)
    if key not in _DENSE:
        _DENSE.clear()
        start = time.perf_counter()
        outputs = _outputs(_model(cfg.model, cfg.dtype, device), data, cfg.batch, cfg.metric == "kl")
        _DENSE[key] = outputs, time.perf_counter() - start
    return _DENSE[key]


# ---- one evaluation ---------------------------------------------------------------------------------

def _stack_of(pattern, params: dict | None, shape: dict[str, int], n: int) -> CompiledPattern:
    """The pattern compiled at the calibration length with the model's layers and heads."""
    if isinstance(pattern, CompiledPattern):  # a search trial: compiled at space.proxy.n
        if pattern.n != n:
            raise ConfigError(f"the pattern is compiled at n = {pattern.n} but the calibration length is {n}")
        return pattern
    stack = resolve_pattern(pattern, ModelConfig(layers=shape["layers"], heads=shape["heads"]))
    return patternc.compile(stack, n, params=params)


def _is_dense_causal(cp: CompiledPattern) -> bool:
    """Every head allows exactly the causal pairs: the model under it is the dense model."""
    return cp.causal and all(s.allowed_pairs == cp.n * (cp.n + 1) // 2 for s in cp.stats().per_head)


def calibrate(pattern, cfg: CalibrateConfig, seed: int = 0, params: dict | None = None,
              promote: Any = None) -> EvalResult:
    """Quality retained by ``pattern`` on ``cfg.model`` (``score``, per bucket in ``buckets``), with
    the detail in ``extra``. ``pattern``: what ``search.evaluate`` takes (an expression, a stack
    file or ``Stack``, a ``PatternConfig``, a ``CompiledPattern`` at ``cfg.n``); ``promote`` is
    accepted for ``search.evaluate``'s signature and unused (nothing trains, nothing is screened).

    >>> calibrate("causal", CalibrateConfig(model="outputs/calibration_demo/model")).score  # doctest: +SKIP
    1.0
    """
    import patternc.hf

    check_calibration(cfg, prefix="task.")
    config = _model_config(cfg, "task.")
    shape = _shape(config)
    data_key = _data_key(cfg, config.vocab_size, seed)
    data = calibration_data(cfg, config.vocab_size, seed)
    scored = int(data.scored.sum())
    if cfg.metric == "kl" and scored * config.vocab_size > DENSE_LIMIT:
        raise ConfigError(f"task.metric=kl keeps the dense model's log-probabilities at every scored "
                          f"position: {scored:,} x {config.vocab_size:,} floats is over {DENSE_LIMIT:,}; "
                          "lower task.sequences, or use task.metric=nll")
    device = str(resolve_device(cfg.device, where="task.device"))
    cp = _stack_of(pattern, params, shape, cfg.n)
    with _threads(cfg.threads) as threads:
        model = _model(cfg.model, cfg.dtype, device)
        dense, dense_seconds = _dense(cfg, device, data_key, data)
        start = time.perf_counter()
        ran = not _is_dense_causal(cp)
        if ran:
            patternc.hf.sparsify(model, cp.stack, block=cp.block, params=dict(cp.params), backend=cfg.backend)
            try:
                sparse = _outputs(model, data, cfg.batch, cfg.metric == "kl")
            finally:
                patternc.hf.densify(model)
        else:
            sparse = dense
        seconds = time.perf_counter() - start
    fields = _compare(cfg, data, dense, sparse)
    fields["extra"].update(dense_seconds=round(dense_seconds, 3), ran=ran)
    return EvalResult(**fields, eval_seconds=seconds, layers=shape["layers"], heads=shape["heads"],
                      parameters=sum(p.numel() for p in model.parameters()), seed=seed, threads=threads,
                      pattern=_describe(cp.stack))


def _compare(cfg: CalibrateConfig, data: CalibrationData, dense: _Outputs, sparse: _Outputs) -> dict:
    """The comparison's fields of an ``EvalResult``: quality retained overall and per bucket,
    exp(-mean gap), the gap being KL(dense || sparse) or NLL_sparse - NLL_dense per position."""
    if cfg.metric == "kl":  # per position, summed over the vocabulary; rounding can make it -1e-9
        gap = torch.nn.functional.kl_div(sparse.log_probs, dense.log_probs, log_target=True,
                                         reduction="none").sum(-1).clamp(min=0.0)  # (P,)
    else:
        gap = dense.target_log_prob - sparse.target_log_prob  # (P,)
    buckets = torch.from_numpy(data.buckets[data.scored])  # (P,)
    by_bucket, counts = {}, {}
    for index, name in enumerate(data.bucket_names):
        at = buckets == index
        counts[name] = int(at.sum())
        by_bucket[name] = math.exp(-float(gap[at].mean())) if counts[name] else None
    extra = {"metric": cfg.metric, "kl": float(gap.mean()) if cfg.metric == "kl" else None,
             "nll": -float(sparse.target_log_prob.mean()), "dense_nll": -float(dense.target_log_prob.mean()),
             "target_accuracy": float(sparse.hits.float().mean()),
             "dense_target_accuracy": float(dense.hits.float().mean()),
             "positions": len(gap), "data": data.source, "model": cfg.model, "backend": cfg.backend}
    return {"status": "ok", "accuracy": math.exp(-float(gap.mean())), "buckets": by_bucket,
            # no chance level (nothing is guessed), no training
            "bucket_counts": counts, "chance": None, "loss_curve": [], "steps": 0, "train_seconds": 0.0,
            "task": cfg.name, "n": cfg.n, "extra": extra}


def _describe(stack) -> str:
    return stack.description or describe(stack)

"""A sparsified model's ``generate()`` against the same model's dense ``generate()``: prefill time,
decode time per token, the KV cache held at the end and the peak memory of the process.

A tiny random Llama (4 layers x 8 heads x d 64, 8 KV heads, float32) reads the same prompt of
4k, 16k and 64k tokens and decodes greedily, once dense (its own SDPA attention and transformers'
``DynamicCache``) and once under each pattern (``patternc.hf.sparsify``: a ``PatternCache`` that
holds only the keys the pattern still reads, the prompt prefilled in chunks of
``patternc.hf.PREFILL_CHUNK``). Each run is a fresh subprocess, so its peak RSS is its own.

Per run: prefill seconds, decode ms/token (median over the steps), the part of it spent in the
attention modules (projections, rotary, cache and kernel), the KV bytes held at the end (dense:
the ``DynamicCache``'s tensors; sparse: ``PatternCache.memory().held_bytes``) and peak RSS. Per
pattern and prompt, against dense: the decode speedup, the keys a decode step reads (dense: every
key; the pattern: the keys its last row allows, per layer and head) whose ratio is the bandwidth
ideal, the speedup as a fraction of it, the same ideal once the weights every step reads are
counted (the most a whole decode step can gain), and the KV held against dense and against
``patternc.kv``'s prediction at the generation's length.

Targets (from the issue), checked and printed at the end:

- pattern (a) at 16k: KV held <= 1.1x ``patternc.kv``'s figure and <= 0.06 of dense;
- pattern (a) at 16k: decode >= 5x faster than dense and >= 0.6 of the bandwidth ideal;
- every pattern and prompt: decode no more than 10% slower than dense;
- pattern (a): peak RSS at a 64k prompt <= 1.5x that at a 4k prompt.

    python benchmarks/generate_speed.py                 # 4k, 16k, 64k (dense and (c) at 64k: --long)
    python benchmarks/generate_speed.py --quick         # 4k and 16k, 16 decode steps
    python benchmarks/generate_speed.py --lengths 65536 --patterns a --no-dense   # one sparse run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import transformers

import patternc
import patternc.hf
from patternc.machine import cpu_model

PATTERNS = {  # name -> (description, layers x heads spec as data: default and per-head overrides)
    "a": ("window 512 + 4 sinks", "causal & (sink(4) | window(512))", ()),
    "b": ("per head: + 64 global / 3 global tokens", "causal & (sink(4) | window(512))",
          (("causal & (global(64) | window(512))", (4, 6)),  # under causal, global(64) keeps keys < 64
           ("causal & (sink(4) | window(512) | tokens([100, 500, 1000]))", (6, 8)))),  # prompts > 1,000
    "c": ("window 512 + stride 128 (keeps every key)", "causal & (window(512) | stride(128))", ()),
}
NOTES = {
    "c": "stride(128) reads every key again 128, 256, ... tokens later, so the cache keeps every key a "
         "later query of the generation reads, which is every key while a long prompt is prefilled in "
         "chunks (its peak is the dense cache's): it saves compute (a decode step reads ~512 + n/128 keys), "
         "not memory. It holds less at the end only because the cache knows where the generation ends: in "
         "its last 127 tokens, a key whose next stride reader lies past the end is evicted",
}
QUADRATIC = {"c"}  # stride(128) touches every 128 x 128 block: its prefill costs what dense's does
LONG = 32768  # prompts past this run dense and QUADRATIC patterns only with --long (minutes of prefill)
LAYERS, HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE = 4, 8, 8, 64, 512, 1024
SEED = 0
MARK = "RESULT "  # a child's one line of JSON on stdout


# ---- the model and the pattern ---------------------------------------------------------------------


def build_model(vocab: int):
    """The tiny random Llama, float32, eval; the same weights for every run (seeded)."""
    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        num_hidden_layers=LAYERS, intermediate_size=INTERMEDIATE, vocab_size=vocab,
        max_position_embeddings=70000, pad_token_id=None, bos_token_id=None,
        eos_token_id=None)  # no end token: generate() never stops early
    return transformers.LlamaForCausalLM(config).to(torch.float32).eval()


def stack_of(name: str):
    _, default, overrides = PATTERNS[name]
    return patternc.Stack(default, layers=LAYERS, heads=HEADS,
                          overrides=tuple(patternc.Override(expr, heads=heads) for expr, heads in overrides))


def pattern_figures(name: str, n: int) -> dict:
    """What the pattern at the generation's length ``n`` predicts: ``patternc.kv``'s bytes (float32)
    and the keys the last row reads, summed over layers and heads (a decode step's reads)."""
    cp = patternc.compile(stack_of(name), n=n)
    report = patternc.kv(cp, kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype="float32")
    keys = np.arange(n)
    last = np.array([[n - 1]])
    reads = sum(int(np.broadcast_to(cp.node(l, h).predicate(last, keys[None, :]), (1, n)).sum())
                for l in range(LAYERS) for h in range(HEADS))
    return {"kv_bytes": report.bytes, "last_row_keys": reads, "dense_keys": LAYERS * HEADS * n}


# ---- one run, in its own process ---------------------------------------------------------------------


class Stamps:
    """A logits processor that stamps the time of each generated token. generate() calls it once per
    step, right after that step's forward, so the first stamp ends the prefill (the prompt's forward,
    every chunk of it, and the first token's logits) and each later gap is one decode step with
    generate()'s own bookkeeping, the same dense and sparse. One generate() gives both figures:
    timing a separate max_new_tokens=1 call would prefill twice and double the run."""

    def __init__(self, attention: list[float]) -> None:
        self.times: list[float] = []
        self.attention = attention  # seconds in the attention modules, summed since the last stamp
        self.attention_per_step: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        self.attention_per_step.append(self.attention[0])
        self.attention[0] = 0.0
        return scores


def time_attention(model, total: list[float]) -> None:
    """Add the seconds each self-attention module runs (projections, rotary, cache, kernel) to total[0]."""
    started: dict[int, float] = {}

    def before(module, args, kwargs):
        started[id(module)] = time.perf_counter()

    def after(module, args, kwargs, output):
        total[0] += time.perf_counter() - started.pop(id(module))

    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(before, with_kwargs=True)
        layer.self_attn.register_forward_hook(after, with_kwargs=True)


def peak_rss() -> int:
    """This process's peak resident bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(job: dict) -> dict:
    """One generation: ``job`` names the pattern (None: dense), prompt length, steps and mode."""
    torch.set_num_threads(job["threads"])
    model = build_model(job["vocab"])
    prompt = torch.randint(0, job["vocab"], (1, job["prompt"]),
                           generator=torch.Generator().manual_seed(SEED + 1))
    result: dict = {}
    if job["pattern"] is not None:
        patternc.hf.sparsify(model, stack_of(job["pattern"]))
        start = time.perf_counter()  # the pattern compiled at the generation's length, and kv()
        patternc.hf.PatternCache(model, job["prompt"] + job["new"])  # warms the compile generate() reuses
        result["setup_s"] = time.perf_counter() - start
    else:
        model.set_attn_implementation("sdpa")
    attention = [0.0]
    time_attention(model, attention)
    stamps = Stamps(attention)
    kwargs = dict(max_new_tokens=job["new"], min_new_tokens=job["new"], do_sample=False,
                  logits_processor=transformers.LogitsProcessorList([stamps]), return_dict_in_generate=True)
    if job["mode"] == "uncached":  # the reference for the tokens: every step recomputes the sequence
        kwargs["use_cache"] = False
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(prompt, **kwargs)
    steps = np.diff(stamps.times)
    result.update(
        tokens=out.sequences[0, job["prompt"]:].tolist(),
        prefill_s=stamps.times[0] - start,
        decode_ms=1e3 * float(np.median(steps)) if len(steps) else None,
        attention_ms=1e3 * statistics.median(stamps.attention_per_step[1:]) if len(steps) else None,
        peak_rss=peak_rss(), load=os.getloadavg()[0])
    cache = out.cache
    if job["mode"] == "cached" and job["pattern"] is None:  # DynamicCache: every key of every layer
        result["kv_bytes"] = result["kv_peak"] = sum(t.numel() * t.element_size() for layer in cache.layers
                                                     for t in (layer.keys, layer.values))
    elif job["mode"] == "cached":
        memory = cache.memory()
        per_key = 2 * HEAD_DIM * model.dtype.itemsize  # K and V
        result.update(kv_bytes=memory.held_bytes, kv_allocated=memory.allocated_bytes,
                      kv_peak=per_key * sum(map(sum, memory.peak_keys)),  # keys, not whole pages
                      kv_dense=memory.dense_bytes, cache=type(cache).__name__)
    return result


def spawn(job: dict, timeout: float) -> dict:
    """``run_child`` in a fresh interpreter; {'error': ...} when it fails."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                          text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-12:]}


# ---- the tables ------------------------------------------------------------------------------------------


def weight_bytes(vocab: int) -> int:
    """Bytes of the weights one decode step reads (float32): every projection and the LM head."""
    per_layer = 4 * HIDDEN * HEADS * HEAD_DIM + 3 * HIDDEN * INTERMEDIATE
    return 4 * (LAYERS * per_layer + HIDDEN * vocab)


def dense_fits(length: int, new: int) -> tuple[bool, str]:
    """Whether a dense generation of ``length`` tokens fits in the memory available now: its KV cache,
    the prompt's activations, and an (n, n) boolean mask in case SDPA is given one."""
    n = length + new
    kv = LAYERS * KV_HEADS * n * 2 * HEAD_DIM * 4
    activations = length * (8 * HIDDEN + 3 * INTERMEDIATE) * 4 + length * length
    available = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    need = kv + activations
    return need < 0.8 * available, f"needs ~{need / 2**30:.1f} GiB of {available / 2**30:.1f} GiB available"


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4k and 16k prompts, 16 decode steps")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths in tokens")
    parser.add_argument("--patterns", nargs="+", choices=list(PATTERNS), default=list(PATTERNS))
    parser.add_argument("--steps", type=int, default=None, help="decode steps timed (default 32, quick 16)")
    parser.add_argument("--vocab", type=int, default=32000, help="Llama's; the LM head is read every step")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (1 on a machine other jobs share: a descheduled thread stalls a "
                             "2-thread step by a whole time slice, so a loaded machine slows it many times)")
    parser.add_argument("--long", action="store_true",
                        help="run dense and pattern (c) at prompts over 32k too: their prefill is quadratic "
                             "(about 10 minutes each at 64k on 2 cores)")
    parser.add_argument("--no-dense", action="store_true", help="sparse runs only")
    parser.add_argument("--check-lengths", type=int, nargs="*", default=[4096],
                        help="prompts whose sparse greedy tokens are checked against use_cache=False")
    parser.add_argument("--check-steps", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    args = parser.parse_args()
    if args.child:
        print(MARK + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    lengths = args.lengths or ([4096, 16384] if args.quick else [4096, 16384, 65536])
    steps = args.steps or (16 if args.quick else 32)
    new = steps + 1  # the first token ends the prefill; the next `steps` are timed decode steps
    base = dict(vocab=args.vocab, threads=args.threads, new=new, mode="cached")
    print(f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, {args.threads} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"Llama {LAYERS} layers x {HEADS} heads x d {HEAD_DIM} ({KV_HEADS} KV heads), hidden {HIDDEN}, "
          f"vocab {args.vocab}, float32, batch 1; {steps} greedy decode steps (median); sparse prefill in "
          f"chunks of {patternc.hf.PREFILL_CHUNK}, dense in one pass")
    for name in args.patterns:
        print(f"  ({name}) {PATTERNS[name][0]}: {PATTERNS[name][1]}"
              + "".join(f"; heads {a}:{b}: {e}" for e, (a, b) in PATTERNS[name][2]))
    print()
    header = (f"{'run':<10} {'prompt':>7} {'prefill s':>10} {'setup s':>8} {'decode ms':>10} {'attn ms':>8} "
              f"{'KV MiB':>8} {'KV peak':>8} {'peak RSS MiB':>13} {'load':>5}")
    print(header)
    runs: dict[tuple[str | None, int], dict] = {}
    skipped: list[str] = []
    busy = (os.cpu_count() or 1) - args.threads + 1  # more runnable work than CPUs: our threads wait

    def row(label: str, length: int, r: dict) -> None:
        if "error" in r:
            print(f"{label:<10} {length:>7,} FAILED:\n    " + "\n    ".join(r["error"]), flush=True)
            return
        print(f"{label:<10} {length:>7,} {r['prefill_s']:>10.2f} {fmt(r.get('setup_s'), '.2f'):>8} "
              f"{fmt(r['decode_ms'], '.2f'):>10} {fmt(r['attention_ms'], '.2f'):>8} "
              f"{mib(r.get('kv_bytes')):>8} {mib(r.get('kv_peak')):>8} {mib(r['peak_rss']):>13} "
              f"{r['load']:>5.2f}{'*' if r['load'] > busy else ''}", flush=True)

    for length in lengths:
        fits, why = dense_fits(length, new)
        if args.no_dense:
            skipped.append(f"dense at {length:,}: --no-dense")
        elif length > LONG and not args.long:
            skipped.append(f"dense at {length:,}: skipped for time (its prefill is quadratic; --long runs "
                           f"it; {why})")
        elif not fits:
            skipped.append(f"dense at {length:,}: would not fit in memory ({why})")
        else:
            runs[None, length] = spawn(dict(base, pattern=None, prompt=length), args.timeout)
            row("dense", length, runs[None, length])
        for name in args.patterns:
            if length > LONG and name in QUADRATIC and not args.long:
                skipped.append(f"sparse ({name}) at {length:,}: skipped for time (stride(128) touches every "
                               "block, so its prefill is quadratic as dense's; --long runs it)")
                continue
            runs[name, length] = spawn(dict(base, pattern=name, prompt=length), args.timeout)
            row(f"sparse ({name})", length, runs[name, length])
    checks: dict[tuple[str, int], str] = {}
    for length in args.check_lengths or []:
        for name in args.patterns:
            r = runs.get((name, length))
            if r is None or "error" in r:
                continue
            ref = spawn(dict(base, pattern=name, prompt=length, new=args.check_steps, mode="uncached"),
                        args.timeout)
            if "error" in ref:
                checks[name, length] = "FAILED: " + " | ".join(ref["error"][-3:])
                continue
            k = min(args.check_steps, len(r["tokens"]))
            same = sum(a == b for a, b in zip(r["tokens"][:k], ref["tokens"][:k], strict=True))
            checks[name, length] = f"{same}/{k}"
    for line in skipped:
        print(f"  skipped: {line}")
    if any(r.get("load", 0) > busy for r in runs.values()):
        print(f"  *: the load average at the end of the run passed {busy:.0f}: other work shared the CPUs, "
              "and its times are too long (try --threads 1)")

    print()
    print(f"{'pattern':<8} {'prompt':>7} {'speedup':>8} {'attn x':>7} {'keys read':>17} {'ideal':>7} "
          f"{'of ideal':>9} {'attn of':>8} {'step ideal':>11} {'KV/dense':>9} {'KV/kv()':>8} "
          f"{'peak/kv()':>9} {'tokens':>7}")
    weights = weight_bytes(args.vocab)
    verdicts: list[str] = []
    for name in args.patterns:
        for length in lengths:
            r, d = runs.get((name, length)), runs.get((None, length))
            if r is None or "error" in r:
                continue
            fig = pattern_figures(name, length + new)
            ideal = fig["dense_keys"] / fig["last_row_keys"]
            per_key = 2 * HEAD_DIM * 4  # K and V, float32
            step_ideal = ((weights + fig["dense_keys"] * per_key)
                          / (weights + fig["last_row_keys"] * per_key))
            dense_ok = d is not None and "error" not in d
            speedup = d["decode_ms"] / r["decode_ms"] if dense_ok else None
            attn = d["attention_ms"] / r["attention_ms"] if dense_ok else None
            dense_kv = d["kv_bytes"] if dense_ok else r["kv_dense"]
            kv_dense = r["kv_bytes"] / dense_kv
            kv_pred = r["kv_bytes"] / fig["kv_bytes"]
            peak_pred = r["kv_peak"] / fig["kv_bytes"]
            print(f"({name}){'':<5} {length:>7,} {fmt(speedup, '.2f', 'x'):>8} {fmt(attn, '.2f', 'x'):>7} "
                  f"{fig['last_row_keys']:>7,}/{fig['dense_keys']:<9,} {ideal:>6.1f}x "
                  f"{fmt(speedup and speedup / ideal, '.3f'):>9} {fmt(attn and attn / ideal, '.3f'):>8} "
                  f"{step_ideal:>10.2f}x {kv_dense:>9.4f} {kv_pred:>8.3f} {peak_pred:>9.3f} "
                  f"{checks.get((name, length), '-'):>7}", flush=True)
            if name == "a" and length == 16384:
                verdicts.append(_verdict("(a) 16k KV held <= 1.1x patternc.kv", kv_pred, 1.1, "<="))
                verdicts.append(_verdict("(a) 16k KV held <= 0.06 of dense", kv_dense, 0.06, "<="))
                if speedup is not None:
                    verdicts.append(_verdict("(a) 16k decode >= 5x dense", speedup, 5.0, ">="))
                    verdicts.append(_verdict("(a) 16k decode >= 0.6 of the bandwidth ideal", speedup / ideal,
                                             0.6, ">="))
            if speedup is not None:
                verdicts.append(_verdict(f"({name}) {length:,} decode not >10% slower than dense", speedup,
                                         1 / 1.1, ">="))
    small, large = runs.get(("a", 4096)), runs.get(("a", 65536))
    if small and large and "error" not in small and "error" not in large:
        verdicts.append(_verdict("(a) peak RSS at 64k <= 1.5x at 4k", large["peak_rss"] / small["peak_rss"],
                                 1.5, "<="))
    print()
    print("keys read: per decode step, the keys the last row allows / every key (summed over layers and "
          "heads); ideal: their ratio; of ideal: decode speedup / ideal; attn x: speedup of the attention "
          "modules alone; step ideal: the ideal once the weights a step reads "
          f"({weights / 2**20:.0f} MiB) are counted too; KV: held at the end (whole pages) against dense's "
          "and patternc.kv's; peak/kv(): the most keys held at once against patternc.kv's figure; tokens: "
          "greedy tokens equal to use_cache=False's")
    for name in args.patterns:
        if name in NOTES:
            print(f"note ({name}): {NOTES[name]}")
    for line in verdicts:
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _verdict(what: str, value: float, target: float, op: str) -> str:
    ok = value <= target if op == "<=" else value >= target
    return f"{'PASS' if ok else 'MISS'} {what}: {value:.3f} (target {op} {target:.3g})"


if __name__ == "__main__":
    main()

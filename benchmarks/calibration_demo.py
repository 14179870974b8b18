"""The training-free calibration search, end to end, offline: train a small Llama densely, save it,
search its sparse patterns without training, print the front next to the classic patterns.

    python benchmarks/calibration_demo.py                      # train (if needed), then search
    python benchmarks/calibration_demo.py --retrain --trials 24 --space duo_attention
    python benchmarks/calibration_demo.py --model stories260K  # a real pretrained model (below)

1. A 2-layer Llama (hidden 128, 2 heads of 64, so that cost is measured at a real head size) is
   trained densely on MQAR (``search.tasks.mqar``): 500 steps at n = 256, where a step is cheap,
   then 60 at the calibration length n = 4,096 with distances up to 4,095, so the model reads
   keys thousands of tokens back (about 8 minutes on 2 idle cores, 19 under load 3-5; it answers
   about a quarter of the queries at 4,096, chance 1/32). It is saved with ``save_pretrained``
   under ``outputs/calibration_demo/model`` (kept: a rerun searches again without training).
2. ``patternc-search task=calibrate task.model=outputs/calibration_demo/model space=<space>``
   runs a short study (the space's classic references first), with the same generator settings
   as the training's second phase for the calibration sequences.
3. The script prints the dense model's own accuracy, one calibration evaluation's time, every
   reference's quality retained and measured cost, and the front.

``--model stories260K`` calibrates instead a real pretrained model nobody here trained: Karpathy's
stories260K (llama2.c, MIT; ``tests/data/stories260K``: 5 layers, 8 query heads of 8 over 4 KV
heads, context 512), read from its ``.bin`` by ``patternc.hf.load_llama2c``. With no tokenizer at
hand, its calibration data are its own samples: ``--sequences`` sequences of 512 tokens drawn at
temperature 1 from BOS (seeded, kept under ``outputs/calibration_demo/stories260K``). It prints
where the dense model's attention goes, the classic patterns' quality retained at n = 512 (every
layer), one pattern in one layer at a time and in the last layers (the others dense), then a
``duo_attention`` search on it (``--trials 0``: none), quality at n = 512 and cost and KV cache at
the deployment length, 4,096 tokens.

Quote the CPU (``lscpu``) and ``uptime`` with the figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

import patternc

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.config import MQARConfig  # noqa: E402
from search.tasks import IGNORE, make_task  # noqa: E402

OUT = ROOT / "outputs" / "calibration_demo"
KEYS, VALUES = 64, 32  # the vocabulary: filler, 64 keys, 32 values (both phases, and the calibration)
N = 4096  # the calibration length
# (n, pairs, distances, steps, batch, lr): recall is learnt short, then stretched to the full length
PHASES = ((256, 16, [2, 16, 64, 256], 500, 32, 3e-3),
          (N, 64, [2, 64, 512, N], 60, 4, 1e-3))
GENERATOR = {"pairs": 64, "keys": KEYS, "values": VALUES, "distances": [2, 64, 512, N]}  # = phase 2


def model_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=1 + KEYS + VALUES, hidden_size=128, intermediate_size=512,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=N, rope_theta=10000.0, attention_dropout=0.0,
                       pad_token_id=0, bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")


def _loss(model, tokens: np.ndarray, labels: np.ndarray):
    """Cross-entropy at the answer positions (the task's labels are already the next token there)."""
    logits = model(torch.from_numpy(tokens), use_cache=False).logits  # (B, n, V)
    target = torch.from_numpy(labels)  # (B, n)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
    hits = (logits.argmax(-1) == target)[target != IGNORE].float().mean()
    return loss, float(hits)


def train(out: pathlib.Path, seed: int = 0) -> None:
    """Train the demonstration model densely (both phases) and save it to ``out``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config())
    rng = np.random.default_rng([seed, 7])
    for n, pairs, distances, steps, batch, lr in PHASES:
        task = make_task(MQARConfig(n=n, pairs=pairs, keys=KEYS, values=VALUES, distances=distances))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        warmup = max(1, steps // 10)
        def rate(s: int, w: int = warmup, t: int = steps) -> float:  # linear warm-up, cosine decay
            return min(1.0, (s + 1) / w) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / t)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
        start, recent = time.perf_counter(), []
        for step in range(steps):
            data = task.batch(rng, batch)
            loss, acc = _loss(model.train(), data.tokens, data.labels)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            recent.append(acc)
            if (step + 1) % max(1, steps // 10) == 0:
                print(f"  n = {n}: step {step + 1}/{steps}, loss {loss.item():.3f}, "
                      f"accuracy {np.mean(recent):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
                recent = []
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    print(f"saved {out}")


def one_evaluation(model_dir: pathlib.Path, sequences: int) -> None:
    """Time one calibration evaluation at n = 4,096 (the dense pass first, which a run does once)."""
    from search.calibrate import CalibrateConfig, calibrate

    cfg = CalibrateConfig(model=str(model_dir), n=N, generator=dict(GENERATOR), sequences=sequences)
    dense = calibrate("causal", cfg)
    start = time.perf_counter()
    r = calibrate("causal & (sink(4) | window(512))", cfg)
    total = time.perf_counter() - start
    print(f"dense model: answer accuracy {dense.extra['dense_target_accuracy']:.3f} on "
          f"{r.extra['positions']} answers ({sequences} sequences of n = {N}); its pass took "
          f"{r.extra['dense_seconds']:.1f} s (once per run)")
    print(f"one calibration evaluation at n = {N} (StreamingLLM sink(4) + window(512)): {total:.1f} s wall "
          f"({r.eval_seconds:.1f} s in the sparse model), quality retained {r.score:.4f}, buckets "
          + ", ".join(f"{k}: {v:.3f}" for k, v in r.buckets.items()))


def search(model_dir: pathlib.Path, args) -> None:
    """``patternc-search task=calibrate`` on the model (a fresh study), then its trials as a table."""
    run_dir = OUT / args.space
    shutil.rmtree(run_dir, ignore_errors=True)
    generator = "{" + ", ".join(f"{k}: {v}" for k, v in GENERATOR.items()).replace("'", "") + "}"
    command = [str(pathlib.Path(sys.executable).with_name("patternc-search")), "task=calibrate",
               f"task.model={model_dir}", f"task.generator={generator}", f"task.sequences={args.sequences}",
               f"space={args.space}", f"search.n_trials={args.trials}",
               f"search.storage=sqlite:///{run_dir}/study.db", f"hydra.run.dir={run_dir}", *args.overrides]
    _run_and_tabulate(command, run_dir, args.trials)


def _run_and_tabulate(command: list[str], run_dir: pathlib.Path, trials: int) -> None:
    """Run the search command, then print its completed trials, references first, by cost."""
    print("$ " + " ".join(c if " " not in c else repr(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"search: {time.perf_counter() - start:.0f} s for {trials} trials")
    with open(run_dir / "trials.csv", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["state"] == "COMPLETE"]
    best = max((r for r in rows if r["cost"] and float(r["cost"]) <= 0.3), key=lambda r: float(r["accuracy"]),
               default=None)
    buckets = [c for c in rows[0] if c.startswith("bucket_")] if rows else []
    print(f"\n{'trial':>5}  {'reference':<20} {'quality':>8} {'cost':>6} {'density':>7}  "
          + " ".join(f"{b.removeprefix('bucket_'):>9}" for b in buckets) + "  pattern")
    for row in sorted(rows, key=lambda r: (not r["reference"], float(r["cost"]))):
        print(f"{row['number']:>5}  {row['reference'] or '':<20} {float(row['accuracy']):8.4f} "
              f"{float(row['cost']):6.3f} {float(row['density']):7.3f}  "
              + " ".join(f"{float(row[b]):9.3f}" if row[b] else f"{'':>9}" for b in buckets)
              + f"  {row['expression']}")
    if best is None:
        print("\nno trial measured at <= 0.3x dense cost")
    else:
        print(f"\nbest at <= 0.3x dense cost: trial {best['number']}, quality retained "
              f"{float(best['accuracy']):.4f} at {float(best['cost']):.3f}x: {best['expression']}")
    print(f"report: {run_dir}/summary.md")


STORIES = ROOT / "tests" / "data" / "stories260K" / "stories260K.bin"
STORIES_N = 512  # its context: it was trained on sequences of 512 tokens
STORIES_DEPLOYED_N = 4096  # where its search measures cost: at 512 tokens a kernel's fixed costs dominate
# the classic patterns at its context, windows scaled to n = 512 (the conf/pattern files' are for 4k-8k)
STORIES_CLASSICS = (
    ("dense causal", "causal"),
    ("sliding window 64", "causal & window(64)"),
    ("sliding window 128", "causal & window(128)"),
    ("sliding window 256", "causal & window(256)"),
    ("StreamingLLM 4 + 64", "causal & (sink(4) | window(64))"),
    ("StreamingLLM 4 + 128", "causal & (sink(4) | window(128))"),
    ("StreamingLLM 4 + 256", "causal & (sink(4) | window(256))"),
    ("StreamingLLM 64 + 128", "causal & (sink(64) | window(128))"),
    ("Sparse Transformer fixed 64, 8", "causal & fixed(64, 8)"),
)
PER_LAYER = ("causal & (sink(4) | window(64))", "causal & (sink(4) | window(128))")


def stories_samples(sequences: int, seed: int = 0) -> pathlib.Path:
    """``sequences`` x 512 token ids sampled from stories260K at temperature 1 from BOS (token 1),
    saved as .npy (reused by a rerun): in-distribution data for a model without its tokenizer."""
    from patternc.hf import load_llama2c

    path = OUT / "stories260K" / f"samples-{sequences}x{STORIES_N}-seed{seed}.npy"
    if not path.is_file():
        torch.manual_seed(seed)
        start = time.perf_counter()
        bos = torch.ones(sequences, 1, dtype=torch.long)
        ids = load_llama2c(STORIES).generate(bos, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                             max_new_tokens=STORIES_N - 1)  # (sequences, 512)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, ids.numpy())
        print(f"sampled {sequences} x {STORIES_N} tokens from BOS in {time.perf_counter() - start:.0f} s: "
              f"{path}")
    return path


def attention_reach(samples: pathlib.Path) -> None:
    """Where the dense model's attention goes, per layer: its share inside sink(4) + window(64), and
    the entropy of each query's weights over log(keys) (1: uniform over the past, 0: one key)."""
    from patternc.hf import load_llama2c

    model = load_llama2c(STORIES)
    model.set_attn_implementation("eager")  # the weights themselves
    ids = torch.from_numpy(np.load(samples))
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions  # per layer (B, H, n, n)
    n = ids.shape[1]
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    kept = torch.from_numpy((k <= q) & ((k < 4) | (q - k < 64)))  # (n, n)
    late = slice(128, n)  # queries with more past than the window holds
    keys = torch.log(torch.arange(1, n + 1, dtype=torch.float32))[late]  # log(number of keys) per query
    print("\nwhere stories260K's dense attention goes (queries 128-511, all heads):")
    for layer, a in enumerate(attentions):
        share = float((a * kept).sum(-1)[..., late].mean())
        entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1)[..., late]  # (B, H, queries)
        print(f"  layer {layer}: {share:.3f} of its weight inside sink(4) + window(64); entropy "
              f"{float((entropy / keys).mean()):.2f} of uniform's")


def stories(args) -> None:
    """stories260K: the classic patterns, one layer at a time, then a duo_attention search, at n = 512."""
    from search.calibrate import CalibrateConfig, calibrate

    samples = stories_samples(args.sequences)
    attention_reach(samples)
    cfg = CalibrateConfig(model=str(STORIES), n=STORIES_N, data=str(samples), sequences=args.sequences)
    dense = calibrate("causal", cfg)
    extra = dense.extra
    print(f"\nstories260K on {args.sequences} x {STORIES_N} of its own samples: NLL {extra['dense_nll']:.3f} "
          f"nats/token, top-1 accuracy {extra['dense_target_accuracy']:.3f}; its dense pass took "
          f"{extra['dense_seconds']:.1f} s")
    print(f"\n{'pattern (every layer)':<32} {'quality':>8} {'KL':>7} {'pairs':>8}  "
          "quality per quarter of the positions")
    for name, expr in STORIES_CLASSICS:
        r = calibrate(expr, cfg)
        density = patternc.compile(expr, STORIES_N).stats().per_head[0].token_density  # pairs kept / causal
        print(f"{name:<32} {r.score:8.4f} {r.extra['kl']:7.3f} {density:8.3f}  "
              + " ".join(f"{v:.3f}" for v in r.buckets.values()))
    for expr in PER_LAYER:
        print(f"\n{expr} in one layer, the others dense:")
        for layer in range(5):
            stack = patternc.Stack(default="causal", layers=5, heads=8, kv_heads=4,
                                   overrides=(patternc.Override(expr=expr, layers=(layer, layer + 1)),))
            r = calibrate(stack, cfg)
            print(f"  layer {layer}: quality {r.score:.4f} (KL {r.extra['kl']:.3f})")
        print(f"{expr} from a layer on, the earlier layers dense:")
        for layer in range(1, 5):
            stack = patternc.Stack(default="causal", layers=5, heads=8, kv_heads=4,
                                   overrides=(patternc.Override(expr=expr, layers=(layer, 5)),))
            r = calibrate(stack, cfg)
            print(f"  layers {layer}-4: quality {r.score:.4f} (KL {r.extra['kl']:.3f})")
    if args.trials:
        search_stories(samples, args)


def search_stories(samples: pathlib.Path, args) -> None:
    """``patternc-search task=calibrate`` on the .bin: duo_attention (each head full or sink + window)."""
    run_dir = OUT / "stories260K" / "duo_attention"
    shutil.rmtree(run_dir, ignore_errors=True)
    # quality at its context (task.n = space.proxy.n = 512, on 32-token blocks); cost and KV cache at
    # the deployment length, past that context (a sink + window head keeps its w tokens there too)
    target = {"layers": 5, "heads": 8, "kv_heads": 4, "head_dim": 8, "n": STORIES_DEPLOYED_N, "block": 128}
    command = [str(pathlib.Path(sys.executable).with_name("patternc-search")), "task=calibrate",
               f"task.model={STORIES}", f"task.data={samples}", f"task.sequences={args.sequences}",
               f"task.n={STORIES_N}", "space.proxy.block=32",
               "space=duo_attention", *(f"space.target.{k}={v}" for k, v in target.items()),
               "space.params.w.choices=[32,64,128,256]", "space.params.s.choices=[4,16]",
               "space.references.streaming_llm.params.w=64",
               "space.references.sliding_window.expr='causal & window(128)'",
               "space.references.minference_a_shape.expr='causal & (sink(16) | window(256))'",
               # 40 heads each full or streaming: the space's 0.6 (for 2 heads) would reject most mixes
               "space.density_budget=0.8",
               f"search.n_trials={args.trials}", f"search.storage=sqlite:///{run_dir}/study.db",
               f"hydra.run.dir={run_dir}", *args.overrides]
    _run_and_tabulate(command, run_dir, args.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train again even if the model exists")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--space", default="duo_attention", help="duo_attention, moa or minference")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--model", choices=("trained", "stories260K"), default="trained",
                        help="trained: the MQAR model trained here; stories260K: the real pretrained one")
    parser.add_argument("overrides", nargs="*", help="more patternc-search overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("PATTERNC_THREADS", "2")))
    if args.model == "stories260K":
        stories(args)
        return
    model_dir = OUT / "model"
    if args.retrain or not (model_dir / "config.json").is_file():
        start = time.perf_counter()
        train(model_dir)
        print(f"training: {time.perf_counter() - start:.0f} s")
    if args.train_only:
        return
    one_evaluation(model_dir, args.sequences)
    search(model_dir, args)


if __name__ == "__main__":
    main()

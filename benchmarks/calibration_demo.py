"""The training-free calibration search, end to end, offline: train a small Llama densely, save it,
search its sparse patterns without training, print the front next to the classic patterns.

    python benchmarks/calibration_demo.py                      # train (if needed), then search
    python benchmarks/calibration_demo.py --retrain --trials 24 --space duo_attention

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
    print("$ " + " ".join(c if " " not in c else repr(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"search: {time.perf_counter() - start:.0f} s for {args.trials} trials")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train again even if the model exists")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--space", default="duo_attention", help="duo_attention, moa or minference")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="more patternc-search overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("PATTERNC_THREADS", "2")))
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

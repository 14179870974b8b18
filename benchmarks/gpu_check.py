"""GPU check: compiled FlexAttention with our BlockMask (compact tables, the CUDA row of
``patternc.export.widths``) against dense causal SDPA at 32k-128k in bf16, its output against our
reference kernel and against the same mask with full-width tables; FlashInfer's two wrappers when
``flashinfer`` imports (``BlockSparseAttentionWrapper`` with our BSR and per-block masks,
``VariableBlockSparseAttentionWrapper`` with ``to_flashinfer_variable`` on a GQA stack); then what
the search sees on a GPU: ``patternc.measure`` ratios with ``device="cuda"`` (``kernel=gpu``) for
the default space's references at 32k, and the proxy model's training speed with
``train.device=cuda``. Sized to finish in a few minutes on one GPU.

    python benchmarks/gpu_check.py          # prints "CUDA not available: skipping" without CUDA
"""

from __future__ import annotations

import sys

import torch

import patternc
from patternc.kernels import block_sparse_attention, causal_sdpa, compiled_flex

PATTERN = "causal & (window(2048) | sink(64))"
HEADS, D = 8, 64  # (1, 8, n, 64) bf16, as in the CPU benchmark
TOLERANCE = 2e-2  # bf16 inputs, float32 softmax on both sides


def cuda_ms(fn, repeats: int = 5) -> float:
    """Median milliseconds of ``fn`` after one warm-up call, timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def flashinfer_check(cp, q, k, v, ref) -> str:
    """Run FlashInfer's BlockSparseAttentionWrapper with our BSR; the one layout serves every head."""
    try:
        import flashinfer
    except ImportError:
        return "flashinfer not installed: skipped"
    b = cp.to_bsr(0, 0, with_masks=True)
    M, N = b.nbq * b.block[0], b.nbk * b.block[1]  # whole blocks: pad past n (masks are False there)
    n = cp.n

    def tokens_first(x, rows):  # (1, H, n, d) -> (rows, H, d), zero-padded
        return torch.nn.functional.pad(x[0].transpose(0, 1), (0, 0, 0, 0, 0, rows - n)).contiguous()

    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    wrapper = flashinfer.BlockSparseAttentionWrapper(workspace)
    wrapper.plan(torch.from_numpy(b.indptr).cuda(), torch.from_numpy(b.indices).cuda(), M, N, *b.block,
                 HEADS, HEADS, D, mask=torch.from_numpy(b.masks).cuda(), q_data_type=q.dtype)
    qf, kf, vf = tokens_first(q, M), tokens_first(k, N), tokens_first(v, N)
    ms = cuda_ms(lambda: wrapper.run(qf, kf, vf))
    out = wrapper.run(qf, kf, vf)[:n].transpose(0, 1)[None]  # (M, H, d) -> (1, H, n, d)
    err = (out.float() - ref.float()).abs().max().item()
    return f"flashinfer: {ms:.2f} ms, max |flashinfer - reference| = {err:.2e}" + (
        "" if err < TOLERANCE else "  MISMATCH")


def flashinfer_variable_check(n: int = 32768, heads: int = HEADS, kv_heads: int = 2) -> str:
    """FlashInfer's variable block-sparse wrapper with ``to_flashinfer_variable`` (one partition per
    KV head, causal=True on the diagonal cells) on a GQA stack, against our reference kernel."""
    try:
        import flashinfer
    except ImportError:
        return "flashinfer not installed: skipped"
    stack = patternc.Stack("causal & (chunk(2048 * (1 + h // 4)) | sink(64))", heads=heads, kv_heads=kv_heads)
    cp = patternc.compile(stack, n, block=128)
    fi = cp.to_flashinfer_variable(0)
    gen = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, heads, n, D, device="cuda", generator=gen, dtype=torch.bfloat16)
    k, v = (torch.randn(1, kv_heads, n, D, device="cuda", generator=gen, dtype=torch.bfloat16)
            for _ in range(2))
    group = heads // kv_heads
    with torch.inference_mode():  # the reference takes one K/V head per query head
        ref = block_sparse_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), cp)
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    wrapper = flashinfer.VariableBlockSparseAttentionWrapper(workspace)
    wrapper.plan(*(torch.from_numpy(a).cuda() for a in (fi.block_mask_map, fi.block_row_sz, fi.block_col_sz)),
                 heads, kv_heads, D, causal=fi.causal, q_data_type=q.dtype)
    qh, kh, vh = q[0].contiguous(), k[0].contiguous(), v[0].contiguous()  # (H, n, d): its HND layout
    ms = cuda_ms(lambda: wrapper.run(qh, kh, vh))
    out = wrapper.run(qh, kh, vh)[None]
    err = (out.float() - ref.float()).abs().max().item()
    cells = fi.block_mask_map.shape[1]
    return (f"flashinfer variable ({heads} q / {kv_heads} kv heads, {cells} cells a side, "
            f"causal={fi.causal}): {ms:.2f} ms, max |flashinfer - reference| = {err:.2e}"
            + ("" if err < TOLERANCE else "  MISMATCH"))


def compact_against_full(cp, q, k, v, flex) -> str:
    """The compact tables (CUDA's form) and create_block_mask's full-width ones give one output."""
    compact = cp.to_block_mask(0, device="cuda", width="compact")
    full = cp.to_block_mask(0, device="cuda", width="full")
    full.mask_mod = compact.mask_mod
    a, b = flex(q, k, v, block_mask=compact), flex(q, k, v, block_mask=full)
    widths = f"kv_indices {compact.kv_indices.shape[-1]} vs {full.kv_indices.shape[-1]} wide"
    same = torch.equal(a, b)
    return f"compact vs full-width tables ({widths}): " + ("identical" if same else
                                                          f"DIFFER by {(a - b).abs().max().item():.2e}")


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA not available: skipping")
        return 0
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {PATTERN}, "
          f"{HEADS} heads x d {D}, bf16")
    flex = compiled_flex()
    failed = False
    for n in (32768, 65536, 131072):
        cp = patternc.compile(PATTERN, n, block=128)
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, HEADS, n, D, device="cuda", generator=gen, dtype=torch.bfloat16)
                   for _ in range(3))
        block_mask = cp.to_block_mask(0, device="cuda")  # width="auto": compact tables on CUDA
        with torch.inference_mode():
            sdpa_ms = cuda_ms(lambda: causal_sdpa(q, k, v))  # noqa: B023 (used in this iteration)
            flex_ms = cuda_ms(lambda: flex(q, k, v, block_mask=block_mask))  # noqa: B023
            ref = block_sparse_attention(q, k, v, cp)  # (1, H, n, d); every row has a key here
            err = (flex(q, k, v, block_mask=block_mask).float() - ref.float()).abs().max().item()
            line = (f"n {n:>6}: sdpa causal {sdpa_ms:8.2f} ms, flex+ours {flex_ms:7.2f} ms "
                    f"({sdpa_ms / flex_ms:5.2f}x), max |flex - reference| = {err:.2e}")
            failed |= err >= TOLERANCE
            print(line + ("" if err < TOLERANCE else "  MISMATCH"), flush=True)
            if n == 32768:
                line = compact_against_full(cp, q, k, v, flex)
                failed |= "DIFFER" in line
                print("  " + line, flush=True)
                print("  " + flashinfer_check(cp, q, k, v, ref), flush=True)
                line = flashinfer_variable_check()
                failed |= "MISMATCH" in line
                print("  " + line, flush=True)
    search_on_gpu()
    return 1 if failed else 0


def search_on_gpu(device: str = "cuda", n: int = 32768, steps: int = 200) -> None:
    """The search's two GPU paths: measured cost (kernel=gpu) and proxy training (train.device=cuda)."""
    import time

    from search import MajorityConfig, evaluate
    from search.objective import density_vs_causal

    for name, expr in (("dense causal", "causal"),
                       ("sparse transformer fixed", "causal & fixed(n // 16, max(1, n // 1024))"),
                       ("sliding window n/8", "causal & window(ceil(n / 8))")):
        cp = patternc.compile(expr, n, block=128)
        m = patternc.measure(cp, heads=HEADS, backend="flex", device=device, cache=False)
        print(f"measure flex on {m.device}, n {n}: {name:<25} ratio {m.ratio:.3f} at block density "
              f"{density_vs_causal(cp):.3f} of dense causal "
              f"({1e3 * m.seconds:.2f} vs {1e3 * m.baseline_seconds:.2f} ms)", flush=True)
    task = MajorityConfig()
    task.train.steps, task.train.device = steps, device
    start = time.perf_counter()
    r = evaluate("causal", task, seed=0)
    print(f"proxy training on {device}: {1e3 * r.train_seconds / r.steps:.1f} ms/step (majority, batch "
          f"{task.train.batch}), {time.perf_counter() - start:.1f} s with scoring", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The ``patternc`` command.

    patternc compile "causal & (window(512) | global(4))" --n 131072 --json
    patternc show conf/pattern/longformer.yaml --n 8192 --layer 6 --head 0 --png longformer.png
    patternc export conf/pattern/bigbird.yaml --n 65536 --format bsr -o outputs/bigbird.safetensors
    patternc bench "causal & window(512)" --n 16384 --backend kernel --dtype bf16
    patternc kv --from-config path/to/model --n 131072       # a model's own attention (config.json)
    patternc export mine.yaml --n 131072 --format hf-config -o hybrid.json

Bad input exits with status 2 and the error, caret included, on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from patternc.compiled import CompiledPattern, block_shape, compile
from patternc.draw import TEXT_LEGEND, draw_growth_png, draw_png, draw_text
from patternc.errors import PatternError, brief
from patternc.export import save_bsr, save_fa4, save_flashinfer_variable, save_flashmask
from patternc.layout import head_stats
from patternc.limits import MAX_N
from patternc.native import FORMATS as NATIVE_FORMATS
from patternc.native import NativeStack, read_config, save_native
from patternc.reachability import EXACT_LIMIT, check_size, reach
from patternc.stack import as_stack, layer_spans, parse_block
from patternc.version import __version__

__all__ = ["main"]


def _parameter(text: str) -> tuple[str, int | float]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        number: int | float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={value!r}: the value must be a number") from None
    return name.strip().lstrip("$"), number


def _count(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]``; argparse names the option in its error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {brief(text)}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low:,}" if high is None else f"between {low:,} and {high:,}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {brief(value)}")
        return value
    return parse


def _png(text: str) -> Path:
    """An argparse type: a ``.png`` file path whose directory exists (the picture is PNG only)."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{brief(text)} does not end in .png (the picture is a PNG)")
    return _output(text)


def _output(text: str) -> Path:
    """An argparse type: a file path to write, not empty and not a directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{brief(text)} is a directory; give a file path")
    return path


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?",
                        help="an expression such as 'causal & window(512)', or a stack YAML file")
    parser.add_argument("--from-config", metavar="CONFIG",
                        help="instead of SPEC: a model's own attention, read from its config.json or model "
                             "directory (JSON only; nothing in it runs)")
    parser.add_argument("--n", type=_count(1, MAX_N), required=True, help="sequence length")
    parser.add_argument("--block", default=None,
                        help="block size B or BQ,BK (default: the stack's, else 128)")
    parser.add_argument("--set", dest="params", type=_parameter, action="append", default=[],
                        metavar="NAME=VALUE", help="bind a $parameter (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patternc", description="Compile sparse-attention patterns.")
    parser.add_argument("--version", action="version", version=f"patternc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("compile", help="compile and print statistics per layer and head")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")

    p = commands.add_parser("show", help="draw the block layout of one layer and head")
    _common(p)
    p.add_argument("--layer", type=_count(0), default=0)
    p.add_argument("--head", type=_count(0), default=0)
    p.add_argument("--png", type=_png, metavar="FILE", help="also save the picture as a PNG")
    p.add_argument("--html", type=_output, metavar="FILE",
                   help="also write the explorer: one self-contained HTML page, opening on this head")
    p.add_argument("--width", type=_count(4, 4096), default=96, help="characters per row of the text drawing")

    p = commands.add_parser("check", help="check that every position hears every other across the layers")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--require-mixing", action="store_true",
                   help="exit 1 unless the envelope is certainly covered at the stack's own depth")
    p.add_argument("--png", type=_png, metavar="FILE", help="plot the receptive field's growth per layer")
    p.add_argument("--exact-limit", type=_count(0), default=EXACT_LIMIT,
                   help=f"largest n analysed token by token (default {EXACT_LIMIT}); above: block bounds")
    p.add_argument("--max-depth", type=_count(1), default=None,
                   help="layers to run (the stack repeated) looking for the mixing depth")

    p = commands.add_parser("export", help="write the compiled layout for a kernel, or to a file")
    _common(p)
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="; ".join(f"{name}: {what}" for name, what in EXPORT_FORMATS.items()))
    p.add_argument("-o", "--output", type=_output, required=True, metavar="PATH",
                   help="file to write (parents are made)")
    p.add_argument("--masks", action="store_true", help="bsr: also write per-block token masks")
    p.add_argument("--union", action="store_true",
                   help="flashinfer_variable, flashmask: a KV group whose query heads differ gets their "
                        "union (not exact for those heads) instead of an error")
    p.add_argument("--superset", action="store_true",
                   help="hf-config, trtllm: a stack the target cannot express gets the smallest superset it "
                        "can (more keys per query, never fewer) instead of an error")

    p = commands.add_parser("kv", help="the KV cache a decoder must keep: keys per head, bytes, and why")
    _common(p)
    p.add_argument("--kv-heads", type=_count(1), default=None,
                   help="KV heads (grouped-query attention; default: the stack's kv_heads)")
    p.add_argument("--head-dim", type=_count(1, 1024), default=None,
                   help="default: the config's with --from-config, else 128")
    p.add_argument("--dtype", choices=KV_DTYPES, default=None,
                   help="default: the config's with --from-config, else bf16")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = commands.add_parser("bench", help="time one layer on a kernel against dense causal SDPA")
    _common(p)
    p.add_argument("--backend", required=True, choices=("kernel", "flex", "sdpa", "reference"),
                   help="kernel: patternc's block-sparse kernel (reference: its old name, deprecated)")
    p.add_argument("--dtype", choices=BENCH_DTYPES, default="bf16")
    p.add_argument("--head-dim", type=_count(1, 1024), default=64)
    p.add_argument("--heads", type=_count(1, 1024), default=None, help="default: the stack's heads")
    p.add_argument("--batch", type=_count(1, 1024), default=1)
    p.add_argument("--layer", type=_count(0), default=0)
    p.add_argument("--repeats", type=_count(1, 1000), default=5, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=_count(0, 1000), default=2)
    p.add_argument("--no-cache", action="store_true", help="measure even if a cached result exists")
    p.add_argument("--device", default="cpu", help="where both kernels run: cpu (default), cuda, cuda:1")
    p.add_argument("--phase", choices=("prefill", "decode"), default="prefill",
                   help="prefill: the whole sequence; decode: one step over a cache that keeps what the "
                        "pattern reads (backend kernel), against dense SDPA decode")
    p.add_argument("--context", type=_count(0), default=None,
                   help="decode: the tokens cached before the step (default n - 1)")
    return parser


BENCH_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
KV_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "float8"}


EXPORT_FORMATS = {
    "file": "safetensors that patternc.load reads back",
    "bsr": "safetensors of layer{l}.head{h}.indptr/indices/full(/masks), FlashInfer's block CSR",
    "layout": ".npy int64 (L, H, nbq, nbk), 1 where a block is stored (DeepSpeed / Triton)",
    "dense": ".npy bool (L, H, n, n), refused above 2**28 elements",
    "flashinfer_variable": "safetensors of layer{l}.block_mask_map/block_row_sz/block_col_sz, per KV head",
    "flashmask": "safetensors of layer{l}.startend_row_indices (1, kv_heads, n, 1|2|4), per KV head",
    "fa4": "safetensors of layer{l}.mask_block_cnt/mask_block_idx/full_block_cnt/full_block_idx",
    **NATIVE_FORMATS,
}
PER_KV_HEAD = ("flashinfer_variable", "flashmask")  # the formats that take one layout per KV head


def _stack(args):
    """The stack the command runs: SPEC, or with --from-config the model's own (``args.native``)."""
    args.native = None
    if (args.spec is None) == (args.from_config is None):
        raise PatternError("give a pattern (an expression or a stack file) or --from-config CONFIG, "
                           f"{'not both' if args.spec is not None else 'one of them'}")
    if args.spec is not None:
        return as_stack(args.spec)
    args.native = read_config(args.from_config)
    return args.native.stack


def _native_header(native: NativeStack | None) -> None:
    """What a --from-config command runs, and what its stack does not express."""
    if native is not None:
        print(f"{native.name}'s own attention: {native.summary()}")
        for note in native.notes:
            print(f"note: not expressed by the stack: {note}")


def _compile(args) -> CompiledPattern:
    stack = _stack(args)
    block = block_shape(stack, args.n, None if args.block is None else parse_block(args.block, "--block"))
    if args.command == "check":  # a state too large for the machine is refused before compiling
        check_size(args.n, block, args.exact_limit, args.max_depth)
    return compile(stack, n=args.n, block=block, params=dict(args.params))


def _print_stats(cp: CompiledPattern, as_json: bool) -> None:
    stats = cp.stats()
    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
        return
    bq, bk = cp.block
    print(f"n = {cp.n}, block {bq}x{bk}, {cp.layers} layers x {cp.heads} heads, "
          f"{'causal' if stats.causal else 'not causal'}")
    print(f"{'layer':>5} {'head':>4} {'blocks':>10} {'full':>10} {'partial':>10} {'block dens':>10} "
          f"{'token dens':>10} {'max/row':>7}  expression")
    for s in stats.per_head:
        print(f"{s.layer:>5} {s.head:>4} {s.nnz:>10} {s.full_blocks:>10} {s.partial_blocks:>10} "
              f"{s.block_density:>10.4f} {s.token_density:>10.4f} {s.max_blocks_per_row:>7}  "
              f"{cp.expression(s.layer, s.head)}")
    for warning in stats.warnings:
        print(f"warning: {warning}")


def _show(cp: CompiledPattern, args) -> None:
    if args.html:  # a page at large n takes a while: refuse a bad path before any work
        from patternc.explore import check_destination

        check_destination(args.html)
    layout = cp.layout(args.layer, args.head)
    s = head_stats(cp.node(args.layer, args.head), layout, args.layer, args.head, cp.causal)
    title = f"{cp.expression(args.layer, args.head)}  (layer {args.layer}, head {args.head}, n = {cp.n})"
    print(title)
    print(f"block {cp.block[0]}x{cp.block[1]}: {s.nnz} stored ({s.full_blocks} full, "
          f"{s.partial_blocks} partial), block density {s.block_density:.4f}, token density "
          f"{s.token_density:.4f}")
    print(draw_text(layout, max_width=args.width))
    print(TEXT_LEGEND)
    if args.png:
        draw_png(layout, args.png, title=title)
        print(f"wrote {args.png}")
    if args.html:
        from patternc.explore import write_explorer

        title = f"{args.native.name}'s own attention" if args.native else None
        write_explorer(cp, args.html, layer=args.layer, head=args.head, title=title)
        print(f"wrote {args.html} (the explorer: open it in a browser)")


def _export(cp: CompiledPattern, args) -> None:
    path = Path(args.output)
    if args.masks and args.format != "bsr":
        raise PatternError(f"--masks applies to --format bsr, not {args.format}")
    if args.union and args.format not in PER_KV_HEAD:
        raise PatternError(f"--union applies to --format {' or '.join(PER_KV_HEAD)}, not {args.format}")
    if args.superset and args.format not in NATIVE_FORMATS:
        raise PatternError(f"--superset applies to --format {' or '.join(NATIVE_FORMATS)}, not {args.format}")
    # arrays are built before the file is opened, so a refused size leaves no file behind
    array = {"layout": cp.to_dense_blocks, "dense": cp.to_dense}.get(args.format, lambda: None)()
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "file":
        cp.save(path)
    elif args.format == "bsr":
        save_bsr(cp, path, with_masks=args.masks)
    elif args.format == "flashinfer_variable":
        save_flashinfer_variable(cp, path, union=args.union)
    elif args.format == "flashmask":
        save_flashmask(cp, path, union=args.union)
    elif args.format == "fa4":
        save_fa4(cp, path)
    elif args.format in NATIVE_FORMATS:
        _save_native(cp, path, args)
        return
    else:
        with open(path, "wb") as f:  # np.save(f, ...) writes exactly PATH, with no ".npy" added
            np.save(f, array)
    bq, bk = cp.block
    print(f"wrote {path} ({args.format}: {cp.layers} layers x {cp.heads} heads, n = {cp.n}, "
          f"block {bq}x{bk})")


def _save_native(cp: CompiledPattern, path: Path, args) -> None:
    from patternc.native import native_layers
    from patternc.native.family import classify_layers
    from patternc.native.read import summary

    layers = native_layers(cp, args.format, superset=args.superset)  # refused before the file is opened
    save_native(cp, path, args.format, superset=args.superset)
    print(f"wrote {path} ({args.format}: {summary(layers)}, {cp.heads} heads, {cp.stack.kv_heads} KV heads, "
          f"n = {cp.n:,})")
    exact = classify_layers(cp)
    widened = [l for l, (mine, kept) in enumerate(zip(exact, layers, strict=True)) if mine != kept]
    changes: dict[tuple[str, str], list[int]] = {}
    for l in widened:
        changes.setdefault((cp.expression(l, 0), str(layers[l])), []).append(l)
    for (mine, kept), where in changes.items():
        print(f"superset: layer{'s' * (len(where) > 1)} {layer_spans(where)}: {mine} -> {kept} "
              "(more keys, never fewer)")


def _percent(low: float, high: float) -> str:
    return f"{100 * low:.2f}%" if low == high else f"between {100 * low:.2f}% and {100 * high:.2f}%"


def _check(cp: CompiledPattern, args) -> int:
    report = reach(cp, exact_limit=args.exact_limit, max_depth=args.max_depth)
    if args.png:
        draw_growth_png(report, args.png)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        how = "exact, token by token" if report.exact else f"block-level bounds (blocks of {report.block[0]})"
        kv = f" ({cp.stack.kv_heads} KV heads)" if cp.stack.kv_heads != cp.heads else ""
        print(f"n = {cp.n}, {cp.layers} layers x {cp.heads} heads{kv}, "
              f"{'causal' if report.causal else 'not causal'} envelope; {how}")
        low, high = report.mixing_depth_bounds
        if report.mixing_depth is not None:
            print(f"mixing depth: {report.mixing_depth} layers")
        elif report.never:
            print("mixing depth: never (repeating the stack stops adding anything short of the envelope)")
        elif report.exact or low is None:
            print(f"mixing depth: more than {report.max_depth} layers (raise --max-depth to look further)")
        else:
            most = f"at most {high}" if high else f"not certified within {report.max_depth}"
            print(f"mixing depth: at least {low} layers, {most} (block-level bounds; raise --exact-limit)")
        print(f"covered at depth {cp.layers}: {_percent(*report.covered_bounds)}")
        print("growth per layer: " + "  ".join(
            f"{t}: {_percent(lo, hi)}" for t, (lo, hi) in enumerate(report.growth, start=1)))
        if report.unreachable:
            q, k = report.unreachable
            print(f"unreachable: query {q} never hears key {k} within {cp.layers} layers")
            if report.closest_path and report.closest_path_exact:
                steps = " -> ".join(f"{a}@{t}" for t, a, _ in report.closest_path)
                nearest = report.closest_path[-1][1]
                print(f"closest: key {k} gets no nearer to query {q} than token {nearest} (exact, token by "
                      f"token; token@layer: it has heard key {k} after that layer): {steps}")
            elif report.closest_path:
                steps = " -> ".join(f"[{a}..{b}]@{t}" for t, a, b in report.closest_path)
                print(f"closest, as block ranges (block-level analysis: a range may hold tokens that never "
                      f"hear key {k}; raise --exact-limit for tokens): {steps}")
        for error in report.errors:
            print(f"error: {error}")
        for warning in report.warnings:
            print(f"warning: {warning}")
    if args.png:
        print(f"wrote {args.png}", file=sys.stderr if args.json else sys.stdout)
    failed = bool(report.errors) or (args.require_mixing and not report.covered)
    if args.require_mixing and not report.covered:
        print("patternc: the stack does not certainly cover its envelope at its own depth",
              file=sys.stderr)
    return 1 if failed else 0


def _kv(cp: CompiledPattern, args) -> None:
    from patternc.kv_analysis import kv

    native: NativeStack | None = args.native
    head_dim = args.head_dim or (native and native.head_dim) or 128
    dtype = KV_DTYPES[args.dtype] if args.dtype else (native and native.dtype) or "bfloat16"
    report = kv(cp, kv_heads=args.kv_heads, head_dim=head_dim, dtype=dtype)
    if args.json:
        data = report.to_dict()
        if native is not None:
            data["model"] = {"name": native.name, "layers": [str(layer) for layer in native.layers],
                             "notes": list(native.notes)}
        print(json.dumps(data, indent=2))
        return
    _native_header(native)
    print(f"n = {cp.n:,}, {cp.layers} layers x {cp.heads} heads, {report.kv_heads} KV heads x d "
          f"{report.head_dim}, {report.dtype}")
    print(f"KV cache: {report.bytes:,} bytes, {report.ratio:.4f} of a dense cache ({report.dense_bytes:,})")
    by_row: dict[tuple, list[int]] = {}
    for l in range(cp.layers):
        by_row.setdefault((report.max_live_keys[l], report.forever[l]), []).append(l)
    per_key = 2 * report.head_dim * report.element_bytes  # K and V of one cached key
    for (budgets, forever), layers in by_row.items():
        kept = sorted({term for head in forever for term in head})
        print(f"layers {layer_spans(layers)}: keys per KV head {', '.join(f'{b:,}' for b in budgets)}"
              + (f"; kept to the end by {', '.join(kept)}" if kept else "; every key is evicted")
              + f"; {sum(budgets) * per_key:,} bytes a layer")
    if native is not None:  # the model's own attention beside dense attention's
        print(f"dense attention: {report.dense_bytes // cp.layers:,} bytes a layer (mixing depth: patternc "
              "check --from-config)")


def _bench(cp: CompiledPattern, args) -> None:
    import torch

    from patternc.cost import measure

    if not 0 <= args.layer < cp.layers:
        raise PatternError(f"--layer {args.layer} is outside this stack of {cp.layers} layers")
    if args.backend == "reference":
        print("patternc: --backend reference is now called --backend kernel; the old name will be removed",
              file=sys.stderr)
        args.backend = "kernel"
    try:
        m = measure(cp, batch=args.batch, heads=args.heads, head_dim=args.head_dim, backend=args.backend,
                    dtype=getattr(torch, BENCH_DTYPES[args.dtype]), layer=args.layer,
                    repeats=args.repeats, warmup=args.warmup, cache=not args.no_cache, device=args.device,
                    phase=args.phase, context=args.context)
    except ValueError as err:  # heads that do not fit the stack, a device that is not here
        raise PatternError(str(err)) from None
    bq, bk = m.block
    print(f"n = {m.n}, block {bq}x{bk}, layer {m.layer}, batch {m.batch} x {m.heads} heads x d {m.head_dim}, "
          f"{m.dtype}, " + (f"{m.threads} threads" if m.device == "cpu" else m.device))
    if m.phase == "decode":
        print(f"decode step at position {m.context:,} ({m.context + 1:,} keys cached densely)")
        print(f"decode kernel: {1e3 * m.seconds:.3f} ms (median of {m.repeats})")
        print(f"dense sdpa decode: {1e3 * m.baseline_seconds:.3f} ms")
    else:
        print(f"{m.backend}: {1e3 * m.seconds:.3f} ms (median of {m.repeats})")
        print(f"dense causal sdpa: {1e3 * m.baseline_seconds:.3f} ms")
    print(f"ratio: {m.ratio:.3f} (speedup {1 / m.ratio:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    """Run the command; the exit status: 0, 1 (a check failed), 2 (bad input, argparse's too)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the usage and the error (or --help)
        return int(exit_.code or 0)
    try:
        cp = _compile(args)
        if args.command in ("compile", "check", "export", "show") and not getattr(args, "json", False):
            _native_header(args.native)
        if args.command == "compile":
            _print_stats(cp, args.json)
        elif args.command == "check":
            return _check(cp, args)
        elif args.command == "export":
            _export(cp, args)
        elif args.command == "bench":
            _bench(cp, args)
        elif args.command == "kv":
            _kv(cp, args)
        else:
            if not (0 <= args.layer < cp.layers and 0 <= args.head < cp.heads):
                raise PatternError(f"--layer {args.layer} --head {args.head} is outside this stack of "
                                   f"{cp.layers} layers x {cp.heads} heads")
            _show(cp, args)
    except PatternError as err:
        print(f"patternc: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"patternc: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

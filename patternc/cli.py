"""The ``patternc`` command.

    patternc compile "causal & (window(512) | global(4))" --n 131072 --json
    patternc show conf/pattern/longformer.yaml --n 8192 --layer 6 --head 0 --png longformer.png
    patternc export conf/pattern/bigbird.yaml --n 65536 --format bsr -o outputs/bigbird.safetensors

Bad input exits with status 2 and the error, caret included, on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from patternc import __version__
from patternc.compiled import CompiledPattern, compile
from patternc.draw import TEXT_LEGEND, draw_png, draw_text
from patternc.errors import PatternError
from patternc.export.bsr import save_bsr
from patternc.layout import head_stats

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


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="an expression such as 'causal & window(512)', or a stack YAML file")
    parser.add_argument("--n", type=int, required=True, help="sequence length")
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
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--png", metavar="FILE", help="also save the picture as a PNG")
    p.add_argument("--width", type=int, default=96, help="characters per row of the text drawing")

    p = commands.add_parser("export", help="write the compiled layout for a kernel, or to a file")
    _common(p)
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="; ".join(f"{name}: {what}" for name, what in EXPORT_FORMATS.items()))
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="file to write (parents are made)")
    p.add_argument("--masks", action="store_true", help="bsr: also write per-block token masks")
    return parser


EXPORT_FORMATS = {
    "file": "safetensors that patternc.load reads back",
    "bsr": "safetensors of layer{l}.head{h}.indptr/indices/full(/masks), FlashInfer's block CSR",
    "layout": ".npy int64 (L, H, nbq, nbk), 1 where a block is stored (DeepSpeed / Triton)",
    "dense": ".npy bool (L, H, n, n), refused above 2**28 elements",
}


def _compile(args) -> CompiledPattern:
    return compile(args.spec, n=args.n, block=args.block, params=dict(args.params))


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
        print(f"{s.layer:>5} {s.head:>4} {s.nnz_blocks:>10} {s.full_blocks:>10} {s.partial_blocks:>10} "
              f"{s.block_density:>10.4f} {s.token_density:>10.4f} {s.max_blocks_per_row:>7}  "
              f"{cp.expression(s.layer, s.head)}")
    for warning in stats.warnings:
        print(f"warning: {warning}")


def _show(cp: CompiledPattern, args) -> None:
    layout = cp.block_layout(args.layer, args.head)
    s = head_stats(cp.node(args.layer, args.head), layout, args.layer, args.head, cp.causal)
    title = f"{cp.expression(args.layer, args.head)}  (layer {args.layer}, head {args.head}, n = {cp.n})"
    print(title)
    print(f"block {cp.block[0]}x{cp.block[1]}: {s.nnz_blocks} stored ({s.full_blocks} full, "
          f"{s.partial_blocks} partial), block density {s.block_density:.4f}, token density "
          f"{s.token_density:.4f}")
    print(draw_text(layout, max_width=args.width))
    print(TEXT_LEGEND)
    if args.png:
        draw_png(layout, args.png, title=title)
        print(f"wrote {args.png}")


def _export(cp: CompiledPattern, args) -> None:
    path = Path(args.output)
    if args.masks and args.format != "bsr":
        raise PatternError(f"--masks applies to --format bsr, not {args.format}")
    # arrays are built before the file is opened, so a refused size leaves no file behind
    array = {"layout": cp.to_block_layout, "dense": cp.to_dense}.get(args.format, lambda: None)()
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "file":
        cp.save(path)
    elif args.format == "bsr":
        save_bsr(cp, path, with_masks=args.masks)
    else:
        with open(path, "wb") as f:  # np.save(f, ...) writes exactly PATH, with no ".npy" added
            np.save(f, array)
    bq, bk = cp.block
    print(f"wrote {path} ({args.format}: {cp.layers} layers x {cp.heads} heads, n = {cp.n}, "
          f"block {bq}x{bk})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cp = _compile(args)
        if args.command == "compile":
            _print_stats(cp, args.json)
        elif args.command == "export":
            _export(cp, args)
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

"""Explorer pages of every shipped stack: build time, size against the 5 MB limit, and the time
each takes to open in Debian's Chromium (the issue's targets: under 5 MB, open in under 3 s).

    python benchmarks/explorer_pages.py                 # n = 4096 and 1,048,576 (several minutes)
    python benchmarks/explorer_pages.py --n 4096 --stacks longformer bigbird

Prints one line per (stack, n): build seconds, megabytes, seconds to open (from navigation to the
page's ready promise, the same browser instance, a fresh tab each), and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import patternc  # noqa: E402
from patternc.explore import PAGE_LIMIT, write_explorer  # noqa: E402
from tests.browser import Opened, chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 1_048_576])
    parser.add_argument("--stacks", nargs="+", default=None, help="stack names under conf/pattern/")
    args = parser.parse_args()
    stacks = sorted((ROOT / "conf" / "pattern").glob("*.yaml"))
    if args.stacks:
        stacks = [s for s in stacks if s.stem in args.stacks]
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; page limit {PAGE_LIMIT / 1e6:.1f} MB, open target 3 s")
    folder = Path(tempfile.mkdtemp(prefix="explorer-pages-"))
    with chromium() as browser:
        for n in args.n:
            for stack in stacks:
                start = time.perf_counter()
                page = write_explorer(patternc.compile(stack, n=n), folder / f"{stack.stem}_{n}.html")
                built = time.perf_counter() - start
                opened = Opened(browser, page)
                size = page.stat().st_size / 1e6
                print(f"{stack.stem:30s} n={n:>9,}  build {built:6.1f} s  {size:5.2f} MB  "
                      f"open {opened.open_seconds:5.2f} s  problems {len(opened.problems)}  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                opened.page.close()


if __name__ == "__main__":
    main()

"""Run ``patternc`` commands under the bounds users are promised, for the adversarial tests.

``run_bounded(commands)`` starts one child process whose address space is capped at ``MEMORY``
(so a command that tries to allocate more fails there, not on the machine), runs each command
in it through ``patternc.cli.main`` with its own ``SECONDS`` alarm, and returns per command the
exit status (or what went wrong: ``timeout``, ``MemoryError``, an uncaught exception), stdout,
stderr and the seconds taken. One process for all commands keeps the suite fast: the import of
patternc is paid once. No command reads a layout file, so ``["load", PATH]`` runs the Python API's
``patternc.load`` under the same bounds, its ``PatternError`` reported as the command line reports one.

    python tests/bounded.py '[["compile", "causal", "--n", "64"]]'
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

MEMORY = 2 << 30  # bytes of address space for the whole child, patternc and torch included
SECONDS = 10  # per command


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` swallows it."""


def _alarm(signum, frame):
    raise _Timeout


def run_bounded(commands: list[list[str]], cwd: Path | None = None) -> list[dict]:
    """Each command's ``{"code", "out", "err", "seconds"}``, run in one capped child process."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, __file__, json.dumps(commands)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=SECONDS * len(commands) + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the bounded runner itself failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _child(commands: list[list[str]]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    signal.signal(signal.SIGALRM, _alarm)
    from patternc.cli import main

    results = []
    for argv in commands:
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        signal.alarm(SECONDS)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code: int | str = _load(argv[1]) if argv[0] == "load" else main(argv)
        except _Timeout:
            code = "timeout"
        except BaseException as error:  # what a user would have seen as a traceback
            code = f"{type(error).__name__}: {str(error)[:300]}"
        finally:
            signal.alarm(0)
        results.append({"code": code, "out": out.getvalue()[-4000:], "err": err.getvalue()[-4000:],
                        "seconds": time.perf_counter() - start})
    sys.stdout.write(json.dumps(results) + "\n")


def _load(path: str) -> int:
    import patternc

    try:
        cp = patternc.load(path)
    except patternc.PatternError as error:
        print(f"patternc: error: {error}", file=sys.stderr)
        return 2
    print(f"loaded {cp!r}")
    return 0


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))

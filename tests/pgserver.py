"""A private PostgreSQL server for tests that restart one: started from the installed binaries on a
free port in a temporary directory, so that restarting it disturbs no other user of the machine's
own cluster (``.ci/run`` starts that one for the other tests)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

__all__ = ["binaries", "private_server"]


def binaries() -> str | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_server() -> Iterator[tuple[str, Callable[[float], None]]]:
    """(URL, restart) of a fresh server with a database ``patternc``; stopped and removed at exit.
    ``restart(down)`` stops the server (fast shutdown: clients are disconnected), waits ``down``
    seconds and starts it again."""
    bin_dir = binaries()
    root = tempfile.mkdtemp(prefix="patternc-pg-")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if as_user:
        shutil.chown(root, "postgres")
    data, port = os.path.join(root, "data"), _free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, os.path.join(bin_dir, tool), *args], check=True, capture_output=True,
                       timeout=120, cwd=root)

    control = ("-D", data, "-w", "-t", "60", "-l", os.path.join(root, "log"))
    options = ("-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off")

    def restart(down: float) -> None:
        pg("pg_ctl", *control, "-m", "fast", "stop")
        time.sleep(down)
        pg("pg_ctl", *control, *options, "start")

    try:
        pg("initdb", "-D", data, "-A", "trust", "-U", "patternc", "--no-sync")
        pg("pg_ctl", *control, *options, "start")
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "patternc", "patternc")
        yield f"postgresql+psycopg2://patternc@127.0.0.1:{port}/patternc", restart
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg("pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)

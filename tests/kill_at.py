"""``python tests/kill_at.py STAGE [overrides...]``: patternc-search that SIGKILLs itself the first time
it reaches STAGE, as a ``kill -9`` landing there would (tests/test_hostile_search.py).

Stages, in the order a run meets them: ``enqueue`` (between two reference enqueues of the worker
creating the study), ``compile``, ``reach``, ``cost``, ``train`` (inside a trial, at the start of each
stage), ``store`` (the trial's result about to be written), ``report`` (the study done, its report
about to be written). The patches wrap the functions the search calls; nothing in the search knows.
"""

from __future__ import annotations

import os
import signal
import sys

import optuna

import patternc
import search.app
import search.scorer
from search.storage import ResilientRDBStorage


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _at_call(owner, name: str, nth: int = 1, when=lambda *args, **kwargs: True) -> None:
    """Replace ``owner.name`` by a wrapper that dies at its ``nth`` call for which ``when`` holds."""
    original, calls = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth:
                _die()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


STAGES = {
    "enqueue": lambda: _at_call(optuna.Study, "enqueue_trial", nth=2),
    "compile": lambda: _at_call(patternc, "compile"),
    "reach": lambda: _at_call(patternc, "reach"),
    "cost": lambda: _at_call(patternc, "measure"),
    "train": lambda: _at_call(search.scorer, "evaluate"),
    "store": lambda: _at_call(ResilientRDBStorage, "set_trial_state_values",
                              when=lambda self, trial_id, state, values=None: state.is_finished()),
    "report": lambda: _at_call(search.app, "write_report"),
}

if __name__ == "__main__":
    stage, *overrides = sys.argv[1:]
    STAGES[stage]()
    sys.argv = ["patternc-search", *overrides]
    search.app.main()

"""``hydra/sweeper=patternc_workers`` (patternc-search's default): Hydra's basic sweeper, plus what
a study with several workers needs. The logic is in ``search.workers``; Hydra requires a plugin to
live under ``hydra_plugins``, so this module only binds it.

    patternc-search -m hydra/launcher=submitit_slurm search.storage=postgresql+psycopg2://... search.workers=8
"""

# No `from __future__ import annotations`: Hydra's plugin scan loads this module outside sys.modules,
# where a dataclass cannot resolve string annotations.
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class WorkersSweeperConf:
    _target_: str = "hydra_plugins.patternc_workers.workers_sweeper.WorkersSweeper"
    max_batch_size: int | None = None  # as BasicSweeper's: jobs launched together (None: all)
    params: dict[str, str] | None = None  # as BasicSweeper's: sweeps given in the config


ConfigStore.instance().store(group="hydra/sweeper", name="patternc_workers", node=WorkersSweeperConf,
                             provider="patternc")


class WorkersSweeper(BasicSweeper):
    """``search.workers=N`` in a multirun becomes N jobs (``search.worker=0..N-1``) on one study; every
    job's values are checked before any starts, and each shared study's report is written once, in
    ``<hydra.sweep.dir>/<study>/``, when the last of its workers has ended."""

    def sweep(self, arguments: list) -> Any:
        from search.workers import sweep  # imported here: plugin discovery must stay fast

        return sweep(self, arguments, lambda args: BasicSweeper.sweep(self, args))

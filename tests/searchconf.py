"""Composed ``patternc-search`` configs for the search's tests: the tiny experiment on a study file
of the test's own."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from search.app import CONF


def tiny(tmp_path, *overrides: str):
    """``experiment=tiny`` with its study in ``tmp_path/s.db``, then ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=tiny", f"search.storage=sqlite:///{tmp_path}/s.db",
                                            *overrides])


def objects(cfg) -> list:
    """(task, space, kernel, search) of a composed config, as ``run_search`` takes them."""
    return [OmegaConf.to_object(cfg[key]) for key in ("task", "space", "kernel", "search")]

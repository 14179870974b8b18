"""``patternc-search``: the Hydra app.

``mode=search`` (the default) runs an Optuna study over a space and writes the report;
``mode=evaluate`` trains and scores one pattern on one task; ``mode=report`` writes the report of
an existing study without running a trial (the last step of a search with several workers).

    patternc-search                                   # the default search (README)
    patternc-search space=window_global search.n_trials=40 search.storage=postgresql://...
    patternc-search experiment=large
    patternc-search mode=report experiment=large          # the study as it stands, from its storage
    patternc-search mode=evaluate pattern=longformer task=mqar
    patternc-search mode=evaluate pattern.expr='causal & window(16)' task=majority seed=1
    patternc-search -m mode=evaluate pattern.expr='causal','causal & window(16)' task=mqar,majority
    patternc-search -m hydra/launcher=submitit_local search.storage=postgresql+psycopg2://... search.workers=4

A search leaves its report (trials.csv, pareto.csv/md/png, patterns/, summary.md) in the run
directory (``outputs/<mode>/<date>_<time>/``, Hydra's ``hydra.run.dir``; several workers' study is
reported once, in ``<hydra.sweep.dir>/<study>/``: ``search.workers``); an evaluation prints its
result as JSON and writes it to ``result.json`` there. A bad pattern or value ends the
run with ``patternc-search: error: ...`` and exit status 2, like ``patternc``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from patternc import PatternError
from search.calibrate import CalibrateConfig
from search.config import (
    MODES,
    TASK_SCHEMAS,
    AppConfig,
    KernelConfig,
    PatternConfig,
    SearchConfig,
    SpaceConfig,
    config_objects,
)
from search.definition import definition
from search.errors import SpaceRejectsAll
from search.report import Report, write_report
from search.scorer import check_task, score_pattern
from search.study import load_existing, run_search, study_account
from search.validate import check_seed

__all__ = ["CONF", "compose_config", "main", "register_configs", "report_study", "run_evaluate",
           "run_report_mode", "run_search_mode"]

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"  # the repository's conf/ (editable install)



def register_configs() -> None:
    """Register the schemas with Hydra: ``app_schema`` for ``conf/config.yaml``, one
    ``<task>_schema`` per task (``calibrate_schema`` too), and ``space_schema``, ``kernel_schema``,
    ``search_schema``, which the group files name in their defaults lists."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="app_schema", node=AppConfig)
    cs.store(group="space", name="space_schema", node=SpaceConfig)
    cs.store(group="kernel", name="kernel_schema", node=KernelConfig)
    cs.store(group="search", name="search_schema", node=SearchConfig)
    for name, schema in TASK_SCHEMAS.items():
        cs.store(group="task", name=f"{name}_schema", node=schema)
    cs.store(group="task", name="calibrate_schema", node=CalibrateConfig)  # a pretrained model, no training


register_configs()


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides``, as ``patternc-search`` would (without running)."""
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose("config", overrides=list(overrides))


def run_search_mode(cfg: DictConfig, out_dir: pathlib.Path) -> Report | None:
    """The study from the composed config, then its report in ``out_dir``; None for one of several
    workers (``search.workers``), whose study is reported once, when the last one ends."""
    task, space, kernel, settings = config_objects(cfg)
    try:
        study = run_search(task, space, kernel, settings, seed=cfg.seed)
    except SpaceRejectsAll as error:  # the rejections are worth a report: trials.csv says why
        report_study(error.study, cfg, out_dir)
        raise
    if settings.workers > 1:
        print(f"worker {settings.worker} of {settings.workers} ended; the study's report is written when the "
              f"last one ends (or run mode=report with the same config)")
        return None
    return report_study(study, cfg, out_dir)


def run_report_mode(cfg: DictConfig, out_dir: pathlib.Path) -> Report:
    """The report of an existing study (the one this config defines, or ``search.study``) in
    ``out_dir``: what a distributed search ends with once every worker has stopped."""
    task, space, kernel, settings = config_objects(cfg)
    return report_study(load_existing(settings, definition(task, space, kernel, cfg.seed)), cfg, out_dir)


def report_study(study, cfg: DictConfig, out_dir: pathlib.Path) -> Report:
    """The composed config and the study's report, written into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    space, settings = OmegaConf.to_object(cfg.space), OmegaConf.to_object(cfg.search)
    return write_report(study, space, out_dir, cfg.task.name, account=study_account(study, settings, space))


def run_evaluate(cfg: DictConfig, out_dir: pathlib.Path) -> dict:
    """One evaluation from the composed config; the result's dict, also written to ``result.json``."""
    task = OmegaConf.to_object(cfg.task)
    check_seed(cfg.seed)
    check_task(task)  # named as on the command line: task.train.steps, ...
    pattern: PatternConfig = OmegaConf.to_object(cfg.pattern)
    result = score_pattern(pattern, task, seed=cfg.seed).to_dict()
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def quote_expressions(args: list[str]) -> list[str]:
    """Quote the value of ``...expr=`` overrides for Hydra's override parser.

    A pattern is full of characters that parser reserves (``&``, ``|``, ``(``, ``,``), so the
    natural ``pattern.expr='causal & window(16)'`` (the shell drops the quotes) would be a Hydra
    syntax error. Values that already start with a quote, as in multirun sweeps
    (``"pattern.expr='causal','causal & window(16)'"``), are left as they are.

    >>> quote_expressions(["pattern.expr=causal & window(16)", "seed=1"])
    ["pattern.expr='causal & window(16)'", 'seed=1']
    """
    quoted = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.split(".")[-1].lstrip("+~") == "expr" and value[:1] not in ("'", '"'):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        quoted.append(f"{key}{eq}{value}")
    return quoted


def main() -> None:
    """The console script: quote pattern expressions, then hand over to Hydra."""
    sys.argv[1:] = quote_expressions(sys.argv[1:])
    _app()


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def _app(cfg: DictConfig) -> None:
    out_dir = pathlib.Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.mode not in MODES:
            raise ValueError(f"unknown mode={cfg.mode}; choose from "
                             + ", ".join(f"{name} ({what})" for name, what in MODES.items()))
        if cfg.mode in ("search", "report"):
            if cfg.pattern.expr is not None or cfg.pattern.default is not None:
                raise ValueError(f"pattern.expr is for mode=evaluate (pattern=<name> too); mode={cfg.mode} "
                                 "draws its patterns from the space: choose space=<name> instead")
            run = run_search_mode if cfg.mode == "search" else run_report_mode
            report = run(cfg, out_dir)
            if report is not None:
                print(f"report: {out_dir}/summary.md ({len(report.front)} patterns on the front)")
        else:
            print(json.dumps(run_evaluate(cfg, out_dir), indent=2))
    except (PatternError, ValueError, TypeError) as error:
        print(f"patternc-search: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

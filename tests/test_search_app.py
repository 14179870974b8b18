"""patternc-search as a user runs it: Hydra composition, mode=evaluate, errors, output files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from search.app import CONF, quote_expressions, run_evaluate

TINY = ["task=mqar", "task.n=32", "task.pairs=3", "task.keys=8", "task.values=6", "task.distances=[2,8,32]",
        "task.model.d_model=16", "task.model.head_dim=4", "task.train.steps=3", "task.train.batch=4",
        "task.train.eval_sequences=8", "task.train.threads=1"]


def compose_app(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["mode=evaluate", *overrides])


def cli(*args, tmp_path):
    command = [sys.executable, "-m", "search", "mode=evaluate", *args, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_compose_and_evaluate_an_inline_expression(tmp_path):
    cfg = compose_app(["pattern.expr='causal & window(8)'", *TINY])
    result = run_evaluate(cfg, tmp_path)
    assert result["status"] == "ok" and result["pattern"] == "causal & window(8)"
    assert (result["layers"], result["heads"]) == (2, 4)  # the model's, for a bare expression
    assert json.loads((tmp_path / "result.json").read_text())["accuracy"] == result["accuracy"]
    assert result["config"]["task"]["n"] == 32


def test_compose_a_stack_from_conf_pattern(tmp_path):
    cfg = compose_app(["pattern=sparse_transformer_strided", "pattern.layers=2", *TINY])
    result = run_evaluate(cfg, tmp_path)
    assert (result["layers"], result["heads"]) == (2, 8)  # the stack's heads, its depth overridden
    assert result["pattern"].startswith("Sparse Transformer strided")


def test_majority_task_group(tmp_path):
    cfg = compose_app(["task=majority", "pattern.expr=causal", "task.n=48", "task.groups=2",
                       "task.count=[3,6]", "task.train.steps=2", "task.train.eval_sequences=4",
                       "task.model.d_model=16"])
    assert run_evaluate(cfg, tmp_path)["task"] == "majority"


def test_typo_in_a_key_fails_at_composition():
    with pytest.raises(Exception, match="pairz"):
        compose_app(["task=mqar", "pattern.expr=causal", "task.pairz=3"])
    with pytest.raises(Exception, match=r"Error merging override task\.pairs=many"):
        compose_app(["task=mqar", "pattern.expr=causal", "task.pairs=many"])


def test_cli_prints_json_and_writes_the_result(tmp_path):
    run = cli("mode=evaluate", "pattern.expr=causal & window(8)", *TINY, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed["status"] == "ok" and printed["pattern"] == "causal & window(8)"
    assert json.loads((tmp_path / "result.json").read_text()) == printed


@pytest.mark.parametrize("args, message", [
    pytest.param(["pattern.expr=causal & windw(8)"], "unknown primitive 'windw'", id="bad_pattern"),
    pytest.param([], "no pattern given", id="no_pattern"),
    pytest.param(["pattern.expr=causal", "mode=serch"], "unknown mode=serch; choose from evaluate",
                 id="bad_mode"),
    pytest.param(["pattern.expr=causal", "mode=search"], "pattern.expr is for mode=evaluate",
                 id="pattern_in_search_mode"),
    pytest.param(["pattern.expr=causal", "task.pairs=30"], "task.pairs must be in [1, task.keys = 8]",
                 id="bad_task_value"),
])
def test_cli_errors_exit_2_with_a_message(tmp_path, args, message):
    run = cli(*TINY, *args, tmp_path=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("patternc-search: error: ") and message in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_shows_the_caret_under_a_bad_expression(tmp_path):
    run = cli("pattern.expr=causal & window(8", *TINY, tmp_path=tmp_path)
    assert run.returncode == 2 and "causal & window(8" in run.stderr and "^" in run.stderr


def test_quote_expressions():
    assert quote_expressions(["pattern.expr=causal & window(16)", "seed=1"]) == [
        "pattern.expr='causal & window(16)'", "seed=1"]
    assert quote_expressions(["+pattern.expr=it's"]) == ["+pattern.expr='it\\'s'"]
    already = "pattern.expr='causal','causal & window(4)'"
    assert quote_expressions([already]) == [already]


def test_conf_pattern_files_all_compose():
    for path in sorted((CONF / "pattern").glob("*.yaml")):
        cfg = compose_app([f"pattern={path.stem}"])
        assert cfg.pattern.default, path.name

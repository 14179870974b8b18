"""The search's adversarial suite: kill -9 at each step of a trial, crafted storage files, bad
values, a space that rejects everything, a database server restarted under running workers.

Each case asserts a clear error (``patternc-search: error: ...``, exit status 2, no traceback) or a
correct result: no completed trial lost, no trial left RUNNING once a study reports finished, every
reference scored exactly once. Searches run as real processes (``python -m search``) where a user's
process is what is attacked; every wait has a deadline and every child is killed in a ``finally``.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import pathlib
import resource
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import optuna
import pgserver
import pytest
from optuna.trial import TrialState
from searchconf import objects, tiny

from search import record
from search.accounting import account, counted
from search.errors import StorageError
from search.report import write_report
from search.study import run_search
from tests.test_report import SPACE, _study, _trial

HERE = pathlib.Path(__file__).resolve().parent
DEADLINE = 300  # seconds for one search process, on a slow shared machine


@pytest.fixture(autouse=True)
def cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path / "cost-cache"))


def search_cli(tmp_path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``patternc-search experiment=tiny ARGS`` run in ``tmp_path`` (its outputs/ there), or through
    tests/kill_at.py so that it SIGKILLs itself at stage ``kill_at``."""
    command = [sys.executable, *([str(HERE / "kill_at.py"), kill_at] if kill_at else ["-m", "search"]),
               "experiment=tiny", *args, f"hydra.run.dir={tmp_path / 'runs' / (kill_at or 'run')}"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL)


def assert_clear_error(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode == 2, run.stderr[-2000:]
    assert "patternc-search: error: " in run.stderr and message in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def only_study(url: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def test_kill_9_at_every_step_loses_nothing(tmp_path):
    """One study, killed at each step in turn (between two reference enqueues, in compile, reach,
    cost, training, while storing a result, before the report), each rerun at once: the last run
    ends with the study finished, every trial a killed run completed kept as it was, nothing
    RUNNING, each reference scored exactly once."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = (f"search.storage={url}", "search.n_trials=5", "search.heartbeat=1", "space.target.n=256")
    kept: dict[int, tuple] = {}
    for stage in ("enqueue", "compile", "reach", "cost", "train", "store", "report"):
        run = search_cli(tmp_path, *args, kill_at=stage)
        assert run.returncode == -9, f"{stage}: exited {run.returncode}\n{run.stderr[-2000:]}"
        trials = only_study(url).get_trials()
        for number, before in kept.items():
            t = trials[number]
            assert (t.state, t.params, t.values, t.user_attrs) == before, f"{stage} changed trial {number}"
        kept.update({t.number: (t.state, t.params, t.values, t.user_attrs) for t in trials
                     if t.state == TrialState.COMPLETE})
    final = search_cli(tmp_path, *args)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "Study finished" in (tmp_path / "runs" / "run" / "summary.md").read_text()
    study = only_study(url)
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    references = study.user_attrs["definition"]["space"]["references"]
    scored = [record.read(t).reference for t in trials if counted(t) and record.read(t).reference is not None]
    assert sorted(scored) == sorted(references)
    assert account(trials, 5, references).finished
    assert all(trials[n].state == TrialState.COMPLETE for n in kept)


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["kernel.backend=cuda_magic"], "kernel.backend must be one of auto, kernel, flex, sdpa",
                 id="backend"),
    pytest.param(["task.model.d_model=0"], "task.model.d_model must be an integer >= 2", id="d_model"),
    pytest.param(["search.timeout=-10"], "search.timeout must be null (no limit) or a positive",
                 id="timeout"),
    # a decode step at position 0 has no cached key to time: it passed start-up, then failed every trial
    pytest.param(["kernel.phase=decode", "kernel.context=0"], "kernel.context must be null (the last "
                 "position, target.n - 1) or an integer >= 1", id="context-0"),
    pytest.param(["space.kv_budget=nan"], "space.kv_budget is a fraction of a dense KV cache's bytes in "
                 "(0, 1], or null for no budget, got nan", id="kv-nan"),
    pytest.param(["space.kv_budget=0"], "space.kv_budget is a fraction", id="kv-0"),
    pytest.param(["space.kv_budget=-1"], "space.kv_budget is a fraction", id="kv-negative"),
])
def test_bad_values_exit_2_before_any_trial(tmp_path, overrides, message):
    run = search_cli(tmp_path, f"search.storage=sqlite:///{tmp_path / 's.db'}", *overrides)
    assert_clear_error(run, message)
    assert not (tmp_path / "s.db").exists()  # refused before the study was opened


@pytest.mark.parametrize("storage", [
    pytest.param(None, id="sqlite"),  # the issue's: 1,000 configs composed before the storage was checked
    pytest.param("postgresql+psycopg2://user:password@127.0.0.1:9/db", id="server"),  # never reached
])
def test_a_thousand_workers_are_refused_at_once(tmp_path, storage):
    command = [sys.executable, "-m", "search", "-m", "experiment=tiny", "search.workers=1000",
               *([f"search.storage={storage}"] if storage else []), f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)}, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)  # start-up is seconds; composing 1,000 jobs took minutes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert_clear_error(subprocess.CompletedProcess(command, proc.returncode, out, err),
                       "search.workers must be an integer in [1, 64] (each worker is a job")
    assert not (tmp_path / "sweep").exists()  # no job was launched


def _damaged(path: pathlib.Path) -> None:
    cfg = tiny(path.parent, "search.n_trials=1", "search.references=false", "space.target.n=256")
    run_search(*objects(cfg), progress=False)
    data = bytearray((path.parent / "s.db").read_bytes())
    data[4096:8192] = b"\xff" * 4096  # the second page: part of Optuna's tables
    path.write_bytes(bytes(data))


def _foreign(path: pathlib.Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
    db.close()


@pytest.mark.parametrize("craft, message", [
    pytest.param(lambda p: p.write_bytes(os.urandom(5000)), "is not a sqlite database", id="not-sqlite"),
    pytest.param(_foreign, "is the sqlite database of another application (tables: notes)", id="foreign"),
    pytest.param(_damaged, "is a damaged sqlite database", id="damaged"),
    pytest.param(lambda p: p.mkdir(), "is a directory", id="directory"),
])
def test_crafted_study_files_are_refused_naming_the_file(tmp_path, craft, message):
    path = tmp_path / "crafted" / "c.db"
    path.parent.mkdir()
    craft(path)
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(StorageError) as error:
        run_search(*objects(tiny(tmp_path, f"search.storage=sqlite:///{path}")), progress=False)
    assert str(path) in str(error.value) and message in str(error.value)
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing added to it


def test_a_foreign_file_is_refused_on_the_command_line(tmp_path):
    path = tmp_path / "notes.db"
    _foreign(path)
    assert_clear_error(search_cli(tmp_path, f"search.storage=sqlite:///{path}"),
                       f"{path} is the sqlite database of another application")
    with sqlite3.connect(path) as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["notes"]
    db.close()


def test_a_space_that_rejects_everything_exits_2_with_the_commonest_reason(tmp_path):
    run = search_cli(tmp_path, f"search.storage=sqlite:///{tmp_path / 's.db'}", "search.references=false",
                     "search.max_rejected=4", "space.density_budget=0.01")
    assert_clear_error(run, "stopping: 4 candidates rejected in this worker (search.max_rejected)")
    assert "commonest reason (4 of them): density" in run.stderr
    assert "Rejected before training: 4" in (tmp_path / "runs" / "run" / "summary.md").read_text()


@pytest.fixture
def private_postgres():
    if not os.environ.get("PATTERNC_TEST_POSTGRES") or pgserver.binaries() is None:
        pytest.skip("set PATTERNC_TEST_POSTGRES on a machine with PostgreSQL installed (.ci/run does): "
                    "this test starts and restarts a private server of its own")
    with pgserver.private_server() as server:
        yield server


def test_a_database_restart_does_not_kill_the_workers(tmp_path, private_postgres):
    """The server goes down for 3 s (three heartbeats) while a worker trains, then comes back: its storage
    calls wait and retry, it says so, finishes the budget and exits 0."""
    url, restart = private_postgres
    command = [sys.executable, "-m", "search", "experiment=tiny", f"search.storage={url}",
               "search.n_trials=3", "space.target.n=256", "search.storage_retry=60", "search.heartbeat=1",
               f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    try:
        deadline = time.monotonic() + DEADLINE
        while not _running(url) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        restart(3.0)
        err, _ = proc.communicate(timeout=DEADLINE)  # the log: stdout and stderr together
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "lost the database" in err and "the database answers again" in err, err[-3000:]
    trials = only_study(url).get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(map(counted, trials)) >= 3


def _running(url: str) -> bool:
    """Does the study there have a RUNNING trial yet?"""
    try:
        return any(t.state == TrialState.RUNNING for t in only_study(url).get_trials(deepcopy=False))
    except Exception:  # no tables or no study yet
        return False


# ---- what the report may recommend -----------------------------------------------------------------

def _fidelity(trial, fidelity: str):
    trial.user_attrs[record.RECORD] = {**trial.user_attrs.get(record.RECORD, {}), "fidelity": fidelity}
    return trial


def test_a_checkpoint_score_is_never_recommended(tmp_path):
    """The repro of issue 23 item 3 (then ``task.train.screen=0.5 task.train.promote_within=0``): a trial
    stopped at its checkpoint scored 0.252 on half the budget, every fully trained one 0.227. Its
    score stands beside no full one: not the best accuracy, not the cheapest near it, not on the
    front; trials.csv and report.html say which scores are checkpoint scores."""
    full = [_fidelity(_trial(f"causal & window({w})", 0.227, cost, params={"w": w}), "full")
            for w, cost in ((64, 0.30), (128, 0.45))]
    screened = _fidelity(_trial("causal & window(32)", 0.252, 0.20, params={"w": 32}), "screen")
    report = write_report(_study(*full, screened), SPACE, tmp_path, "mqar")
    summary = report.summary_md.read_text()
    assert "trial 2" not in summary and "0.252" not in summary, summary
    for fact in ("Best accuracy: trial 0 `causal & window(64)`: accuracy 0.227",
                 "Best feasible accuracy: trial 0",
                 "Cheapest feasible within 0.02 of the best accuracy: trial 0",
                 "Stopped at a screening rung (task.train.rungs): 1 trial"):
        assert fact in summary, summary
    assert [t.number for t in report.front] == [0]
    rows = list(csv.DictReader(report.trials_csv.open(encoding="utf-8")))
    assert [r["fidelity"] for r in rows] == ["full", "full", "checkpoint"]
    assert [r["number"] for r in csv.DictReader(report.pareto_csv.open(encoding="utf-8"))] == ["0"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    data = json.loads(page.split('id="report-data">')[1].split("</script>")[0])
    assert [(t["fidelity"], t["front"]) for t in data["trials"]] == [("full", 1), ("full", None),
                                                                     ("checkpoint", None)]


MARKERS = " ".join(f"__{name}__" for name in ("DATA", "TITLE", "JS", "CSS"))


def test_template_markers_in_names_leave_report_html_intact(tmp_path):
    """``__DATA__`` in a space's name (the page's title), a task's name, a classic pattern's name or a
    trial's expression is text: the page's data parses back whole and its script is there once."""
    space = dataclasses.replace(SPACE, name=MARKERS)
    trials = [_trial(f"causal & window(64) {MARKERS}", 0.6, 0.4, reference=MARKERS),  # off the front
              _trial("causal & window(32)", 0.7, 0.3, params={"w": 32})]
    write_report(_study(*trials), space, tmp_path, MARKERS)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    data = json.loads(page.split('id="report-data">')[1].split("</script>")[0])
    title = f"{MARKERS} on {MARKERS}: accuracy vs measured cost at target.n={SPACE.target.n}"
    assert (data["title"], data["task"], data["space"]) == (title, MARKERS, MARKERS)
    assert [(t["reference"], t["expression"]) for t in data["trials"]] == [
        (MARKERS, f"causal & window(64) {MARKERS}"), (None, "causal & window(32)")]
    assert f"<title>{html.escape(title)}</title>" in page and f"<h1>{html.escape(title)}</h1>" in page
    assert page.count("<script") == 2 and page.count("const DATA = JSON.parse(") == 1


# ---- task=calibrate: a model directory and token files from elsewhere ------------------------------

GENERATOR = {"pairs": 4, "keys": 8, "values": 8, "distances": [2, 16, 64]}  # MQAR's vocabulary: 17


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> pathlib.Path:
    """A tiny random Llama (2 layers, width 32) as save_pretrained writes it."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("saved") / "model"
    _llama(transformers, hidden_size=32).save_pretrained(path)
    return path


def _llama(transformers, hidden_size: int):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=17, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))


def _calibration(model: pathlib.Path, **changes):
    from search.calibrate import CalibrateConfig

    return CalibrateConfig(**{"model": str(model), "n": 64, "generator": dict(GENERATOR), "sequences": 2,
                              "threads": 1, **changes})


def _config_with(**changes):
    def craft(model: pathlib.Path) -> None:
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, **changes}))
    return craft


def _other_width(model: pathlib.Path) -> None:
    import transformers

    wide = model.parent / "wide"
    _llama(transformers, hidden_size=48).save_pretrained(wide)
    (wide / "model.safetensors").replace(model / "model.safetensors")


def _extra_tensor(model: pathlib.Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    save_file({**tensors, "extra.weight": torch.zeros(3)}, model / "model.safetensors",
              metadata={"format": "pt"})


class _Touch:
    """Unpickled, it creates the file ``marker``: proof that a pickle ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _pickle_only(model: pathlib.Path) -> None:
    import pickle

    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Touch(model.parent / "pickle-ran")))


def _missing_shard(model: pathlib.Path) -> None:
    from safetensors import safe_open

    with safe_open(model / "model.safetensors", "pt") as f:
        names = list(f.keys())
    (model / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00002.safetensors" for name in names}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("craft, message", [
    pytest.param(_config_with(num_hidden_layers=3), "lacks 9 tensors that its config.json (LlamaForCausalLM) "
                 "needs, first model.layers.2.input_layernorm.weight", id="config-more-layers"),
    pytest.param(lambda m: (m / "model.safetensors").unlink(), "holds no weights: no model.safetensors",
                 id="no-weights"),
    pytest.param(_other_width, "model.safetensors holds lm_head.weight of shape [17, 48], but its "
                 "config.json (LlamaForCausalLM) needs [17, 32]", id="other-width"),
    pytest.param(_extra_tensor, "model.safetensors holds extra.weight, which the model its config.json "
                 "describes (LlamaForCausalLM) has no place for", id="unexpected-tensor"),
    pytest.param(_pickle_only, "pytorch_model.bin is a pickle, which calibration never loads", id="pickle"),
    pytest.param(lambda m: (m / "model.safetensors").write_bytes(os.urandom(4096)),
                 "model.safetensors is not a safetensors file", id="not-safetensors"),
    pytest.param(_missing_shard, "model-00001-of-00002.safetensors, named by", id="missing-shard"),
    pytest.param(_config_with(num_hidden_layers=10**6), "its config.json claims 1,000,000 layers "
                 "(num_hidden_layers) but model.safetensors holds 21 tensors in all",
                 id="config-million-layers"),
    pytest.param(_config_with(pad_token_id=99), "its config.json describes no causal language model "
                 "transformers can build (AssertionError: Padding_idx must be within num_embeddings)",
                 id="config-unbuildable"),
])
def test_a_model_directory_is_checked_against_its_config_at_start_up(saved_model, tmp_path, craft, message):
    """Issue 23 item 9: weights that do not make the model config.json describes are refused before
    anything loads, naming the file and the tensor; a pickle is never run."""
    from search.calibrate import check_calibration
    from search.errors import ConfigError

    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    craft(model)
    with pytest.raises(ConfigError) as refused:
        check_calibration(_calibration(model))
    assert message in str(refused.value) and f"task.model: {model}" in str(refused.value)
    assert not (tmp_path / "pickle-ran").exists()


def test_uint64_ids_are_shown_as_they_are(saved_model, tmp_path):
    """Issue 23 item 14: an id of 2**64 - 1 in a uint64 file is named as such, not as -1."""
    from search.calibrate import check_calibration
    from search.errors import ConfigError

    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([3, 2**64 - 1] * 64, dtype=np.uint64))
    with pytest.raises(ConfigError, match=r"got ids from 3 to 18446744073709551615 in"):
        check_calibration(_calibration(saved_model, data=str(ids)))


def _claiming(path: pathlib.Path, ids: int) -> pathlib.Path:
    """A 1 KB .npy file whose header claims ``ids`` int64 ids."""
    header = {"descr": "<i8", "fortran_order": False, "shape": (ids,)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(1024))
    return path


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["task.sequences=100000000"],
                 "task.sequences x task.n = 100,000,000 x 64 = 6,400,000,000 tokens is over", id="sequences"),
    pytest.param(["task.data={tmp}/claims.npy"],
                 "task.data: {tmp}/claims.npy: its header claims 10,000,000,000 ids of int64 (80,000,000,000 "
                 "bytes), but the file holds 1,024 bytes of data", id="npy-header"),
])
def test_calibration_sizes_are_checked_before_allocating(saved_model, tmp_path, overrides, message):
    """Under 2 GiB of address space, as the hostile suite promises: refused at start-up (exit 2,
    naming the key or the file), not a MemoryError or a traceback for 74 GiB or 1.5 TiB."""
    _claiming(tmp_path / "claims.npy", 10**10)
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    generator = "{" + ",".join(f"{k}:{v}".replace(" ", "") for k, v in GENERATOR.items()) + "}"
    command = [sys.executable, "-m", "search", "mode=evaluate", "task=calibrate", f"task.model={saved_model}",
               f"task.generator={generator}", "task.n=64", "task.sequences=2", "pattern.expr=causal",
               *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    capped = 2 << 30
    run = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent)}, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (capped, capped)))
    assert_clear_error(run, message.replace("{tmp}", str(tmp_path)))

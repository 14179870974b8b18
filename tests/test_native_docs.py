"""docs/native.md runs as written: its Python blocks in order, its console block's output to the
character, its commands (the explorer at a shorter length), and its search commands compose."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from patternc.cli import main
from search.app import CONF
from search.space import check_space

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "docs" / "native.md").read_text()


def blocks(language: str) -> list[str]:
    return [block.split("```", 1)[0] for block in TEXT.split(f"```{language}\n")[1:]]


def test_the_readme_links_the_page():
    assert "docs/native.md" in (ROOT / "README.md").read_text()


def test_every_block_runs_as_written(capsys, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # the examples write outputs/ here and read conf/ from the repository
    os.symlink(ROOT / "conf", tmp_path / "conf")
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, "docs/native.md", "exec"), namespace)
    capsys.readouterr()
    (console,) = blocks("console")
    command, *expected = console.strip().splitlines()
    assert main(shlex.split(command.removeprefix("$ "))[1:]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    commands = [line for block in blocks("bash") for line in block.strip().splitlines()]
    assert len(commands) == 5
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "patternc-search":  # a study takes minutes: its config must compose and check
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                check_space(OmegaConf.to_object(compose("config", overrides=argv[1:]).space))
            continue
        if argv[1] == "show":  # a page at 128k takes a while; the same page at 8k
            argv[argv.index("--n") + 1] = "8192"
        assert main(argv[1:]) == 0, line
        assert Path(argv[-1]).stat().st_size > 0

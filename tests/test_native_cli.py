"""`patternc ... --from-config` and `patternc export --format hf-config | trtllm` as a user runs them:
a model's own attention read from its config.json, beside dense attention, written back out, and
bad input refused with exit status 2 and the key or layer named."""

from __future__ import annotations

import json
import time

import pytest

from patternc.cli import main
from patternc.explore import page_data
from patternc.native import read_config

S, F = "sliding_attention", "full_attention"
# Gemma 3's default text config as transformers 5.24 saves it (the keys the reading uses)
GEMMA3 = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 26,
          "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_size": 2304,
          "sliding_window": 4096, "max_position_embeddings": 131072, "dtype": "bfloat16",
          "layer_types": [F if (i + 1) % 6 == 0 else S for i in range(26)]}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gemma3(tmp_path):
    (tmp_path / "gemma3").mkdir()
    (tmp_path / "gemma3" / "config.json").write_text(json.dumps(GEMMA3))
    return str(tmp_path / "gemma3")


def test_kv_shows_the_models_own_cache_by_layer_beside_dense_in_under_a_second(capsys, gemma3):
    start = time.perf_counter()
    code, out, _ = run(capsys, "kv", "--from-config", gemma3, "--n", "131072")
    assert code == 0 and time.perf_counter() - start < 1.0
    lines = out.splitlines()
    assert lines[0] == "Gemma3ForCausalLM's own attention: 22 sliding (window 4,096) and 4 full layers"
    assert lines[1] == "n = 131,072, 26 layers x 8 heads, 4 KV heads x d 256, bfloat16"  # the config's
    per_key = 2 * 256 * 2  # K and V, head_dim 256, bf16
    sliding = 4 * 4096 * per_key  # a sliding layer: 4 KV heads of 4,096 keys
    assert f"keys per KV head 4,096, 4,096, 4,096, 4,096; every key is evicted; {sliding:,} bytes" in out
    assert "layers 5, 11, 17, 23: keys per KV head 131,072" in out
    assert f"dense attention: {4 * 131072 * per_key:,} bytes a layer" in out
    assert f"KV cache: {(22 * 4 * 4096 + 4 * 4 * 131072) * per_key:,} bytes" in out


def test_kv_json_names_the_model(capsys, gemma3):
    code, out, _ = run(capsys, "kv", "--from-config", gemma3, "--n", "8192", "--json", "--dtype", "fp32")
    data = json.loads(out)
    assert code == 0 and data["kv_heads"] == 4 and data["head_dim"] == 256 and data["dtype"] == "float32"
    assert data["model"]["layers"][5] == "causal" and data["model"]["layers"][0] == "causal & window(4096)"


def test_check_and_compile_read_the_config(capsys, gemma3):
    code, out, _ = run(capsys, "check", "--from-config", gemma3, "--n", "131072")
    assert code == 0 and "mixing depth: 6 layers" in out and out.startswith("Gemma3ForCausalLM's own")
    code, out, _ = run(capsys, "compile", "--from-config", gemma3, "--n", "8192", "--json")
    assert code == 0 and len(json.loads(out)["per_head"]) == 26 * 8


def test_the_explorer_shows_the_models_stack_and_its_cache_by_layer(capsys, gemma3, tmp_path):
    code, _, _ = run(capsys, "show", "--from-config", gemma3, "--n", "4096", "--layer", "5",
                       "--html", str(tmp_path / "g.html"))
    assert code == 0 and "Gemma3ForCausalLM&#x27;s own attention" in (tmp_path / "g.html").read_text()
    import patternc

    data = page_data(patternc.compile(read_config(gemma3).stack, n=8192))
    assert data["defaults"]["kv_heads"] == 4  # the GQA row opens on the model's own KV heads
    assert data["kv_layers"] == [{"layers": "0-4, 6-10, 12-16, 18-22, 24-25", "keys": 4 * 4096},
                                 {"layers": "5, 11, 17, 23", "keys": 4 * 8192}]
    ours = data["compare"][-1]
    assert sum(ours["kv_layer_keys"]) == 22 * 4 * 4096 + 4 * 4 * 8192


@pytest.mark.parametrize("fmt", ["hf-config", "trtllm"])
def test_export_then_read_gives_the_models_stack_back(capsys, gemma3, tmp_path, fmt):
    path = tmp_path / f"{fmt}.json"
    code, out, _ = run(capsys, "export", "--from-config", gemma3, "--n", "131072", "--format", fmt,
                       "-o", str(path))
    assert code == 0 and out.startswith("Gemma3ForCausalLM's own")
    assert f"wrote {path} ({fmt}: 22 sliding" in out
    written = json.loads(path.read_text())
    if fmt == "hf-config":
        assert written["layer_types"] == GEMMA3["layer_types"] and written["sliding_window"] == 4096
        assert read_config(path).stack.overrides == read_config(gemma3).stack.overrides
    else:
        assert written == {"max_seq_len": 131072, "kv_cache_config": {
            "max_attention_window": [131072 if t == F else 4096 for t in GEMMA3["layer_types"]]}}


def test_a_stack_outside_the_family_is_refused_or_widened_on_request(capsys, tmp_path):
    stack = tmp_path / "s.yaml"
    stack.write_text("layers: 3\nheads: 2\ndefault: causal & window(512)\n"
                     "overrides:\n  - {layers: 1, expr: 'causal & (window(512) | stride(1024))'}\n")
    path = tmp_path / "hf.json"
    code, _, err = run(capsys, "export", str(stack), "--n", "8192", "--format", "hf-config", "-o", str(path))
    assert code == 2 and not path.exists()
    assert err.startswith("patternc: error: layer 1, head 0: stride(1024) in causal & (window(512) | "
                          "stride(1024)) is not expressible by hf-config")
    code, out, _ = run(capsys, "export", str(stack), "--n", "8192", "--format", "hf-config", "-o", str(path),
                       "--superset")
    assert code == 0 and json.loads(path.read_text())["layer_types"] == [S, F, S]
    assert "superset: layer 1: causal & (window(512) | stride(1024)) -> causal (more keys" in out


@pytest.mark.parametrize("argv, message", [
    pytest.param(["kv", "--n", "64"],
                 "give a pattern (an expression or a stack file) or --from-config CONFIG, one of them",
                 id="neither"),
    pytest.param(["kv", "causal", "--from-config", "x", "--n", "64"], "not both", id="both"),
    pytest.param(["export", "causal", "--n", "64", "--format", "bsr", "-o", "x", "--superset"],
                 "--superset applies to --format hf-config or trtllm, not bsr", id="superset_elsewhere"),
    pytest.param(["export", "causal & (window(8) | sink(2))", "--n", "64", "--format", "hf-config",
                  "-o", "x"],
                 "layer 0, head 0: sink(2) in causal & (window(8) | sink(2)) is not expressible", id="sinks"),
    pytest.param(["export", "causal & chunk(8)", "--n", "64", "--format", "trtllm", "-o", "x"],
                 "layer 0, head 0: chunk(8) in causal & chunk(8) is not expressible by trtllm", id="chunks"),
])
def test_bad_requests_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.startswith("patternc: error: ")


@pytest.mark.parametrize("config, message", [
    pytest.param(None, "is a model directory without a config.json", id="no_config"),
    pytest.param({**GEMMA3, "layer_types": ["mamba"] * 26},
                 "no attention layers: layer_types holds only mamba",
                 id="no_attention_layers"),
    pytest.param({**GEMMA3, "layer_types": [S] * 25 + ["linear_attention"]},
                 "layer_types[25] is 'linear_attention'", id="unknown_type"),
    pytest.param({**GEMMA3, "sliding_window": 262144}, "sliding_window = 262,144 is larger than the context",
                 id="window_past_context"),
])
def test_bad_configs_exit_2_naming_the_key(capsys, tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "kv", "--from-config", str(tmp_path), "--n", "4096")
    assert code == 2 and message in err and err.startswith("patternc: error: ")

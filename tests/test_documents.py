"""Packed documents: ``documents($starts)`` with the starts bound per batch as a list parameter,
composed with the rest of the language, exact against a dense oracle, and every fault of a list
parameter a clear error. (Its oracle entry is in test_lowering_oracle.py with every primitive.)"""

from __future__ import annotations

import numpy as np
import pytest

import patternc

PACKED = "causal & window(16) & documents($starts)"


def oracle(n: int, starts: list[int], window: int) -> np.ndarray:
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    doc = np.searchsorted(np.array(sorted({0, *starts})), np.arange(n), "right")
    return (k <= q) & (q - k < window) & (doc[q] == doc[k])


@pytest.mark.parametrize("starts", [[0], [37], [5, 6, 7], [1, 64, 65, 127], list(range(0, 200, 9))])
@pytest.mark.parametrize("block", [8, (16, 32), 5])
def test_packed_windows_are_exact_per_batch(starts, block):
    cp = patternc.compile(PACKED, n=200, block=block, params={"starts": starts})
    np.testing.assert_array_equal(cp.to_dense(0, 0), oracle(200, starts, 16))
    assert cp.stats().at(0, 0).waste_blocks == 0


def test_each_batch_compiles_its_own_documents():
    a = patternc.compile(PACKED, n=256, params={"starts": [0, 100]})
    b = patternc.compile(PACKED, n=256, params={"starts": [0, 50, 200]})
    assert not np.array_equal(a.to_dense(0, 0), b.to_dense(0, 0))
    np.testing.assert_array_equal(b.to_dense(0, 0), oracle(256, [50, 200], 16))


def test_a_list_parameter_in_a_stack_file_round_trips(tmp_path):
    path = tmp_path / "packed.yaml"
    path.write_text("layers: 2\ncausal: true\ndefault: causal & documents($starts)\n"
                    "params: {starts: [0, 40]}\n")
    cp = patternc.compile(path, n=128, block=16)
    cp.save(tmp_path / "packed.safetensors")
    back = patternc.load(tmp_path / "packed.safetensors")
    assert back.params == {"starts": (0, 40)}
    np.testing.assert_array_equal(back.to_dense(1, 0), cp.to_dense(1, 0))
    assert patternc.Stack.from_dict(cp.stack.to_dict()) == cp.stack


LIST_ONLY = "must be a number or a list of integers"


@pytest.mark.parametrize("expr, params, message", [
    pytest.param("documents($starts)", {}, r"parameter \$starts is not bound", id="unbound"),
    pytest.param("documents($starts)", {"starts": 3}, r"takes a list, but parameter \$starts is the number 3",
                 id="number_for_list"),
    pytest.param("window($w)", {"w": [1, 2]}, r"parameter \$w is a list; a number is needed here",
                 id="list_for_number"),
    pytest.param("documents($starts)", {"starts": [0, 300]}, r"position 300 .* outside the sequence",
                 id="outside"),
    pytest.param("documents($starts)", {"starts": [0, 1.5]}, LIST_ONLY, id="float"),
    pytest.param("documents($starts)", {"starts": [True]}, LIST_ONLY, id="bool"),
])
def test_bad_list_parameters_are_clear_errors(expr, params, message):
    with pytest.raises(patternc.PatternError, match=message):
        patternc.compile(expr, n=256, params=params)


def test_a_packed_pattern_keeps_no_key_past_its_document():
    cp = patternc.compile("causal & documents($starts)", n=1024, params={"starts": [0, 300, 700]})
    report = patternc.kv(cp)
    assert report.forever == (((),),)
    assert report.max_live_keys == ((400,),)  # the longest document

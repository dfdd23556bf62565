"""recon_core.checkpoint: nested state ↔ safetensors + JSON, never unpickling."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch

from recon_core.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from recon_core.errors import InputError


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def test_nested_state_round_trips_exactly(tmp_path):
    params = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([params], lr=0.1)
    params.sum().backward()
    opt.step()
    state = {
        "rep": {"means": torch.randn(5, 3), "opacity": torch.rand(5, dtype=torch.float64), "count": torch.tensor(7)},
        "optimizer": opt.state_dict(),  # int keys, tuples (betas), None values
        "rng": torch.get_rng_state(),
        "position": {"refiner": 1, "step": 500},
        "names": ["a", "b"],
        "flags": (True, None, 2.5),
        "empty": torch.zeros(0, 3),
    }
    save_checkpoint(tmp_path, state)
    assert checkpoint_exists(tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert _equal(state["rep"], loaded["rep"])
    assert _equal(state["optimizer"], loaded["optimizer"])
    assert _equal(state, loaded)
    # the optimizer state loads back into a fresh optimizer
    opt2 = torch.optim.Adam([torch.nn.Parameter(params.detach().clone())], lr=0.1)
    opt2.load_state_dict(loaded["optimizer"])


def test_colliding_paths_and_shared_tensors(tmp_path):
    shared = torch.arange(6.0)
    state = {"a/b": torch.ones(2), "a": {"b": torch.zeros(3)}, "x": shared, "y": shared, "view": shared[:3]}
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)
    assert _equal(loaded, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})


def test_unsupported_values_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a value of type object at 'bad'"):
        save_checkpoint(tmp_path, {"bad": object()})


def test_missing_or_corrupt_checkpoints_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no checkpoint here"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.ones(1)})
    (tmp_path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.ones(1)})
    (tmp_path / "state.json").write_text(json.dumps({"format": "pickle", "state": {}}))
    with pytest.raises(InputError, match="not a recon checkpoint"):
        load_checkpoint(tmp_path)


_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False), st.text(max_size=5),
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=0, max_size=4).map(lambda v: torch.tensor(v, dtype=torch.float32)),
)
_states = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(min_size=1, max_size=4), children, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.dictionaries(st.text(min_size=1, max_size=4), _states, max_size=3))
def test_any_nested_state_round_trips(tmp_path, state):
    save_checkpoint(tmp_path, state)
    assert _equal(state, load_checkpoint(tmp_path))


@pytest.mark.parametrize("structure", [
    {"__tensor__": "missing"},
    {"__dict__": [["w", {"__tensor__": "nope"}]]},
    {"__dict__": "not a list"},
    {"__dict__": [["only the key"]]},
    {"__list__": {"a": 1}},
    {"__dict__": [["w", [1, 2]]]},
    {"__weird__": 1},
    [1, 2, 3],
    "a string",
])
def test_a_tampered_state_json_is_an_input_error_naming_it(tmp_path, structure):
    save_checkpoint(tmp_path, {"w": torch.ones(1)})
    (tmp_path / "state.json").write_text(json.dumps({"format": "recon-checkpoint-1", "state": structure}))
    with pytest.raises(InputError, match="invalid") as e:
        load_checkpoint(tmp_path)
    assert e.value.path == tmp_path / "state.json"


@pytest.mark.parametrize("content", ["[1, 2]", "null", '{"format": "recon-checkpoint-1"}', "{not json", "\udcff"])
def test_a_state_json_that_is_not_a_checkpoint_object_is_an_input_error(tmp_path, content):
    save_checkpoint(tmp_path, {"w": torch.ones(1)})
    (tmp_path / "state.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(InputError) as e:
        load_checkpoint(tmp_path)
    assert e.value.path == tmp_path / "state.json"


def test_a_corrupt_tensor_file_is_reported_as_the_tensor_file(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.ones(100)})
    data = (tmp_path / "state.safetensors").read_bytes()
    for broken in (b"garbage", data[: len(data) // 2]):
        (tmp_path / "state.safetensors").write_bytes(broken)
        with pytest.raises(InputError, match="tensor file cannot be read") as e:
            load_checkpoint(tmp_path)
        assert e.value.path == tmp_path / "state.safetensors"

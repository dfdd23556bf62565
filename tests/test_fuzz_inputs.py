"""Issue 25: fuzzing the recon CLI's inputs with hypothesis.

Each strategy starts from a valid input (transforms.json, cameras.npz, a PLY point cloud, a run's
config.json) and mutates it: drops keys, changes types, inserts NaN / inf / huge numbers, truncates
the file. Every case must exit 2 (bad input, no traceback) or 0 (the mutation happened to be valid:
then what was loaded or trained is finite), and the workspace's pre-existing run folder and data
must be byte-for-byte as before.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loaders_support.bad_inputs import (cli, template,  # noqa: F401 - shared fixtures
                                        assert_untouched, copy_workspace, invoke,
                                        model_is_finite, tree_hashes)


SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True,  # the same cases every run (CI)
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=5),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 0.0, -1.0, 1.5]),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))



def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON document (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_json(draw, doc: Any) -> str:
    """``doc`` with 1-3 mutations (drop / replace with any value / numeric poison), serialised, maybe truncated."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["drop", "replace", "poison"]))
        if op == "drop":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(VALUES)
        else:
            parent[path[-1]] = draw(st.sampled_from([float("nan"), float("inf"), -1e300, 1e300, -5, 0, 1.5]))
    text = json.dumps(doc)
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _check(cli, root: Path, args: list, allowed_new: tuple[str, ...] = ("out",)) -> Any:
    before = tree_hashes(root / "run")
    result = invoke(cli, args)
    text = result.output + (result.stderr or "")
    assert result.exit_code in (0, 2), f"exit {result.exit_code} for {args}:\n{text[-2000:]}"
    assert "Traceback" not in text
    assert_untouched(before, tree_hashes(root / "run")) if result.exit_code == 2 else None
    return result


def _inspect_is_finite(result) -> None:
    views = json.loads(result.stdout)["views"]
    assert views and all(np.isfinite(v["K"]).all() and np.isfinite(v["c2w"]).all() for v in views)


def _workspace(template: Path) -> tuple[tempfile.TemporaryDirectory, Path]:
    tmp = tempfile.TemporaryDirectory(prefix="recon-fuzz-")
    return tmp, copy_workspace(template, Path(tmp.name) / "ws")


def test_fuzz_transforms_json(cli, template):
    valid = json.loads((template / "ns" / "transforms.json").read_text())

    @SETTINGS
    @given(text=mutated_json(valid))
    def check(text):
        tmp, root = _workspace(template)
        with tmp:
            (root / "ns" / "transforms.json").write_text(text)
            data_before = tree_hashes(root / "ns")
            result = _check(cli, root, ["inspect-data", root / "ns", "--json"])
            assert tree_hashes(root / "ns") == data_before
            if result.exit_code == 0:
                _inspect_is_finite(result)

    check()


ARRAY_POISON = st.sampled_from(["drop", "nan", "inf", "huge", "zeros", "shape", "strings", "object-ish", "scalar"])


def test_fuzz_cameras_npz(cli, template):
    with np.load(template / "idr" / "cameras.npz") as f:
        valid = dict(f)

    @SETTINGS
    @given(ops=st.lists(st.tuples(st.sampled_from(sorted(valid)), ARRAY_POISON, st.integers(0, 15)), min_size=1, max_size=3),
           truncate=st.one_of(st.none(), st.integers(0, 2000)))
    def check(ops, truncate):
        arrays = {k: v.copy() for k, v in valid.items()}
        for key, op, at in ops:
            if key not in arrays:
                continue
            a = arrays[key].astype(np.float64)
            if op == "drop":
                del arrays[key]
                continue
            if op in ("nan", "inf", "huge"):
                a.reshape(-1)[at % a.size] = {"nan": np.nan, "inf": np.inf, "huge": 1e300}[op]
            elif op == "zeros":
                a = np.zeros_like(a)
            elif op == "shape":
                a = a.reshape(-1)[: at % a.size + 1]
            elif op == "strings":
                a = a.astype(str)
            elif op == "object-ish":
                a = np.array([True, False])
            else:
                a = np.float64(at)
            arrays[key] = a
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        raw = buf.getvalue()
        if truncate is not None:
            raw = raw[:truncate]
        tmp, root = _workspace(template)
        with tmp:
            (root / "idr" / "cameras.npz").write_bytes(raw)
            result = _check(cli, root, ["inspect-data", root / "idr", "--loader", "idr", "--json"])
            if result.exit_code == 0:
                _inspect_is_finite(result)

    check()


PLY_HEADER = ["ply", "format binary_little_endian 1.0", "element vertex 6", "property float x", "property float y",
              "property float z", "property uchar red", "property uchar green", "property uchar blue", "end_header"]


def _ply_body(n: int = 6) -> bytes:
    rows = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rows["x"] = np.arange(n)
    rows["red"] = 200
    return rows.tobytes()


@st.composite
def mutated_ply(draw) -> bytes:
    header = list(PLY_HEADER)
    body = bytearray(_ply_body())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop-line", "count", "type", "format", "poison", "truncate", "garbage"]))
        if op == "drop-line" and len(header) > 1:
            header.pop(draw(st.integers(0, len(header) - 1)))
        elif op == "count":
            header = [f"element vertex {draw(st.integers(-2, 20))}" if h.startswith("element vertex") else h for h in header]
        elif op == "type":
            i = draw(st.sampled_from([i for i, h in enumerate(header) if h.startswith("property")] or [0]))
            header[i] = header[i].replace(header[i].split()[1] if len(header[i].split()) > 1 else "", draw(
                st.sampled_from(["double", "uchar", "int", "list uchar int", "bogus"])), 1)
        elif op == "format":
            header = [f"format {draw(st.sampled_from(['ascii', 'binary_big_endian', 'weird']))} 1.0"
                      if h.startswith("format") else h for h in header]
        elif op == "poison" and len(body) >= 15:
            row = draw(st.integers(0, len(body) // 15 - 1))
            col = draw(st.integers(0, 2))
            value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38]))
            body[row * 15 + 4 * col: row * 15 + 4 * col + 4] = np.float32(value).tobytes()
        elif op == "truncate":
            body = body[: draw(st.integers(0, len(body)))]
        elif op == "garbage":
            body += draw(st.binary(max_size=20))
    return ("\n".join(header) + "\n").encode() + bytes(body)


def test_fuzz_ply_point_cloud(cli, template):
    @SETTINGS
    @given(raw=mutated_ply())
    def check(raw):
        tmp, root = _workspace(template)
        with tmp:
            (root / "ns" / "points.ply").write_bytes(raw)
            meta = json.loads((root / "ns" / "transforms.json").read_text())
            meta["ply_file_path"] = "points.ply"
            (root / "ns" / "transforms.json").write_text(json.dumps(meta))
            result = _check(cli, root, ["inspect-data", root / "ns", "--json"])
            if result.exit_code == 0:
                _inspect_is_finite(result)
                assert json.loads(result.stdout)["point_cloud"] >= 1
            else:
                assert "points.ply" in result.stderr

    check()


def test_fuzz_config_json(cli, template):
    valid = json.loads((template / "run" / "config.json").read_text())
    valid["run"]["save_renders"] = False

    @SETTINGS
    @given(text=mutated_json(valid))
    def check(text):
        tmp, root = _workspace(template)
        with tmp:
            doc_text = text.replace(str(template), str(root))
            (root / "cfg.json").write_text(doc_text)
            before = tree_hashes(root / "run")
            result = _check(cli, root, ["run", "--config", root / "cfg.json", "--set", "toy-fit.steps=1",
                                        "--out", root / "run", "--overwrite"])
            if result.exit_code == 0:
                assert model_is_finite(root / "run")
            else:
                assert tree_hashes(root / "run") == before
                assert not [p for p in root.iterdir() if p.name.startswith(".")]

    check()

"""Shared pieces of the bad-input table and fuzz tests (tests/test_bad_inputs.py, tests/test_fuzz_inputs.py).

A *workspace* is a folder holding a tiny nerfstudio scene (``ns/``), a tiny IDR scene (``idr/``)
and a finished toy run on ``ns`` (``run/``). It is built once per module (:func:`make_workspace`)
and copied for each case (:func:`copy_workspace`), so a case may damage its copy freely.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from . import write_idr, write_transforms

FAST_RUN = ("--repr", "toy-grid", "--set", "toy-fit.steps=1", "--eval", "none")


def bad_input_registry():
    """The toy plugin plus the built-in loaders and gaussians (nerfstudio, idr, 3dgs): no GPU, no weights."""
    import recon_toy

    import recon_plugins.gaussians
    import recon_plugins.loaders
    from recon_core.registry import Registry

    return Registry(entry_points=[], modules=[("toy", recon_toy), ("loaders", recon_plugins.loaders),
                                              ("gaussians", recon_plugins.gaussians)], disabled=())


def invoke(cli, args: Sequence[Any]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def make_workspace(root: Path, cli) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_transforms(root / "ns")
    write_idr(root / "idr")
    result = invoke(cli, ["run", "--data", root / "ns", *FAST_RUN, "--out", root / "run"])
    assert result.exit_code == 0, result.output
    return root


def copy_workspace(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, dirs_exist_ok=True)
    # the copied run's config.json names the template's data; point it at this copy
    config = dest / "run" / "config.json"
    doc = json.loads(config.read_text())
    doc["data"] = str(dest / "ns")
    config.write_text(json.dumps(doc, indent=2))
    return dest


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder`` (folders themselves as "<dir>")."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def assert_untouched(before: dict[str, str], after: dict[str, str], allowed_new: Sequence[str] = ()) -> None:
    """Every path of ``before`` is still there with the same bytes; new paths only under ``allowed_new``."""
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"changed or removed: {changed[:5]}"
    new = [k for k in after if k not in before and not any(k == a or k.startswith(a + "/") for a in allowed_new)]
    assert not new, f"unexpected new paths: {new[:5]}"


def assert_clean_exit(result: Result, code: int) -> str:
    """Exit ``code``, no traceback; returns stdout + stderr."""
    text = result.output + (result.stderr or "")
    assert result.exit_code == code, f"exit {result.exit_code}, wanted {code}:\n{text[-2000:]}"
    assert "Traceback" not in text
    if code == 2:
        assert "error" in result.stderr.lower()
    return text


def model_is_finite(run_dir: Path) -> bool:
    """Every numeric array a toy run saved (grid.npy, checkpoints' safetensors) is finite."""
    grids = list(run_dir.rglob("*.npy"))
    states = list(run_dir.rglob("*.safetensors"))
    plys = list(run_dir.rglob("*.ply"))
    assert grids or states or plys, f"no model file in {run_dir}"
    ok = all(np.isfinite(np.load(g)).all() for g in grids)
    for ply in plys:
        from plyfile import PlyData

        for el in PlyData.read(str(ply)).elements:
            ok = ok and all(np.isfinite(el[p.name]).all() for p in el.properties if el[p.name].dtype.kind == "f")
    for st in states:
        from safetensors.numpy import load_file

        ok = ok and all(np.isfinite(a).all() for a in load_file(str(st)).values() if a.dtype.kind == "f")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        json.loads(metrics.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    return ok


# Fixtures shared by the bad-input table and the fuzz test (import them into the test module).


@pytest.fixture(scope="module")
def cli():  # noqa: ANN201 - a click.Group
    """The ``recon`` CLI over the toy plugin plus the real loaders and gaussians plugins."""
    from recon_cli.main import make_cli

    return make_cli(bad_input_registry())


@pytest.fixture(scope="module")
def template(cli, tmp_path_factory) -> Path:  # noqa: ANN001
    """A workspace (tiny scenes and a finished run) that each case copies."""
    return make_workspace(tmp_path_factory.mktemp("bad-inputs-template"), cli)

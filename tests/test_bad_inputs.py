"""Issue 25: a table of bad inputs to the recon CLI.

Each row builds one bad input in a fresh copy of a tiny workspace (a nerfstudio scene ``ns/``, an
IDR scene ``idr/`` and a finished toy run ``run/``, see tests/loaders_support/bad_inputs.py), runs
one command in-process and checks: the exit code (2 for bad input, 0 for a documented success),
a substring of the message (usually the file's name), no traceback, and that nothing that existed
before was changed (every file hashed before and after; new files only in the case's own ``out/``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loaders_support import write_ply
from loaders_support.bad_inputs import (cli, template,  # noqa: F401 - shared fixtures
                                        FAST_RUN, assert_clean_exit, assert_untouched, copy_workspace, invoke,
                                        model_is_finite, tree_hashes)


# ------------------------------------------------------------------------------ builders


def _edit_json(path: str, edit: Callable[[Any], Any]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        file = root / path
        doc = json.loads(file.read_text())
        edit(doc)  # in place; a whole new document is written with _write
        file.write_text(json.dumps(doc))
    return build


def _ns(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    return _edit_json("ns/transforms.json", edit)


def _frame(i: int, key: str, value: Any) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        if value is _DROP:
            del meta["frames"][i][key]
        else:
            meta["frames"][i][key] = value
    return edit


def _top(key: str, value: Any) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        if value is _DROP:
            del meta[key]
        else:
            meta[key] = value
    return edit


_DROP = object()


def _write(path: str, content: bytes | str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content.encode() if isinstance(content, str) else content)
    return build


def _delete(path: str) -> Callable[[Path], None]:
    return lambda root: (root / path).unlink()


def _both(*builds: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        for b in builds:
            b(root)
    return build


def _matrix(value: float, row: int = 0, col: int = 3) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        meta["frames"][1]["transform_matrix"][row][col] = value
    return edit


def _ns_ply(make: Callable[[Path], None]) -> Callable[[Path], None]:
    """The scene's transforms.json points at ns/points.ply, which ``make`` writes."""
    def build(root: Path) -> None:
        make(root / "ns" / "points.ply")
        _ns(_top("ply_file_path", "points.ply"))(root)
    return build


def _xyz_ply(points: np.ndarray) -> Callable[[Path], None]:
    return lambda path: write_ply(path, points.astype(np.float32))


def _raw_ply(fields: list[str], rows: np.ndarray) -> Callable[[Path], None]:
    """A binary PLY with float32 ``fields`` and the given rows."""
    def make(path: Path) -> None:
        from plyfile import PlyData, PlyElement

        data = np.empty(len(rows), dtype=[(f, "f4") for f in fields])
        for i, f in enumerate(fields):
            data[f] = rows[:, i]
        PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return make


def _splat_fields(n_rest: int) -> list[str]:
    return (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _splat_rows(n_rest: int, n: int = 5, nan_row: int | None = None) -> np.ndarray:
    rows = np.random.default_rng(0).standard_normal((n, len(_splat_fields(n_rest)))).astype(np.float32)
    if nan_row is not None:
        rows[nan_row, 1] = np.nan
    return rows


def _npz(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        path = root / "idr" / "cameras.npz"
        with np.load(path) as f:
            arrays = dict(f)
        edit(arrays)
        np.savez(path, **arrays)
    return build


def _npz_set(key: str, value: Any) -> Callable[[dict], None]:
    def edit(arrays: dict) -> None:
        if value is _DROP:
            del arrays[key]
        else:
            arrays[key] = value
    return edit


def _config(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    """cfg.json: the workspace run's config.json, edited (the template run: toy-grid, toy-fit steps=1)."""
    def build(root: Path) -> None:
        doc = json.loads((root / "run" / "config.json").read_text())
        edit(doc)
        (root / "cfg.json").write_text(json.dumps(doc))
    return build


def _cfg_refiner(key: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc["refiners"][0]["config"][key] = value
    return edit


def _cfg_run(key: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc["run"][key] = value
    return edit


def _cfg_top(key: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    return edit


def _nothing(root: Path) -> None:
    pass


def _junk_folder(name: str) -> Callable[[Path], None]:
    return _write(f"{name}/notes.txt", "keep me")


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], None]
    args: tuple[str, ...]  # "{root}" is the case's workspace
    code: int
    message: str  # must be in stdout + stderr; "{root}" is replaced too
    xfail: str | None = None


INSPECT_NS = ("inspect-data", "{root}/ns", "--json")
INSPECT_IDR = ("inspect-data", "{root}/idr", "--json")
RUN_NS = ("run", "--data", "{root}/ns", *FAST_RUN, "--out", "{root}/run", "--overwrite")
"""Replaces the workspace's run only if everything succeeds: a bad input must leave it as it was."""
RUN_OUT = ("run", "--data", "{root}/ns", *FAST_RUN, "--out", "{root}/out")
RUN_CFG = ("run", "--config", "{root}/cfg.json", "--out", "{root}/run", "--overwrite")
PLY_3DGS = ("run", "--data", "{root}/ns", "--repr", "3dgs", "--eval", "none", "--set", "3dgs.init=ply", "--set", "3dgs-train.steps=1",
            "--set", "3dgs.ply_path={root}/g.ply", "--out", "{root}/out")
TF = "transforms.json"

CASES = [
    # transforms.json
    Case("ns-not-json", _write("ns/transforms.json", "{not json"), INSPECT_NS, 2, TF),
    Case("ns-empty-file", _write("ns/transforms.json", ""), INSPECT_NS, 2, TF),
    Case("ns-top-level-list", _write("ns/transforms.json", "[1, 2]"), INSPECT_NS, 2, "top level must be a JSON object"),
    Case("ns-no-frames-key", _ns(_top("frames", _DROP)), INSPECT_NS, 2, "missing 'frames' list"),
    Case("ns-frames-not-list", _ns(_top("frames", "images/*.png")), INSPECT_NS, 2, TF),
    Case("ns-zero-frames", _ns(_top("frames", [])), INSPECT_NS, 2, "lists no frames"),
    Case("ns-frame-not-object", _ns(lambda m: m["frames"].__setitem__(0, 7)), INSPECT_NS, 2, "must be a JSON object"),
    Case("ns-frame-no-file-path", _ns(_frame(0, "file_path", _DROP)), INSPECT_NS, 2, "has no 'file_path'"),
    Case("ns-frame-file-path-int", _ns(_frame(0, "file_path", 12)), INSPECT_NS, 2, TF),
    Case("ns-frame-no-matrix", _ns(_frame(0, "transform_matrix", _DROP)), INSPECT_NS, 2, "has no 'transform_matrix'"),
    Case("ns-matrix-string", _ns(_frame(0, "transform_matrix", "identity")), INSPECT_NS, 2, TF),
    Case("ns-matrix-3x3", _ns(_frame(0, "transform_matrix", np.eye(3).tolist())), INSPECT_NS, 2, TF),
    Case("ns-matrix-ragged", _ns(_frame(0, "transform_matrix", [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
         INSPECT_NS, 2, TF),
    Case("ns-matrix-nan", _ns(_matrix(float("nan"))), INSPECT_NS, 2, TF),
    Case("ns-matrix-inf", _ns(_matrix(float("inf"))), INSPECT_NS, 2, TF),
    Case("ns-matrix-1e300", _ns(_matrix(1e300)), INSPECT_NS, 2, TF),
    Case("ns-matrix-rotation-1e300", _ns(_matrix(1e300, 0, 0)), INSPECT_NS, 2, TF),
    Case("ns-matrix-singular", _ns(_frame(1, "transform_matrix", np.zeros((4, 4)).tolist())), INSPECT_NS, 2, TF),
    Case("ns-matrix-null-entry", _ns(_matrix(None)), INSPECT_NS, 2, TF),  # type: ignore[arg-type]
    Case("ns-negative-focal", _ns(_top("fl_x", -20.0)), INSPECT_NS, 2, "fl_x"),
    Case("ns-zero-focal", _ns(_top("fl_y", 0.0)), INSPECT_NS, 2, "fl_y"),
    Case("ns-focal-string", _ns(_top("fl_x", "twenty")), INSPECT_NS, 2, "fl_x"),
    Case("ns-focal-nan", _ns(_top("fl_x", float("nan"))), INSPECT_NS, 2, "fl_x"),
    Case("ns-focal-1e300", _ns(_top("fl_x", 1e300)), INSPECT_NS, 2, "fl_x"),
    Case("ns-cx-inf", _ns(_top("cx", float("inf"))), INSPECT_NS, 2, "cx"),
    Case("ns-no-intrinsics", _ns(lambda m: [m.pop(k) for k in ("fl_x", "fl_y")]), INSPECT_NS, 2, "missing intrinsics"),
    Case("ns-w-without-h", _ns(_top("h", _DROP)), INSPECT_NS, 2, "'w' and 'h' must be given together"),
    Case("ns-w-fraction", _ns(_top("w", 16.5)), INSPECT_NS, 2, "whole pixels"),
    Case("ns-w-negative", _ns(_top("w", -16)), INSPECT_NS, 2, TF),
    Case("ns-camera-model-int", _ns(_top("camera_model", 3)), INSPECT_NS, 2, "camera_model must be a string"),
    Case("ns-camera-model-unknown", _ns(_top("camera_model", "FISHEYE624")), INSPECT_NS, 2, "not supported"),
    Case("ns-bad-split", _ns(_frame(0, "split", "validation")), INSPECT_NS, 2, "has split"),
    Case("ns-time-on-some-frames", _ns(_frame(0, "time", 0.5)), INSPECT_NS, 2, "'time' is given for some frames"),
    Case("ns-time-nan", _ns(lambda m: [f.__setitem__("time", float("nan")) for f in m["frames"]]), INSPECT_NS, 2, TF),
    Case("ns-all-images-missing", lambda root: [p.unlink() for p in (root / "ns" / "images").iterdir()], INSPECT_NS, 2,
         "missing"),
    Case("ns-image-missing-strict", _delete("ns/images/0001.png"),
         ("run", "--data", "{root}/ns", *FAST_RUN, "--set", "nerfstudio.strict=true", "--out", "{root}/run", "--overwrite"),
         2, "0001.png"),
    Case("ns-image-missing-strict-inspect", _delete("ns/images/0001.png"), (*INSPECT_NS, "--set", "nerfstudio.strict=true"),
         2, "0001.png"),
    Case("inspect-set-other-component", _nothing, (*INSPECT_NS, "--set", "toy-fit.steps=1"), 2, "only options of the loader"),
    Case("inspect-set-unknown-option", _nothing, (*INSPECT_NS, "--set", "nerfstudio.speed=1"), 2, "speed"),
    Case("ns-image-missing-lenient", _delete("ns/images/0001.png"), RUN_OUT, 0, "run finished"),  # skipped with a warning
    Case("ns-image-not-an-image", _write("ns/images/0002.png", b"\x89PNG\r\n\x1a\ntruncated"), INSPECT_NS, 2, "0002.png"),
    # PLY point cloud of a nerfstudio scene
    Case("ns-ply-not-a-ply", _ns_ply(lambda p: p.write_text("hello")), INSPECT_NS, 2, "points.ply"),
    Case("ns-ply-file-missing", _ns(_top("ply_file_path", "nowhere.ply")), INSPECT_NS, 2, "nowhere.ply"),
    Case("ns-ply-no-xyz", _ns_ply(_raw_ply(["x", "y", "w"], np.ones((4, 3)))), INSPECT_NS, 2, "points.ply"),
    Case("ns-ply-nan-row", _ns_ply(_xyz_ply(np.array([[0, 0, 0], [np.nan, 1, 1], [1, 2, 3]]))), INSPECT_NS, 2, "points.ply"),
    Case("ns-ply-inf-row", _ns_ply(_xyz_ply(np.array([[0, 0, 0], [np.inf, 1, 1]]))), INSPECT_NS, 2, "points.ply"),
    Case("ns-ply-no-points", _ns_ply(_xyz_ply(np.zeros((0, 3)))), INSPECT_NS, 2, "points.ply"),
    Case("ns-ply-truncated", _ns_ply(lambda p: (_xyz_ply(np.ones((50, 3)))(p), p.write_bytes(p.read_bytes()[:-100]))),
         INSPECT_NS, 2, "points.ply"),
    Case("ns-ply-header-lies", _ns_ply(lambda p: p.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                                                "property float y\nproperty float z\nend_header\n1 2 3\n")),
         INSPECT_NS, 2, "points.ply"),
    # 3DGS PLY (3dgs.init=ply)
    Case("3dgs-ply-not-a-ply", _write("g.ply", "not a ply at all"), PLY_3DGS, 2, "g.ply"),
    Case("3dgs-ply-missing-file", _nothing, PLY_3DGS, 2, "g.ply"),
    Case("3dgs-ply-xyz-only", lambda root: write_ply(root / "g.ply", np.ones((4, 3), np.float32)), PLY_3DGS, 2, "g.ply"),
    Case("3dgs-ply-missing-opacity", lambda root: _raw_ply([f for f in _splat_fields(0) if f != "opacity"],
                                                           _splat_rows(0)[:, :-1])(root / "g.ply"), PLY_3DGS, 2, "g.ply"),
    Case("3dgs-ply-f-rest-10", lambda root: _raw_ply(_splat_fields(10), _splat_rows(10))(root / "g.ply"), PLY_3DGS, 2, "g.ply"),
    Case("3dgs-ply-f-rest-48", lambda root: _raw_ply(_splat_fields(48), _splat_rows(48))(root / "g.ply"), PLY_3DGS, 2, "g.ply"),
    # documented: a Gaussian with a non-finite value is dropped with a warning
    Case("3dgs-ply-nan-row", lambda root: _raw_ply(_splat_fields(0), _splat_rows(0, nan_row=2))(root / "g.ply"),
         PLY_3DGS, 0, "gaussians=4"),
    Case("3dgs-ply-all-nan", lambda root: _raw_ply(_splat_fields(0), _splat_rows(0, n=1, nan_row=0))(root / "g.ply"),
         PLY_3DGS, 2, "g.ply"),
    # cameras.npz of an IDR scene
    Case("npz-not-npz", _write("idr/cameras.npz", b"PK\x03\x04 not really a zip"), INSPECT_IDR, 2, "cameras.npz"),
    Case("npz-file-missing", _delete("idr/cameras.npz"), INSPECT_IDR, 2, "no installed loader recognises"),
    Case("npz-file-missing-idr-loader", _delete("idr/cameras.npz"), (*INSPECT_IDR, "--loader", "idr"), 2, "cameras.npz"),
    Case("npz-missing-world-mat", _npz(_npz_set("world_mat_1", _DROP)), INSPECT_IDR, 2, "world_mat_1"),
    Case("npz-world-mat-2x2", _npz(_npz_set("world_mat_0", np.eye(2))), INSPECT_IDR, 2, "world_mat_0"),
    Case("npz-world-mat-vector", _npz(_npz_set("world_mat_0", np.arange(12.0))), INSPECT_IDR, 2, "world_mat_0"),
    Case("npz-world-mat-singular", _npz(_npz_set("world_mat_2", np.zeros((4, 4)))), INSPECT_IDR, 2, "singular"),
    Case("npz-world-mat-nan", _npz(_npz_set("world_mat_0", np.full((4, 4), np.nan))), INSPECT_IDR, 2, "world_mat_0"),
    # documented: a projection matrix is defined up to scale, so 1e300 * P is P
    Case("npz-world-mat-times-1e300", _npz(lambda a: a.__setitem__("world_mat_0", a["world_mat_0"] * 1e300)), INSPECT_IDR, 0,
         '"loader": "idr"'),
    Case("npz-world-mat-1e300-entry", _npz(lambda a: a["world_mat_0"].__setitem__((0, 3), 1e300)), INSPECT_IDR, 2,
         "too large for float32"),
    Case("npz-world-mat-strings", _npz(_npz_set("world_mat_0", np.array([["a"] * 4] * 4))), INSPECT_IDR, 2, "world_mat_0"),
    Case("npz-scale-mat-3x3", _npz(_npz_set("scale_mat_0", np.eye(3))), INSPECT_IDR, 2, "scale_mat_0"),
    Case("npz-scale-mat-inf", _npz(_npz_set("scale_mat_1", np.where(np.eye(4) > 0, np.inf, 0.0))), INSPECT_IDR, 2,
         "scale_mat_1"),
    Case("npz-scale-mat-singular", _npz(_npz_set("scale_mat_1", np.zeros((4, 4)))), INSPECT_IDR, 2, "singular"),
    # config.json for recon run --config
    Case("cfg-not-json", _write("cfg.json", "{oops"), RUN_CFG, 2, "cfg.json"),
    Case("cfg-list", _write("cfg.json", "[]"), RUN_CFG, 2, "cfg.json"),
    Case("cfg-string", _write("cfg.json", '"toy-grid"'), RUN_CFG, 2, "cfg.json"),
    Case("cfg-unknown-representation", _config(lambda d: d["representation"].__setitem__("name", "toy-grdi")), RUN_CFG, 2,
         "toy-grdi"),
    Case("cfg-unknown-refiner", _config(lambda d: d["refiners"][0].__setitem__("name", "ghost-fit")), RUN_CFG, 2, "ghost-fit"),
    Case("cfg-refiners-not-list", _config(_cfg_top("refiners", "toy-fit")), RUN_CFG, 2, "refiners"),
    Case("cfg-representation-not-mapping", _config(_cfg_top("representation", 5)), RUN_CFG, 2, "representation"),
    Case("cfg-component-config-not-mapping", _config(lambda d: d["representation"].__setitem__("config", [1])), RUN_CFG, 2,
         "toy-grid"),
    Case("cfg-unknown-option", _config(_cfg_refiner("speed", 3)), RUN_CFG, 2, "speed"),
    Case("cfg-steps-negative", _config(_cfg_refiner("steps", -5)), RUN_CFG, 2, "steps"),
    Case("cfg-steps-string", _config(_cfg_refiner("steps", "many")), RUN_CFG, 2, "steps"),
    Case("cfg-steps-float", _config(_cfg_refiner("steps", 1.5)), RUN_CFG, 2, "steps"),
    Case("cfg-lr-nan", _config(_cfg_refiner("lr", float("nan"))), RUN_CFG, 2, "lr"),
    Case("cfg-lr-inf", _config(_cfg_refiner("lr", float("inf"))), RUN_CFG, 2, "lr"),
    Case("cfg-seed-float", _config(_cfg_top("seed", 1.5)), RUN_CFG, 2, "seed"),
    Case("cfg-seed-string", _config(_cfg_top("seed", "zero")), RUN_CFG, 2, "seed"),
    Case("cfg-video-fps-negative", _config(_cfg_run("video_fps", -5)), RUN_CFG, 2, "video_fps"),
    Case("cfg-background-out-of-range", _config(_cfg_run("background", [2, 0, 0])), RUN_CFG, 2, "background"),
    Case("cfg-unknown-run-option", _config(_cfg_run("speed", 1)), RUN_CFG, 2, "speed"),
    Case("cfg-data-missing", _config(_cfg_top("data", "{root}/nowhere")), RUN_CFG, 2, "nowhere"),
    Case("cfg-data-number", _config(_cfg_top("data", 42)), RUN_CFG, 2, "data"),
    Case("cfg-device-unknown", _config(_cfg_top("device", "tpu")), RUN_CFG, 2, "tpu"),
    # --set syntax
    Case("set-missing-equals", _nothing, (*RUN_NS, "--set", "toy-fit.steps"), 2, "toy-fit.steps"),
    Case("set-missing-dot", _nothing, (*RUN_NS, "--set", "steps=3"), 2, "steps=3"),
    Case("set-unknown-component", _nothing, (*RUN_NS, "--set", "ghost.steps=1"), 2, "ghost"),
    Case("set-unknown-option", _nothing, (*RUN_NS, "--set", "toy-fit.speed=1"), 2, "speed"),
    Case("set-bad-nested-key", _nothing, (*RUN_NS, "--set", "toy-fit.schedule.gama=1"), 2, "gama"),
    Case("set-nested-on-scalar", _nothing, (*RUN_NS, "--set", "toy-fit.steps.every=1"), 2, "toy-fit.steps"),
    Case("set-out-of-range", _nothing, (*RUN_NS, "--set", "toy-fit.steps=-5"), 2, "toy-fit.steps"),
    Case("set-not-a-number", _nothing, (*RUN_NS, "--set", "toy-fit.lr=fast"), 2, "toy-fit.lr"),
    Case("set-nan", _nothing, (*RUN_NS, "--set", "toy-fit.lr=nan"), 2, "toy-fit.lr"),
    Case("set-seed-float", _nothing, ("run", "--data", "{root}/ns", *FAST_RUN, "--seed", "1.5", "--out", "{root}/out"), 2,
         "1.5"),
    Case("set-video-fps-negative", _nothing, (*RUN_NS, "--set", "run.video_fps=-5"), 2, "run.video_fps"),
    Case("set-budget-negative", _nothing, (*RUN_NS, "--set", "run.budget=-5"), 2, "run.budget"),
    Case("set-budget-cpu-not-a-number", _nothing, (*RUN_NS, "--set", "run.budget=cpu:x"), 2, "run.budget"),
    Case("set-budget-unknown-clock", _nothing, (*RUN_NS, "--set", "run.budget=gpu:60"), 2, "run.budget"),
    Case("set-steps-scaler-word", _nothing, ("run", "--data", "{root}/ns", "--repr", "3dgs", "--eval", "none", "--set",
                                             "3dgs-train.steps_scaler=fast", "--out", "{root}/out"), 2, "steps_scaler"),
    Case("set-steps-scaler-negative", _nothing, ("run", "--data", "{root}/ns", "--repr", "3dgs", "--eval", "none", "--set",
                                                 "3dgs-train.steps_scaler=-1", "--out", "{root}/out"), 2, "steps_scaler"),
    Case("set-bad-choice", _nothing, (*RUN_NS, "--set", "toy-fit.schedule=sometimes"), 2, "sometimes"),
    Case("set-loader-option-of-other-loader", _nothing, (*RUN_NS, "--set", "idr.strict=true"), 2, "idr"),
    # run folders
    Case("out-inside-data", _nothing, ("run", "--data", "{root}/ns", *FAST_RUN, "--out", "{root}/ns/out"), 2,
         "inside the input data"),
    Case("out-non-empty-not-a-run", _junk_folder("out"), RUN_OUT, 2, "not a recon run folder"),
    Case("out-non-empty-not-a-run-overwrite", _junk_folder("out"), (*RUN_OUT, "--overwrite"), 2, "not a recon run folder"),
    Case("out-existing-run", _nothing, ("run", "--data", "{root}/ns", *FAST_RUN, "--out", "{root}/run"), 2, "--overwrite"),
    Case("out-is-a-file", _write("out", "a file"), RUN_OUT, 2, "out"),
    Case("resume-empty-folder", lambda root: (root / "out").mkdir(), ("run", "--resume", "{root}/out"), 2,
         "not a recon run folder"),
    Case("resume-not-a-run", _junk_folder("out"), ("run", "--resume", "{root}/out"), 2, "not a recon run folder"),
    Case("resume-missing-folder", _nothing, ("run", "--resume", "{root}/nowhere"), 2, "nowhere"),
    Case("resume-config-not-json", _write("out/config.json", "{oops"), ("run", "--resume", "{root}/out"), 2, "config.json"),
    Case("resume-with-overwrite", _nothing, ("run", "--resume", "{root}/run", "--overwrite"), 2, "--overwrite"),
    Case("resume-with-other-options", _nothing, ("run", "--resume", "{root}/run", "--seed", "3"), 2, "--seed"),
]



def test_the_table_is_big_and_ids_are_unique():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
                                  for c in CASES])
def test_bad_input(case: Case, cli, template: Path, tmp_path: Path) -> None:
    root = copy_workspace(template, tmp_path / "ws")
    # a config edit may name "{root}"; other builders ignore it
    case.build(root)
    if (root / "cfg.json").is_file():
        (root / "cfg.json").write_text((root / "cfg.json").read_text().replace("{root}", str(root)))
    before = tree_hashes(root)
    result = invoke(cli, [a.format(root=root) for a in case.args])
    text = assert_clean_exit(result, case.code)
    assert case.message.format(root=root) in text
    if case.code == 0:
        assert_untouched(before, tree_hashes(root), allowed_new=["out"])
        if case.args[0] == "inspect-data":
            views = json.loads(result.stdout)["views"]
            assert views and all(np.isfinite(v["K"]).all() and np.isfinite(v["c2w"]).all() for v in views)
        else:
            assert model_is_finite(root / "out")
    else:
        assert_untouched(before, tree_hashes(root), allowed_new=["out"])
        assert not [p for p in root.iterdir() if p.name.startswith(".")], "a temporary run folder was left behind"

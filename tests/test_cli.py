"""The recon CLI: command contracts, exit codes, bad inputs, and real signals in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import BUILTIN_PLUGINS, PLUGINS_DIR, make_dist, write_toy_scene

from recon_cli.main import make_cli
from recon_core.registry import Registry
from recon_core.rundir import RunDir


@pytest.fixture
def cli(toy_registry):
    return make_cli(toy_registry)


def invoke(cli, *args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_ok(cli, *args: str):
    result = invoke(cli, *args)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return result


# ------------------------------------------------------------------------------ information


def test_list_plugins_json_contract(cli):
    rows = json.loads(run_ok(cli, "list-plugins", "--json").stdout)
    keys = {"name", "kind", "distribution", "version", "status", "detail", "description"}
    assert all(set(r) == keys for r in rows)
    assert {"name": "toy-grid", "kind": "representation", "status": "ok"}.items() <= next(
        r for r in rows if r["name"] == "toy-grid").items()
    assert "toy-grid" in run_ok(cli, "list-plugins").stdout


def test_list_plugins_exits_0_with_a_broken_plugin(tmp_path, monkeypatch):
    import recon_toy

    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    make_dist(tmp_path, "broken-dist", {"broken": "broken_mod"})
    import importlib.metadata as md

    eps = [ep for d in md.distributions(path=[str(tmp_path)]) for ep in d.entry_points]
    registry = Registry(entry_points=eps, modules=[("toy", recon_toy)], disabled=())
    result = invoke(make_cli(registry), "list-plugins", "--json")
    assert result.exit_code == 0
    broken = next(r for r in json.loads(result.stdout) if r["name"] == "broken")
    assert broken["status"] == "failed" and "boom at import" in broken["detail"]
    assert broken["distribution"] == "broken-dist"


def test_plugin_info_json(cli):
    info = json.loads(run_ok(cli, "plugin-info", "toy-fit", "--json").stdout)
    assert info["kind"] == "refiner" and info["requires"] == ["image-grid"]
    steps = next(o for o in info["options"] if o["name"] == "steps")
    assert steps == {"name": "steps", "type": "int", "default": 40, "help": "Adam steps", "choices": None, "range": ">= 0"}
    rep = json.loads(run_ok(cli, "plugin-info", "toy-grid", "--json").stdout)
    assert rep["native_refiner"] == "toy-fit" and rep["default_renderer"] == {"cpu": "toy-grid-render"}
    assert "grid resolution" in run_ok(cli, "plugin-info", "toy-grid").stdout
    augment = json.loads(run_ok(cli, "plugin-info", "toy-augment", "--json").stdout)
    assert augment["uses"] == [{"kind": "generator", "name": "toy-jitter"}] and info["uses"] == []
    assert "creates (default options): generator toy-jitter" in run_ok(cli, "plugin-info", "toy-augment").stdout


def test_inspect_data_json(cli, toy_scene, toy_video):
    out = json.loads(run_ok(cli, "inspect-data", toy_scene, "--json").stdout)
    assert out["loader"] == "toy-folder" and out["scene"] == "toyscene" and out["point_cloud"] is None
    v = out["views"][4]
    assert (v["name"], v["split"], v["width"], v["height"]) == ("v4", "test", 12, 10)
    assert v["object_mask"] is True and v["sky_mask"] is False and v["time"] is None
    assert len(v["K"]) == 3 and len(v["c2w"]) == 4
    video = json.loads(run_ok(cli, "inspect-data", toy_video, "--json").stdout)
    assert video == {"loader": "toy-video", "name": "video", "frames": 5, "width": 8, "height": 6, "fps": 5.0}


DATASETS = Path("/work/shared/datasets")


@pytest.mark.skipif(not (DATASETS / "street").is_dir(), reason="needs the shared street dataset")
def test_inspect_data_street_shows_20_timed_views_with_sky_masks():
    out = json.loads(run_ok(make_cli(Registry()), "inspect-data", DATASETS / "street", "--json").stdout)
    views = out["views"]
    assert out["loader"] == "dggt" and len(views) == 20
    assert [v["time"] for v in views] == pytest.approx([0.1 * i for i in range(20)], abs=1e-6)
    assert all(v["sky_mask"] for v in views) and {(v["width"], v["height"]) for v in views} == {(320, 180)}
    assert [v["name"] for v in views if v["split"] == "test"] == [f"{i:04d}" for i in range(20) if i % 5 == 2]


@pytest.mark.skipif(not (DATASETS / "video" / "bikes.mp4").is_file(), reason="needs the shared bikes video")
def test_inspect_data_bikes_shows_250_frames_of_640x272():
    out = json.loads(run_ok(make_cli(Registry()), "inspect-data", DATASETS / "video" / "bikes.mp4", "--json").stdout)
    assert out == {"loader": "video", "name": "bikes", "frames": 250, "width": 640, "height": 272, "fps": 25.0}


def test_doctor_json(cli):
    report = json.loads(run_ok(cli, "doctor", "--json").stdout)
    assert report["torch"]["version"] == torch.__version__
    assert set(report) >= {"python", "torch", "gsplat", "tinycudann", "lpips", "weights", "plugins"}
    assert "usable" in report["gsplat"] and report["lpips"]["usable"] is False  # the toy registry has no lpips
    assert "lpips" in report["lpips"]["detail"]


def test_doctor_lpips_agrees_with_the_evaluator(tmp_path, monkeypatch):
    """doctor reports exactly what the lpips evaluator says about its weights."""
    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the backbone is absent
    registry = Registry()
    report = json.loads(run_ok(make_cli(registry), "doctor", "--json").stdout)
    expected = registry.get("evaluator", "lpips")().unavailable_reason()
    assert report["lpips"] == {"usable": False, "detail": expected}
    assert "alexnet-owt-7be5be79.pth" in expected and str(tmp_path) in expected


def test_plugins_add_commands(cli):
    assert run_ok(cli, "toy-hello").stdout.strip() == "hello from the toy plugin"


# ---------------------------------------------------------------------------------- running


def test_run_eval_render_export(cli, toy_scene, tmp_path):
    out = tmp_path / "run"
    result = run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", out, "--set", "toy-fit.steps=8",
                    "--eval", "psnr", "--fixer", "toy-smooth")
    assert f"run folder: {out}" in result.stdout
    assert "metrics (mean over 2 test views, on cpu)" in result.stdout
    assert "psnr_masked+toy-smooth" in result.stdout and "object mask" in result.stdout and "dB" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"psnr", "psnr_masked", "psnr+toy-smooth", "psnr_masked+toy-smooth"}

    (out / "metrics.json").unlink()
    run_ok(cli, "eval", out)
    again = json.loads((out / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"]
    assert {k: again[k] for k in ("split", "num_views", "device", "metric_info")} == \
        {k: metrics[k] for k in ("split", "num_views", "device", "metric_info")}

    run_ok(cli, "render", out, "--cameras", "orbit", "--frames", "3")
    assert sorted(p.name for p in (out / "renders-orbit").iterdir()) == ["00000.png", "00001.png", "00002.png", "renders.mp4"]
    cams = tmp_path / "cams.json"
    cams.write_text(json.dumps({"K": [[10, 0, 3], [0, 10, 2], [0, 0, 1]], "w": 6, "h": 4,
                                "frames": [{"file_path": "images/a.png", "c2w": torch.eye(4).tolist()}]}))
    run_ok(cli, "render", out, "--cameras", cams, "--out", tmp_path / "r2")
    assert [p.name for p in (tmp_path / "r2").iterdir()] == ["a.png"]
    run_ok(cli, "render", out, "--cameras", "train")
    assert len(list((out / "renders-train").glob("*.png"))) == 4

    assert run_ok(cli, "export", out, "--format", "npy", "--out", tmp_path / "ex").stdout.strip().endswith("grid.npy")
    bad = invoke(cli, "export", out, "--format", "ply")
    assert bad.exit_code == 2 and "cannot export 'ply'" in bad.stderr


def test_config_file_reruns_the_same_run(cli, toy_scene, tmp_path):
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", tmp_path / "a", "--seed", "4",
           "--set", "toy-fit.steps=6", "--set", "toy-grid.size=3", "--eval", "psnr")
    run_ok(cli, "run", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b")
    a, b = (json.loads((tmp_path / x / "config.json").read_text()) for x in "ab")
    assert a == b
    ma, mb = (json.loads((tmp_path / x / "metrics.json").read_text())["metrics"] for x in "ab")
    assert ma == mb


def test_config_file_reproduces_options_of_created_components(cli, toy_scene, tmp_path):
    """--set for a generator a refiner creates is recorded in config.json and re-applied by --config."""
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--refiner", "toy-augment", "--out", tmp_path / "a",
           "--set", "toy-augment.steps=4", "--set", "toy-jitter.noise=0.3", "--eval", "psnr")
    run_ok(cli, "run", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b")
    a, b = (json.loads((tmp_path / x / "config.json").read_text()) for x in "ab")
    assert a == b and a["used"] == [{"kind": "generator", "name": "toy-jitter", "config": {"noise": 0.3, "copies": 1}}]
    ra, rb = (json.loads((tmp_path / x / "metrics.json").read_text())["refiners"]["toy-augment"] for x in "ab")
    assert ra == rb and ra["generator_config"]["noise"] == 0.3


def test_default_out_folder(cli, toy_scene, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--set", "toy-fit.steps=1", "--eval", "none")
    (folder,) = (tmp_path / "outputs" / "scene" / "toy-grid").iterdir()
    assert (folder / "config.json").exists() and (folder / "checkpoints" / "latest.json").exists()


# ------------------------------------------------------------------------------- bad input


def _corrupt_image_scene(tmp_path: Path) -> Path:
    root = write_toy_scene(tmp_path / "corrupt")
    (root / "v2.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return root


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "missing: data path does not exist"),
        ("empty", "empty: data folder is empty"),
        ("unreadable", "v2.png: image cannot be read"),
        ("unknown-repr", "unknown representation 'toy-grdi'; did you mean toy-grid"),
        ("unknown-refiner", "unknown refiner 'nope'"),
        ("malformed-set", "malformed --set 'toy-fit.steps'"),
        ("unknown-set-plugin", "no component named 'ghost' in this run"),
        ("unknown-set-key", "toy-fit has no option 'speed'"),
        ("bad-set-value", "bad value for toy-fit.steps"),
        ("combination", "refiner toy-fit needs image-grid; representation toy-sdf provides"),
        ("needs-fixer", "refiner toy-polish needs a fixer: add --fixer NAME"),
        ("set-not-created", "toy-jitter (generator) is installed but this run never creates it"),
        ("no-loader", "no installed loader recognises this data"),
        ("bad-config", "config.json: run configuration file is not valid JSON"),
        ("resume-not-a-run", "not a recon run folder (no config.json)"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(cli, toy_scene, tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    (tmp_path / "config.json").write_text("{oops")
    base = ["run", "--repr", "toy-grid", "--out", tmp_path / "out"]
    args = {
        "missing": [*base, "--data", tmp_path / "missing"],
        "empty": [*base, "--data", tmp_path / "empty"],
        "unreadable": [*base, "--data", _corrupt_image_scene(tmp_path)],
        "unknown-repr": ["run", "--data", toy_scene, "--repr", "toy-grdi"],
        "unknown-refiner": [*base, "--data", toy_scene, "--refiner", "nope"],
        "malformed-set": [*base, "--data", toy_scene, "--set", "toy-fit.steps"],
        "unknown-set-plugin": [*base, "--data", toy_scene, "--set", "ghost.steps=1"],
        "unknown-set-key": [*base, "--data", toy_scene, "--set", "toy-fit.speed=1"],
        "bad-set-value": [*base, "--data", toy_scene, "--set", "toy-fit.steps=many"],
        "combination": ["run", "--data", toy_scene, "--repr", "toy-sdf", "--refiner", "toy-fit"],
        "needs-fixer": [*base, "--data", toy_scene, "--refiner", "toy-polish"],
        "set-not-created": [*base, "--data", toy_scene, "--set", "toy-jitter.noise=0.1"],
        "no-loader": [*base, "--data", tmp_path / "junk"],
        "bad-config": ["run", "--config", tmp_path / "config.json"],
        "resume-not-a-run": ["run", "--resume", tmp_path / "empty"],
    }[case]
    result = invoke(cli, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])  # one paragraph, last


def test_click_usage_errors_exit_2(cli):
    assert invoke(cli, "run", "--device", "gpu").exit_code == 2
    assert invoke(cli, "no-such-command").exit_code == 2


def test_internal_errors_exit_1_with_traceback_only_in_debug(toy_scene, tmp_path, monkeypatch):
    import recon_toy

    def broken(self, rep, cameras, **kwargs):
        raise ZeroDivisionError("renderer bug")

    monkeypatch.setattr(recon_toy.ToyGridRenderer, "render", broken)
    registry = Registry(entry_points=[], modules=[("toy", recon_toy)], disabled=())
    args = ["run", "--data", toy_scene, "--repr", "toy-grid", "--refiner", "none", "--out", tmp_path / "o"]
    plain = invoke(make_cli(registry), *args)
    assert plain.exit_code == 1 and "internal error: ZeroDivisionError: renderer bug" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = invoke(make_cli(registry), "--debug", *args[:-1], tmp_path / "o2")  # "o" now holds the failed run
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_resume_refuses_other_options(cli, toy_scene, tmp_path):
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", tmp_path / "r", "--set", "toy-fit.steps=1")
    result = invoke(cli, "run", "--resume", tmp_path / "r", "--seed", "3")
    assert result.exit_code == 2 and "drop --seed" in result.stderr


# ------------------------------------------------------------------------- real signals


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    make_dist(site, "recon-toy", {"toy": "recon_toy"})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGINS_DIR), env.get("PYTHONPATH", "")])
    env["RECON_DISABLE_PLUGINS"] = ",".join(BUILTIN_PLUGINS)  # only the toy plugin, whatever else is installed
    return env


def _final_params(run: Path) -> dict[str, torch.Tensor]:
    return RunDir(run).load_checkpoint()["representation"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_saves_and_resume_matches_uninterrupted(cli, toy_scene, tmp_path, signum):
    common = ["--data", str(toy_scene), "--repr", "toy-grid", "--seed", "1", "--eval", "psnr",
              "--set", "toy-fit.steps=60", "--set", "run.checkpoint_every=5"]
    run_ok(cli, "run", *common, "--out", tmp_path / "reference")

    out = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon_cli.main", "run", *common, "--set", "toy-fit.step_delay=0.05", "--out", str(out)],
        env=_subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoints" / "latest.json").exists():  # first periodic checkpoint: mid-run
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "run did not start"
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert f"recon run --resume {out}" in stderr and "Traceback" not in stderr
    saved = RunDir(out).load_checkpoint()
    assert saved["position"]["refiner"] == 0 and 5 <= saved["position"]["step"] < 60
    assert not (out / "metrics.json").exists()

    run_ok(cli, "run", "--resume", out)
    reference, resumed = _final_params(tmp_path / "reference"), _final_params(out)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    m_ref, m_res = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "reference", out))
    assert m_ref["metrics"] == m_res["metrics"] and m_ref["refiners"] == m_res["refiners"]


def test_video_run_renders_frames(cli, toy_video, tmp_path):
    out = tmp_path / "run"
    run_ok(cli, "run", "--data", toy_video, "--repr", "toy-grid", "--out", out, "--set", "toy-fit.steps=2", "--eval", "psnr")
    per_view = json.loads((out / "metrics.json").read_text())["per_view"]
    assert [r["name"] for r in per_view] == [f"frame-{i:05d}" for i in range(5)]
    run_ok(cli, "render", out, "--out", tmp_path / "frames")
    assert len(list((tmp_path / "frames").glob("frame-*.png"))) == 5
    bad = invoke(cli, "render", out, "--cameras", "orbit")
    assert bad.exit_code == 2 and "renders its frames" in bad.stderr


def test_render_and_inspect_bad_arguments(cli, toy_scene, tmp_path):
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", tmp_path / "r", "--set", "toy-fit.steps=1")
    bad = invoke(cli, "render", tmp_path / "r", "--cameras", tmp_path / "nope.json")
    assert bad.exit_code == 2 and "nope.json" in bad.stderr
    missing = invoke(cli, "inspect-data", tmp_path / "absent")
    assert missing.exit_code == 2 and "absent: data path does not exist" in missing.stderr
    unknown = invoke(cli, "plugin-info", "toy-gird")
    assert unknown.exit_code == 2 and "did you mean toy-grid" in unknown.stderr


def test_ctrl_c_after_refining_names_the_checkpoint(cli, toy_scene, tmp_path, monkeypatch):
    from recon_core.pipeline import Pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "evaluate", interrupted)
    out = tmp_path / "r"
    result = invoke(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", out, "--set", "toy-fit.steps=2")
    assert result.exit_code == 130 and f"recon run --resume {out}" in result.stderr
    monkeypatch.undo()
    run_ok(cli, "run", "--resume", out)  # refining is done: resume only evaluates and exports
    assert json.loads((out / "metrics.json").read_text())["refiners"]["toy-fit"]["steps"] == 2


def test_plugin_info_lists_nested_options_and_renderer_kinds(cli):
    info = json.loads(run_ok(cli, "plugin-info", "toy-fit", "--json").stdout)
    names = [o["name"] for o in info["options"]]
    assert names[-4:] == ["schedule", "schedule.kind", "schedule.gamma", "schedule.every"]
    selector = next(o for o in info["options"] if o["name"] == "schedule")
    assert selector["choices"] == ["constant", "step"] and selector["default"] == "constant"
    assert "schedule.gamma" in run_ok(cli, "plugin-info", "toy-fit").stdout
    assert json.loads(run_ok(cli, "plugin-info", "toy-frames", "--json").stdout)["rendered_by"] == "frames"
    assert json.loads(run_ok(cli, "plugin-info", "toy-frame-render", "--json").stdout)["renders"] == "frames"


def test_nested_set_reaches_config_json_and_reruns(cli, toy_scene, tmp_path):
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", tmp_path / "a", "--eval", "psnr",
           "--set", "toy-fit.steps=4", "--set", "toy-fit.schedule=step", "--set", "toy-fit.schedule.every=2")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["refiners"][0]["config"]["schedule"] == {"kind": "step", "gamma": 0.5, "every": 2}
    assert config["run"]["background"] == [1.0, 1.0, 1.0]
    run_ok(cli, "run", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == config
    bad = invoke(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--set", "toy-fit.schedule.gama=1")
    assert bad.exit_code == 2 and "unknown option(s) gama for toy-fit.schedule" in bad.stderr


def test_cli_imports_no_private_core_names():
    """``recon eval`` goes through ``RestoredRun.evaluate`` (``Pipeline.evaluate``), not private helpers."""
    import ast

    import recon_cli.main as main_module

    tree = ast.parse(Path(main_module.__file__).read_text())
    private = [(node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("recon_core") for a in node.names if a.name.startswith("_")]
    assert private == []


def test_values_as_plugin_info_shows_them_are_accepted_by_set(cli, toy_scene, tmp_path):
    """The table of plugin-info shows JSON ("constant", [1.0, 1.0, 1.0]); --set takes that same text."""
    shown = run_ok(cli, "plugin-info", "toy-fit").stdout
    assert '"constant"' in shown and "0.05" in shown
    run_ok(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--out", tmp_path / "a", "--eval", "psnr",
           "--set", 'toy-fit.schedule="step"', "--set", 'toy-fit.schedule.kind="step"', "--set", "toy-fit.steps=4",
           "--set", "run.background=[0.0, 0.0, 1.0]", "--set", "run.export=null", "--set", "run.save_renders=false")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["refiners"][0]["config"]["schedule"]["kind"] == "step"
    assert config["run"]["background"] == [0.0, 0.0, 1.0] and config["run"]["export"] is None
    assert config["run"]["save_renders"] is False
    bad = invoke(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--set", "run.background=[1.0,1.0")
    assert bad.exit_code == 2 and "bad value for run.background: '[1.0,1.0' is not valid JSON" in bad.stderr


# ------------------------------------------------------------------------------ run folders

FAST = ("--repr", "toy-grid", "--set", "toy-fit.steps=1", "--eval", "psnr")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_non_empty_out_that_is_not_a_run_is_refused(cli, toy_scene, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = invoke(cli, "run", "--data", toy_scene, *FAST, "--out", out)
    assert result.exit_code == 2 and str(out) in result.stderr and "not a recon run folder" in result.stderr
    result = invoke(cli, "run", "--data", toy_scene, *FAST, "--out", out, "--overwrite")
    assert result.exit_code == 2 and (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", empty)  # an empty folder is fine
    assert (empty / "metrics.json").is_file() and not (empty / "run.lock").exists()


def test_existing_run_needs_resume_or_overwrite(cli, toy_scene, tmp_path):
    out = tmp_path / "run"
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", out)
    before = _tree(out)
    result = invoke(cli, "run", "--data", toy_scene, *FAST, "--out", out)
    assert result.exit_code == 2 and str(out) in result.stderr
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert _tree(out) == before
    result = run_ok(cli, "run", "--data", toy_scene, *FAST, "--seed", "5", "--out", out, "--overwrite")
    assert "replaced" in result.stdout
    assert json.loads((out / "config.json").read_text())["seed"] == 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["exports"] and all(p.startswith(str(out) + os.sep) and Path(p).exists() for p in metrics["exports"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "scene"]  # no temporary folder left behind
    assert not (out / "run.lock").exists()
    assert invoke(cli, "run", "--resume", out, "--overwrite").exit_code == 2


def test_overwrite_validates_first_and_a_failed_new_run_keeps_the_old(cli, toy_scene, tmp_path, monkeypatch):
    import recon_toy

    out = tmp_path / "run"
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", out)
    before = _tree(out)
    bad = invoke(cli, "run", "--data", tmp_path / "nowhere", *FAST, "--out", out, "--overwrite")  # resolving fails
    assert bad.exit_code == 2 and _tree(out) == before
    bad = invoke(cli, "run", "--data", toy_scene, "--repr", "toy-grdi", "--out", out, "--overwrite")
    assert bad.exit_code == 2 and _tree(out) == before

    def broken(self, rep, cameras, **kwargs):
        raise ZeroDivisionError("renderer bug")

    monkeypatch.setattr(recon_toy.ToyGridRenderer, "render", broken)
    failed = invoke(cli, "run", "--data", toy_scene, *FAST, "--seed", "9", "--out", out, "--overwrite")
    assert failed.exit_code == 1 and "renderer bug" in failed.stderr
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "scene"]


def test_lock_makes_a_second_writer_fail_fast_and_stale_locks_are_taken_over(cli, toy_scene, tmp_path):
    out = tmp_path / "run"
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(f"{holder.pid}\n")
        for args in (("--resume", out), ("--data", toy_scene, *FAST, "--out", out, "--overwrite")):
            start = time.monotonic()
            result = invoke(cli, "run", *args)
            assert result.exit_code == 2 and f"PID {holder.pid}" in result.stderr and str(out) in result.stderr
            assert time.monotonic() - start < 5
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        (fresh / "run.lock").write_text(f"{holder.pid}\n")
        result = invoke(cli, "run", "--data", toy_scene, *FAST, "--out", fresh)
        assert result.exit_code == 2 and f"PID {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    (out / "run.lock").write_text(f"{holder.pid}\n")  # its process is gone: a stale lock
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", out, "--overwrite")
    assert not (out / "run.lock").exists()
    (fresh / "run.lock").write_text(f"{holder.pid}\n")
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", fresh)
    assert (fresh / "metrics.json").is_file() and not (fresh / "run.lock").exists()


def test_out_inside_the_data_is_refused(cli, toy_scene, tmp_path):
    before = _tree(toy_scene)
    for out in (toy_scene, toy_scene / "outputs", toy_scene / "a" / "b"):
        result = invoke(cli, "run", "--data", toy_scene, *FAST, "--out", out)
        assert result.exit_code == 2 and str(out) in result.stderr and "inside the input data" in result.stderr
    assert _tree(toy_scene) == before and not (toy_scene / "outputs").exists()
    # a run folder that holds the data cannot be overwritten (that would delete the data)
    run_dir = tmp_path / "run"
    run_ok(cli, "run", "--data", toy_scene, *FAST, "--out", run_dir)
    import shutil

    shutil.copytree(toy_scene, run_dir / "data")
    result = invoke(cli, "run", "--data", run_dir / "data", *FAST, "--out", run_dir, "--overwrite")
    assert result.exit_code == 2 and "inside" in result.stderr and (run_dir / "data").is_dir()


# ------------------------------------------------------------------- output and diagnostics


def _broken_registry(tmp_path, monkeypatch):
    """The toy plugin plus one whose import fails with a message holding rich-markup brackets."""
    import importlib.metadata as md

    import recon_toy

    (tmp_path / "brackets_mod.py").write_text("raise RuntimeError(\"needs: pip install 'recon-toolkit[difix]'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    make_dist(tmp_path, "brackets-dist", {"brackets": "brackets_mod"})
    eps = [ep for d in md.distributions(path=[str(tmp_path)]) for ep in d.entry_points]
    return Registry(entry_points=eps, modules=[("toy", recon_toy)], disabled=())


def test_doctor_exits_1_when_a_plugin_fails_and_keeps_brackets(tmp_path, monkeypatch):
    cli = make_cli(_broken_registry(tmp_path, monkeypatch))
    result = invoke(cli, "doctor")
    assert result.exit_code == 1
    assert "pip install 'recon-toolkit[difix]'" in result.stdout  # escaped, not swallowed as markup
    assert "required:" in result.stdout and "brackets" in result.stdout
    as_json = invoke(cli, "doctor", "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["required_failures"]
    listed = invoke(cli, "list-plugins")
    assert listed.exit_code == 0 and "recon-toolkit[difix]" in listed.stdout


def test_doctor_exits_0_when_only_optional_parts_are_missing(cli):
    report = json.loads(run_ok(cli, "doctor", "--json").stdout)  # no CUDA, no lpips: optional
    assert report["required_failures"] == []


def test_list_plugins_fits_80_columns(cli):
    result = CliRunner().invoke(cli, ["list-plugins"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    for name in ("toy-grid", "toy-fit", "toy-folder"):
        assert any(name in line for line in lines)


def test_plugin_info_run_lists_the_pipeline_options(cli):
    out = run_ok(cli, "plugin-info", "run").stdout
    assert "checkpoint_every" in out and "--set run.KEY=VALUE" in out
    info = json.loads(run_ok(cli, "plugin-info", "run", "--json").stdout)
    assert {o["name"] for o in info["options"]} >= {"checkpoint_every", "log_every", "background", "export"}


def test_run_and_eval_json_and_quiet(cli, toy_scene, tmp_path):
    result = invoke(cli, "-q", "run", "--data", toy_scene, "--repr", "toy-grid", "--set", "toy-fit.steps=3",
                    "--out", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # stdout is the document alone
    assert doc["run_folder"] == str(tmp_path / "r") and "psnr" in doc["metrics"]
    assert "stage refine" not in result.stderr  # -q: no stage log on the console (it stays in log.txt)
    assert "stage refine" in (tmp_path / "r" / "log.txt").read_text()
    again = json.loads(run_ok(cli, "eval", tmp_path / "r", "--json").stdout)
    assert again["metrics"] == doc["metrics"]
    loud = invoke(cli, "run", "--data", toy_scene, "--repr", "toy-grid", "--set", "toy-fit.steps=3", "--out", tmp_path / "r2")
    assert "stage refine" in loud.stderr


def test_warnings_once_and_known_torch_noise_filtered(capsys):
    import logging
    import warnings

    from recon_core.logs import setup_logging

    setup_logging(0)
    logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
    with warnings.catch_warnings():  # pytest records warnings itself: route them to logging again here
        warnings.simplefilter("always")  # Python alone would print it three times
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        for _ in range(3):
            warnings.warn("the same [bracketed] warning", UserWarning, stacklevel=1)
            logging.getLogger("recon").warning("a repeated   recon\nwarning")
        logging.captureWarnings(False)
    logging.captureWarnings(True)
    err = capsys.readouterr().err
    assert "No CUDA runtime" not in err
    assert err.count("the same [bracketed] warning") == 1
    assert err.count("a repeated") == 1

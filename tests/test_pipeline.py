"""recon_core.pipeline: choosing components, combination checks, --set, evaluation, rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import write_toy_scene

from recon_core.cameras import check_rigid
from recon_core.errors import CombinationError, InputError
from recon_core.imageops import psnr
from recon_core.pipeline import Pipeline
from recon_core.resolve import detect_loader, resolve_device, resolve_run
from recon_core.restore import orbit_cameras, read_cameras_file
from recon_core.rundir import RunDir

SHARED_CAMERAS = Path("/work/shared/datasets/object/cameras_opencv.json")


# ----------------------------------------------------------------------------- resolution


def test_defaults_come_from_the_representation(toy_registry, toy_scene):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid")
    assert spec.loader.name == "toy-folder"  # detected
    assert spec.renderer.name == "toy-grid-render"  # default_renderer["cpu"]
    assert [c.name for c in spec.refiners] == ["toy-fit"]  # native_refiner
    assert [c.name for c in spec.evaluators] == ["psnr", "ssim"]  # lpips is not installed here
    assert spec.device == "auto" and resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_refiner_lists_and_none(toy_registry, toy_scene):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["toy-fit,toy-loop", "toy-fit"])
    assert [c.name for c in spec.refiners] == ["toy-fit", "toy-loop", "toy-fit"]
    assert resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["none"]).refiners == []
    assert resolve_run(toy_registry, data=toy_scene, representation="toy-grid", evaluators=["none"]).evaluators == []


def test_loader_detection_picks_highest_score_and_reports_none(toy_registry, toy_scene, toy_video, tmp_path):
    assert detect_loader(toy_registry, toy_scene) == "toy-folder"
    assert detect_loader(toy_registry, toy_video) == "toy-video"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no installed loader recognises this data.*toy-folder, toy-video"):
        detect_loader(toy_registry, tmp_path / "other")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"representation": "toy-sdf", "refiners": ["toy-fit"]},
         "refiner toy-fit needs image-grid; representation toy-sdf provides neural-field, sdf; refiners that fit toy-sdf: none installed"),
        ({"representation": "toy-grid", "renderer": "toy-sphere-render"},
         "renderer toy-sphere-render needs sdf; representation toy-grid provides image-grid; renderers that fit toy-grid: toy-grid-render"),
        ({"representation": "toy-grid", "encoder": "toy-fourier"},
         "representation toy-grid takes no encoder (it does not provide neural-field); representations that take --encoder: toy-sdf"),
    ],
    ids=["refiner", "renderer", "encoder"],
)
def test_combination_errors_say_what_fits(toy_registry, toy_scene, kwargs, message):
    with pytest.raises(CombinationError) as info:
        resolve_run(toy_registry, data=toy_scene, **kwargs)
    assert message in str(info.value)


def test_representation_must_fit_the_loader(toy_registry, toy_video):
    with pytest.raises(CombinationError, match="representation toy-sdf needs scene; loader toy-video provides video; "
                                               "representations that fit toy-video: toy-frames, toy-grid"):
        resolve_run(toy_registry, data=toy_video, representation="toy-sdf", refiners=["none"])


def test_encoder_fits_a_neural_field(toy_registry, toy_scene):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-sdf", encoder="toy-fourier", refiners=["none"],
                       evaluators=["none"], sets=["toy-fourier.levels=3"])
    assert spec.encoder is not None and spec.encoder.config.levels == 3


def test_set_options_parse_into_configs(toy_registry, toy_scene):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid",
                       sets=["toy-fit.steps=7", "toy-grid.size=3", "run.checkpoint_every=2", "run.export=npy"])
    assert spec.refiners[0].config.steps == 7 and spec.representation.config.size == 3
    assert spec.options.checkpoint_every == 2 and spec.options.export == ["npy"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nobody.steps=3", "no component named 'nobody' in this run"),
        ("toy-fit.stepz=3", "toy-fit has no option 'stepz'; its options: input_noise, lr, nan_at, schedule, schedule.every, schedule.gamma, schedule.kind, step_delay, steps"),
        ("toy-fit.steps=three", "bad value for toy-fit.steps"),
        ("toy-fit.steps", "malformed --set 'toy-fit.steps'"),
        ("run.export=ply", "cannot export ply"),
    ],
)
def test_bad_set_options_name_the_problem(toy_registry, toy_scene, text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_run(toy_registry, data=toy_scene, representation="toy-grid", sets=[text])


def test_config_round_trip(toy_registry, toy_scene):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", fixer="toy-smooth", seed=5,
                       sets=["toy-fit.lr=0.2", "toy-grid.size=2"], evaluators=["psnr"])
    doc = json.loads(json.dumps(spec.to_json()))
    again = resolve_run(toy_registry, base=doc)
    assert again.to_json() == spec.to_json()
    # explicit arguments override the file; a renamed component starts from its defaults
    changed = resolve_run(toy_registry, base=doc, refiners=["toy-loop"], seed=9)
    assert changed.seed == 9 and changed.refiners[0].name == "toy-loop" and changed.refiners[0].config.lr == 0.05
    assert changed.representation.config.size == 2


def test_config_file_with_unknown_option_is_rejected(toy_registry, toy_scene):
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid").to_json()
    doc["refiners"][0]["config"]["bogus"] = 1
    with pytest.raises(InputError, match="unknown option.*bogus.*toy-fit"):
        resolve_run(toy_registry, base=doc)


def test_cuda_request_without_cuda_is_an_input_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------- running


def _run(registry, data, out, **kwargs):
    spec = resolve_run(registry, data=data, **kwargs)
    return Pipeline(registry, spec, RunDir.create(out)).run(), RunDir(out)


def test_run_writes_the_run_folder_and_honours_masks(toy_registry, toy_scene, tmp_path):
    doc, run_dir = _run(toy_registry, toy_scene, tmp_path / "run", representation="toy-grid", fixer="toy-smooth",
                        evaluators=["psnr,toy-unavailable,toy-params"], sets=["toy-fit.steps=10"])
    on_disk = json.loads(run_dir.metrics_path.read_text())
    assert on_disk["metrics"] == doc["metrics"]
    assert set(on_disk) >= {"metrics", "per_view", "timings", "plugins", "refiners", "unavailable"}
    assert set(on_disk["timings"]) >= {"load", "build", "refine", "render+evaluate", "export"}
    assert on_disk["plugins"]["representation"]["name"] == "toy-grid"
    assert [v["name"] for v in on_disk["per_view"]] == ["v4", "v5"]  # the test split
    # unavailable evaluators are reported with their reason and never given a value
    assert on_disk["unavailable"] == {"toy-unavailable": "its weights are not installed"}
    assert "toy-unavailable" not in on_disk["metrics"]
    assert on_disk["metrics"]["toy-params"] == 4 * 4 * 3
    # metrics over the full image and inside the object masks, with and without the fixer
    assert on_disk["metrics"]["toy-params.tensors"] == 1  # a geometry evaluator's named part
    assert list(on_disk["metrics"]) == ["psnr", "psnr_masked", "psnr+toy-smooth", "psnr_masked+toy-smooth", "toy-params",
                                        "toy-params.tensors"]
    assert on_disk["metric_info"]["psnr_masked+toy-smooth"] == {
        "evaluator": "psnr", "higher_is_better": True, "unit": "dB", "region": "object mask",
        "renders": "fixed by toy-smooth", "views": 2}
    assert on_disk["metric_info"]["toy-params"]["unit"] is None
    # a geometry evaluator's part_regions label its parts' region; a part it does not list has none
    assert on_disk["metric_info"]["toy-params.tensors"]["region"] == "parameter tensors"
    assert "region" not in on_disk["metric_info"]["toy-params"]

    # psnr is over the full image against the view on the run's (white) background, psnr_masked
    # inside the object mask of each test view: recompute from the written renders
    from PIL import Image

    for row in on_disk["per_view"]:
        pred = torch.from_numpy(np.asarray(Image.open(run_dir.renders_dir / f"{row['name']}.png"), np.float32) / 255)
        gt = torch.from_numpy(np.asarray(Image.open(toy_scene / f"{row['name']}.png"), np.float32) / 255)
        mask = torch.from_numpy(np.asarray(Image.open(toy_scene / f"m{row['name'][1:]}.png")) > 127)
        on_white = torch.where(mask[..., None], gt, torch.ones(3))
        assert row["psnr_masked"] == pytest.approx(float(psnr(pred, gt, mask)), abs=0.2)  # PNG quantisation
        assert row["psnr"] == pytest.approx(float(psnr(pred, on_white)), abs=0.2)
        assert abs(row["psnr"] - row["psnr_masked"]) > 0.2
    assert (run_dir.renders_dir / "fixed" / "v4.png").exists()
    with av.open(str(run_dir.renders_dir / "renders.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == 2
    mp4 = (run_dir.renders_dir / "renders.mp4").read_bytes()
    assert 0 < mp4.find(b"moov") < mp4.find(b"mdat")  # faststart: the index precedes the media
    # the experiment log: every step's scalars, the curves, render | truth | error per test view
    scalars = [json.loads(line) for line in (run_dir.path / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in scalars] == list(range(10)) and all(r["refiner"] == "toy-fit" for r in scalars)
    assert (run_dir.path / "curves.png").stat().st_size > 0
    strip = np.asarray(Image.open(run_dir.path / "compare" / "v4.png"), np.float32) / 255
    pred = np.asarray(Image.open(run_dir.renders_dir / "v4.png"), np.float32) / 255
    w = pred.shape[1]
    assert strip.shape == (pred.shape[0], 3 * w, 3) and np.array_equal(strip[:, :w], pred)
    error = np.abs(strip[:, :w] - strip[:, w:2 * w]).mean(-1)
    assert np.allclose(strip[:, 2 * w:, 0], np.minimum(1, 4 * error), atol=2 / 255)
    assert (run_dir.path / "grid.npy").exists() and doc["exports"] == [str(run_dir.path / "grid.npy")]
    config = json.loads(run_dir.config_path.read_text())
    assert config["refiners"][0]["config"]["steps"] == 10
    assert "stage refine" in run_dir.log_path.read_text()


def test_video_is_rendered_by_times_and_evaluated_per_frame(toy_registry, toy_video, tmp_path):
    doc, run_dir = _run(toy_registry, toy_video, tmp_path / "run", representation="toy-grid", evaluators=["psnr"],
                        sets=["toy-fit.steps=60", "toy-fit.lr=0.1", "run.render_chunk=2"])
    assert [r["name"] for r in doc["per_view"]] == [f"frame-{i:05d}" for i in range(5)]
    assert doc["metrics"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in doc["per_view"]]))
    assert doc["metrics"]["psnr"] > 20  # one grid per frame: fitted frames are close
    with av.open(str(run_dir.renders_dir / "renders.mp4")) as container:
        frames = list(container.decode(video=0))
        assert len(frames) == 5 and (frames[0].width, frames[0].height) == (8, 6)


def test_single_view_run_writes_no_video(toy_registry, tmp_path):
    data = write_toy_scene(tmp_path / "one", n_views=1, masks=False)  # one (test) view
    doc, run_dir = _run(toy_registry, data, tmp_path / "run", representation="toy-grid", sets=["toy-fit.steps=2"],
                        evaluators=["psnr"])
    assert len(doc["per_view"]) == 1 and (run_dir.renders_dir / "v0.png").exists()
    assert not (run_dir.renders_dir / "renders.mp4").exists()
    assert not list(run_dir.renders_dir.glob(".*"))  # no temporary files left behind


def test_orbit_cameras_look_at_the_centre(toy_registry, toy_scene):
    scene = toy_registry.create("loader", "toy-folder").load(toy_scene)
    cams = orbit_cameras(scene, 12)
    assert len(cams) == 12
    check_rigid(cams.c2w)
    center = scene.bounds.center
    forward = cams.c2w[:, :3, 2]
    to_center = center - cams.centers
    cos = (forward * to_center).sum(-1) / to_center.norm(dim=-1)
    assert torch.allclose(cos, torch.ones(12), atol=1e-5)
    # on the circle of the input cameras (radius 3 around the centre, same height)
    assert torch.allclose((cams.centers - center).norm(dim=-1), torch.full((12,), 3.0), atol=1e-4)
    assert torch.equal(cams.K[0], scene.views[0].camera.K[0])


@pytest.mark.skipif(not SHARED_CAMERAS.exists(), reason="shared dataset not present")
def test_read_cameras_file_reads_the_shared_opencv_cameras():
    cams, names = read_cameras_file(SHARED_CAMERAS)
    doc = json.loads(SHARED_CAMERAS.read_text())
    assert len(cams) == len(doc["frames"]) == 64 and names[0] == "0000"
    assert torch.allclose(cams.c2w[5].double(), torch.tensor(doc["frames"][5]["c2w"], dtype=torch.float64), atol=1e-6)
    assert int(cams.width[0]) == 200 and math.isclose(float(cams.K[0, 0, 2]), 100.0)


def test_read_cameras_file_rejects_bad_files(tmp_path):
    bad = tmp_path / "cams.json"
    bad.write_text(json.dumps({"frames": [{"c2w": [[1, 0, 0, 0]] * 4}], "w": 4, "h": 4}))
    with pytest.raises(InputError, match=r"cams.json.*frame 0"):
        read_cameras_file(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_cameras_file(bad)


def test_renderer_must_run_on_the_device(toy_registry, toy_scene):
    import types

    import recon_toy

    from recon_core import hookimpl
    from recon_core.registry import Registry

    class CudaOnly(recon_toy.ToyGridRenderer):
        name = "toy-cuda-render"
        devices = ("cuda",)

    extra = types.ModuleType("cuda_only_plugin")
    extra.register_renderers = hookimpl(lambda: [CudaOnly])
    registry = Registry(entry_points=[], modules=[("toy", recon_toy), ("cuda-only", extra)], disabled=())
    with pytest.raises(CombinationError, match="renderer toy-cuda-render runs on cuda, not cpu; "
                                               "renderers for toy-grid on cpu: toy-grid-render"):
        resolve_run(registry, data=toy_scene, representation="toy-grid", renderer="toy-cuda-render", device="cpu")


def test_malformed_config_entries_are_input_errors(toy_registry, toy_scene):
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid").to_json()
    with pytest.raises(InputError, match="config entry 'refiners' must be a list"):
        resolve_run(toy_registry, base={**doc, "refiners": "toy-fit"})
    with pytest.raises(InputError, match="config entry 'representation' must be"):
        resolve_run(toy_registry, base={**doc, "representation": {"config": {}}})
    with pytest.raises(InputError, match="not a recon run configuration"):
        resolve_run(toy_registry, base={"data": str(toy_scene)})


# ------------------------------------------------------- components created through the context


def test_set_reaches_a_component_created_through_the_context(toy_registry, toy_scene, tmp_path):
    """toy-augment creates its generator with ctx.create: --set toy-jitter.* must configure it."""
    sets = ["toy-augment.steps=3", "toy-jitter.noise=0.2", "toy-jitter.copies=2"]
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["toy-augment"],
                       evaluators=["psnr"], sets=sets)
    assert [(c.kind, c.name, c.config.noise, c.config.copies) for c in spec.used] == [("generator", "toy-jitter", 0.2, 2)]
    doc, run_dir = _run(toy_registry, toy_scene, tmp_path / "run", representation="toy-grid", refiners=["toy-augment"],
                        evaluators=["psnr"], sets=sets)
    report = doc["refiners"]["toy-augment"]
    assert report["generator_config"] == {"noise": 0.2, "copies": 2} and report["generated"] == 2 * 4
    assert [(p["kind"], p["name"]) for p in doc["plugins"]["used"]] == [("generator", "toy-jitter")]
    # config.json records the generator's options: --config reproduces them
    config = json.loads(run_dir.config_path.read_text())
    assert config["used"] == [{"kind": "generator", "name": "toy-jitter", "config": {"noise": 0.2, "copies": 2}}]
    again = resolve_run(toy_registry, base=config)
    assert again.to_json() == config
    # without --set the generator gets its defaults
    default, _ = _run(toy_registry, toy_scene, tmp_path / "default", representation="toy-grid", refiners=["toy-augment"],
                      evaluators=["none"], sets=["toy-augment.steps=1"])
    assert default["refiners"]["toy-augment"]["generator_config"] == {"noise": 0.02, "copies": 1}


@pytest.mark.parametrize(
    ("refiners", "sets", "message"),
    [
        (["toy-fit"], ["toy-jitter.noise=0.2"],
         "--set 'toy-jitter.noise=0.2': toy-jitter (generator) is installed but this run never creates it (components that create it: refiner toy-augment)"),
        (["toy-augment"], ["toy-augment.generator=none", "toy-jitter.noise=0.2"], "this run never creates it"),
        (["toy-augment"], ["toy-jitter.nois=1"], "toy-jitter has no option 'nois'; its options: copies, noise"),
        (["toy-augment"], ["toy-augment.generator=nope"], "refiner toy-augment uses generator 'nope': unknown generator 'nope'"),
    ],
    ids=["not-created", "generator-turned-off", "unknown-option", "unknown-generator"],
)
def test_components_created_through_the_context_are_checked_up_front(toy_registry, toy_scene, refiners, sets, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=refiners, sets=sets)


def test_a_config_file_keeps_options_only_for_components_still_created(toy_registry, toy_scene):
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["toy-augment"],
                      sets=["toy-jitter.copies=3"]).to_json()
    assert resolve_run(toy_registry, base=doc, refiners=["toy-fit"]).used == []
    with pytest.raises(InputError, match="config entry 'used' for toy-jitter needs a \"kind\""):
        resolve_run(toy_registry, base={**doc, "used": [{"name": "toy-jitter", "config": {}}]})


def test_real_plugins_declare_what_they_create():
    """Declared uses of the real plugins: --set NAME.* reaches what they create (ReconX's generator
    and the lpips evaluator of its loss, TTR's reported metrics, reconx pointcloud=dggt's dggt)."""
    from recon_core.registry import Registry

    registry = Registry()
    if not any(r.name == "confidence" and r.kind == "refiner" for r in registry.rows()):
        pytest.skip("reconx plugin not installed")
    cls = registry.get("refiner", "confidence")
    assert cls.uses(cls.Config()) == [("generator", "render-fix"), ("evaluator", "lpips")]
    assert cls.uses(cls.Config(generator="none", lambda_lpips=0.0)) == []
    ttr = registry.get("refiner", "ttr")
    assert ttr.uses(ttr.Config()) == [("evaluator", "ssim"), ("evaluator", "lpips")]
    assert ttr.uses(ttr.Config(lpips=False)) == [("evaluator", "ssim")]
    reconx = registry.get("representation", "reconx")
    assert reconx.uses(reconx.Config(pointcloud="dggt")) == [("representation", "dggt")]
    assert reconx.uses(reconx.Config()) == []


def test_a_refiner_needing_a_fixer_is_refused_without_one(toy_registry, toy_scene):
    with pytest.raises(CombinationError, match=r"refiner toy-polish needs a fixer: add --fixer NAME \(installed fixers: toy-smooth\)"):
        resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["toy-polish"])
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["toy-polish"], fixer="toy-smooth")
    assert spec.fixer is not None and spec.fixer.name == "toy-smooth"


# ------------------------------------------------------------------ nested options, run context


def test_nested_options_set_round_trip_and_selector(toy_registry, toy_scene):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid",
                       sets=["toy-fit.schedule=step", "toy-fit.schedule.gamma=0.25"])
    sched = spec.refiners[0].config.schedule
    assert (sched.kind, sched.gamma, sched.every) == ("step", 0.25, 20)
    doc = json.loads(json.dumps(spec.to_json()))
    assert doc["refiners"][0]["config"]["schedule"] == {"kind": "step", "gamma": 0.25, "every": 20}
    # a later --set refines the file's nested object without losing its other values
    again = resolve_run(toy_registry, base=doc, sets=["toy-fit.schedule.every=5"])
    sched = again.refiners[0].config.schedule
    assert (sched.kind, sched.gamma, sched.every) == ("step", 0.25, 5)
    assert resolve_run(toy_registry, base=doc).to_json() == doc


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("toy-fit.schedule.gama=1", "unknown option(s) gama for toy-fit.schedule; known options: every, gamma, kind"),
        ("toy-fit.schedule=linear", "bad value for toy-fit.schedule.kind: 'linear' is not one of constant, step"),
        ("toy-fit.schedule.every=often", "bad value for toy-fit.schedule.every"),
        ("toy-fit.steps.x=1", "toy-fit.steps is a single value, not a group of options"),
        ("toy-fit.schedul.kind=step", "toy-fit has no option 'schedul.kind'"),
        ("toy-fit.schedule.=1", "malformed --set"),
        ("run.background=1,1", "run.background must be three numbers in [0, 1]"),
        ("run.background=0,0,2", "run.background: 2 is out of range (must be [0, 1])"),
    ],
)
def test_bad_nested_and_background_options(toy_registry, toy_scene, text, message):
    with pytest.raises(InputError) as info:
        resolve_run(toy_registry, data=toy_scene, representation="toy-grid", sets=[text])
    assert message in str(info.value)


def test_one_run_context_with_background_create_and_load(toy_registry, toy_scene, tmp_path):
    spec = resolve_run(toy_registry, data=toy_scene, representation="toy-grid", refiners=["toy-augment"],
                       fixer="toy-smooth", sets=["run.background=0,0,1", "toy-jitter.noise=0.5"])
    pipeline = Pipeline(toy_registry, spec, RunDir.create(tmp_path / "run"))
    ctx = pipeline.context()
    assert pipeline.context() is ctx and ctx.device == pipeline.device and ctx.seed == spec.seed
    assert torch.equal(ctx.background.cpu(), torch.tensor([0.0, 0.0, 1.0]))
    assert ctx.renderer.name == "toy-grid-render" and ctx.fixer is None
    assert pipeline.prepare_fixer() is ctx.fixer and ctx.fixer.name == "toy-smooth"
    assert ctx.create("generator", "toy-jitter").config.noise == 0.5  # --set reaches created components
    assert len(ctx.load(toy_scene).views) == 6  # the best loader for another dataset
    data = pipeline.load_data()
    rep = pipeline.build(data)
    assert rep.grid.shape == (1, 4, 4, 3) and ctx.encoder is None


def test_renderers_get_the_run_background(toy_registry, toy_scene, tmp_path):
    doc, run_dir = _run(toy_registry, toy_scene, tmp_path / "run", representation="toy-sdf", refiners=["none"],
                        evaluators=["none"], sets=["run.background=0,0,1"])
    from PIL import Image

    image = np.asarray(Image.open(run_dir.renders_dir / "v4.png"))
    corner = image[0, 0]  # the sphere does not cover the corner: background
    assert corner.tolist() == [0, 0, 255]


def test_renderer_must_draw_what_the_representation_is_rendered_by(toy_registry, toy_video):
    with pytest.raises(CombinationError) as info:
        resolve_run(toy_registry, data=toy_video, representation="toy-frames", renderer="toy-grid-render")
    assert ("renderer toy-grid-render renders cameras, but representation toy-frames is rendered from frames; "
            "renderers that fit toy-frames: toy-frame-render") in str(info.value)
    with pytest.raises(CombinationError, match="renders frames, but representation toy-grid is rendered from cameras"):
        resolve_run(toy_registry, data=toy_video, representation="toy-grid", renderer="toy-frame-render")


def test_frame_rendered_video_is_drawn_by_index(toy_registry, toy_video, tmp_path):
    doc, run_dir = _run(toy_registry, toy_video, tmp_path / "run", representation="toy-frames", evaluators=["psnr"],
                        sets=["toy-fit.steps=60", "toy-fit.lr=0.1", "run.render_chunk=2"])
    assert [r["name"] for r in doc["per_view"]] == [f"frame-{i:05d}" for i in range(5)]
    assert doc["metrics"]["psnr"] > 20
    assert json.loads(run_dir.config_path.read_text())["renderer"]["name"] == "toy-frame-render"


def test_loader_background_follows_the_run_background(tmp_path):
    """Targets (RGBA composited by the loader) and renders share one background colour."""
    import recon_toy
    from loaders_support import write_transforms

    import recon_plugins.loaders as loaders
    from recon_core.registry import Registry

    registry = Registry(entry_points=[], modules=[("loaders", loaders), ("toy", recon_toy)], disabled=())
    write_transforms(tmp_path / "ns", rgba=True)
    data = tmp_path / "ns"

    def resolve(*sets: str):
        return resolve_run(registry, data=data, representation="toy-grid", refiners=["none"], evaluators=["none"], sets=sets)

    spec = resolve("run.background=0,0,1")
    assert spec.loader.name == "nerfstudio" and list(spec.loader.config.background) == [0.0, 0.0, 1.0]
    spec = resolve("nerfstudio.background=0,1,0")  # the loader's own option sets the run's
    assert spec.options.background == [0.0, 1.0, 0.0] and list(spec.loader.config.background) == [0.0, 1.0, 0.0]
    assert resolve().options.background == [1.0, 1.0, 1.0]
    with pytest.raises(InputError, match="must share one background"):
        resolve("nerfstudio.background=0,1,0", "run.background=0,0,1")


def test_training_rendering_and_metrics_share_the_run_background(tmp_path, monkeypatch):
    """``run.background`` other than the loader's default (white): the loader composites RGBA
    targets onto it, 3dgs-train compares renders drawn on it with targets on it, and evaluation
    renders on it and scores against the views on it."""
    import recon_plugins.gaussians as gaussians
    import recon_plugins.loaders as loaders
    import recon_plugins.metrics as metrics
    from loaders_support import write_transforms

    from recon_core.registry import Registry
    from recon_core.scene import View

    registry = Registry(entry_points=[], modules=[("loaders", loaders), ("gaussians", gaussians), ("metrics", metrics)],
                        disabled=())
    write_transforms(tmp_path / "ns", n=4, w=16, h=12, rgba=True, extra={"test_filenames": ["images/0003.png"]})
    spec = resolve_run(registry, data=tmp_path / "ns", representation="3dgs", renderer="torch-3dgs", evaluators=["psnr"],
                       device="cpu", sets=["run.background=[0.0, 0.0, 1.0]", "3dgs.init=random", "3dgs.num_points=50",
                                           "3dgs-train.steps=3", "torch-3dgs.backend=torch"])
    blue = [0.0, 0.0, 1.0]
    assert list(spec.loader.config.background) == blue and spec.options.background == blue

    seen: dict[str, list] = {"targets": [], "renders": [], "loaded": []}
    image_on = View.image_on

    def spy_image_on(view, background):
        seen["targets"].append(background.tolist())
        seen["loaded"].append(torch.equal(view.image.float(), image_on(view, background)))
        return image_on(view, background)

    renderer_cls = registry.get("renderer", "torch-3dgs")
    render = renderer_cls.render

    def spy_render(self, rep, cameras, *, background=None):
        seen["renders"].append(None if background is None else background.tolist())
        return render(self, rep, cameras, background=background)

    monkeypatch.setattr(View, "image_on", spy_image_on)
    monkeypatch.setattr(renderer_cls, "render", spy_render)
    pipeline = Pipeline(registry, spec, RunDir.create(tmp_path / "run"))
    doc = pipeline.run()

    assert seen["targets"] and all(bg == blue for bg in seen["targets"])
    assert len(seen["renders"]) >= 4 and all(bg == blue for bg in seen["renders"])  # 3 training steps + evaluation
    assert all(seen["loaded"])  # the loader already composited onto blue: image_on changes nothing
    assert doc["background"] == blue and doc["split"] == "test" and doc["num_views"] == 1
    # the evaluated target is the test view on blue: where its alpha is 0 it is pure blue
    view = pipeline.load_data().eval_views[0]
    outside = view.alpha < 1 / 255
    assert outside.any() and torch.equal(view.image_on(torch.tensor(blue))[outside], torch.tensor(blue).expand(int(outside.sum()), 3))
    assert set(doc["metrics"]) == {"psnr", "psnr_masked"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["run.video_fps=-5"], "run.video_fps: -5 is out of range (must be >= 0)"),
        (["run.checkpoint_every=-1"], "run.checkpoint_every: -1 is out of range"),
        (["run.render_chunk=-1"], "run.render_chunk: -1 is out of range (must be >= 0)"),
        (["toy-fit.lr=nan"], "toy-fit.lr: nan is not a finite number"),
        (["toy-fit.lr=inf"], "toy-fit.lr: inf is not a finite number"),
        (["toy-fit.steps=-3"], "toy-fit.steps: -3 is out of range"),
    ],
)
def test_out_of_range_options_fail_before_any_work(toy_registry, toy_scene, sets, message):
    with pytest.raises(InputError) as info:
        resolve_run(toy_registry, data=toy_scene, representation="toy-grid", sets=sets)
    assert message in str(info.value)


def test_out_of_range_option_in_a_config_file_is_rejected(toy_registry, toy_scene):
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid").to_json()
    with pytest.raises(InputError, match=r"run.video_fps: -5 is out of range"):
        resolve_run(toy_registry, base={**doc, "run": {**doc["run"], "video_fps": -5}})
    with pytest.raises(InputError, match=r"toy-fit.lr: nan is not a finite number"):
        resolve_run(toy_registry, base={**doc, "refiners": [{"name": "toy-fit", "config": {"lr": math.nan}}]})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"seed": 1.5}, "bad value for seed: '1.5' is not an integer"),
        ({"seed": "abc"}, "bad value for seed"),
        ({"seed": True}, "bad value for seed"),
        ({"seed": 2**70}, "bad value for seed: .* out of range"),
        ({"device": 5}, "bad value for device: 5"),
        ({"representation": {"name": "toy-grid", "config": [1, 2]}}, "'representation' \\(toy-grid\\): \"config\" must be a mapping"),
        ({"representation": {"name": "toy-grid", "config": "size=3"}}, "must be a mapping"),
        ({"run": [1]}, "config entry 'run' must be a mapping"),
    ],
)
def test_wrong_types_in_a_config_file_are_input_errors(toy_registry, toy_scene, edit, message):
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid").to_json()
    with pytest.raises(InputError, match=message):
        resolve_run(toy_registry, base={**doc, **edit})


def test_seed_that_is_an_integral_number_is_accepted(toy_registry, toy_scene):
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid").to_json()
    assert resolve_run(toy_registry, base={**doc, "seed": 7.0}).seed == 7


def test_cli_exit_codes_for_bad_values(toy_registry, toy_scene, tmp_path):
    from click.testing import CliRunner

    from recon_cli.main import make_cli

    cli = make_cli(toy_registry)
    for sets in (["run.video_fps=-5"], ["toy-fit.lr=nan"]):
        args = ["run", "--data", str(toy_scene), "--repr", "toy-grid", "--out", str(tmp_path / "r")]
        result = CliRunner().invoke(cli, args + [a for s in sets for a in ("--set", s)])
        assert result.exit_code == 2, result.output
        assert sets[0].split("=")[0] in result.output
        assert not (tmp_path / "r" / "grid.npy").exists()
    doc = resolve_run(toy_registry, data=toy_scene, representation="toy-grid").to_json()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**doc, "seed": 1.5}))
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "seed" in result.output


def test_cli_non_finite_refiner_exits_1_without_export(toy_registry, toy_scene, tmp_path):
    from click.testing import CliRunner

    from recon_cli.main import make_cli

    result = CliRunner().invoke(make_cli(toy_registry), [
        "run", "--data", str(toy_scene), "--repr", "toy-grid", "--out", str(tmp_path / "r"),
        "--set", "toy-fit.steps=8", "--set", "toy-fit.nan_at=3"])
    assert result.exit_code == 1, result.output
    assert "step 3" in result.output and "'grid'" in result.output
    assert "internal error" not in result.output  # recon explains it: no traceback hint
    assert not (tmp_path / "r" / "grid.npy").exists()


def test_default_renderer_falls_back_when_the_cuda_one_is_not_installed():
    from recon_core.resolve import default_renderer

    class Rep:
        name = "splats"
        default_renderer = {"cpu": "torch-3dgs", "cuda": "gsplat"}

    cuda = torch.device("cuda")
    assert default_renderer(Rep, cuda) == "gsplat"
    assert default_renderer(Rep, cuda, usable={"torch-3dgs"}.__contains__) == "torch-3dgs"  # no `cuda` extra
    assert default_renderer(Rep, torch.device("cpu"), usable={"torch-3dgs"}.__contains__) == "torch-3dgs"

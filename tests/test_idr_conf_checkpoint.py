"""IDR .conf files (recon run --config) and IDR checkpoints (idr.init_weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loaders_support import write_idr

from recon_core import InputError, MissingWeightsError, RunContext
from recon_core.registry import get_registry
from recon_core.resolve import resolve_run
from recon_plugins.idr import IDRRepresentation
from recon_plugins.idr.checkpoint import idr_key_map
from recon_plugins.idr.conf import read_idr_conf

pytest.importorskip("pyhocon")

# The keys of IDR's code/confs/dtu_fixed_cameras.conf (values changed where it helps the test).
IDR_CONF = """
train { expname = dtu_test, learning_rate = 2.0e-4, num_pixels = 1024, alpha_milestones = [250, 500, 750, 1000, 1250]
        alpha_factor = 2, sched_milestones = [1000, 1500], sched_factor = 0.5, plot_freq = 100 }
plot { plot_nimgs = 1, max_depth = 3.0, resolution = 100 }
loss { eikonal_weight = 0.1, mask_weight = 100.0, alpha = 50.0 }
dataset { data_dir = DTU, img_res = [1200, 1600], scan_id = 65 }
model {
    feature_vector_size = 16
    implicit_network { d_in = 3, d_out = 1, dims = [64, 64, 64], geometric_init = True, bias = 0.6, skip_in = [2],
                       weight_norm = True, multires = 6 }
    rendering_network { mode = idr, d_in = 9, d_out = 3, dims = [32, 32], weight_norm = True, multires_view = 4 }
    ray_tracer { object_bounding_sphere = 1.0, sdf_threshold = 5.0e-5, line_search_step = 0.5, line_step_iters = 3,
                 sphere_tracing_iters = 10, n_steps = 100, n_secant_steps = 8 }
}
"""


def test_idr_conf_maps_onto_recon_options(tmp_path: Path) -> None:
    conf = tmp_path / "dtu.conf"
    conf.write_text(IDR_CONF)
    base, unmapped = read_idr_conf(conf)
    rep = base["representation"]["config"]
    assert rep["sdf_width"] == 64 and rep["sdf_layers"] == 3 and rep["skip_in"] == [2] and rep["feature_dim"] == 16
    assert rep["color_width"] == 32 and rep["color_layers"] == 2 and rep["rgb_range"] == [-1.0, 1.0]
    assert rep["trace_back_off_iters"] == 3 and rep["trace_samples"] == 100 and rep["trace_min_search"] == "uniform"
    assert base["encoder"] == {"name": "fourier", "config": {"n_frequencies": 6}}
    fit = base["refiners"][0]["config"]
    assert fit["lr"] == 2e-4 and fit["batch_rays"] == 1024 and fit["lr_milestones"] == [0.5, 0.75]
    assert fit["grad_clip"] == 0.0 and "encoder_lr" not in fit  # IDR never clips; no encoder tables
    assert fit["alpha_milestones"] == [0.125, 0.25, 0.375, 0.5, 0.625]
    assert base["loader"]["config"]["test_every"] == 0
    named = {line.split(" = ")[0] for line in unmapped}
    assert named == {"train.expname", "train.plot_freq", "plot.plot_nimgs", "plot.max_depth", "plot.resolution",
                     "dataset.data_dir", "dataset.img_res", "dataset.scan_id"}
    # the mapped configuration resolves into a run (every value is a valid recon option)
    data = tmp_path / "scan"
    write_idr(data, n=3)
    spec = resolve_run(get_registry(), data=data, base=base)
    assert spec.representation.config.sdf_width == 64 and spec.refiners[0].config.batch_rays == 1024
    assert spec.encoder.config.n_frequencies == 6 and spec.loader.config.test_every == 0


def test_seed_conf_picks_encoders_and_squashing(tmp_path: Path) -> None:
    conf = tmp_path / "seed.conf"
    conf.write_text(IDR_CONF.replace("multires_view = 4 }", "multires_view = 4, viewdirs_embed_type = SHEncoder }")
                    .replace("\n}\n", "\n    embedding_network { embed_type = StyleModNFFB, log2_max_hash_size = 5, "
                             "max_points_per_entry = 2, base_resolution = 16, desired_resolution = 512, bound = 0.45 }\n}\n"))
    base, _ = read_idr_conf(conf)
    rep = base["representation"]["config"]
    assert rep["sdf_squash"] is True and rep["view_encoder"] == "sh"
    assert base["encoder"]["name"] == "ffb-stylemod"
    assert base["encoder"]["config"] == {"variant": "seed", "n_levels": 6, "log2_hashmap_size": 5, "n_features_per_level": 2,
                                         "base_resolution": 16, "max_resolution": 512, "bound": 0.45}
    assert base["used"] == [{"kind": "encoder", "name": "sh", "config": {"degree": 4}}]
    fit = base["refiners"][0]["config"]  # the seed's one Adam: every parameter at train.learning_rate, no clipping
    assert fit["lr"] == fit["encoder_lr"] == fit["encoder_weights_lr"] == 2e-4 and fit["grad_clip"] == 0.0
    bad = tmp_path / "bad.conf"
    bad.write_text("train { learning_rate = 1e-4 }")
    with pytest.raises(InputError, match="implicit_network"):
        read_idr_conf(bad)


def _rep(**kw) -> IDRRepresentation:
    from recon_core import Bounds, Cameras, Scene, View

    cam = Cameras.create(torch.eye(3), torch.eye(4), 4, 4)
    scene = Scene("s", [View("0", cam, torch.zeros(4, 4, 3))], Bounds(torch.zeros(3), 1.0))
    rep = IDRRepresentation(IDRRepresentation.Config(preset="small", sdf_width=64, sdf_layers=3, skip_in=[2], feature_dim=8,
                                                     color_width=32, color_layers=2, rgb_range=[-1.0, 1.0], **kw))
    rep.build(scene, RunContext(device=torch.device("cpu"), seed=0, create=get_registry().create))
    return rep


def _save_idr_layout(rep: IDRRepresentation, path: Path) -> None:
    """A checkpoint in IDR's documented layout: {"epoch", "model_state_dict"} with lin{l}.weight_g / weight_v / bias."""
    ours = rep.state_dict()
    mapping = {**idr_key_map(rep.implicit.layers, "implicit_network", "implicit.layers"),
               **idr_key_map(rep.rendering.layers, "rendering_network", "rendering.layers")}
    torch.save({"epoch": 2000, "model_state_dict": {theirs: ours[mine].clone() for theirs, mine in mapping.items()}}, path)


def test_idr_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = _rep()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "2000.pth"
    _save_idr_layout(src, path)
    loaded = _rep(init_weights=str(path))
    x, v, n = torch.rand(50, 3) * 2 - 1, torch.randn(50, 3), torch.randn(50, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.implicit(x), src.implicit(x), rtol=0, atol=0)
        f = src.implicit(x)[:, 1:]
        torch.testing.assert_close(loaded.rendering(x, v, n, f), src.rendering(x, v, n, f), rtol=0, atol=0)
    fresh = _rep()
    assert not torch.allclose(fresh.implicit(x), src.implicit(x))

    with pytest.raises(MissingWeightsError, match="missing.pth"):
        _rep(init_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(InputError, match="shape"):  # another width than the configured network
        big = tmp_path / "big.pth"
        state = torch.load(path, weights_only=True)
        state["model_state_dict"]["implicit_network.lin1.weight_v"] = torch.zeros(64, 128)
        torch.save(state, big)
        _rep(init_weights=str(big))
    with pytest.raises(InputError, match="plain tensors"):  # code in the pickle is refused (weights_only)
        evil = tmp_path / "evil.pth"
        torch.save({"model_state_dict": {}, "obj": Path("x")}, evil)
        _rep(init_weights=str(evil))

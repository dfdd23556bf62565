"""IDR / HashModNFFBanks-IDR ``.conf`` files (pyhocon) → a recon run configuration.

``recon run --config dtu_fixed_cameras.conf --data SCAN`` reads the file with pyhocon and maps each
key onto recon options (``idr``, ``idr-fit``, the encoder, the ``idr`` loader); every key it cannot
map is named (a line per key) and otherwise ignored. What is set besides the keys:

* ``idr.rgb_range=[-1,1]`` (IDR's tanh colour) and ``idr.test_every=0`` (IDR trains on every view);
* files with the seed's ``model.embedding_network`` get ``idr.sdf_squash=true`` (the seed's implicit
  network always squashes) and ``ffb-stylemod.variant=seed``;
* epoch milestones (``alpha_milestones``, ``sched_milestones``) become fractions of IDR's default
  2000 epochs (IDR's ``--nepoch``); the number of steps is not in the file (2000 epochs × the number
  of views, e.g. 98 000 for DTU's 49): set ``idr-fit.steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recon_core import InputError

__all__ = ["IDR_EPOCHS", "read_idr_conf"]

IDR_EPOCHS = 2000
"""IDR's default ``--nepoch``: epoch milestones are read as fractions of it."""

# the seed's embed_type / viewdirs_embed_type → (recon encoder, its options)
_SEED_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "NerfPos": ("fourier", {}),
    "FourierFeatures": ("fourier-features", {}),
    "HashGrid": ("hashgrid", {}),
    "HashGridTcnn": ("hashgrid", {}),
    "HashGridCUDA": ("hashgrid", {}),
    "FFB": ("ffb", {}),
    "FFBTcnn": ("ffb", {}),
    "StyleModNFFB": ("ffb-stylemod", {"variant": "seed"}),
    "SHEncoder": ("sh", {}),
}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """pyhocon ConfigTree → {"a.b.c": value} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _same(values: list[Any], key: str, problems: list[str]) -> Any | None:
    if values and all(v == values[0] for v in values):
        return values[0]
    problems.append(f"{key} = {values}: recon's layers all have one width")
    return None


def read_idr_conf(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(recon run configuration without ``data``, the keys that could not be mapped with why)."""
    try:
        from pyhocon import ConfigFactory
        from pyhocon.exceptions import ConfigException
    except ImportError as e:  # pragma: no cover - a core dependency
        raise InputError(f"reading .conf files needs pyhocon (pip install pyhocon): {e}", path) from None
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path)
    try:
        flat = _flatten(ConfigFactory.parse_file(str(path)))
    except (ConfigException, ValueError, TypeError) as e:
        raise InputError(f"not a readable HOCON (.conf) file: {e}", path) from None
    if not any(k.startswith("model.implicit_network.") for k in flat):
        raise InputError("not an IDR configuration (it has no model.implicit_network)", path)

    rep: dict[str, Any] = {"rgb_range": [-1.0, 1.0]}
    fit: dict[str, Any] = {"grad_clip": 0.0}  # IDR and the seed never clip (recon's grid encoders do by default)
    loader: dict[str, Any] = {"test_every": 0}
    unmapped: list[str] = []
    seed = any(k.startswith("model.embedding_network.") for k in flat)
    encoder_name, enc_cfg = "fourier", {}
    view_name, view_cfg = "fourier", {}
    if seed:
        rep["sdf_squash"] = True
        kind = flat.get("model.embedding_network.embed_type")
        if kind not in _SEED_ENCODERS:
            unmapped.append(f"model.embedding_network.embed_type = {kind}: no recon encoder of that kind")
        else:
            encoder_name, extra = _SEED_ENCODERS[kind]
            enc_cfg.update(extra)
    milestones = lambda v: sorted(min(1.0, float(m) / IDR_EPOCHS) for m in v)  # noqa: E731

    def want(key: str, expected: Any) -> None:
        if key in flat and flat[key] != expected:
            unmapped.append(f"{key} = {flat[key]}: recon supports only {expected}")

    for key, value in flat.items():
        k = key
        if k == "train.learning_rate":
            fit["lr"] = float(value)
            if seed:  # the seed's one Adam trains its embedding network (tables, SIREN) at this lr too
                fit["encoder_lr"] = fit["encoder_weights_lr"] = float(value)
        elif k == "train.num_pixels":
            fit["batch_rays"] = int(value)
        elif k == "train.alpha_milestones":
            fit["alpha_milestones"] = milestones(value)
        elif k == "train.alpha_factor":
            fit["alpha_factor"] = float(value)
        elif k == "train.sched_milestones":
            fit["lr_milestones"] = milestones(value)
        elif k == "train.sched_factor":
            fit["lr_gamma"] = float(value)
        elif k == "loss.eikonal_weight":
            fit["eikonal_weight"] = float(value)
        elif k == "loss.mask_weight":
            fit["mask_weight"] = float(value)
        elif k == "loss.alpha":
            fit["alpha_init"] = float(value)
        elif k == "model.feature_vector_size":
            rep["feature_dim"] = int(value)
        elif k == "model.implicit_network.dims":
            width = _same(list(value), k, unmapped)
            if width is not None:
                rep["sdf_width"], rep["sdf_layers"] = int(width), len(value)
        elif k == "model.implicit_network.bias":
            rep["init_radius"] = float(value)
        elif k == "model.implicit_network.skip_in":
            rep["skip_in"] = [int(v) for v in value]
        elif k in ("model.implicit_network.weight_norm", "model.rendering_network.weight_norm"):
            if "weight_norm" in rep and rep["weight_norm"] != bool(value):
                unmapped.append(f"{k} = {value}: recon has one weight_norm for both networks")
            rep["weight_norm"] = bool(value)
        elif k == "model.implicit_network.multires":
            if encoder_name == "fourier":
                enc_cfg["n_frequencies"] = int(value)
            elif encoder_name in ("hashgrid", "ffb", "ffb-stylemod"):
                enc_cfg["n_levels"] = int(value)
            else:
                unmapped.append(f"{k} = {value}: not an option of the {encoder_name} encoder")
        elif k == "model.rendering_network.dims":
            width = _same(list(value), k, unmapped)
            if width is not None:
                rep["color_width"], rep["color_layers"] = int(width), len(value)
        elif k == "model.rendering_network.multires_view":
            rep["view_frequencies"] = int(value)
            view_cfg["_multires_view"] = int(value)
        elif k == "model.rendering_network.viewdirs_embed_type":
            if value not in _SEED_ENCODERS:
                unmapped.append(f"{k} = {value}: no recon encoder of that kind")
            else:
                view_name, extra = _SEED_ENCODERS[value]
                view_cfg.update(extra)
        elif k == "model.ray_tracer.object_bounding_sphere":
            rep["bounding_radius"] = float(value)
        elif k == "model.ray_tracer.sdf_threshold":
            rep["trace_threshold"] = float(value)
        elif k == "model.ray_tracer.line_step_iters":
            rep["trace_back_off_iters"] = int(value)
        elif k == "model.ray_tracer.sphere_tracing_iters":
            rep["trace_iters"] = int(value)
        elif k == "model.ray_tracer.n_steps":
            rep["trace_samples"] = int(value)
            rep["trace_min_search"] = "uniform"  # IDR's
        elif k == "model.ray_tracer.n_secant_steps":
            rep["secant_steps"] = int(value)
        elif k == "model.embedding_network.log2_max_hash_size" and encoder_name in ("hashgrid", "ffb", "ffb-stylemod"):
            enc_cfg["log2_hashmap_size"] = int(value)
        elif k == "model.embedding_network.max_points_per_entry" and encoder_name in ("hashgrid", "ffb", "ffb-stylemod"):
            enc_cfg["n_features_per_level"] = int(value)
        elif k == "model.embedding_network.base_resolution" and encoder_name in ("hashgrid", "ffb", "ffb-stylemod"):
            enc_cfg["base_resolution"] = int(value)
        elif k == "model.embedding_network.desired_resolution" and encoder_name in ("hashgrid", "ffb", "ffb-stylemod"):
            enc_cfg["max_resolution"] = int(value)
        elif k == "model.embedding_network.bound" and encoder_name in ("hashgrid", "ffb", "ffb-stylemod"):
            enc_cfg["bound"] = float(value)
        elif k == "model.embedding_network.embed_type":
            pass  # chose the encoder above
        elif k in ("model.implicit_network.d_in", "model.implicit_network.d_out", "model.implicit_network.geometric_init",
                   "model.rendering_network.mode", "model.rendering_network.d_in", "model.rendering_network.d_out",
                   "model.ray_tracer.line_search_step"):
            want(k, {"model.implicit_network.d_in": 3, "model.implicit_network.d_out": 1,
                     "model.implicit_network.geometric_init": True, "model.rendering_network.mode": "idr",
                     "model.rendering_network.d_in": 9, "model.rendering_network.d_out": 3,
                     "model.ray_tracer.line_search_step": 0.5}[k])
        else:
            unmapped.append(f"{k} = {value}: no recon option")
    multires_view = view_cfg.pop("_multires_view", None)
    if view_name == "sh" and multires_view is not None:
        view_cfg["degree"] = multires_view  # the seed's SHEncoder(degree=multires_view)
    if view_name != "fourier":
        rep["view_encoder"] = view_name
    rep["encoder"] = encoder_name
    config: dict[str, Any] = {
        "recon_config": 1,
        "loader": {"name": "idr", "config": loader},
        "representation": {"name": "idr", "config": rep},
        "encoder": {"name": encoder_name, "config": enc_cfg},
        "refiners": [{"name": "idr-fit", "config": fit}],
    }
    if view_name != "fourier" and view_cfg and view_name != encoder_name:
        config["used"] = [{"kind": "encoder", "name": view_name, "config": view_cfg}]
    elif view_cfg and view_name == encoder_name:
        unmapped.append(f"model.rendering_network.viewdirs_embed_type options {view_cfg}: the view encoder shares "
                        f"the {encoder_name} options of the point encoder")
    return config, unmapped

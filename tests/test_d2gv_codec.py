"""The .d2gv codec: ANS streams, quantisation, fine-tune, bitstream round trip, damaged files, CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("constriction")

from recon_core import RunContext  # noqa: E402
from recon_plugins.d2gv.bitstream import (  # noqa: E402
    VERSION,
    BitstreamError,
    QuantGrid,
    decode_file,
    decode_gop_chunk,
    decode_symbols,
    encode_symbols,
    position_symbols,
    read_bitstream,
)
from recon_plugins.d2gv.codec import encode_representation, finetune_quantised, kept_copy, quantise_gop  # noqa: E402
from recon_plugins.d2gv.decode import Decoder  # noqa: E402
from recon_plugins.d2gv.renderer import render_gaussians  # noqa: E402
from recon_plugins.d2gv.representation import D2GV, D2GVConfig  # noqa: E402

from test_d2gv_representation import tiny_video  # noqa: E402

CPU = RunContext(torch.device("cpu"), seed=0)


def _rep(n: int = 80, width: int = 16, preset: str = "cpu") -> tuple[D2GV, object]:
    """A built (unfitted) model with a random, non-zero MLP, so every stream carries information."""
    video = tiny_video(num_frames=5, gop_length=3)
    rep = D2GV(D2GVConfig(preset=preset, num_gaussians=n, gop_length=0, mlp_width=width))
    rep.build(video, CPU)
    gen = torch.Generator().manual_seed(1)
    for gop in rep.gops:
        for p in gop.deform.parameters():
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        gop.mask_logit.data[:7] = -5.0  # pruned Gaussians are not stored
    return rep, video


@pytest.mark.parametrize("symbols", [[], [7] * 5, [-3, 0, 0, 2, 1000, -3, 5], list(range(-40, 300, 3)) * 2])
def test_ans_stream_round_trip(symbols):
    data = encode_symbols(np.asarray(symbols, dtype=np.int64))
    assert decode_symbols(data, len(symbols)).tolist() == symbols


def test_ans_stream_is_near_the_entropy():
    rng = np.random.default_rng(0)
    sym = rng.geometric(0.3, size=20000)
    _, counts = np.unique(sym, return_counts=True)
    p = counts / counts.sum()
    entropy_bytes = -(counts * np.log2(p)).sum() / 8
    assert len(encode_symbols(sym)) < entropy_bytes * 1.01 + 200


def test_ans_stream_rejects_wrong_counts_and_garbage():
    data = encode_symbols(np.arange(50) % 7)
    with pytest.raises(BitstreamError):
        decode_symbols(data, 49)
    with pytest.raises(BitstreamError):
        decode_symbols(data[:-2], 50)


@pytest.mark.parametrize("preset", ["cpu", "paper"])  # paper: the branched MLP and its embedder travel
def test_bitstream_round_trip_decodes_the_quantised_model_exactly(tmp_path, preset):
    rep, _ = _rep(preset=preset)
    kept = [int((torch.sigmoid(g.mask_logit) > 0.2).sum()) for g in rep.gops]
    data, qs = encode_representation(rep, apply=True)  # rep now renders what a decoder renders
    assert [q.num_gaussians for q in qs] == kept == [73, 73]
    (tmp_path / "clip.d2gv").write_bytes(data)
    decoded, header = decode_file(tmp_path / "clip.d2gv")
    assert decoded.deform_settings == rep.deform_settings
    assert (header.width, header.height, header.frame_count, header.gop_lengths, float(header.fps)) == (24, 16, 5, [3, 2], 25.0)
    assert torch.equal(Decoder(decoded).frames(), Decoder(rep).frames())
    # quantising a quantised model gives the same file (export after d2gv-compress is exact)
    again, _ = encode_representation(rep)
    assert again == data


def test_quantisation_error_is_bounded_by_the_grid():
    rep, _ = _rep()
    gop = kept_copy(rep.gops[0])
    grid = QuantGrid(pos_step=0.5, chol_step=0.1, color_step=0.02, mlp_bits=6)
    q = quantise_gop(gop, rep.width, rep.height, grid)
    model = q.to_model(rep.width, rep.height, grid, gop.deform.settings)
    # the stored order is raster order of the cells: put the originals in that order
    kx, ky = position_symbols(gop.xy.detach(), rep.width, rep.height, grid)
    order = torch.argsort(ky * (int(kx.max()) + 1) + kx, stable=True)
    px = lambda xy: ((torch.tanh(xy) + 1) * 0.5 * torch.tensor([24.0, 16.0]))  # noqa: E731
    a, b = px(gop.xy.detach()[order]), px(model.xy.detach())
    assert (a - b).abs().max() <= 0.25 + 1e-4 and (a - b).abs().max() > 0  # half a 0.5-pixel cell
    assert torch.equal(torch.diff(b[:, 1]) >= 0, torch.ones(b.shape[0] - 1, dtype=torch.bool))
    for (name, w), w2 in zip(gop.deform.state_dict().items(), model.deform.state_dict().values()):
        step = w.abs().max() / 31
        assert (w - w2).abs().max() <= step / 2 + 1e-7, name
    assert sorted(model.color.detach().flatten().tolist()) == pytest.approx(
        sorted((torch.round(gop.color.detach() / 0.02) * 0.02).flatten().tolist()), abs=1e-6)


def test_quantisation_aware_finetune_beats_plain_quantisation():
    """Targets rendered by an unquantised model: after a fine-tune through the straight-through
    quantisers, the decoded (quantised) model is closer to them than the quantised original."""
    rep, video = _rep(n=150, width=16)
    frames = torch.stack([video.frame(i) for i in range(3)])
    grid = QuantGrid(pos_step=1.0, chol_step=0.25, color_step=0.08, mlp_bits=4)

    def error(gop) -> float:
        q = quantise_gop(gop, rep.width, rep.height, grid)
        model = q.to_model(rep.width, rep.height, grid, gop.deform.settings)
        with torch.no_grad():
            render = render_gaussians(model.frame_gaussians(torch.arange(3), 3, mask="none"), 16, 24)
        return float(torch.mean((render - frames) ** 2))

    before = error(kept_copy(rep.gops[0]))
    tuned = finetune_quantised(kept_copy(rep.gops[0]), frames, grid, 40, lr_gaussians=3e-3, lr_mlp=3e-3)
    assert not hasattr(tuned, "parametrizations")  # parametrisations removed
    assert error(tuned) < 0.8 * before


def _damaged_cases(data: bytes) -> list[tuple[str, bytes]]:
    cases = [(f"truncated to {n}", data[:n]) for n in sorted({0, 3, 5, 9, 20, 40, len(data) // 2, len(data) - 5, len(data) - 1})]
    rng = np.random.default_rng(0)
    for pos in sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, 4, 6, 12, len(data) - 1}):
        b = bytearray(data)
        b[pos] ^= 0x5A
        cases.append((f"byte {pos} flipped", bytes(b)))
    cases.append(("trailing byte", data + b"\0"))
    return cases


def test_damaged_bitstreams_are_errors_never_frames(tmp_path):
    rep, _ = _rep(n=40, width=8)
    data, _ = encode_representation(rep)
    for label, bad in _damaged_cases(data):
        path = tmp_path / "bad.d2gv"
        path.write_bytes(bad)
        with pytest.raises(BitstreamError):
            decode_file(path)
            pytest.fail(label)


def test_version_mismatch_is_an_error(tmp_path):
    rep, _ = _rep(n=40, width=8)
    data, _ = encode_representation(rep)
    newer = data[:4] + struct.pack("<H", VERSION + 1) + data[6:]
    with pytest.raises(BitstreamError, match="version"):
        read_bitstream(newer)


def test_chunk_decoding_checks_its_mlp_shape():
    rep, _ = _rep(n=40, width=8)
    data, _ = encode_representation(rep)
    header, chunks = read_bitstream(data)
    other = type(header.deform)(xy_freqs=header.deform.xy_freqs, t_freqs=header.deform.t_freqs, width=9)
    with pytest.raises(BitstreamError):
        decode_gop_chunk(chunks[0], other)


def test_decoding_loads_no_training_code(tmp_path):
    rep, _ = _rep(n=40, width=8)
    data, _ = encode_representation(rep)
    (tmp_path / "c.d2gv").write_bytes(data)
    code = (
        "import sys; from recon_plugins.d2gv.bitstream import decode_to_folder;"
        f"decode_to_folder({str(tmp_path / 'c.d2gv')!r}, {str(tmp_path / 'out')!r}, mp4=False);"
        "bad = [m for m in sys.modules if m.startswith('recon_plugins.') and m.split('.')[-1] in ('fit', 'codec', 'executors')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 5


def _write_mp4(path: Path, video) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for i in range(video.num_frames):
            arr = (video.frame(i).numpy() * 255 + 0.5).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def cli_run(tmp_path: Path, *sets: str, frames: int = 6, gop: int = 3, fit_steps: tuple[int, int] = (6, 4), compress_steps: int = 4):
    """``recon run`` (d2gv-fit + d2gv-compress, inline) on a tiny clip written as mp4, options
    ``sets`` added; returns (click result, run folder, invoke(*args) for further commands)."""
    from click.testing import CliRunner

    from recon_cli.main import make_cli

    cli = make_cli()
    video = tiny_video(num_frames=frames, width=32, height=24, gop_length=gop)
    _write_mp4(tmp_path / "clip.mp4", video)
    run = tmp_path / "run"
    args = ["run", "--data", tmp_path / "clip.mp4", "--repr", "d2gv", "--refiner", "d2gv-fit,d2gv-compress", "--out", run,
            "--set", "d2gv.num_gaussians=60", "--set", "d2gv.mlp_width=8", "--set", f"d2gv.gop_length={gop}",
            "--set", f"d2gv-fit.static_steps={fit_steps[0]}", "--set", f"d2gv-fit.deform_steps={fit_steps[1]}",
            "--set", "d2gv-fit.executor=inline", "--set", f"d2gv-compress.steps={compress_steps}"]
    for option in sets:
        args += ["--set", option]
    invoke = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731
    return invoke(*args), run, invoke


def test_cli_run_compress_export_decode(tmp_path):
    """recon run (fit + compress) → recon export --format d2gv → recon decode: the decoded PNGs are
    the run's quantised model; damaged files and other versions exit 2."""
    from PIL import Image

    result, run, invoke = cli_run(tmp_path, "d2gv.q_mlp_bits=6")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "metrics.json").read_text())["refiners"]["d2gv-compress"]
    assert (run / "clip.d2gv").stat().st_size == report["bytes"]

    result = invoke("export", run, "--format", "d2gv", "--out", tmp_path / "clip.d2gv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "clip.d2gv").read_bytes() == (run / "clip.d2gv").read_bytes()
    result = invoke("decode", tmp_path / "clip.d2gv", "--out", tmp_path / "dec")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "dec").glob("frame_*.png"))
    assert len(pngs) == 6 and (tmp_path / "dec" / "decoded.mp4").stat().st_size > 0
    rep, _ = decode_file(tmp_path / "clip.d2gv")
    expected = Decoder(rep).frames_uint8()
    for i, p in enumerate(pngs):
        assert np.array_equal(np.asarray(Image.open(p)), expected[i].numpy())

    data = (tmp_path / "clip.d2gv").read_bytes()
    for label, bad in _damaged_cases(data)[::4] + [("version", data[:4] + struct.pack("<H", VERSION + 1) + data[6:])]:
        (tmp_path / "bad.d2gv").write_bytes(bad)
        result = invoke("decode", tmp_path / "bad.d2gv", "--out", tmp_path / "bad")
        assert result.exit_code == 2, (label, result.output)
        assert not list((tmp_path / "bad").glob("*.png")), label


def test_compress_refiner_stops_between_gops_and_resumes_to_the_same_file(tmp_path):
    from recon_plugins.d2gv.codec import CompressConfig, D2GVCompress

    cfg = CompressConfig(steps=3, write=False)
    rep_a, video = _rep(n=40, width=8)
    full = D2GVCompress(cfg).run(rep_a, video, RunContext(torch.device("cpu"), seed=0, log=lambda m: None))

    rep_b, _ = _rep(n=40, width=8)
    first = D2GVCompress(cfg)
    saved: list[int] = []
    ctx = RunContext(torch.device("cpu"), seed=0, log=lambda m: None)
    ctx.should_stop = lambda: len(first.done) >= 1
    ctx.save_state = saved.append
    assert first.run(rep_b, video, ctx) == {"interrupted": True, "gops_done": [0]} and saved == [1]
    second = D2GVCompress(cfg)
    ctx = RunContext(torch.device("cpu"), seed=0, log=lambda m: None)
    ctx.resume_state = first.state_dict()
    resumed = second.run(rep_b, video, ctx)
    assert resumed["bytes"] == full["bytes"]
    assert encode_representation(rep_b)[0] == encode_representation(rep_a)[0]


# The Bunny figure's --set list (docs/benchmarks.md, "The Bunny figure from the CLI") on the cpu preset.
BUNNY_SETS = {
    "d2gv": {"num_gaussians": "6000", "mlp_width": "64", "gop_length": "8", "q_color_step": "0.03125", "q_mlp_bits": "6"},
    "d2gv-fit": {"static_steps": "1000", "deform_steps": "1500"},
    "d2gv-compress": {"steps": "300"},
}


def _resolved(d2gv: dict, fit: dict, compress: dict) -> dict:
    """Everything the three components use, from options as ``--set`` gives them (strings)."""
    from recon_core.config import config_from_dict
    from recon_plugins.d2gv.codec import CompressConfig, D2GVCompress, grid_of
    from recon_plugins.d2gv.fit import FitConfig

    rep = D2GV(config_from_dict(D2GVConfig, d2gv, "d2gv"))
    c = rep.config
    return {
        "num_gaussians": c.resolved("num_gaussians"), "gop_length": c.resolved("gop_length"),
        "deform": rep.deform_settings, "grid": grid_of(rep),
        "fit": FitConfig(**{k: int(v) for k, v in fit.items()}).settings(c.preset),
        "compress_steps": D2GVCompress(config_from_dict(CompressConfig, compress, "d2gv-compress")).steps(rep),
    }


def test_codec_preset_is_the_bunny_figure_settings():
    """``d2gv.preset=codec`` resolves to exactly the documented --set list of the Bunny figure
    (model, initialisation style, grid, fit schedule, compress steps), and an explicit option
    still overrides its preset value."""
    codec = _resolved({"preset": "codec"}, {}, {})
    assert codec == _resolved(BUNNY_SETS["d2gv"], BUNNY_SETS["d2gv-fit"], BUNNY_SETS["d2gv-compress"])
    assert (codec["num_gaussians"], codec["gop_length"], codec["deform"].width, codec["compress_steps"]) == (6000, 8, 64, 300)
    assert (codec["grid"].color_step, codec["grid"].mlp_bits, codec["fit"].deform_steps) == (1 / 32, 6, 1500)
    cpu = _resolved({}, {}, {})  # the defaults are unchanged
    assert (cpu["num_gaussians"], cpu["deform"].width, cpu["grid"].color_step, cpu["grid"].mlp_bits) == (16000, 156, 1 / 64, 8)
    assert (cpu["fit"].deform_steps, cpu["compress_steps"]) == (800, 100)
    over = _resolved({"preset": "codec", "mlp_width": "32", "q_mlp_bits": "8"}, {"deform_steps": "700"}, {"steps": "5"})
    assert (over["deform"].width, over["grid"].mlp_bits, over["fit"].deform_steps, over["compress_steps"]) == (32, 8, 700, 5)
    assert (over["num_gaussians"], over["grid"].color_step) == (6000, 1 / 32)  # the rest stays the preset's

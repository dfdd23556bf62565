"""Residual vector quantisation of D2GV colours (d2gv.q_color_codec=rvq, GaussianImage's colour
codec) and the version-2 bitstream that stores it; version-1 files still decode."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace

import pytest
import torch

pytest.importorskip("constriction")

from recon_core import InputError, RunContext  # noqa: E402
from recon_plugins.d2gv.bitstream import (  # noqa: E402
    MAGIC,
    BitstreamError,
    QuantGrid,
    decode_file,
    read_bitstream,
    rvq_indices,
    rvq_values,
)
from recon_plugins.d2gv.codec import (  # noqa: E402
    CompressConfig,
    D2GVCompress,
    ResidualVQ,
    encode_representation,
    finetune_quantised,
    grid_of,
    kept_copy,
    quantise_gop,
)
from recon_plugins.d2gv.decode import Decoder  # noqa: E402
from recon_plugins.d2gv.renderer import render_gaussians  # noqa: E402

from test_d2gv_codec import _damaged_cases, _rep  # noqa: E402


def _rvq_rep(n: int = 80, width: int = 16):
    rep, video = _rep(n=n, width=width)
    rep.config = replace(rep.config, q_color_codec="rvq")
    return rep, video


def test_kmeans_initialisation_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.7, 0.5]])
    x = centres.repeat_interleave(60, 0) + 0.01 * torch.randn(120, 3, generator=gen)
    for seed in range(5):  # whichever two samples start it
        rvq = ResidualVQ(stages=1, size=2, kmeans_iters=5, seed=seed).initialise(x)
        book = rvq.codebook[0][torch.argsort(rvq.codebook[0][:, 0])]
        torch.testing.assert_close(book, torch.stack([x[:60].mean(0), x[60:].mean(0)]))
        assert rvq.cluster_size.tolist() in ([[60.0, 60.0]],)
        q, commit, idx = rvq.quantise(x)
        assert float(commit) < 3e-4 and idx.shape == (120, 1)


def test_second_stage_reduces_the_error_and_ema_follows_the_residual_mean():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(500, 3, generator=gen)
    one = ResidualVQ(1, 8, seed=0).initialise(x)
    two = ResidualVQ(2, 8, seed=0).initialise(x)
    err = lambda r: float(torch.mean((r.quantise(x)[0] - x) ** 2))  # noqa: E731
    assert err(two) < 0.6 * err(one)
    # EMA by hand for one stage: codebook = smoothed EMA of sums / smoothed EMA of counts
    rvq = ResidualVQ(1, 4, decay=0.8, seed=1).initialise(x)
    size0, avg0 = rvq.cluster_size.clone(), rvq.embed_avg.clone()
    idx = rvq.assign(x)
    rvq.update(x, idx)
    bins = torch.bincount(idx[:, 0], minlength=4).float()
    sums = torch.zeros(4, 3).index_add_(0, idx[:, 0], x)
    size = 0.8 * size0[0] + 0.2 * bins
    avg = 0.8 * avg0[0] + 0.2 * sums
    n = size.sum()
    expected = avg / ((size + 1e-5) / (n + 4 * 1e-5) * n)[:, None]
    torch.testing.assert_close(rvq.codebook[0], expected)


def test_colours_on_the_codebook_come_back_exactly():
    gen = torch.Generator().manual_seed(2)
    book = torch.rand(2, 8, 3, generator=gen)
    idx = torch.randint(8, (300, 2), generator=gen)
    colors = rvq_values(idx, book)
    assert torch.equal(rvq_values(rvq_indices(colors, book), book), colors)
    # and the nearest combination is never worse than the greedy stage-by-stage one
    x = torch.rand(300, 3, generator=gen)
    rvq = ResidualVQ(2, 8)
    rvq.codebook = book
    greedy = ((rvq_values(rvq.assign(x), book) - x) ** 2).sum(1)
    best = ((rvq_values(rvq_indices(x, book), book) - x) ** 2).sum(1)
    assert torch.all(best <= greedy + 1e-6) and float(best.sum()) < float(greedy.sum())


def test_grid_rejects_bad_rvq_settings():
    with pytest.raises(InputError, match="residual VQ"):
        QuantGrid(color_codec="rvq", color_codebook=64, color_stages=3)
    with pytest.raises(InputError):
        QuantGrid(color_codec="vq")


def test_rvq_bitstream_round_trip_and_idempotent_export(tmp_path):
    rep, video = _rvq_rep()
    D2GVCompress(CompressConfig(steps=5, write=False)).run(rep, video, RunContext(torch.device("cpu"), seed=0, log=lambda m: None))
    grid = grid_of(rep)
    for gop in rep.gops:  # the colours are sums of one codeword per stage of the stored codebooks
        assert gop.color_codebook.shape == (2, 8, 3)
        assert torch.equal(rvq_values(rvq_indices(gop.color.detach(), gop.color_codebook), gop.color_codebook), gop.color.detach())
    data, qs = encode_representation(rep)
    assert all(q.codebook is not None and q.color.shape == (q.num_gaussians, 2) for q in qs)
    (tmp_path / "clip.d2gv").write_bytes(data)
    decoded, header = decode_file(tmp_path / "clip.d2gv")
    assert header.grid == grid and header.grid.color_codec == "rvq"
    assert torch.equal(Decoder(decoded).frames(), Decoder(rep).frames())
    decoded.config = rep.config
    assert encode_representation(decoded)[0] == data  # re-encoding the decoded model: the same file
    for label, bad in _damaged_cases(data)[::3]:
        (tmp_path / "bad.d2gv").write_bytes(bad)
        with pytest.raises(BitstreamError):
            decode_file(tmp_path / "bad.d2gv")
            pytest.fail(label)


def test_rvq_is_smaller_than_uniform_for_the_same_model():
    rep_u, _ = _rep(n=300, width=8)
    rep_v, _ = _rvq_rep(n=300, width=8)
    u = encode_representation(rep_u)[1]
    v = encode_representation(rep_v)[1]
    from recon_plugins.d2gv.bitstream import encode_gop_chunk

    # 6 bits of indices per Gaussian at most against three 1/64 colour symbols
    assert len(encode_gop_chunk(v[0])) < len(encode_gop_chunk(u[0]))


def test_rvq_finetune_beats_rvq_without_finetune():
    rep, video = _rvq_rep(n=150, width=16)
    frames = torch.stack([video.frame(i) for i in range(3)])
    grid = replace(grid_of(rep), pos_step=0.5, chol_step=0.1, mlp_bits=6)

    def error(gop) -> float:
        model = quantise_gop(gop, rep.width, rep.height, grid).to_model(rep.width, rep.height, grid, gop.deform.settings)
        with torch.no_grad():
            render = render_gaussians(model.frame_gaussians(torch.arange(3), 3, mask="none"), 16, 24)
        return float(torch.mean((render - frames) ** 2))

    before = error(kept_copy(rep.gops[0]))
    tuned = finetune_quantised(kept_copy(rep.gops[0]), frames, grid, 40, lr_gaussians=3e-3, lr_mlp=3e-3)
    assert not hasattr(tuned, "parametrizations") and tuned.color_codebook.shape == (2, 8, 3)
    assert error(tuned) < 0.8 * before


def _as_version_1(data: bytes) -> bytes:
    """A version-1 file of the same (uniform) model: version 1 and the settings without the colour codec."""
    (length,) = struct.unpack("<I", data[6:10])
    body = data[10 : 10 + length]
    gops = struct.unpack("<6I", body[:24])[5]
    at = 24 + 8 * gops
    (size,) = struct.unpack("<I", body[at : at + 4])
    settings = json.loads(body[at + 4 : at + 4 + size])
    for key in ("color_codec", "color_codebook", "color_stages"):
        settings["quant"].pop(key)
    text = json.dumps(settings, sort_keys=True).encode()
    new_body = body[:at] + struct.pack("<I", len(text)) + text
    return MAGIC + struct.pack("<H", 1) + struct.pack("<I", len(new_body)) + new_body + struct.pack("<I", zlib.crc32(new_body)) + data[10 + length + 4 :]


def test_version_1_files_still_decode(tmp_path):
    rep, _ = _rep(n=40, width=8)
    data, _ = encode_representation(rep)
    assert struct.unpack("<H", data[4:6])[0] == 2
    v1 = _as_version_1(data)
    (tmp_path / "v1.d2gv").write_bytes(v1)
    (tmp_path / "v2.d2gv").write_bytes(data)
    a, header = decode_file(tmp_path / "v1.d2gv")
    b, _ = decode_file(tmp_path / "v2.d2gv")
    assert header.grid.color_codec == "uniform"
    assert torch.equal(Decoder(a).frames(), Decoder(b).frames())
    # a version-1 header cannot carry the version-2 colour codec
    rvq, _ = _rvq_rep(n=40, width=8)
    rvq_data, _ = encode_representation(rvq)
    forged = rvq_data[:4] + struct.pack("<H", 1) + rvq_data[6:]
    with pytest.raises(BitstreamError):
        read_bitstream(forged)


def test_cli_rvq_run_export_decode(tmp_path):
    """`--set d2gv.q_color_codec=rvq`: the run's file, `recon export --format d2gv` (codebooks read
    back from the checkpoint) and the decoded frames agree."""
    import numpy as np
    from PIL import Image

    from test_d2gv_codec import cli_run

    result, run, invoke = cli_run(tmp_path, "d2gv.q_color_codec=rvq", "d2gv.q_color_codebook=4", frames=4, gop=2)
    assert result.exit_code == 0, result.output
    result = invoke("export", run, "--format", "d2gv", "--out", tmp_path / "clip.d2gv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "clip.d2gv").read_bytes() == (run / "clip.d2gv").read_bytes()
    header, _ = read_bitstream((run / "clip.d2gv").read_bytes())
    assert (header.grid.color_codec, header.grid.color_codebook, header.grid.color_stages) == ("rvq", 4, 2)
    result = invoke("decode", tmp_path / "clip.d2gv", "--out", tmp_path / "dec")
    assert result.exit_code == 0, result.output
    expected = Decoder(decode_file(tmp_path / "clip.d2gv")[0]).frames_uint8()
    for i, p in enumerate(sorted((tmp_path / "dec").glob("frame_*.png"))):
        assert np.array_equal(np.asarray(Image.open(p)), expected[i].numpy())

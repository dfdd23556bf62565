"""D2GV rate–distortion against H.264, H.265 and AV1 (docs/benchmarks.md, "D2GV as a codec").

On the same frames, in one run:

1. the first ``--frames`` frames resized to ``--size``: by default through the CLI's ``video``
   loader (``--set video.end=N --set video.width=W --set video.height=H``, its antialiased resize),
   with ``--frames-from pyav`` as before issue 20's CLI check (PyAV's swscale bicubic,
   ``d2gv_bench.read_frames``); the block codecs encode those frames rounded to 8 bits;
2. for each D2GV operating point ``--points N:W:GRID:GOP,...`` (Gaussians per GoP, MLP width, the
   quantisation preset of ``GRIDS``): ``d2gv-fit`` (the CLI's refiner, local workers), then for
   each colour codec of ``--color-codecs`` (``d2gv.q_color_codec``: uniform, rvq) on the same fit,
   ``d2gv-compress`` (quantisation-aware fine-tune), the ``.d2gv`` file written, and the frames
   decoded **from that file** (``bitstream.decode_file`` + ``decode.Decoder``): bytes/frame, bpp,
   PSNR, MS-SSIM, decode FPS (file parse + ANS decode + every frame to 8-bit RGB, 1 torch thread,
   one warm-up then the median of ``--repeats``), encode CPU seconds (fit + fine-tune + entropy
   coding). Reference rows per point: the fp16 payload, the quantised model before the fine-tune
   (PTQ), and the same quantised symbols compressed with zstd (level 19) instead of ANS;
3. H.264 (libx264), H.265 (libx265) and AV1 (libsvtav1), preset medium / 8, yuv420p, at the CRFs
   of ``--crf-*``: bytes (sum of packet sizes), PSNR and MS-SSIM after decoding to RGB, PyAV decode FPS;
4. BD-rate of every codec against H.264 (PSNR, piecewise-cubic interpolation of log rate over
   the overlapping PSNR range; "no overlap" when the curves do not overlap).

Usage::

    python benchmarks/d2gv_rd.py --video /work/shared/datasets/video/bigbuckbunny.mp4 --size 320x180 \\
        --frames 8 --gop 8 --points 4000:64,8000:64,12000:64 --json rd_bunny.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from d2gv_bench import CPU_TIMES, codec_point, load_clip, rusage_cpu, timed_median  # noqa: E402

from recon_core import RunContext, Video  # noqa: E402
from recon_core.imageops import ms_ssim, psnr  # noqa: E402
from recon_plugins.d2gv.bitstream import _varint, decode_file, decode_gop_chunk, encode_symbols, gop_streams, read_bitstream  # noqa: E402
from recon_plugins.d2gv.codec import CompressConfig, D2GVCompress, encode_representation  # noqa: E402
from recon_plugins.d2gv.decode import Decoder  # noqa: E402
from recon_plugins.d2gv.fit import D2GVFit, FitConfig  # noqa: E402
from recon_plugins.d2gv.renderer import Torch2DGS  # noqa: E402
from recon_plugins.d2gv.representation import D2GV, D2GVConfig  # noqa: E402

GRIDS = {
    "fine": dict(q_pos_step=1 / 32, q_chol_step=1 / 32, q_color_step=1 / 64, q_mlp_bits=8),
    "medium": dict(q_pos_step=1 / 16, q_chol_step=1 / 16, q_color_step=1 / 32, q_mlp_bits=6),
    "coarse": dict(q_pos_step=1 / 8, q_chol_step=1 / 8, q_color_step=1 / 16, q_mlp_bits=5),
}


def quality(decoded: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and MS-SSIM of [T, H, W, 3] float frames."""
    p = [float(psnr(decoded[i], ref[i])) for i in range(ref.shape[0])]
    s = [float(ms_ssim(decoded[i], ref[i])) for i in range(ref.shape[0])]
    return sum(p) / len(p), sum(s) / len(s)


def stream_bytes(data: bytes) -> dict[str, int]:
    """Bytes of each symbol stream (varint length included) summed over the GoPs, plus the MLP
    steps and colour codebooks (float32) and the container (magic, header, CRCs, counts)."""
    header, chunks = read_bitstream(data)
    out: dict[str, int] = {}
    for chunk in chunks:
        q = decode_gop_chunk(chunk, header.deform, grid=header.grid)
        for name, arr in gop_streams(q).items():
            blob = encode_symbols(arr)
            out[name] = out.get(name, 0) + len(blob) + len(_varint(len(blob)))
        out["floats"] = out.get("floats", 0) + 4 * q.mlp_steps.numel() + (4 * q.codebook.numel() if q.codebook is not None else 0)
    out["container"] = len(data) - sum(out.values())
    return out


def zstd_bytes(data: bytes) -> int:
    """Bytes of the file with every chunk's symbol streams (the same delta-coded streams, int16
    or int32 each) and MLP steps compressed by zstd (level 19) instead of the ANS coder."""
    import zstandard

    header, chunks = read_bitstream(data)
    total = len(data) - sum(len(c) + 4 for c in chunks)  # magic, header, CRCs
    compressor = zstandard.ZstdCompressor(level=19)
    for chunk in chunks:
        q = decode_gop_chunk(chunk, header.deform, grid=header.grid)
        raw = bytearray()
        for arr in gop_streams(q).values():
            arr = np.asarray(arr, dtype=np.int64)
            small = arr.size == 0 or (arr.min() >= -32768 and arr.max() < 32768)
            raw += arr.astype("<i2" if small else "<i4").tobytes()
        raw += q.mlp_steps.numpy().astype("<f4").tobytes()
        if q.codebook is not None:
            raw += q.codebook.numpy().astype("<f4").tobytes()
        total += len(compressor.compress(bytes(raw))) + 4
    return total


def bd_rate(anchor: list[dict], test: list[dict]) -> float | None:
    """Bjøntegaard delta rate (%) of ``test`` against ``anchor`` over their common PSNR range
    (piecewise-cubic Hermite interpolation of log bytes against PSNR); None without overlap."""
    from scipy.interpolate import PchipInterpolator

    def curve(points: list[dict]):
        pts = sorted(points, key=lambda p: p["mean_psnr"])
        x = np.array([p["mean_psnr"] for p in pts])
        y = np.log(np.array([p["bytes_per_frame"] for p in pts]))
        keep = np.concatenate([[True], np.diff(x) > 1e-9])
        return x[keep], y[keep]

    xa, ya = curve(anchor)
    xt, yt = curve(test)
    lo, hi = max(xa.min(), xt.min()), min(xa.max(), xt.max())
    if len(xa) < 2 or len(xt) < 2 or hi <= lo:
        return None
    grid = np.linspace(lo, hi, 200)
    diff = np.trapezoid(PchipInterpolator(xt, yt)(grid) - PchipInterpolator(xa, ya)(grid), grid) / (hi - lo)
    return 100.0 * (math.exp(diff) - 1.0)


def load_with_loader(path: str, size: str, limit: int, gop: int) -> tuple[np.ndarray, float, torch.Tensor, Video]:
    """As ``load_clip``, through the CLI's ``video`` loader (``video.end``, ``video.width``, ``video.height``)."""
    from recon_plugins.loaders.video import VideoConfig, VideoLoader

    W, H = (int(v) for v in size.lower().split("x"))
    video = VideoLoader(VideoConfig(end=limit, width=W, height=H, gop_length=gop)).load(Path(path))
    frames = torch.stack([video.frame(i) for i in range(video.num_frames)]).float()
    frames_u8 = (frames * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return frames_u8, float(video.fps), frames, video


def d2gv_point(video: Video, ref: torch.Tensor, args: argparse.Namespace, n: int, width: int, grid: str, gop: int, out_dir: Path) -> list[dict]:
    """Fit, then per colour codec compress, write the file, decode from the file and measure one operating point."""
    rep = D2GV(D2GVConfig(num_gaussians=n, gop_length=gop, mlp_width=width, **GRIDS[grid]))
    rep.build(video, RunContext(torch.device("cpu"), seed=0))
    fit_cfg = FitConfig(static_steps=args.static_steps, deform_steps=args.deform_steps, frames_per_step=1,
                        mlp_bf16=args.mlp_bf16, workers=args.workers, threads_per_worker=args.threads_per_worker, evaluate=False)
    with tempfile.TemporaryDirectory(prefix="d2gv-rd-") as tmp:
        ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=Torch2DGS(), out_dir=Path(tmp), log=lambda m: None)
        c0, w0 = rusage_cpu(), time.perf_counter()
        fit = D2GVFit(fit_cfg).run(rep, video, ctx)
        fit_cpu = rusage_cpu() - c0
        fit_wall = time.perf_counter() - w0
        fp16_bytes = rep.payload_bytes()
        fp16_quality = quality(Decoder(rep).frames(), ref)
        fitted = rep
        rows = []
        for codec in args.color_codecs.split(","):
            rep = copy.deepcopy(fitted)
            if codec.startswith("rvq"):  # rvq or rvqK: K codewords per stage (d2gv.q_color_codebook)
                rep.config = dataclasses.replace(rep.config, q_color_codec="rvq", q_color_codebook=int(codec[3:] or 8))
            else:
                rep.config = dataclasses.replace(rep.config, q_color_codec=codec)
            ptq = copy.deepcopy(rep)
            ptq_data, _ = encode_representation(ptq, apply=True)
            ptq_quality = quality(Decoder(ptq).frames(), ref)
            c1, w1 = rusage_cpu(), time.perf_counter()
            D2GVCompress(CompressConfig(steps=args.qat_steps, write=False)).run(rep, video, ctx)
            compress_cpu = rusage_cpu() - c1
            wall = fit_wall + time.perf_counter() - w1
            rows.append(_measure(rep, video, ref, args, n, width, grid, gop, out_dir, codec, fit, fit_cpu, compress_cpu, wall,
                                 fp16_bytes, fp16_quality, ptq_data, ptq_quality))
    return rows


def _measure(rep: D2GV, video: Video, ref: torch.Tensor, args: argparse.Namespace, n: int, width: int, grid: str, gop: int,
             out_dir: Path, codec: str, fit: dict, fit_cpu: float, compress_cpu: float, wall: float, fp16_bytes: int,
             fp16_quality: tuple[float, float], ptq_data: bytes, ptq_quality: tuple[float, float]) -> dict:
    """Write the compressed ``rep``, decode it from the file and measure it."""
    T, H, W = video.num_frames, video.height, video.width
    data, _ = encode_representation(rep)
    path = out_dir / f"{Path(args.video).stem}_{n}_{width}_{grid}_{codec}_gop{gop}.d2gv"
    path.write_bytes(data)
    decoded, _ = decode_file(path)
    p, s = quality(Decoder(decoded).frames(), ref)
    torch.set_num_threads(1)
    seconds = timed_median(lambda: Decoder(decode_file(path)[0]).frames_uint8(), args.repeats)
    cpu_fps = T / statistics.median(CPU_TIMES)
    torch.set_num_threads(os.cpu_count() or 1)
    return {
        "codec": "d2gv" if codec == "uniform" else f"d2gv-{codec}", "color_codec": codec,
        "stream_bytes": stream_bytes(data), "gaussians": n, "kept": decoded.num_kept(),
        "mlp_width": width, "grid": grid, "gop": gop, "file": str(path),
        "bytes_per_frame": len(data) / T, "bpp": 8 * len(data) / (T * H * W), "mean_psnr": p, "mean_ms_ssim": s,
        "decode_fps": T / seconds, "decode_fps_cpu_time": cpu_fps,
        "encode_cpu_seconds": fit_cpu + compress_cpu, "fit_cpu_seconds": fit_cpu, "compress_cpu_seconds": compress_cpu,
        "fit_gop_cpu_seconds": fit["cpu_seconds"], "wall_seconds": wall,
        "fp16": {"bytes_per_frame": fp16_bytes / T, "mean_psnr": fp16_quality[0], "mean_ms_ssim": fp16_quality[1]},
        "ptq": {"bytes_per_frame": len(ptq_data) / T, "mean_psnr": ptq_quality[0], "mean_ms_ssim": ptq_quality[1]},
        "zstd_bytes_per_frame": zstd_bytes(data) / T,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", required=True)
    p.add_argument("--size", default="320x180")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--gop", type=int, default=8)
    p.add_argument("--points", default="2000:64,4000:64,8000:64", help="N:MLP_WIDTH[:GRID[:GOP]] per operating point (GRID: fine, medium, coarse; GOP: frames per GoP, default --gop)")
    p.add_argument("--grid", default="medium", choices=tuple(GRIDS), help="grid of points that name none")
    p.add_argument("--static-steps", type=int, default=500)
    p.add_argument("--deform-steps", type=int, default=500)
    p.add_argument("--qat-steps", type=int, default=CompressConfig.steps)
    p.add_argument("--color-codecs", default="uniform", help="d2gv.q_color_codec values compressed from the same fit (uniform, rvq, rvqK: K codewords per stage; comma-separated)")
    p.add_argument("--threads-per-worker", type=int, default=0, help="d2gv-fit.threads_per_worker (0: the CLI's default, cores // workers; the fit's trajectory depends on it)")
    p.add_argument("--frames-from", default="loader", choices=("loader", "pyav"), help="loader: the CLI's video loader (resize included); pyav: swscale bicubic")
    p.add_argument("--mlp-bf16", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--crf-x264", default="23,28,33,38,43,48")
    p.add_argument("--crf-x265", default="25,30,35,40,45")
    p.add_argument("--crf-av1", default="30,38,46,54,62")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out-dir", default="/tmp/d2gv_rd")
    p.add_argument("--json", default="")
    args = p.parse_args()

    load = load_with_loader if args.frames_from == "loader" else load_clip
    frames_u8, fps, ref, video = load(args.video, args.size, args.frames, args.gop)
    T, H, W = video.num_frames, video.height, video.width
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"video": args.video, "size": [W, H], "frames": T, "gop": args.gop, "load_avg_start": os.getloadavg(),
                    "steps": [args.static_steps, args.deform_steps], "qat_steps": args.qat_steps, "pyav": av.__version__,
                    "frames_from": args.frames_from}
    rows: list[dict] = []
    missing = [c for c in ("libx264", "libx265", "libsvtav1") if c not in av.codecs_available]
    result["missing_encoders"] = missing
    for codec, crfs in (("libx264", args.crf_x264), ("libx265", args.crf_x265), ("libsvtav1", args.crf_av1)):
        if codec in missing:
            continue
        for crf in crfs.split(","):
            rows.append(codec_point(frames_u8, fps, int(crf), args.repeats, codec, with_ms_ssim=True))
            print(json.dumps(rows[-1]), flush=True)
    for spec in args.points.split(","):
        parts = spec.split(":")
        n, width = int(parts[0]), int(parts[1])
        grid = parts[2] if len(parts) > 2 and parts[2] else args.grid
        gop = int(parts[3]) if len(parts) > 3 else args.gop
        for row in d2gv_point(video, ref, args, n, width, grid, gop, out_dir):
            rows.append(row)
            print(json.dumps(row), flush=True)
    anchor = [r for r in rows if r["codec"] == "libx264"]
    result["bd_rate_vs_h264_percent"] = {c: bd_rate(anchor, [r for r in rows if r["codec"] == c]) for c in dict.fromkeys(r["codec"] for r in rows) if c != "libx264"}
    result["rows"] = rows
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

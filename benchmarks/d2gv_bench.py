"""D2GV video fitting and decoding benchmark (docs/benchmarks.md, "D2GV video fitting and decoding").

For one video, in one run:

1. loads the video with the ``video`` loader, as ``recon run`` does (``--set video.end=36
   --set video.width=320 --set video.height=180`` pick frames and size),
2. fits ``d2gv`` with ``d2gv-fit`` (local worker processes), configured exactly as ``recon run
   --repr d2gv`` is: the defaults (``preset=cpu``) plus the same ``--set PLUGIN.KEY=VALUE``
   options (plugins ``d2gv``, ``d2gv-fit``, ``video``), recording the CPU seconds of the GoP
   fits (``time.process_time`` in each worker, summed) and of the whole fit including worker
   start-up (``resource`` usage of this process and its children), and the wall seconds,
3. exports the fp16 model, decodes it again and measures mean PSNR / MS-SSIM of the *decoded*
   frames and the payload bytes per frame,
4. decode FPS of the decoded model (``decode.Decoder``: MLP + rasteriser + clamp + 8-bit RGB for
   every frame, GoP constants included) with 1 torch thread, all-cores OpenMP threads, and
   all-cores frame threads (the best is reported): one warm-up pass, then the median of
   ``--repeats`` passes over all frames; the same with the MLP in bfloat16 (and that decode's
   PSNR); ``--decode-gaussians N`` adds the measurements for an unfitted model with N Gaussians
   in every GoP,
5. H.264 (libx264 through PyAV, yuv420p, preset medium) at several CRFs on the same frames: bytes
   per frame (sum of packet sizes), mean PSNR after decoding to RGB, and PyAV decode FPS (decode +
   conversion to RGB, FFmpeg threads automatic) with the same warm-up/median protocol; the H.264
   bytes at D2GV's PSNR are interpolated linearly in log(bytes) between the bracketing CRFs.

``--kernel-only`` instead times the summation rasteriser alone (forward, forward + backward) for
the compiled kernel and its PyTorch twin in the same run (``--kernel-gaussians`` Gaussians sized
as the fitter initialises them, or the Gaussians of frame 0 of ``--decode-only``'s model).

Usage::

    python benchmarks/d2gv_bench.py --video /work/shared/datasets/video/bigbuckbunny.mp4 \\
        --set video.end=36 --set video.width=320 --set video.height=180 --json bench_bunny.json
    # = recon run --data .../bigbuckbunny.mp4 --repr d2gv with the same --set options
    python benchmarks/d2gv_bench.py --video /work/shared/datasets/video/bigbuckbunny.mp4 --kernel-only
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import io
import os
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from recon_core import RunContext, Video
from recon_core.config import config_from_dict, parse_set_option
from recon_core.imageops import psnr
from recon_plugins.loaders.video import VideoConfig, VideoLoader
from recon_plugins.d2gv.decode import Decoder
from recon_plugins.d2gv.executors import cpu_count
from recon_plugins.d2gv.fit import D2GVFit, FitConfig, evaluate_frames
from recon_plugins.d2gv.rasterize import RasterSettings, project_cholesky, rasterize_sum, resolve_backend
from recon_plugins.d2gv.renderer import Torch2DGS, Torch2DGSConfig
from recon_plugins.d2gv.representation import D2GV, D2GVConfig


def read_frames(path: str, width: int, height: int, limit: int) -> tuple[np.ndarray, float]:
    """First ``limit`` frames as uint8 [T, H, W, 3] RGB at ``width``×``height``, and the fps."""
    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC"))
            if limit and len(frames) >= limit:
                break
    return np.stack(frames), fps


def load_clip(path: str, size: str, limit: int, gop: int) -> tuple[np.ndarray, float, torch.Tensor, Video]:
    """Frames of ``path`` at ``size`` ("WxH"): uint8 [T, H, W, 3], fps, float [0, 1] frames, and
    the ``Video`` over them with GoPs of ``gop`` frames."""
    W, H = (int(v) for v in size.lower().split("x"))
    frames_u8, fps = read_frames(path, W, H, limit)
    frames = torch.from_numpy(frames_u8).float() / 255
    T = frames.shape[0]
    video = Video(Path(path).stem, T, W, H, fps, lambda i: frames[i], gop_length=gop, source=Path(path))
    return frames_u8, fps, frames, video


CPU_TIMES: list[float] = []
"""Process CPU seconds of each timed call of the last :func:`timed_median` (all threads summed)."""


def timed_median(fn, repeats: int) -> float:
    """Wall seconds of one call: one warm-up call, then the median of ``repeats`` calls.

    The CPU seconds of the same calls go to ``CPU_TIMES``; on a shared machine they show what the
    work costs when a core is not taken away (cache and memory-bandwidth contention remain)."""
    fn()
    times = []
    CPU_TIMES.clear()
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        CPU_TIMES.append(time.process_time() - c)
    return statistics.median(times)


ENCODER_OPTIONS = {
    "libx264": {"preset": "medium"},
    "libx265": {"preset": "medium", "x265-params": "log-level=error"},
    "libsvtav1": {"preset": "8"},
}
"""PyAV encoder options besides the CRF (d2gv_rd.py compares all three)."""


def codec_point(frames: np.ndarray, fps: float, crf: int, repeats: int, codec: str = "libx264", with_ms_ssim: bool = False) -> dict:
    """Encode with ``codec`` (yuv420p, ``ENCODER_OPTIONS``) at ``crf``; bytes, PSNR (and MS-SSIM)
    after decoding, and PyAV decode FPS."""
    T, H, W, _ = frames.shape
    buf = io.BytesIO()
    packet_bytes = 0
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), **ENCODER_OPTIONS.get(codec, {})}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                packet_bytes += packet.size
                out.mux(packet)
        for packet in stream.encode():
            packet_bytes += packet.size
            out.mux(packet)
    data = buf.getvalue()

    def decode() -> list[np.ndarray]:
        with av.open(io.BytesIO(data)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            return [fr.to_ndarray(format="rgb24") for fr in c.decode(s)]

    decoded = decode()
    assert len(decoded) == T, (len(decoded), T)
    ref = torch.from_numpy(frames).float() / 255
    dec = torch.from_numpy(np.stack(decoded)).float() / 255
    psnrs = [float(psnr(dec[i], ref[i])) for i in range(T)]
    seconds = timed_median(decode, repeats)
    out = {
        "codec": codec,
        "crf": crf,
        "bytes_per_frame": packet_bytes / T,
        "bpp": 8 * packet_bytes / (T * H * W),
        "mean_psnr": sum(psnrs) / T,
        "decode_fps": T / seconds,
        "decode_fps_cpu_time": T / statistics.median(CPU_TIMES),
    }
    if with_ms_ssim:
        from recon_core.imageops import ms_ssim

        out["mean_ms_ssim"] = sum(float(ms_ssim(dec[i], ref[i])) for i in range(T)) / T
    return out


def h264_point(frames: np.ndarray, fps: float, crf: int, repeats: int) -> dict:
    """libx264 at ``crf`` (preset medium): bytes, PSNR after decoding, and PyAV decode FPS."""
    return codec_point(frames, fps, crf, repeats, "libx264")


def bytes_at_psnr(points: list[dict], target: float) -> float | None:
    """H.264 bytes/frame at ``target`` dB, log-linear between the bracketing CRFs (None outside)."""
    pts = sorted(points, key=lambda p: p["mean_psnr"])
    for a, b in zip(pts, pts[1:]):
        if a["mean_psnr"] <= target <= b["mean_psnr"]:
            w = (target - a["mean_psnr"]) / max(b["mean_psnr"] - a["mean_psnr"], 1e-9)
            return math.exp((1 - w) * math.log(a["bytes_per_frame"]) + w * math.log(b["bytes_per_frame"]))
    return None


def rusage_cpu() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def decode_speed(rep: D2GV, repeats: int, backend: str = "auto", mlp_dtype: torch.dtype = torch.float32) -> dict:
    """Decode FPS of every frame to uint8 (wall and CPU time) with 1 torch thread, with all-cores
    OpenMP threads inside each op, and with all-cores frame threads (``Decoder(workers=...)``, one
    torch thread each); the best wall-clock rate is reported as ``fps``."""
    T, cores = rep.num_frames, cpu_count()
    modes = {"1 thread": (1, 1)}
    if cores > 1:
        modes.update({f"{cores} OpenMP threads": (cores, 1), f"{cores} frame threads": (1, cores)})
    by_mode, by_cpu = {}, {}
    for name, (threads, workers) in modes.items():
        torch.set_num_threads(threads)
        by_mode[name] = T / timed_median(lambda: Decoder(rep, backend, mlp_dtype=mlp_dtype, workers=workers).frames_uint8(), repeats)
        by_cpu[name] = T / statistics.median(CPU_TIMES)
    torch.set_num_threads(cores)
    return {"fps": max(by_mode.values()), "fps_by_mode": by_mode, "fps_cpu_time_by_mode": by_cpu}


def kernel_times(means, conics, colors, radii, H: int, W: int, repeats: int) -> dict:
    """Milliseconds (wall, CPU) of the rasteriser forward and forward + backward per backend and thread count."""
    out: dict = {"gaussians": int(means.shape[1]), "mean_radius": float(radii.float().mean())}
    cot = torch.randn(1, H, W, colors.shape[-1], generator=torch.Generator().manual_seed(0))
    for backend in ("cpp", "torch"):
        settings = RasterSettings(H, W, backend=backend)

        def fwd() -> None:
            with torch.no_grad():
                rasterize_sum(means, conics, colors, radii, None, settings)

        def fwd_bwd() -> None:
            leaves = [t.detach().requires_grad_(True) for t in (means, conics, colors)]
            img = rasterize_sum(leaves[0], leaves[1], leaves[2], radii, None, settings)
            torch.autograd.grad((img * cot).sum(), leaves)

        for threads in sorted({1, cpu_count()}):
            torch.set_num_threads(threads)
            row = {}
            for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                row[name + "_ms"] = 1e3 * timed_median(fn, repeats)
                row[name + "_cpu_ms"] = 1e3 * statistics.median(CPU_TIMES)
            out[f"{backend}_{threads}t"] = row
    torch.set_num_threads(cpu_count())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", required=True)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="an option of video, d2gv or d2gv-fit, as recon run --set takes it (repeatable)")
    p.add_argument("--crf", default="18,23,28,33,38,43")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--export-dir", default="", help="keep the exported model here")
    p.add_argument("--decode-only", default="", help="skip fitting: measure the model exported in this folder")
    p.add_argument("--decode-gaussians", type=int, default=0, help="also decode an unfitted model with this many Gaussians per GoP")
    p.add_argument("--kernel-only", action="store_true", help="only time the rasteriser (compiled kernel vs PyTorch twin)")
    p.add_argument("--kernel-gaussians", type=int, default=20000)
    args = p.parse_args()

    options: dict[str, dict[str, str]] = {"video": {}, "d2gv": {}, "d2gv-fit": {}}
    for text in args.sets:
        plugin, key, value = parse_set_option(text)
        if plugin not in options:
            raise SystemExit(f"--set {text}: this benchmark takes options of {', '.join(options)}")
        options[plugin][key] = value
    video = VideoLoader(config_from_dict(VideoConfig, options["video"], "video")).load(Path(args.video))
    rep_config = config_from_dict(D2GVConfig, options["d2gv"], "d2gv")
    fit_config = config_from_dict(FitConfig, {"evaluate": "false", **options["d2gv-fit"]}, "d2gv-fit")
    frames = torch.stack(list(video.frames()))
    frames_u8 = (frames * 255).round().to(torch.uint8).numpy()  # what H.264 encodes
    fps, T, H, W = video.fps, video.num_frames, video.height, video.width
    backend = fit_config.backend
    print(f"{video.name}: {T} frames at {W}x{H}, {cpu_count()} cores, rasteriser {resolve_backend(backend, frames)}", flush=True)

    if args.kernel_only:
        if args.decode_only:
            model = D2GV.from_export(args.decode_only)
        else:
            model = D2GV(D2GVConfig(gop_length=0, num_gaussians=args.kernel_gaussians))
            model.build(video, RunContext(torch.device("cpu"), seed=0))
        _, g = next(model.frame_gaussians(torch.tensor([0])))
        means, conics, radii = project_cholesky(g.xy.detach(), g.chol.detach(), H, W)
        result = {"size": [W, H], "load_avg_1min": os.getloadavg()[0], "kernel": kernel_times(means, conics, g.color.detach(), radii, H, W, args.repeats)}  # noqa: E501
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return

    wall, cpu, cpu_total = float("nan"), float("nan"), float("nan")
    if args.decode_only:
        decoded = D2GV.from_export(args.decode_only)
    else:
        rep = D2GV(rep_config)
        rep.build(video, RunContext(torch.device("cpu"), seed=0))
        cfg = fit_config
        with tempfile.TemporaryDirectory(prefix="d2gv-bench-") as tmp:
            ctx = RunContext(device=torch.device("cpu"), seed=0, renderer=Torch2DGS(Torch2DGSConfig(backend=backend)), out_dir=Path(tmp), log=print)
            t0, c0 = time.perf_counter(), rusage_cpu()
            report = D2GVFit(cfg).run(rep, video, ctx)
            wall, cpu, cpu_total = time.perf_counter() - t0, report["cpu_seconds"], rusage_cpu() - c0
            export_dir = Path(args.export_dir) if args.export_dir else Path(tmp) / "export"
            rep.export(export_dir, "d2gv-fp16")
            decoded = D2GV.from_export(export_dir)
    if (decoded.height, decoded.width, decoded.num_frames) != (H, W, T):
        raise SystemExit(f"the exported model is {decoded.width}x{decoded.height}, {decoded.num_frames} frames; the video is {W}x{H}, {T}")
    metrics = evaluate_frames(decoded, video, Torch2DGS(Torch2DGSConfig(backend=backend)))
    payload = decoded.payload_bytes()

    with torch.no_grad():  # the same model decoded with the MLP in bfloat16
        bf16_frames = Decoder(decoded, backend, mlp_dtype=torch.bfloat16).frames()
        bf16_psnr = sum(float(psnr(bf16_frames[i], frames[i])) for i in range(T)) / T
    load_before = os.getloadavg()[0]
    speed = decode_speed(decoded, args.repeats, backend)
    speed_bf16 = decode_speed(decoded, args.repeats, backend, torch.bfloat16)
    synthetic = None
    if args.decode_gaussians:
        synthetic_rep = D2GV(D2GVConfig(gop_length=0, num_gaussians=args.decode_gaussians))
        synthetic_rep.build(video, RunContext(torch.device("cpu"), seed=0))
        with torch.no_grad():  # a deformation that moves things, as a fitted MLP would
            g = torch.Generator().manual_seed(0)
            for gop in synthetic_rep.gops:
                gop.deform.head.weight.copy_(torch.randn(gop.deform.head.weight.shape, generator=g) * 0.01)
        synthetic = {
            "gaussians_per_gop": args.decode_gaussians,
            **decode_speed(synthetic_rep, args.repeats, backend),
            "bf16_mlp": decode_speed(synthetic_rep, args.repeats, backend, torch.bfloat16),
        }
    h264 = [h264_point(frames_u8, fps, int(c), args.repeats) for c in args.crf.split(",")]
    result = {
        "video": args.video,
        "size": [W, H],
        "frames": T,
        "gops": [len(r) for r in decoded.gop_ranges()],
        "options": options,
        "rep_config": None if args.decode_only else asdict(rep_config),
        "fit_settings": None if args.decode_only else asdict(fit_config.settings(rep_config.preset)),
        "gaussians_kept": decoded.num_kept(),
        "backend": resolve_backend(backend, frames),
        "train_wall_seconds": wall,
        "train_cpu_seconds": cpu,
        "train_cpu_seconds_with_startup": cpu_total,
        "mean_psnr": metrics["mean_psnr"],
        "mean_ms_ssim": metrics.get("mean_ms_ssim"),
        "psnr_per_frame": metrics["psnr"],
        "bytes_per_frame": payload / T,
        "decode_fps": speed["fps"],
        "decode_fps_by_mode": speed["fps_by_mode"],
        "decode_fps_cpu_time_by_mode": speed["fps_cpu_time_by_mode"],
        "decode_bf16_mlp": {"mean_psnr": bf16_psnr, **speed_bf16},
        "decode_synthetic": synthetic,
        "load_avg_1min_before_decode": load_before,
        "load_avg_1min_after": os.getloadavg()[0],
        "h264": h264,
        "h264_bytes_per_frame_at_d2gv_psnr": bytes_at_psnr(h264, metrics["mean_psnr"]),
        "h264_decode_fps_median": statistics.median(pt["decode_fps"] for pt in h264),
        "h264_decode_fps_cpu_time_median": statistics.median(pt["decode_fps_cpu_time"] for pt in h264),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "psnr_per_frame"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

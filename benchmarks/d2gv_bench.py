"""D2GV video fitting and decoding benchmark (docs/benchmarks.md, "D2GV video fitting and decoding").

For one video, in one run:

1. reads the first ``--frames`` frames with PyAV, resized to ``--size`` (FFmpeg's swscale, bicubic),
2. fits ``d2gv`` with ``d2gv-fit`` (local worker processes), recording wall and CPU seconds,
3. exports the fp16 model, decodes it again and measures mean PSNR / MS-SSIM of the *decoded*
   frames and the payload bytes per frame,
4. decode FPS of the decoded model with 1 and with all-cores torch threads (the better is
   reported; on a shared machine one thread often wins): one warm-up pass, then the median of
   ``--repeats`` passes over all frames,
5. H.264 (libx264 through PyAV, yuv420p, preset medium) at several CRFs on the same frames: bytes
   per frame (sum of packet sizes), mean PSNR after decoding to RGB, and PyAV decode FPS (decode +
   conversion to RGB, FFmpeg threads automatic) with the same warm-up/median protocol; the H.264
   bytes at D2GV's PSNR are interpolated linearly in log(bytes) between the bracketing CRFs.

Usage::

    python benchmarks/d2gv_bench.py --video /work/shared/datasets/video/bigbuckbunny.mp4 \\
        --size 320x180 --frames 36 --gop 12 --gaussians 8000 --static-steps 300 --deform-steps 300 \\
        --json bench_bunny.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from recon_core import RefineContext, Video
from recon_core.imageops import psnr
from recon_plugins.d2gv.executors import cpu_count
from recon_plugins.d2gv.fit import D2GVFit, FitConfig, evaluate_frames
from recon_plugins.d2gv.renderer import Torch2DGS
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


def h264_point(frames: np.ndarray, fps: float, crf: int, repeats: int) -> dict:
    """Encode with libx264 at ``crf``; bytes, PSNR after decoding, and PyAV decode FPS."""
    T, H, W, _ = frames.shape
    buf = io.BytesIO()
    packet_bytes = 0
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
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
    return {
        "crf": crf,
        "bytes_per_frame": packet_bytes / T,
        "mean_psnr": sum(psnrs) / T,
        "decode_fps": T / seconds,
        "decode_fps_cpu_time": T / statistics.median(CPU_TIMES),
    }


def bytes_at_psnr(points: list[dict], target: float) -> float | None:
    """H.264 bytes/frame at ``target`` dB, log-linear between the bracketing CRFs (None outside)."""
    pts = sorted(points, key=lambda p: p["mean_psnr"])
    for a, b in zip(pts, pts[1:]):
        if a["mean_psnr"] <= target <= b["mean_psnr"]:
            w = (target - a["mean_psnr"]) / max(b["mean_psnr"] - a["mean_psnr"], 1e-9)
            return math.exp((1 - w) * math.log(a["bytes_per_frame"]) + w * math.log(b["bytes_per_frame"]))
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", required=True)
    p.add_argument("--size", default="320x180", help="WxH the frames are resized to")
    p.add_argument("--frames", type=int, default=0, help="first N frames (0: all)")
    p.add_argument("--gop", type=int, default=12)
    p.add_argument("--gaussians", type=int, default=8000)
    p.add_argument("--static-steps", type=int, default=300)
    p.add_argument("--deform-steps", type=int, default=300)
    p.add_argument("--frames-per-step", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--executor", default="local")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: automatic)")
    p.add_argument("--crf", default="18,23,28,33,38,43")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--export-dir", default="", help="keep the exported model here")
    p.add_argument("--decode-only", default="", help="skip fitting: measure the model exported in this folder")
    args = p.parse_args()

    W, H = (int(v) for v in args.size.lower().split("x"))
    frames_u8, fps = read_frames(args.video, W, H, args.frames)
    frames = torch.from_numpy(frames_u8).float() / 255
    T = frames.shape[0]
    video = Video(Path(args.video).stem, T, W, H, fps, lambda i: frames[i], gop_length=args.gop, source=Path(args.video))
    print(f"{video.name}: {T} frames at {W}x{H}, GoP {args.gop}, {cpu_count()} cores", flush=True)

    wall, cpu = float("nan"), float("nan")
    if args.decode_only:
        decoded = D2GV.from_export(args.decode_only)
    else:
        rep = D2GV(D2GVConfig(num_gaussians=args.gaussians))
        rep.build(video)
        cfg = FitConfig(
            static_steps=args.static_steps,
            deform_steps=args.deform_steps,
            frames_per_step=args.frames_per_step,
            executor=args.executor,
            workers=args.workers,
            threads_per_worker=args.threads,
            evaluate=False,
        )
        with tempfile.TemporaryDirectory(prefix="d2gv-bench-") as tmp:
            ctx = RefineContext(device=torch.device("cpu"), seed=0, renderer=Torch2DGS(), out_dir=Path(tmp), log=print)
            t0 = time.perf_counter()
            report = D2GVFit(cfg).run(rep, video, ctx)
            wall, cpu = time.perf_counter() - t0, report["cpu_seconds"]
            export_dir = Path(args.export_dir) if args.export_dir else Path(tmp) / "export"
            rep.export(export_dir, "d2gv")
            decoded = D2GV.from_export(export_dir)
    if (decoded.height, decoded.width, decoded.num_frames) != (H, W, T):
        raise SystemExit(f"the exported model is {decoded.width}x{decoded.height}, {decoded.num_frames} frames; the video is {W}x{H}, {T}")
    metrics = evaluate_frames(decoded, video)
    payload = decoded.payload_bytes()

    renderer = Torch2DGS()

    def decode_all() -> None:
        with torch.inference_mode():
            renderer.render(decoded, None)

    d2gv_fps_by_threads, d2gv_fps_cpu = {}, {}
    for threads in sorted({1, cpu_count()}):  # on a busy machine 1 thread can beat 2
        torch.set_num_threads(threads)
        d2gv_fps_by_threads[threads] = T / timed_median(decode_all, args.repeats)
        d2gv_fps_cpu[threads] = T / statistics.median(CPU_TIMES)
    d2gv_fps = max(d2gv_fps_by_threads.values())
    h264 = [h264_point(frames_u8, fps, int(c), args.repeats) for c in args.crf.split(",")]
    result = {
        "video": args.video,
        "size": [W, H],
        "frames": T,
        "gop": args.gop,
        "gaussians_per_gop": None if args.decode_only else args.gaussians,
        "gaussians_kept": decoded.num_kept(),
        "static_steps": None if args.decode_only else args.static_steps,
        "deform_steps": None if args.decode_only else args.deform_steps,
        "frames_per_step": None if args.decode_only else args.frames_per_step,
        "train_wall_seconds": wall,
        "train_cpu_seconds": cpu,
        "mean_psnr": metrics["mean_psnr"],
        "mean_ms_ssim": metrics.get("mean_ms_ssim"),
        "psnr_per_frame": metrics["psnr"],
        "bytes_per_frame": payload / T,
        "decode_fps": d2gv_fps,
        "decode_fps_by_threads": d2gv_fps_by_threads,
        "decode_fps_cpu_time_by_threads": d2gv_fps_cpu,
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

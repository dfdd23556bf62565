"""PSNR / MS-SSIM of frames written by ``recon decode`` against the source video read as ``recon run``
reads it (the ``video`` loader with the same options), and the bitstream's bytes per frame.

Usage (docs/benchmarks.md, "The Bunny figure from the CLI")::

    python benchmarks/d2gv_decoded_psnr.py --decoded DEC_DIR --bitstream clip.d2gv \\
        --data /work/shared/datasets/video/bigbuckbunny.mp4 --set video.end=8 --set video.width=320 --set video.height=180
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recon_core.imageops import ms_ssim, psnr
from recon_plugins.loaders.video import VideoConfig, VideoLoader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--decoded", required=True, help="folder of frame_NNNNN.png written by recon decode")
    p.add_argument("--bitstream", default="", help="the .d2gv file (for bytes per frame)")
    p.add_argument("--data", required=True)
    p.add_argument("--set", action="append", default=[], metavar="video.KEY=VALUE", help="video loader options, as for recon run")
    args = p.parse_args()
    options: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not key.startswith("video."):
            sys.exit(f"only video.* options apply here, not {key}")
        options[key[len("video."):]] = type(getattr(VideoConfig(), key[len("video."):]))(value)
    video = VideoLoader(VideoConfig(**options)).load(Path(args.data))
    pngs = sorted(Path(args.decoded).glob("frame_*.png"))
    if len(pngs) != video.num_frames:
        sys.exit(f"{len(pngs)} decoded frames, {video.num_frames} in the video")
    psnrs, ssims = [], []
    for i, path in enumerate(pngs):
        pred = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float() / 255
        target = video.frame(i).float()
        psnrs.append(float(psnr(pred, target)))
        ssims.append(float(ms_ssim(pred, target)))
    out = {"frames": len(pngs), "mean_psnr": sum(psnrs) / len(psnrs), "mean_ms_ssim": sum(ssims) / len(ssims),
           "min_psnr": min(psnrs), "psnr": psnrs}
    if args.bitstream:
        size = Path(args.bitstream).stat().st_size
        out.update(bytes=size, bytes_per_frame=size / len(pngs), bpp=8 * size / (len(pngs) * video.width * video.height))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

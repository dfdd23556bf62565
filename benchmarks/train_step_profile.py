"""Where a 3dgs-train step spends its time, and how much of it is outside compiled kernels (issue 24).

Runs ``recon run`` in this process (the same code path as the CLI, any ``--set`` options) and
times every training step of ``3dgs-train`` (process CPU time, all threads, and wall time),
split into:

* ``kernels``: calls into the compiled torch-3dgs kernels (``rasterize_cpu.cpp``: projection,
  binning, compositing, forward and backward; :class:`recon_plugins.gaussians.bench.KernelTimer`);
* ``adam kernel``: calls into the fused Adam step (``recon_core/csrc/adam_cpu.cpp``; ``--adam
  torch`` turns it off, so that the optimiser takes the tensor operations of torch's Adam);
* ``loss kernel``: calls into the compiled L1 + SSIM loss, forward and backward
  (``recon_core/csrc/loss_cpu.cpp``; ``--set 3dgs-train.loss_kernel=torch`` takes the PyTorch ops);
* ``render``: the renderer's forward call (kernels included), ``loss``: the photometric loss
  (L1 + SSIM) forward, ``backward``: ``loss.backward()`` (kernels included), and ``rest``: the
  optimiser, densification, view selection and Python around them.

``outside kernels`` = step - kernels - adam kernel - loss kernel: the share of the step spent in PyTorch ops
(loss, SSIM and their autograd, activations, densification) and the interpreter, i.e. outside
compiled code.
Steps before ``--skip`` (warm-up) are left out of the averages. Example (README's first command on
``object``, 300 steps, one thread)::

    python benchmarks/train_step_profile.py --threads 1 -- \\
        --data /work/shared/datasets/object --repr 3dgs --out /tmp/prof --set 3dgs-train.steps=300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from recon_plugins.gaussians.bench import KERNELS, KernelTimer

__all__ = ["profile_run", "main"]


class _Clock:
    """Accumulated process-CPU and wall seconds of one labelled part."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - c0
                self.wall += time.perf_counter() - t0

        return timed


def profile_run(run_args: list[str], skip: int = 5, adam: str = "fused") -> dict[str, Any]:
    """Run ``recon run RUN_ARGS`` here and return per-step averages (seconds) of each part;
    ``adam="torch"`` keeps the optimiser off its compiled kernel (the reference)."""
    from recon_cli.main import make_cli
    from recon_core import imageops, optim
    from recon_plugins.gaussians import renderers, trainer

    parts = {name: _Clock() for name in ("render", "loss", "backward", "adam_kernel", "loss_kernel")}
    adam_kernel = optim._adam_kernel
    compiled = adam_kernel() if adam == "fused" else None

    class _TimedAdam:  # the kernel module, its one entry point timed
        adam_step = staticmethod(parts["adam_kernel"].wrap(compiled.adam_step)) if compiled is not None else None

    loss_extension = imageops._loss_extension
    loss_compiled = loss_extension()

    class _TimedLoss:  # the loss kernel's module, forward and backward timed (None: torch's ops only)
        l1_dssim_forward = staticmethod(parts["loss_kernel"].wrap(loss_compiled.l1_dssim_forward)) if loss_compiled else None
        l1_dssim_backward = staticmethod(parts["loss_kernel"].wrap(loss_compiled.l1_dssim_backward)) if loss_compiled else None

    steps: list[dict[str, float]] = []
    originals = (trainer.GaussianTrainer.step, renderers.TorchGaussianRenderer.render, trainer.photometric_loss, torch.Tensor.backward)
    timer = KernelTimer()

    def step(self: Any, i: int) -> dict[str, float]:
        before = {k: (c.cpu, c.wall) for k, c in parts.items()}
        k_cpu, k_wall = timer.kernel_cpu_s(), sum(timer.wall_s.values())
        t0, c0 = time.perf_counter(), time.process_time()
        out = originals[0](self, i)
        row = {"step_cpu": time.process_time() - c0, "step_wall": time.perf_counter() - t0,
               "kernels_cpu": timer.kernel_cpu_s() - k_cpu, "kernels_wall": sum(timer.wall_s.values()) - k_wall,
               "gaussians": float(len(self.rep))}
        for k, c in parts.items():
            row[f"{k}_cpu"] = c.cpu - before[k][0]
            row[f"{k}_wall"] = c.wall - before[k][1]
        steps.append(row)
        return out

    trainer.GaussianTrainer.step = step  # type: ignore[method-assign]
    optim._adam_kernel = (lambda: _TimedAdam) if compiled is not None else (lambda: None)  # type: ignore[assignment]
    imageops._loss_extension = (lambda: _TimedLoss) if loss_compiled is not None else (lambda: None)  # type: ignore[assignment]
    renderers.TorchGaussianRenderer.render = parts["render"].wrap(originals[1])  # type: ignore[method-assign]
    trainer.photometric_loss = parts["loss"].wrap(originals[2])
    torch.Tensor.backward = parts["backward"].wrap(originals[3])  # type: ignore[method-assign]
    try:
        with timer:
            try:
                # the CLI itself, not recon_cli.main.main: that ends the process (os._exit) when the run ends
                make_cli(lazy=True)(args=["run", *run_args], prog_name="recon")
            except SystemExit as e:
                if e.code not in (0, None):
                    raise
    finally:
        trainer.GaussianTrainer.step, renderers.TorchGaussianRenderer.render = originals[0], originals[1]  # type: ignore[method-assign]
        trainer.photometric_loss, torch.Tensor.backward = originals[2], originals[3]  # type: ignore[method-assign]
        optim._adam_kernel = adam_kernel  # type: ignore[assignment]
        imageops._loss_extension = loss_extension  # type: ignore[assignment]
    kept = steps[skip:] or steps
    mean = {k: statistics.fmean(r[k] for r in kept) for k in kept[0]}
    mean["rest_cpu"] = mean["step_cpu"] - mean["render_cpu"] - mean["loss_cpu"] - mean["backward_cpu"]
    mean["compiled_cpu"] = mean["kernels_cpu"] + mean["adam_kernel_cpu"] + mean["loss_kernel_cpu"]
    mean["outside_kernels_cpu"] = mean["step_cpu"] - mean["compiled_cpu"]
    mean["outside_kernels_fraction"] = mean["outside_kernels_cpu"] / mean["step_cpu"]
    mean["steps_averaged"] = len(kept)
    mean["kernel_calls"] = {k: timer.calls.get(k, 0) for k in KERNELS}
    return mean


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (sets run.threads; default: the run's)")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the averages")
    parser.add_argument("--json", help="also write the averages to this file")
    parser.add_argument("--adam", choices=("fused", "torch"), default="fused",
                        help="the optimiser's step: the compiled kernel (default) or torch's tensor operations")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the arguments of `recon run`")
    args = parser.parse_args(argv)
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    if args.threads:
        run_args = [*run_args, "--set", f"run.threads={args.threads}"]
    result = profile_run(run_args, args.skip, args.adam)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    ms = lambda k: f"{1e3 * result[k]:.1f} ms ({100 * result[k] / result['step_cpu']:.0f} %)"  # noqa: E731
    print(f"3dgs-train step, mean of {result['steps_averaged']} steps, {result['gaussians']:.0f} Gaussians on average "
          f"(CPU time per step, all threads):", file=sys.stdout)
    print("| step | compiled (rasteriser + Adam + loss) | Adam kernel | loss kernel (fwd + bwd) | render (fwd) | "
          "loss (fwd) | backward | Adam, densification, rest | outside kernels |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {1e3 * result['step_cpu']:.1f} ms | {ms('compiled_cpu')} | {ms('adam_kernel_cpu')} | {ms('loss_kernel_cpu')} | "
          f"{ms('render_cpu')} | {ms('loss_cpu')} | {ms('backward_cpu')} | {ms('rest_cpu')} | {ms('outside_kernels_cpu')} |")


if __name__ == "__main__":
    main()

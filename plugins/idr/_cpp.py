"""The IDR plugin's compiled CPU kernels (``idr_cpu.cpp``): the SDF network's inference forward
(:meth:`.network.ImplicitNetwork.sdf_inference`), the sphere-tracing loop (:mod:`.raytrace`) and the
training activation (:class:`.network._SoftplusKernels`).

Built on first use (``recon doctor --build`` builds it ahead); ``IDR_EXTENSION.load()`` returns
``None`` (one warning naming the reason; silently with ``RECON_NO_CPP=1``) when it cannot be built,
and the callers then run their PyTorch code, which gives the same results (tests).
"""

from __future__ import annotations

from pathlib import Path

from recon_core.cpp_extension import DEFAULT_CFLAGS, declare_extension

__all__ = ["IDR_EXTENSION"]

# -fno-trapping-math lets the Softplus loop vectorise (16 values an instruction instead of 1); the
# default -ffp-contract=off keeps the tracer's o + t v rounding as PyTorch's (the Softplus uses
# explicit FMAs)
IDR_EXTENSION = declare_extension("recon_idr_cpu", [Path(__file__).with_name("idr_cpu.cpp")],
                                  (*DEFAULT_CFLAGS, "-fno-trapping-math"))

"""Handing memory a finished piece of work freed back to the operating system.

glibc's ``free`` keeps freed blocks for reuse; a heap fragmented by tensors of changing sizes
(densification replaces every parameter, its gradient and its Adam moments with larger ones;
evaluation and training free many blocks) keeps pages resident that nothing uses.
``malloc_trim(0)`` returns the free pages anywhere in the heap (measured on ``object``: 20 MB of
a training run's resident memory after training, 22-33 MB after a densification, issue 24).
Nothing changes for the program itself.

The opposite, for a training loop that frees and reallocates the same large buffers every step
(IDR's hash-grid table gradients, 2.7 MB each, several a step): :func:`keep_freed_memory` raises
glibc's trim and mmap thresholds, so that those blocks stay in the heap for the next step instead
of going back to the kernel and being faulted in again (≈ 2 000 page faults a step; issue 21).
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["keep_freed_memory", "release_memory"]

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _MALLOC_TRIM = _LIBC.malloc_trim
    _MALLOPT = _LIBC.mallopt
except (OSError, AttributeError):  # not glibc: its allocator does what it does
    _MALLOC_TRIM = _MALLOPT = None

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(trim_threshold: int = 256 << 20, mmap_threshold: int = 32 << 20) -> bool:
    """With glibc, keep up to ``trim_threshold`` bytes of freed memory at the top of the heap and
    serve blocks below ``mmap_threshold`` (glibc's own dynamic maximum) from the heap, for the rest
    of the process; returns whether it was applied. Values and results of the program do not
    change; :func:`release_memory` still returns every free page (``malloc_trim(0)``)."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(_MALLOPT(_M_TRIM_THRESHOLD, int(trim_threshold)))


def release_memory(collect: bool = True) -> None:
    """``collect``: first collect reference cycles (``gc.collect``, tens of milliseconds with
    torch loaded); then, with glibc, ``malloc_trim(0)`` (a walk over the heap's free blocks)."""
    if collect:
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)

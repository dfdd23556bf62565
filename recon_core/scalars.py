"""The run's experiment log: every refiner's per-step scalars in ``RUN/scalars.jsonl``, mirrored
to a TensorBoard event file (``RUN/tensorboard/``, written by :class:`EventFile`; viewing it needs
the ``tensorboard`` package, writing it does not), and drawn as ``RUN/curves.png`` (loss and PSNR against step) at the end of a run.

One JSON object per line::

    {"refiner": "3dgs-train", "index": 0, "step": 41, "loss": 0.031, "psnr": 24.7, ...}

``index`` is the refiner's position in the run (a refiner may appear twice), ``step`` the
0-based step it was called with. Each line is appended with one ``write`` on an ``O_APPEND``
descriptor, so a crash leaves at most a torn last line, which readers skip. Resuming at refiner
``i`` step ``k`` first truncates the file to the lines before ``(i, k)``, so a resumed run's log
equals the uninterrupted one's.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .io import _child_failed, atomic_path, child_python, write_bytes

__all__ = ["ScalarLog", "EventFile", "read_scalars", "plot_curves", "SCALARS_FILE", "CURVES_FILE", "TENSORBOARD_DIR"]

SCALARS_FILE = "scalars.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def read_scalars(path: str | Path) -> list[dict[str, Any]]:
    """The records of a scalars.jsonl (a torn or unreadable line, e.g. after a crash, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and "index" in record:
            records.append(record)
    return records


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # CRC-32C (Castagnoli), reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord files checksum their records."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 on the wire: two's complement
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    """A serialised ``tensorflow.Event``: wall_time (1, double), step (2, int64), then ``body``
    (its file_version, summary or session_log field)."""
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


class EventFile:
    """TensorBoard's event file (``events.out.tfevents.*``) of scalars, written without the
    tensorboard or protobuf packages (importing them costs a run ~13 MB of resident memory and a
    writer thread): TFRecord framing (length, masked CRC-32C of the length, the record, its
    masked CRC-32C) around hand-serialised ``Event`` protos. Each record is one ``os.write``
    on an ``O_APPEND`` descriptor, so TensorBoard sees every step at once and a crash leaves at
    most a torn last record.

    ``purge_step`` (a resumed run): a ``SessionLog.START`` at that step, on which TensorBoard
    drops the events of earlier files at or after that step (what ``SummaryWriter(purge_step=)``
    writes).
    """

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = folder / name
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self._write(_event(now, 0 if purge_step is None else purge_step, _field(3, b"brain.Event:2")))
        if purge_step is not None:
            self._write(_event(now, purge_step, _field(7, b"\x08\x01")))  # session_log { status: START }

    @staticmethod
    def _masked(crc: int) -> int:
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    def _write(self, record: bytes) -> None:
        assert self._fd is not None, "EventFile written after close()"
        length = struct.pack("<Q", len(record))
        os.write(self._fd, length + struct.pack("<I", self._masked(crc32c(length))) + record
                 + struct.pack("<I", self._masked(crc32c(record))))

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """One event holding every ``tag: value`` of one step (as float32 ``simple_value``)."""
        if not values:
            return
        summary = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                           for tag, value in values.items())
        self._write(_event(time.time(), step, _field(5, summary)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ScalarLog:
    """Append-only per-step scalars of one run folder (see the module docstring).

    ::

        log = ScalarLog(run_path)
        log.open(resume_at=(refiner_index, step))   # or None for a fresh run
        log.write("3dgs-train", 0, step, {"loss": 0.1})
        log.close()
    """

    def __init__(self, folder: str | Path, *, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / SCALARS_FILE
        self._tensorboard = tensorboard
        self._fd: int | None = None
        self._tb: Any = None
        self._offsets: dict[int, int] = {}  # refiner index -> global step of its step 0 (TensorBoard x axis)

    def open(self, resume_at: tuple[int, int] | None = None) -> "ScalarLog":
        """Start a fresh log, or keep only the records before ``resume_at = (index, step)``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_scalars(self.path) if (r["index"], r["step"]) < resume_at] if resume_at else []
        write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o666)
        if self._tensorboard:
            purge = None
            if resume_at is not None:  # TensorBoard drops events at or after this global step
                purge = self._global_step(kept, *resume_at)
            self._tb = EventFile(self.folder / TENSORBOARD_DIR, purge)
        for r in kept:
            self._offsets.setdefault(r["index"], 0)
        self._kept = kept
        return self

    def _global_step(self, records: list[dict[str, Any]], index: int, step: int) -> int:
        """The x coordinate of ``(index, step)``: steps of earlier refiners come first."""
        ends: dict[int, int] = {}
        for r in records:
            ends[r["index"]] = max(ends.get(r["index"], 0), r["step"] + 1)
        return sum(n for i, n in ends.items() if i < index) + step

    def write(self, refiner: str, index: int, step: int, scalars: dict[str, float]) -> None:
        """Append one step's scalars (non-finite values are written as null)."""
        if self._fd is None:
            raise RuntimeError("ScalarLog.write before open()")
        values = {k: (v if math.isfinite(v) else None) for k, v in scalars.items()}
        record = {"refiner": refiner, "index": index, "step": step, **values}
        os.write(self._fd, (json.dumps(record) + "\n").encode())  # one write: appended whole
        if self._tb is not None:
            if index not in self._offsets:
                self._offsets[index] = self._global_step(self._kept, index, 0)
            self._tb.add_scalars({f"{refiner}/{key}": value for key, value in values.items() if value is not None},
                                 self._offsets[index] + step)
            self._kept.append(record)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "ScalarLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _series(records: list[dict[str, Any]], key: str) -> Iterator[tuple[str, list[int], list[float]]]:
    """Per refiner (in run order) the global steps and values of ``key``."""
    offset = 0
    for index in sorted({r["index"] for r in records}):
        rows = [r for r in records if r["index"] == index]
        name = rows[0]["refiner"]
        xs = [offset + r["step"] for r in rows if isinstance(r.get(key), (int, float))]
        ys = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        offset += max(r["step"] for r in rows) + 1
        if xs:
            yield f"{name} (#{index + 1})", xs, ys


def plot_curves(records: list[dict[str, Any]], path: str | Path, eval_psnr: float | None = None) -> Path | None:
    """Draw loss (log scale) and PSNR against step into ``path`` (PNG, written atomically).

    PSNR is the refiners' logged training PSNR; where a refiner logs none it is derived from an
    ``l2``/``mse`` entry. ``eval_psnr`` (the run's held-out mean) is drawn as a dashed line.
    Returns None when there is nothing to draw (no refiner logged a loss or PSNR). matplotlib is
    imported in a child interpreter (:func:`recon_core.io.child_python`; ~25 MB the run would
    otherwise keep); ImportError when it is missing there.
    """
    for r in records:
        if "psnr" not in r:
            mse = r.get("mse", r.get("l2"))
            if isinstance(mse, (int, float)) and mse > 0:
                r["psnr"] = -10.0 * math.log10(mse)
    loss = list(_series(records, "loss"))
    psnr = list(_series(records, "psnr"))
    if not loss and not psnr:
        return None
    job = json.dumps({"loss": loss, "psnr": psnr, "eval_psnr": eval_psnr, "path": str(path)})
    done = subprocess.run(child_python("recon_core.scalars:draw_curves_from_stdin"), input=job.encode(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise _child_failed(f"drawing {path}", done.returncode, done.stderr)
    return Path(path)


def draw_curves_from_stdin(args: list[str]) -> None:
    """The child of :func:`plot_curves`: the series and the path as JSON on stdin."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    job = json.loads(sys.stdin.read())
    loss, psnr, eval_psnr, path = job["loss"], job["psnr"], job["eval_psnr"], job["path"]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for label, xs, ys in loss:
        ax_loss.plot(xs, ys, label=label, linewidth=1)
    if loss and all(y > 0 for _, _, ys in loss for y in ys):
        ax_loss.set_yscale("log")
    ax_loss.set(title="training loss", xlabel="step")
    for label, xs, ys in psnr:
        ax_psnr.plot(xs, ys, label=label, linewidth=1)
    if eval_psnr is not None:
        ax_psnr.axhline(eval_psnr, linestyle="--", color="black", linewidth=1, label=f"test PSNR {eval_psnr:.2f} dB")
    ax_psnr.set(title="PSNR (dB)", xlabel="step")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

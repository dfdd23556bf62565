"""The ``.d2gv`` bitstream: a compressed D2GV video, decodable from the file alone.

Decode side only: reading the container, ANS-decoding the symbol streams with ``constriction``
and dequantising them into a :class:`~.representation.D2GV` that :class:`~.decode.Decoder`
renders. Nothing here imports the fitter; the encoder (quantisation, quantisation-aware
fine-tune, ANS encoding) is :mod:`.codec`, which shares the grids defined here so both sides
dequantise with the same float32 operations.

Layout, version 2 (integers little-endian; version 1 files, which have only uniform colours, are
read too)::

    "D2GV"                      magic, 4 bytes
    u16 version                 a reader rejects any other version (exit 2)
    u32 header length L
    header (L bytes):
        u32 width, u32 height, u32 fps numerator, u32 fps denominator,
        u32 frame count, u32 GoP count G,
        G × (u32 frames in the GoP, u32 chunk bytes)      the GoP table
        u32 settings length S, S bytes of UTF-8 JSON      MLP shape + quantisation grids + colour codec
    u32 CRC-32 of the header
    G × (chunk bytes, u32 CRC-32 of the chunk)             one chunk per GoP, in frame order

A GoP chunk (see :func:`encode_gop_chunk` / :func:`decode_gop_chunk`): u32 Gaussian count N, then
the symbol streams of :data:`STREAMS` (each a varint byte length + an ANS stream), then one
float32 quantisation step per MLP tensor. With ``color_codec=rvq`` (version 2) the colour
streams ``r, g, b`` are replaced by one stream ``vq`` of the N × stages codeword indices (row-major,
one histogram, as GaussianImage codes its index matrix), and the chunk ends with the float32
codebooks [stages, codewords, 3]. An ANS stream is a sparse histogram (varints: distinct
symbols, first symbol zig-zagged, then per symbol the gap to the previous and its count) followed
by the ``constriction`` stack-coder words (u32) of the symbols under that categorical model.

Quantisation grids (the ``quant`` settings of the header):

* positions ``tanh(xy)`` on a grid of ``pos_step`` pixels (cell centres, so never ±1); the
  Gaussians are sorted by (row, column) of their cell, so the rows are delta-coded (``dy``) and
  the columns are coded as the gap to the previous Gaussian on the same row (``dx``) or, first in
  a row, absolutely (``x0``) — the order of Gaussians does not change the image (the summation
  rasteriser adds them, the MLP treats each on its own);
* Cholesky factors (pixels, bound included) on a grid of ``chol_step`` (diagonal at least
  ``MIN_DIAG``);
* colours on a grid of ``color_step`` (``color_codec=uniform``), or residual vector quantisation
  (``rvq``, GaussianImage's): the colour is the sum over ``color_stages`` stages of one of
  ``color_codebook`` codewords each (:func:`rvq_values`);
* each MLP tensor symmetric on ``2^(mlp_bits-1) - 1`` levels of ``max |w|``.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon_core import InputError

from .deform import DeformSettings
from .representation import CHOL_BOUND, MIN_DIAG, D2GV, D2GVConfig, GopModel

__all__ = [
    "MAGIC",
    "VERSION",
    "BitstreamError",
    "QuantGrid",
    "QuantisedGop",
    "ClipHeader",
    "STREAMS",
    "encode_symbols",
    "decode_symbols",
    "gop_streams",
    "encode_gop_chunk",
    "decode_gop_chunk",
    "write_bitstream",
    "read_bitstream",
    "decode_file",
    "position_values",
    "cholesky_values",
    "uniform_values",
    "mlp_values",
    "rvq_values",
    "rvq_indices",
]

MAGIC = b"D2GV"
VERSION = 2
READS = (1, 2)
"""Versions this decoder reads (1: before the colour codec was a setting; its colours are uniform)."""
STREAMS = ("dy", "dx", "x0", "l11", "l21", "l22", "r", "g", "b", "mlp")
"""Symbol streams of a GoP chunk with uniform colours, in file order."""
RVQ_STREAMS = ("dy", "dx", "x0", "l11", "l21", "l22", "vq", "mlp")
"""The same with residual-VQ colours."""
MAX_RVQ_COMBINATIONS = 4096
_U32 = struct.Struct("<I")


class BitstreamError(InputError):
    """A ``.d2gv`` file that is truncated, corrupted, of another version or not a D2GV bitstream."""


# ------------------------------------------------------------------------------ quantisation grids


@dataclass(frozen=True)
class QuantGrid:
    """Quantisation settings written into the header (the decoder needs nothing else)."""

    pos_step: float = 1 / 16
    chol_step: float = 1 / 16
    color_step: float = 1 / 64
    mlp_bits: int = 8
    color_codec: str = "uniform"
    color_codebook: int = 8
    color_stages: int = 2

    @property
    def streams(self) -> tuple[str, ...]:
        return RVQ_STREAMS if self.color_codec == "rvq" else STREAMS

    def __post_init__(self) -> None:
        for name in ("pos_step", "chol_step", "color_step"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"quantisation {name} must be a positive number, not {v!r}")
        if not (isinstance(self.mlp_bits, int) and 2 <= self.mlp_bits <= 16):
            raise InputError(f"quantisation mlp_bits must be an integer in 2..16, not {self.mlp_bits!r}")
        if self.color_codec not in ("uniform", "rvq"):
            raise InputError(f"colour codec must be 'uniform' or 'rvq', not {self.color_codec!r}")
        k, s = self.color_codebook, self.color_stages
        if not (isinstance(k, int) and isinstance(s, int) and 2 <= k <= 256 and 1 <= s <= 4 and k**s <= MAX_RVQ_COMBINATIONS):
            raise InputError(f"residual VQ of {s!r} stages of {k!r} codewords: need 2..256 codewords, 1..4 stages and "
                             f"codewords^stages <= {MAX_RVQ_COMBINATIONS}")


def _cells(size: int, step: float) -> int:
    return max(1, int(math.floor(size / step)))


def position_values(kx: Tensor, ky: Tensor, width: int, height: int, grid: QuantGrid) -> Tensor:
    """[N, 2] pre-tanh positions of grid cells (kx, ky): the cell centre in pixels, mapped to (-1, 1)."""
    s = grid.pos_step
    u = (kx.to(torch.float32) + 0.5) * s / width * 2.0 - 1.0
    v = (ky.to(torch.float32) + 0.5) * s / height * 2.0 - 1.0
    return torch.atanh(torch.stack([u, v], dim=-1))


def position_symbols(xy: Tensor, width: int, height: int, grid: QuantGrid) -> tuple[Tensor, Tensor]:
    """Grid cells (kx, ky) [N] int64 of pre-tanh positions ``xy`` [N, 2]."""
    s = grid.pos_step
    p = torch.tanh(xy.detach().float())
    kx = torch.floor((p[:, 0] + 1.0) * 0.5 * width / s).clamp(0, _cells(width, s) - 1).long()
    ky = torch.floor((p[:, 1] + 1.0) * 0.5 * height / s).clamp(0, _cells(height, s) - 1).long()
    return kx, ky


def cholesky_min_symbol(grid: QuantGrid) -> int:
    """Smallest symbol of a diagonal Cholesky entry (its value is >= MIN_DIAG)."""
    return int(math.ceil(MIN_DIAG / grid.chol_step - 1e-9))


def cholesky_values(k: Tensor, grid: QuantGrid) -> Tensor:
    """[N, 3] raw Cholesky parameters (``GopModel.chol``: bound subtracted) of symbols ``k`` [N, 3]."""
    bound = torch.tensor([CHOL_BOUND, 0.0, CHOL_BOUND], dtype=torch.float32)
    return k.to(torch.float32) * grid.chol_step - bound


def uniform_values(k: Tensor, step: float) -> Tensor:
    return k.to(torch.float32) * step


def mlp_values(k: Tensor, step: Tensor) -> Tensor:
    """Dequantised MLP tensor: symbols times its float32 step."""
    return k.to(torch.float32) * step.to(torch.float32)


def rvq_values(indices: Tensor, codebook: Tensor) -> Tensor:
    """[N, 3] colours of residual-VQ ``indices`` [N, S] under ``codebook`` [S, K, 3]: the sum of
    one codeword per stage, added in stage order (float32, the same on both sides)."""
    out = torch.zeros(indices.shape[0], codebook.shape[-1], dtype=torch.float32)
    for s in range(codebook.shape[0]):
        out = out + codebook[s].to(torch.float32)[indices[:, s].long()]
    return out


def rvq_indices(colors: Tensor, codebook: Tensor) -> Tensor:
    """[N, S] int64: for each colour the combination of codewords (one per stage) whose sum is
    nearest (exhaustive over the codebook^stages sums, so a colour already on the codebook gets
    itself back exactly)."""
    S, K, _ = codebook.shape
    combos = torch.cartesian_prod(*[torch.arange(K)] * S).reshape(-1, S) if S > 1 else torch.arange(K)[:, None]
    sums = rvq_values(combos, codebook)
    colors = colors.detach().to(torch.float32)
    best = torch.empty(colors.shape[0], dtype=torch.long)
    for a in range(0, colors.shape[0], 8192):
        best[a : a + 8192] = torch.cdist(colors[a : a + 8192], sums).argmin(dim=1)
    return combos[best]


# ------------------------------------------------------------------------------ ANS symbol streams


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Reader:
    """Sequential reader of a bytes object; running past its end is a BitstreamError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BitstreamError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise BitstreamError(f"{self.what}: malformed integer")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise BitstreamError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def _unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def encode_symbols(symbols: np.ndarray | Tensor) -> bytes:
    """Integer symbols → sparse histogram + ANS stream (``constriction``'s stack coder under the
    exact categorical distribution of these symbols)."""
    import constriction

    sym = np.asarray(symbols.cpu() if isinstance(symbols, Tensor) else symbols, dtype=np.int64).reshape(-1)
    if sym.size == 0:
        return _varint(0)
    values, inverse, counts = np.unique(sym, return_inverse=True, return_counts=True)
    head = bytearray(_varint(len(values)) + _varint(_zigzag(int(values[0]))) + _varint(int(counts[0])))
    for gap, c in zip(np.diff(values).tolist(), counts[1:].tolist()):
        head += _varint(gap) + _varint(c)
    if len(values) == 1:
        return bytes(head)  # one symbol: the histogram says everything
    model = constriction.stream.model.Categorical(counts.astype(np.float64) / counts.sum(), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(inverse.astype(np.int32), model)
    return bytes(head) + coder.get_compressed().astype("<u4").tobytes()


def decode_symbols(data: bytes, count: int, what: str = "symbol stream") -> np.ndarray:
    """Inverse of :func:`encode_symbols`: ``count`` int64 symbols."""
    import constriction

    r = _Reader(data, what)
    k = r.varint()
    if k == 0:
        if count:
            raise BitstreamError(f"{what}: empty stream, {count} symbols expected")
        r.done()
        return np.zeros(0, dtype=np.int64)
    values = [_unzigzag(r.varint())]
    counts = [r.varint()]
    for _ in range(k - 1):
        values.append(values[-1] + r.varint())
        counts.append(r.varint())
    if sum(counts) != count or min(counts) < 1:
        raise BitstreamError(f"{what}: histogram of {sum(counts)} symbols, {count} expected")
    values_arr = np.asarray(values, dtype=np.int64)
    if k == 1:
        r.done()
        return np.full(count, values_arr[0], dtype=np.int64)
    rest = data[r.pos :]
    if len(rest) % 4:
        raise BitstreamError(f"{what}: ANS stream is not a whole number of words")
    counts_arr = np.asarray(counts, dtype=np.float64)
    model = constriction.stream.model.Categorical(counts_arr / counts_arr.sum(), perfect=False)
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(rest, dtype="<u4").astype(np.uint32))
        idx = np.asarray(coder.decode(model, count), dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - constriction raises plain exceptions on bad data
        raise BitstreamError(f"{what}: ANS decoding failed ({e})") from None
    if idx.size != count or not coder.is_empty():
        raise BitstreamError(f"{what}: ANS stream does not hold exactly {count} symbols")
    return values_arr[idx]


# ------------------------------------------------------------------------------ GoP chunks


@dataclass
class QuantisedGop:
    """Integer symbols of one GoP (Gaussians already in bitstream order).

    kx, ky [N] position cells; chol [N, 3] Cholesky symbols; color [N, 3] colour symbols, or with
    a ``codebook`` [S, K, 3] (residual VQ) [N, S] codeword indices; mlp: one int64 tensor per MLP
    tensor (``state_dict`` order) and mlp_steps [T] float32.
    """

    kx: Tensor
    ky: Tensor
    chol: Tensor
    color: Tensor
    mlp: list[Tensor]
    mlp_steps: Tensor
    codebook: Tensor | None = None

    @property
    def num_gaussians(self) -> int:
        return int(self.kx.numel())

    def sort(self) -> "QuantisedGop":
        """Gaussians in raster order of their cells (row, then column): the order the chunk stores."""
        order = torch.argsort(self.ky * (int(self.kx.max()) + 1 if self.kx.numel() else 1) + self.kx, stable=True)
        return QuantisedGop(self.kx[order], self.ky[order], self.chol[order], self.color[order], self.mlp, self.mlp_steps, self.codebook)

    def to_model(self, width: int, height: int, grid: QuantGrid, deform: DeformSettings) -> GopModel:
        """The GoP model these symbols decode to (every Gaussian kept)."""
        gop = GopModel(self.num_gaussians, deform)
        state = gop.state_dict()
        mlp_keys = [k for k in state if k.startswith("deform.")]
        state["xy"] = position_values(self.kx, self.ky, width, height, grid)
        state["chol"] = cholesky_values(self.chol, grid)
        if self.codebook is not None:
            state["color"] = rvq_values(self.color, self.codebook)
            state["color_codebook"] = self.codebook.to(torch.float32)
        else:
            state["color"] = uniform_values(self.color, grid.color_step)
        state["mask_logit"] = torch.full((self.num_gaussians,), 10.0)
        for key, sym, step in zip(mlp_keys, self.mlp, self.mlp_steps):
            state[key] = mlp_values(sym, step).reshape(state[key].shape)
        gop.load_tensors(state)
        return gop


def _mlp_shapes(deform: DeformSettings) -> list[torch.Size]:
    return [t.shape for k, t in GopModel(0, deform).state_dict().items() if k.startswith("deform.")]


def gop_streams(q: QuantisedGop) -> dict[str, Any]:
    """The symbol streams of :data:`STREAMS` for the Gaussians of ``q`` (in stored order)."""
    kx, ky = q.kx.cpu().numpy(), q.ky.cpu().numpy()
    dy = np.diff(ky, prepend=0)
    if np.any(dy < 0):
        raise ValueError("Gaussians must be sorted by row (QuantisedGop.sort)")
    new_row = np.ones(kx.size, dtype=bool)
    new_row[1:] = dy[1:] != 0
    dx = np.diff(kx, prepend=0)[~new_row]
    streams = {
        "dy": dy,
        "dx": dx,
        "x0": kx[new_row],
        "l11": q.chol[:, 0],
        "l21": q.chol[:, 1],
        "l22": q.chol[:, 2],
        "mlp": torch.cat([m.reshape(-1) for m in q.mlp]) if q.mlp else np.zeros(0),
    }
    if q.codebook is not None:
        streams["vq"] = q.color.reshape(-1)
        return {name: streams[name] for name in RVQ_STREAMS}
    streams.update(r=q.color[:, 0], g=q.color[:, 1], b=q.color[:, 2])
    return {name: streams[name] for name in STREAMS}


def encode_gop_chunk(q: QuantisedGop) -> bytes:
    """Symbols of one GoP (in stored order) → chunk bytes (without its CRC)."""
    streams = gop_streams(q)
    out = bytearray(_U32.pack(q.num_gaussians))
    for name, stream in streams.items():
        blob = encode_symbols(stream)
        out += _varint(len(blob)) + blob
    out += q.mlp_steps.to(torch.float32).numpy().astype("<f4").tobytes()
    if q.codebook is not None:
        out += q.codebook.to(torch.float32).numpy().astype("<f4").tobytes()
    return bytes(out)


def decode_gop_chunk(data: bytes, deform: DeformSettings, what: str = "GoP chunk", grid: QuantGrid = QuantGrid()) -> QuantisedGop:
    """Inverse of :func:`encode_gop_chunk` (``grid`` says the colour codec)."""
    r = _Reader(data, what)
    n = r.u32()
    shapes = _mlp_shapes(deform)
    n_mlp = sum(math.prod(s) for s in shapes)
    raw: dict[str, np.ndarray] = {}
    dy = decode_symbols(r.take(r.varint()), n, f"{what}, stream dy")
    new_row = np.ones(n, dtype=bool)
    new_row[1:] = dy[1:] != 0
    raw["dy"] = dy
    raw["dx"] = decode_symbols(r.take(r.varint()), int((~new_row).sum()), f"{what}, stream dx")
    raw["x0"] = decode_symbols(r.take(r.varint()), int(new_row.sum()), f"{what}, stream x0")
    rvq = grid.color_codec == "rvq"
    S, K = grid.color_stages, grid.color_codebook
    for name in grid.streams[3:-1]:
        raw[name] = decode_symbols(r.take(r.varint()), n * S if name == "vq" else n, f"{what}, stream {name}")
    mlp_flat = decode_symbols(r.take(r.varint()), n_mlp, f"{what}, stream mlp")
    steps = np.frombuffer(r.take(4 * len(shapes)), dtype="<f4").astype(np.float32)
    codebook = np.frombuffer(r.take(4 * S * K * 3), dtype="<f4").astype(np.float32).reshape(S, K, 3) if rvq else None
    r.done()
    if np.any(dy < 0) or not np.all(np.isfinite(steps)) or (codebook is not None and not np.all(np.isfinite(codebook))):
        raise BitstreamError(f"{what}: invalid values")
    if rvq and n and (raw["vq"].min() < 0 or raw["vq"].max() >= K):
        raise BitstreamError(f"{what}: colour codeword index outside the codebook of {K}")
    ky = np.cumsum(dy)
    # column: absolute for the first Gaussian of a row, then gaps → a cumulative sum restarted per row
    steps_x = np.empty(n, dtype=np.int64)
    steps_x[new_row], steps_x[~new_row] = raw["x0"], raw["dx"]
    total = np.cumsum(steps_x)
    starts_at = np.flatnonzero(new_row)
    kx = total - (total[starts_at] - steps_x[starts_at])[np.cumsum(new_row) - 1] if n else steps_x
    mlp, offset = [], 0
    for s in shapes:
        size = math.prod(s)
        mlp.append(torch.from_numpy(mlp_flat[offset : offset + size].copy()).reshape(s))
        offset += size
    chol = torch.from_numpy(np.stack([raw["l11"], raw["l21"], raw["l22"]], axis=-1))
    if rvq:
        color = torch.from_numpy(raw["vq"].reshape(n, S).copy())
    else:
        color = torch.from_numpy(np.stack([raw["r"], raw["g"], raw["b"]], axis=-1))
    return QuantisedGop(torch.from_numpy(kx), torch.from_numpy(ky), chol, color, mlp, torch.from_numpy(steps.copy()),
                        torch.from_numpy(codebook.copy()) if codebook is not None else None)


# ------------------------------------------------------------------------------ container


@dataclass
class ClipHeader:
    """What the header says: frame size, rate, frame count, GoP table and the decoding settings."""

    width: int
    height: int
    fps: Fraction
    frame_count: int
    gop_lengths: list[int]
    deform: DeformSettings
    grid: QuantGrid


def _settings_json(header: ClipHeader) -> bytes:
    return json.dumps({"deform": asdict(header.deform), "quant": asdict(header.grid)}, sort_keys=True).encode()


def write_bitstream(header: ClipHeader, chunks: list[bytes]) -> bytes:
    """Assemble the file: magic, version, header + CRC, then each chunk + CRC."""
    if len(chunks) != len(header.gop_lengths) or sum(header.gop_lengths) != header.frame_count:
        raise ValueError("GoP table does not match the chunks / frame count")
    fps = Fraction(header.fps).limit_denominator(1_000_000)
    settings = _settings_json(header)
    body = bytearray(struct.pack("<6I", header.width, header.height, fps.numerator, fps.denominator, header.frame_count, len(chunks)))
    for length, chunk in zip(header.gop_lengths, chunks):
        body += struct.pack("<2I", length, len(chunk))
    body += _U32.pack(len(settings)) + settings
    out = bytearray(MAGIC + struct.pack("<H", VERSION) + _U32.pack(len(body)) + body + _U32.pack(zlib.crc32(body)))
    for chunk in chunks:
        out += chunk + _U32.pack(zlib.crc32(chunk))
    return bytes(out)


def read_bitstream(data: bytes, source: str | Path | None = None) -> tuple[ClipHeader, list[bytes]]:
    """Parse and check a whole file: header and chunk CRCs, sizes, settings. Any fault → BitstreamError."""
    where = f"{source}: " if source is not None else ""
    r = _Reader(data, f"{where}d2gv bitstream")
    if r.take(4) != MAGIC:
        raise BitstreamError(f"{where}not a D2GV bitstream (bad magic)")
    (version,) = struct.unpack("<H", r.take(2))
    if version not in READS:
        raise BitstreamError(f"{where}D2GV bitstream version {version}; this decoder reads versions {', '.join(map(str, READS))}")
    body = r.take(r.u32())
    if zlib.crc32(body) != r.u32():
        raise BitstreamError(f"{where}header checksum mismatch (corrupted file)")
    h = _Reader(body, f"{where}header")
    width, height, num, den, frame_count, gops = struct.unpack("<6I", h.take(24))
    table = [struct.unpack("<2I", h.take(8)) for _ in range(gops)]
    try:
        settings = json.loads(h.take(h.u32()).decode())
        unknown = set(settings["deform"]) - {f.name for f in fields(DeformSettings)}
        if unknown:
            raise ValueError(f"MLP settings {sorted(unknown)} unknown to this decoder")
        deform = DeformSettings(**settings["deform"])
        if version == 1 and set(settings["quant"]) - {"pos_step", "chol_step", "color_step", "mlp_bits"}:
            raise ValueError("a version 1 header with version 2 settings")
        grid = QuantGrid(**settings["quant"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BitstreamError(f"{where}header settings are invalid ({e})") from None
    h.done()
    if not (width and height and den and num and gops) or sum(t[0] for t in table) != frame_count or min(t[0] for t in table) < 1:
        raise BitstreamError(f"{where}header describes no valid video ({width}x{height}, {frame_count} frames, {gops} GoPs)")
    chunks = []
    for g, (_, size) in enumerate(table):
        chunk = r.take(size)
        if zlib.crc32(chunk) != r.u32():
            raise BitstreamError(f"{where}checksum mismatch in GoP {g} (corrupted file)")
        chunks.append(chunk)
    r.done()
    header = ClipHeader(width, height, Fraction(num, den), frame_count, [t[0] for t in table], deform, grid)
    return header, chunks


def decode_file(path: str | Path) -> tuple[D2GV, ClipHeader]:
    """Read a ``.d2gv`` file into a representation (for :class:`~.decode.Decoder`) and its header."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the bitstream ({e.strerror})", path) from None
    header, chunks = read_bitstream(data, path)
    d = header.deform
    rep = D2GV(D2GVConfig.for_layout(d, num_gaussians=1))  # GoP models come from the chunks
    starts = np.cumsum([0] + header.gop_lengths).tolist()
    times = torch.arange(header.frame_count, dtype=torch.float64) / float(header.fps)
    rep._set_layout([range(a, b) for a, b in zip(starts[:-1], starts[1:])], times, header.height, header.width)
    for g, chunk in enumerate(chunks):
        q = decode_gop_chunk(chunk, d, f"{path}: GoP {g}", header.grid)
        low = cholesky_min_symbol(header.grid)
        if q.num_gaussians and (
            int(q.kx.min()) < 0 or int(q.kx.max()) >= _cells(header.width, header.grid.pos_step)
            or int(q.ky.max()) >= _cells(header.height, header.grid.pos_step)
            or int(q.chol[:, [0, 2]].min()) < low
        ):
            raise BitstreamError(f"{path}: GoP {g} has Gaussians outside the frame or degenerate ones")
        rep.gops[g] = q.to_model(header.width, header.height, header.grid, d)
    return rep, header


def frame_rate(rep: D2GV) -> Fraction:
    """Frames per second of a representation, from its frame times (25 when they do not say)."""
    t = rep.frame_times.detach().cpu().double()
    if t.numel() >= 2 and float(t[-1] - t[0]) > 0:
        return Fraction((t.numel() - 1) / float(t[-1] - t[0])).limit_denominator(1001)
    return Fraction(25)


def header_for(rep: D2GV, grid: QuantGrid, fps: Fraction | float | None = None) -> ClipHeader:
    """The header of representation ``rep`` encoded on ``grid``."""
    lengths = [len(r) for r in rep.gop_ranges()]
    return ClipHeader(rep.width, rep.height, Fraction(fps) if fps is not None else frame_rate(rep), rep.num_frames, lengths, rep.deform_settings, grid)


def describe(header: ClipHeader, chunks: list[bytes]) -> dict[str, Any]:
    """Summary for logs: size, rate, GoPs and bytes."""
    total = sum(len(c) for c in chunks)
    return {
        "width": header.width,
        "height": header.height,
        "fps": float(header.fps),
        "frames": header.frame_count,
        "gops": len(chunks),
        "chunk_bytes": total,
    }


def decode_to_folder(path: str | Path, out: str | Path, *, mp4: bool = True, workers: int = 1) -> list[Path]:
    """Decode a ``.d2gv`` file to ``out/frame_00000.png…`` and ``out/decoded.mp4`` (GoP by GoP,
    with a progress bar). The whole file is checked before any frame is written."""
    from recon_core.io import Mp4Writer, write_png
    from recon_core.progress import progress_bar

    from .decode import Decoder

    rep, header = decode_file(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    decoder = Decoder(rep, workers=workers)
    writer = Mp4Writer(out / "decoded.mp4", float(header.fps)) if mp4 else None
    written: list[Path] = []
    ok = False
    try:
        with progress_bar("decode", total=header.frame_count) as advance:
            for r in rep.gop_ranges():
                frames = decoder.frames(torch.arange(r.start, r.stop))
                for i, img in zip(r, frames):
                    written.append(write_png(out / f"frame_{i:05d}.png", img))
                    if writer is not None:
                        writer.add(img)
                advance(len(r))
        ok = True
    finally:
        if writer is not None:
            writer.close(keep=ok)
    if writer is not None:
        written.append(out / "decoded.mp4")
    return written

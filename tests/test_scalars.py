"""recon_core.scalars: the run's scalars.jsonl (resume truncation, torn lines), TensorBoard, curves.png."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recon_core.scalars import ScalarLog, plot_curves, read_scalars


def _fill(folder, steps_per_refiner=(10, 4)):
    with ScalarLog(folder, tensorboard=False).open() as log:
        for index, n in enumerate(steps_per_refiner):
            for step in range(n):
                log.write(f"r{index}", index, step, {"loss": 1.0 / (step + 1), "psnr": 10.0 + step})


def test_records_round_trip_and_non_finite_is_null(tmp_path):
    with ScalarLog(tmp_path, tensorboard=False).open() as log:
        log.write("fit", 0, 0, {"loss": 0.5, "psnr": float("nan")})
    assert read_scalars(tmp_path / "scalars.jsonl") == [{"refiner": "fit", "index": 0, "step": 0, "loss": 0.5, "psnr": None}]


@pytest.mark.parametrize(("resume_at", "kept"), [((0, 5), 5), ((1, 0), 10), ((1, 2), 12), (None, 0)])
def test_resume_truncates_beyond_the_resumed_step(tmp_path, resume_at, kept):
    _fill(tmp_path)
    ScalarLog(tmp_path, tensorboard=False).open(resume_at=resume_at).close()
    records = read_scalars(tmp_path / "scalars.jsonl")
    assert len(records) == kept
    assert all((r["index"], r["step"]) < resume_at for r in records) if resume_at else records == []


def test_a_torn_last_line_is_skipped_and_dropped_on_resume(tmp_path):
    _fill(tmp_path, (3,))
    with open(tmp_path / "scalars.jsonl", "a") as f:
        f.write('{"refiner": "r0", "index": 0, "st')  # a crash in the middle of a write
    assert len(read_scalars(tmp_path / "scalars.jsonl")) == 3
    with ScalarLog(tmp_path, tensorboard=False).open(resume_at=(0, 3)) as log:
        log.write("r0", 0, 3, {"loss": 0.25})
    lines = (tmp_path / "scalars.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]


def test_tensorboard_events_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with ScalarLog(tmp_path).open() as log:
        for index in range(2):
            for step in range(3):
                log.write(f"r{index}", index, step, {"loss": float(10 * index + step)})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    second = [(e.step, e.value) for e in events.Scalars("r1/loss")]
    assert second == [(3, 10.0), (4, 11.0), (5, 12.0)]  # the second refiner continues the x axis


def test_crc32c_known_answers():
    from recon_core.scalars import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0 and crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_tensorboard_events_parse_with_tensorboards_own_reader(tmp_path):
    """The hand-written records read back through tensorboard's TFRecord reader (it drops a
    record whose CRC does not match) and protobuf's Event parser, float32 values and steps exact."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    from recon_core.scalars import EventFile

    writer = EventFile(tmp_path, purge_step=7)
    writer.add_scalars({"a/loss": 0.1, "a/psnr": 31.5}, 7)
    writer.add_scalars({"a/loss": 1e-30}, -1)  # int64 below zero: ten-byte varint
    writer.close()
    events = [Event.FromString(record) for record in RawEventFileLoader(str(writer.path)).Load()]
    assert [e.file_version for e in events[:1]] == ["brain.Event:2"] and events[1].session_log.status == 1
    values = [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events[2:]]
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    assert values == [(7, [("a/loss", f32(0.1)), ("a/psnr", 31.5)]), (-1, [("a/loss", f32(1e-30))])]


def test_tensorboard_resume_purges_the_steps_written_again(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with ScalarLog(tmp_path).open() as log:
        for step in range(5):
            log.write("r", 0, step, {"loss": float(step)})
    with ScalarLog(tmp_path).open(resume_at=(0, 3)) as log:
        for step in range(3, 5):
            log.write("r", 0, step, {"loss": 100.0 + step})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("r/loss")] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 103.0), (4, 104.0)]


def test_curves_png_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    _fill(tmp_path)
    out = plot_curves(read_scalars(tmp_path / "scalars.jsonl"), tmp_path / "curves.png", eval_psnr=18.0)
    image = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    assert image.shape == (400, 1100) and image.std() > 10  # two panels with lines, not a blank canvas
    assert plot_curves([{"refiner": "r", "index": 0, "step": 0, "gaussians": 3.0}], tmp_path / "none.png") is None

"""``recon bench render`` (plugins/gaussians/bench.py): the JSON contract on a tiny grid, errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from recon_cli.main import make_cli
from recon_core.cpp_extension import cpp_disabled
from recon_core.errors import InputError
from recon_core.registry import Registry
from recon_plugins.gaussians import bench


def _invoke(*args: str):
    return CliRunner().invoke(make_cli(Registry()), ["bench", "render", *args])


@pytest.mark.skipif(cpp_disabled(), reason="RECON_NO_CPP=1: no cpp-cpu renderer")
def test_bench_render_json_contract():
    result = _invoke("--counts", "200,400", "--sizes", "24x16", "--repeats", "1", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["renderer"], r["n"]) for r in rows] == [("cpp-cpu", 200), ("torch-3dgs", 200), ("cpp-cpu", 400), ("torch-3dgs", 400)]
    for r in rows:
        assert set(bench.ROW_KEYS) <= set(r), r
        assert (r["width"], r["height"]) == (24, 16) and "error" not in r
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 50  # a fresh process with torch loaded
        assert r["threads"] == 1 and r["repeats"] == 1


def test_bench_render_table_and_in_process_reference():
    rows = bench.run_render_benchmark(["torch-3dgs", "reference"], [50], [(12, 10)], repeats=1, threads=1, isolate=False)
    assert [r["renderer"] for r in rows] == ["torch-3dgs", "reference"]
    assert all(r["forward_s"] > 0 and r["forward_backward_s"] > 0 for r in rows)
    table = bench.format_table(rows, baseline="torch-3dgs")
    assert table.count("\n") == 3 and "| reference | 50 | 12x10 |" in table and "x, " in table


def test_scene_is_the_issue_scene():
    s = bench.make_scene(1000, 64, 48, seed=1)
    assert s["means"].shape == (1000, 3) and s["sh"].shape == (1000, 1, 3)
    assert torch.all((s["means"][:, 2] >= 2.5) & (s["means"][:, 2] <= 3.5))
    assert torch.all((s["scales"] >= 0.005) & (s["scales"] <= 0.03))
    assert torch.all((s["opacities"] >= 0.1) & (s["opacities"] <= 0.9))
    torch.testing.assert_close(s["Ks"][0], torch.tensor([[72.0, 0, 32], [0, 72.0, 24], [0, 0, 1]]))
    torch.testing.assert_close(s["quats"].norm(dim=-1), torch.ones(1000))


def test_registered_renderer_is_measured():
    calls = []

    def factory(path):
        calls.append(path)
        return lambda s: torch.zeros(s["height"], s["width"], 3) + s["means"].sum() * 0

    bench.register_renderer("test-null", factory)
    try:
        row = bench.measure_one("test-null", 10, 8, 6, repeats=1, threads=1, path="/somewhere")
    finally:
        del bench.RENDERERS["test-null"]
    assert calls == ["/somewhere"] and row["renderer"] == "test-null" and row["forward_backward_s"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--renderers", "no-such-renderer"], "unknown renderer"),
        (["--sizes", "640by360"], "WIDTHxHEIGHT"),
        (["--counts", "ten"], "integers"),
        (["--peer", "opensplat"], "NAME=PATH"),
    ],
)
def test_bad_arguments_are_input_errors(args, message):
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.skipif(bench._peer_module() is None, reason="benchmarks/render_peers.py is not in this checkout")
def test_peer_without_a_path_is_an_input_error():
    result = _invoke("--renderers", "opensplat")
    assert result.exit_code == 2 and "--peer opensplat=PATH" in result.output


def test_parse_sizes():
    assert bench.parse_sizes("200x200,640X360") == [(200, 200), (640, 360)]
    with pytest.raises(InputError):
        bench.parse_sizes("0x10")


@pytest.mark.skipif(cpp_disabled(), reason="RECON_NO_CPP=1: no compiled kernels to time")
def test_stage_breakdown_times_each_kernel_of_each_path():
    """cpp-cpu calls every compiled kernel once per forward + backward; cpp-unfused (projection as
    PyTorch ops) never calls the projection kernels; the stages add up to the total."""
    rows = [bench.stage_breakdown(name, 300, 24, 16, repeats=2, threads=1) for name in ("cpp-unfused", "cpp-cpu")]
    unfused, fused = rows
    assert unfused["project_forward_cpu_s"] == 0 and unfused["project_backward_cpu_s"] == 0
    for r in rows:
        for k in ("bin_gaussians", "composite_forward", "composite_backward"):
            assert r[f"{k}_cpu_s"] > 0, (r["renderer"], k)
        parts = sum(r[f"{k}_cpu_s"] for k in bench.KERNELS) + r["outside_kernels_cpu_s"]
        assert parts == pytest.approx(r["total_cpu_s"], rel=1e-9)
    assert fused["project_forward_cpu_s"] > 0 and fused["project_backward_cpu_s"] > 0
    with bench.KernelTimer() as timer:
        bench.renderer("cpp-cpu", None)[0](bench.make_scene(100, 16, 12))
    assert timer.calls == {"project_forward": 1, "bin_gaussians": 1, "composite_forward": 1}
    assert "cpp-cpu" in bench.format_stages(rows) and "outside kernels" in bench.format_stages(rows)

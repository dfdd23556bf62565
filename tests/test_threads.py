"""recon_core.threads: CPUs from affinity and cgroup quota, run.threads, passive OpenMP waits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recon_core import threads
from recon_core.errors import InputError
from recon_core.spec import RunOptions
from recon_core.threads import available_cpus, cgroup_cpu_limit, parse_threads, prefer_passive_waits, resolve_threads, torch_threads

ROOT = Path(__file__).resolve().parents[1]


def _cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc_file = tmp_path / "proc_self_cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def test_cgroup_v2_quota_rounds_down(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert available_cpus({0, 1, 2, 3}, root, proc) == 1
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus({0, 1, 2, 3}, root, proc) == 4


def test_cgroup_v2_limit_of_an_ancestor_group_counts(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/a/b\n", {"a/cpu.max": "200000 100000", "a/b/cpu.max": "max 100000",
                                                  "cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    assert available_cpus(set(range(8)), root, proc) == 2


def test_cgroup_v1_cfs_quota(tmp_path):
    proc_text = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    root, proc = _cgroup(tmp_path, proc_text, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
                                               "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
                                               "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    assert available_cpus(set(range(8)), root, proc) == 3
    assert available_cpus({0, 1}, root, proc) == 2  # the affinity mask is smaller


def test_cgroup_v1_without_quota_and_no_cgroup_at_all(tmp_path):
    root, proc = _cgroup(tmp_path, "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) is None
    empty = tmp_path / "none"
    assert cgroup_cpu_limit(empty, empty / "cgroup") is None
    assert available_cpus({3, 5, 7}, empty, empty / "cgroup") == 3


def test_a_tiny_quota_still_gives_one_thread(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "10000 100000"})
    assert available_cpus({0, 1}, root, proc) == 1


def test_available_cpus_reads_the_affinity_mask_not_cpu_count(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 9, 11}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    empty = tmp_path / "none"
    assert available_cpus(root=empty, proc_cgroup=empty) == 3


@pytest.mark.parametrize("text, expected", [("auto", None), ("AUTO", None), ("3", 3), (" 2 ", 2), (4, 4)])
def test_parse_threads(text, expected):
    assert parse_threads(text) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", 0, True])
def test_parse_threads_rejects(bad):
    with pytest.raises(ValueError):
        parse_threads(bad)


def test_resolve_threads_auto_uses_available_cpus_capped_by_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda *a, **k: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads("auto") == 6
    assert resolve_threads("3") == 3  # an explicit count is taken as given
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads("auto") == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert resolve_threads("auto") == 6


def test_run_threads_option_is_validated():
    assert RunOptions(threads="auto").threads == "auto"
    assert RunOptions(threads="2").threads == "2"
    with pytest.raises(InputError, match="run.threads"):
        RunOptions(threads="0")
    with pytest.raises(InputError, match="run.threads"):
        RunOptions(threads="many")


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    with torch_threads(str(target)) as n:
        assert n == target and torch.get_num_threads() == target
    assert torch.get_num_threads() == before


def test_prefer_passive_waits_keeps_the_users_choice():
    env: dict[str, str] = {}
    prefer_passive_waits(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for given in ({"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "10000"}, {"RECON_OMP_ACTIVE": "1"}):
        env = dict(given)
        prefer_passive_waits(env)
        assert env == given


def test_importing_recon_core_sets_the_policy_before_torch_loads():
    """libgomp reads OMP_WAIT_POLICY when torch is first imported: it must be set by then."""
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not seen: seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import recon_core\n"
        "import recon_core.cameras  # the first module that needs torch\n"
        "print(seen[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RECON_OMP_ACTIVE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"


def test_a_run_uses_run_threads_and_restores_the_count(tmp_path, toy_registry):
    from conftest import write_toy_scene

    from recon_core.pipeline import Pipeline
    from recon_core.resolve import resolve_run
    from recon_core.rundir import RunDir

    data = write_toy_scene(tmp_path / "scene")
    before = torch.get_num_threads()
    target = 3 if before != 3 else 2
    spec = resolve_run(toy_registry, data=data, representation="toy-grid", sets=[f"run.threads={target}"])
    assert spec.to_json()["run"]["threads"] == str(target)
    run_dir = RunDir.create(tmp_path / "run")
    doc = Pipeline(toy_registry, spec, run_dir).run()
    assert torch.get_num_threads() == before
    assert f"with {target} CPU threads" in (run_dir.path / "log.txt").read_text()
    assert doc["timings"]["refine_cpu"] >= 0.0 and "load_cpu" in doc["timings"]


@pytest.mark.parametrize("bad", ["0", "-2", "lots"])
def test_a_bad_run_threads_on_the_command_line_is_an_input_error(tmp_path, toy_registry, bad):
    from conftest import write_toy_scene

    from recon_core.resolve import resolve_run

    data = write_toy_scene(tmp_path / "scene")
    with pytest.raises(InputError, match="run.threads"):
        resolve_run(toy_registry, data=data, representation="toy-grid", sets=[f"run.threads={bad}"])

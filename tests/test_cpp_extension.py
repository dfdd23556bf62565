"""recon_core.cpp_extension: JIT builds that fall back with one warning, and RECON_NO_CPP.

A successful build is exercised by the plugins' kernel tests (test_gaussians_cpu_kernel.py);
here the failure paths, which must never raise.
"""

from __future__ import annotations

import json
import uuid
import warnings

import pytest

from recon_core import cpp_extension
from recon_core.cpp_extension import _attempts, cpp_disabled, load_extension


def _name() -> str:
    return f"recon_test_{uuid.uuid4().hex[:10]}"  # a fresh cache key per test


@pytest.fixture(autouse=True)
def _private_build_dir(tmp_path, monkeypatch):
    """Failed builds leave build folders: keep them out of the user's extension cache."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))


def test_compile_error_warns_once_with_the_reason_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.delenv("RECON_NO_CPP", raising=False)
    src = tmp_path / "bad.cpp"
    src.write_text("int main( {\n")  # no torch headers: fails at once
    name = _name()
    with pytest.warns(RuntimeWarning, match=r"could not build the C\+\+ extension .*bad\.cpp:1.*error.*pure-PyTorch"):
        assert load_extension(name, [src]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_extension(name, [src]) is None  # cached answer, no second warning


def test_missing_source_is_a_warning_not_an_exception(tmp_path, monkeypatch):
    monkeypatch.delenv("RECON_NO_CPP", raising=False)
    with pytest.warns(RuntimeWarning, match="missing source"):
        assert load_extension(_name(), [tmp_path / "nope.cpp"]) is None


@pytest.mark.parametrize("value, disabled", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_recon_no_cpp_disables_builds_silently(tmp_path, monkeypatch, value, disabled):
    monkeypatch.setenv("RECON_NO_CPP", value)
    assert cpp_disabled() is disabled
    if disabled:
        name = _name()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert load_extension(name, [tmp_path / "nope.cpp"]) is None
        assert name not in cpp_extension._cache  # not remembered: unsetting the variable builds


def test_retries_drop_native_tuning_then_openmp():
    tries = _attempts(["-O3", "-march=native", "-ffp-contract=off"], openmp=True)
    assert tries == [
        (["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"], ["-fopenmp"]),
        (["-O3", "-ffp-contract=off", "-fopenmp"], ["-fopenmp"]),
        (["-O3", "-ffp-contract=off"], []),
    ]
    assert _attempts(["-O2"], openmp=False) == [(["-O2"], [])]


# ------------------------------------------------------------------ per-environment build cache


class _FakeTorchBuild:
    """Stands in for torch.utils.cpp_extension.load: 'builds' a Python module in build_directory
    (no compiler needed) and records each call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, name, sources, extra_cflags, extra_ldflags, build_directory, verbose):
        import importlib.util
        from pathlib import Path

        self.calls.append({"name": name, "folder": Path(build_directory), "cflags": list(extra_cflags)})
        library = Path(build_directory) / f"{name}.py"
        text = "".join(Path(s).read_text() for s in sources)
        library.write_text(f"SOURCE = {text!r}\n")
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@pytest.fixture
def fake_build(monkeypatch):
    from torch.utils import cpp_extension as torch_ext

    fake = _FakeTorchBuild()
    monkeypatch.setattr(torch_ext, "load", fake)
    monkeypatch.delenv("RECON_NO_CPP", raising=False)
    return fake


def _key(src, cflags=("-O3",), ldflags=()):
    return cpp_extension.build_key("recon_test_key", [src], list(cflags), list(ldflags))[0]


def test_build_key_changes_with_source_flags_and_environment(tmp_path, monkeypatch):
    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    base = _key(src)
    assert _key(src) == base  # deterministic
    assert _key(src, cflags=("-O2",)) != base
    assert _key(src, ldflags=("-fopenmp",)) != base
    src.write_text("int f() { return 2; }\n")
    edited = _key(src)
    assert edited != base
    real = cpp_extension.build_environment
    for field, value in [("torch", "9.9.9+other"), ("compiler", "clang version 99"), ("cuda", "12.1"),
                         ("python", "cpython-399"), ("torch_cxx11_abi", "False")]:
        monkeypatch.setattr(cpp_extension, "build_environment",
                            lambda native=True, f=field, v=value: {**real(native), f: v})
        assert _key(src) != edited, field
    monkeypatch.setattr(cpp_extension, "build_environment", real)
    assert _key(src) == edited


def test_build_environment_names_torch_python_and_compiler():
    import sys

    import torch

    env = cpp_extension.build_environment(native=True)
    assert env["torch"] == torch.__version__
    assert sys.implementation.cache_tag in env["python"]
    assert env["compiler"] and env["cpu"]
    assert "cpu" not in cpp_extension.build_environment(native=False)


def test_builds_once_then_imports_the_cached_build_and_says_why(tmp_path, fake_build, capsys):
    src = tmp_path / "a.cpp"
    src.write_text("// version 1\n")
    lines: list[str] = []
    first = cpp_extension.build_extension("recon_test_cache", [src], ["-O3"], openmp=False, say=lines.append)
    assert first.compiled and first.module.SOURCE == "// version 1\n"
    assert len(fake_build.calls) == 1 and fake_build.calls[0]["folder"] == first.folder
    assert first.folder.parent == tmp_path / "torch_extensions" / "recon"
    assert len(lines) == 1 and "compiling the C++ extension 'recon_test_cache'" in lines[0] and "first use" in lines[0]
    again = cpp_extension.build_extension("recon_test_cache", [src], ["-O3"], openmp=False, say=lines.append)
    assert not again.compiled and again.module.SOURCE == "// version 1\n" and len(fake_build.calls) == 1
    assert len(lines) == 1  # nothing compiled, nothing said


def test_a_stale_build_is_not_used_after_the_source_changes(tmp_path, fake_build):
    src = tmp_path / "a.cpp"
    src.write_text("// version 1\n")
    old = cpp_extension.build_extension("recon_test_stale", [src], ["-O3"], openmp=False, say=lambda _: None)
    src.write_text("// version 2\n")
    lines: list[str] = []
    new = cpp_extension.build_extension("recon_test_stale", [src], ["-O3"], openmp=False, say=lines.append)
    assert new.compiled and new.folder != old.folder and new.module.SOURCE == "// version 2\n"
    assert "the C++ sources changed since the last build" in lines[0]


def test_an_unfinished_build_is_rebuilt_not_imported(tmp_path, fake_build):
    """A folder holding a module but no recon_build.json (a build killed before it finished)."""
    src = tmp_path / "a.cpp"
    src.write_text("// v\n")
    done = cpp_extension.build_extension("recon_test_partial", [src], ["-O3"], openmp=False, say=lambda _: None)
    (done.folder / "recon_build.json").unlink()
    (done.folder / "recon_test_partial.py").write_text("SOURCE = 'half-written'\n")
    again = cpp_extension.build_extension("recon_test_partial", [src], ["-O3"], openmp=False, say=lambda _: None)
    assert again.compiled and again.module.SOURCE == "// v\n" and len(fake_build.calls) == 2


def test_an_environment_change_rebuilds_and_names_the_change(tmp_path, fake_build, monkeypatch):
    src = tmp_path / "a.cpp"
    src.write_text("// v\n")
    old = cpp_extension.build_extension("recon_test_env", [src], ["-O3"], openmp=False, say=lambda _: None)
    real = cpp_extension.build_environment
    monkeypatch.setattr(cpp_extension, "build_environment", lambda native=True: {**real(native), "torch": "9.9.9"})
    lines: list[str] = []
    new = cpp_extension.build_extension("recon_test_env", [src], ["-O3"], openmp=False, say=lines.append)
    assert new.compiled and new.folder != old.folder
    assert "→ 9.9.9" in lines[0] and "torch" in lines[0]


def test_a_failed_attempt_is_remembered_and_skipped_in_later_processes(tmp_path, monkeypatch):
    from torch.utils import cpp_extension as torch_ext

    monkeypatch.delenv("RECON_NO_CPP", raising=False)
    calls: list[list[str]] = []

    def load(name, sources, extra_cflags, extra_ldflags, build_directory, verbose):
        calls.append(list(extra_cflags))
        if "-march=native" in extra_cflags:
            raise RuntimeError("x.cpp:1:1: error: unsupported -march")
        return _FakeTorchBuild()(name, sources, extra_cflags, extra_ldflags, build_directory, verbose)

    monkeypatch.setattr(torch_ext, "load", load)
    src = tmp_path / "a.cpp"
    src.write_text("// v\n")
    flags = ["-O3", "-march=native"]
    first = cpp_extension.build_extension("recon_test_fail", [src], flags, openmp=False, say=lambda _: None)
    assert first.module is not None and calls == [flags, ["-O3"]]
    second = cpp_extension.build_extension("recon_test_fail", [src], flags, openmp=False, say=lambda _: None)
    assert second.module is not None and not second.compiled and len(calls) == 2  # no retry of -march=native
    third = cpp_extension.build_extension("recon_test_fail", [src], flags, openmp=False, say=lambda _: None,
                                          retry_failed=True)
    assert third.module is not None and len(calls) == 3  # doctor --build tries it again


def test_doctor_build_builds_every_declared_extension(tmp_path, fake_build, monkeypatch):
    from click.testing import CliRunner

    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    src = tmp_path / "d.cpp"
    src.write_text("// doctor\n")
    monkeypatch.setattr(cpp_extension, "_declared", {})
    cpp_extension.declare_extension("recon_test_doctor", [src], ("-O3",), openmp=False)
    cli = make_cli(Registry(entry_points=[]))
    before = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)
    assert before["extensions"] == [{"name": "recon_test_doctor", "built": False, "folder": None, "disabled": False}]
    result = CliRunner().invoke(cli, ["doctor", "--build"])
    assert result.exit_code == 0, result.output
    assert "compiling the C++ extension 'recon_test_doctor'" in result.output and "built in" in result.output
    assert len(fake_build.calls) == 1
    after = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)
    assert after["extensions"][0]["built"] is True and after["extensions"][0]["folder"] == str(fake_build.calls[0]["folder"])
    again = CliRunner().invoke(cli, ["doctor", "--build"])
    assert again.exit_code == 0 and "already built" in again.output and len(fake_build.calls) == 1


def test_doctor_build_failure_is_exit_1_naming_the_extension(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from recon_cli.main import make_cli
    from recon_core.registry import Registry

    monkeypatch.delenv("RECON_NO_CPP", raising=False)
    src = tmp_path / "bad.cpp"
    src.write_text("int main( {\n")
    monkeypatch.setattr(cpp_extension, "_declared", {})
    cpp_extension.declare_extension("recon_test_doctor_bad", [src], ("-O1",), openmp=False)
    result = CliRunner().invoke(make_cli(Registry(entry_points=[])), ["doctor", "--build"])
    assert result.exit_code == 1
    assert "recon_test_doctor_bad" in result.output and "could not be built" in result.output


def test_the_lock_of_a_killed_build_is_removed_but_not_a_live_one(tmp_path, fake_build):
    """torch waits forever on the 'lock' file of a build that was killed; recon removes it
    when the builder process is gone, and leaves a running builder's lock alone."""
    import os
    import platform
    import subprocess
    import sys

    src = tmp_path / "a.cpp"
    src.write_text("// v\n")
    key, _ = cpp_extension.build_key("recon_test_lock", [src], ["-O3"], [])
    folder = cpp_extension.cache_root() / f"recon_test_lock-{key}"
    folder.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / "recon_builder.json").write_text(json.dumps({"pid": int(gone.stdout), "host": platform.node()}))
    (folder / "lock").write_text("")
    cpp_extension._clear_stale_lock(folder)
    assert not (folder / "lock").exists()
    assert json.loads((folder / "recon_builder.json").read_text())["pid"] == os.getpid()
    (folder / "lock").write_text("")  # now held by a live process (this one)
    cpp_extension._clear_stale_lock(folder)
    assert (folder / "lock").exists()

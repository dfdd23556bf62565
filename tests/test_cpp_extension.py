"""recon_core.cpp_extension: JIT builds that fall back with one warning, and RECON_NO_CPP.

A successful build is exercised by the plugins' kernel tests (test_gaussians_cpu_kernel.py);
here the failure paths, which must never raise.
"""

from __future__ import annotations

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

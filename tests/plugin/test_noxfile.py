"""The noxfile refuses bad settings before nox creates or deletes any environment, with one line, no traceback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOX = shutil.which("nox") or str(Path(sys.executable).with_name("nox"))


def nox_list(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("VLLMCOMPAT_")}
    return subprocess.run([NOX, "-f", str(ROOT / "noxfile.py"), "--envdir", str(tmp_path / "envs"), "-l"],
                          capture_output=True, text=True, env={**full, **env}, timeout=120)


@pytest.mark.parametrize("env, message", [
    ({"VLLMCOMPAT_LANE": "cpux"}, "error: unknown lane 'cpux': valid are auto, cpu, cuda"),
    ({"VLLMCOMPAT_TARGET": "/nonexistent"}, "error: VLLMCOMPAT_TARGET=/nonexistent: not a checkout of trl"),
    ({"VLLMCOMPAT_TARGET": "tlr==0.29.1"}, "error: VLLMCOMPAT_TARGET=tlr==0.29.1: the backend is trl, not tlr"),
    ({"VLLMCOMPAT_WHEELHOUSE": "/nonexistent"}, "error: VLLMCOMPAT_WHEELHOUSE=/nonexistent: no wheelhouse there"),
    ({"VLLMCOMPAT_HOST_TORCH": "/nonexistent/python"}, "error: VLLMCOMPAT_HOST_TORCH=/nonexistent/python: no interpreter"),
], ids=["lane", "checkout", "backend-name", "wheelhouse", "host-torch"])
def test_bad_setting_stops_nox_with_one_line(tmp_path, env, message):
    proc = nox_list(tmp_path, **env)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "envs").exists()


def test_malformed_matrix_stops_nox_and_the_doctor(tmp_path):
    bad = tmp_path / "support.toml"
    bad.write_text((ROOT / "matrix" / "support.toml").read_text().replace('"0.11.0", "0.11.1"', '"0.11.x", "0.11.1"', 1))
    proc = nox_list(tmp_path, VLLMCOMPAT_MATRIX=str(bad))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {bad}: [matrix.vllm[1]] '0.11.x' is not a release version (e.g. \"0.11.1\")"
    doctor = subprocess.run([sys.executable, "-m", "pytest_vllmcompat", "doctor"], capture_output=True, text=True,
                            env={**os.environ, "VLLMCOMPAT_MATRIX": str(bad)}, timeout=120)
    assert doctor.returncode == 2
    assert "error: the matrix does not load:" in doctor.stdout


def test_nox_list_describes_each_version(tmp_path):
    proc = nox_list(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "vllm-0.11.1(tf4) [cell] -> vLLM 0.11.1 with transformers 4 and 5 on the" in proc.stdout

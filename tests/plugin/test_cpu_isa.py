"""Whether this CPU executes the installed vllm/_C: a real child loads a stand-in `vllm._C` that dies exactly as an
AVX-512 build does on an AVX2 CPU (SIGILL), loads cleanly, or fails otherwise; the answer is kept per file and host."""

from __future__ import annotations

import json

import pytest

from pytest_vllmcompat.install import cpu_isa, engine_route

DIES = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A `vllm` package on the child's path whose `_C` does what `body` says; the probe skips torch (not here)."""
    package = tmp_path / "site" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    extension = tmp_path / "_C.abi3.so"  # beside, not in, the package: Python would prefer it to _C.py
    extension.write_bytes(b"\x7fELF stand-in: the key is this file's path, size and mtime")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("VLLMCOMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_isa, "PROBE", "import vllm._C")
    cpu_isa.executes.cache_clear()
    yield package, extension
    cpu_isa.executes.cache_clear()


def kept(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "cache" / "host").glob("vllm-c-*.json"))]


def test_a_build_that_dies_with_sigill_is_named_and_kept(fake_vllm, tmp_path, monkeypatch):
    package, extension = fake_vllm
    (package / "_C.py").write_text(DIES)
    why = cpu_isa.cannot_execute(extension)
    assert why is not None and f"cannot execute {extension}" in why
    assert "died with SIGILL (illegal instruction)" in why and "python -c 'import vllm._C'" in why
    assert kept(tmp_path) == [{"executes": False, "extension": str(extension), "probe": "import vllm._C"}]
    # Kept: a later process (cache cleared) asks no child.
    cpu_isa.executes.cache_clear()
    monkeypatch.setattr(cpu_isa, "_measure", lambda extension: pytest.fail("measured again"))
    assert cpu_isa.cannot_execute(extension) == why


def test_a_build_that_loads_is_not_reported(fake_vllm, tmp_path):
    package, extension = fake_vllm
    (package / "_C.py").write_text("LOADED = True\n")
    assert cpu_isa.cannot_execute(extension) is None
    assert kept(tmp_path)[0]["executes"] is True


def test_another_failure_is_not_this_checks_to_judge_and_is_not_kept(fake_vllm, tmp_path):
    package, extension = fake_vllm
    (package / "_C.py").write_text("raise ImportError('libstdc++.so.6: version `CXXABI_1.3.15` not found')\n")
    assert cpu_isa.executes(extension) is None and cpu_isa.cannot_execute(extension) is None
    assert kept(tmp_path) == []


def test_a_cell_whose_build_cannot_execute_says_no_test_can_run(fake_vllm, monkeypatch):
    package, extension = fake_vllm
    (package / "_C.py").write_text(DIES)
    monkeypatch.setattr(engine_route.host, "installed_vllm_extension", lambda: extension)
    why = engine_route.unexecutable("cpu", "vllm-0.11.2(tf4)")
    assert why is not None and why.startswith("vllm-0.11.2(tf4): this CPU (")
    assert "none can run on this host" in why
    assert engine_route.unexecutable("cuda", "vllm-0.11.2(tf4)") is None  # official wheels: not this check's


def test_a_session_whose_build_cannot_execute_skips_every_test_and_says_so(pytester, monkeypatch, tmp_path):
    """End to end in a real pytest process: the plugin finds the installed vllm/_C, its child dies with SIGILL, and
    the tests (which would fail if they ran) are skipped with the reason instead of the process dying."""
    pytester.mkpydir("vllm")
    (pytester.path / "vllm" / "_C.abi3.so").write_bytes(b"\x7fELF stand-in")
    pytester.makepyfile(sigill_on_import=DIES, test_cell="def test_a():\n    assert False\n\ndef test_b():\n"
                        "    assert False\n")
    pytester.makeconftest("from pytest_vllmcompat.install import cpu_isa\ncpu_isa.PROBE = 'import sigill_on_import'\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    monkeypatch.setenv("VLLMCOMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VLLMCOMPAT_LANE", "cpu")
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*vllmcompat: NOTHING WAS CHECKED: this environment: this CPU (*) cannot execute "
                                 "*_C.abi3.so: loading it in a child (python -c 'import sigill_on_import') died with "
                                 "SIGILL*", "SKIPPED [[]2[]] *this environment: this CPU*none can run on this host*"])

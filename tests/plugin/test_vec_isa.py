"""process/vec_isa.py: TORCHINDUCTOR_VEC_ISA_OK is set only when trusting the CPU's flags gives exactly what
torch's own check gives; the check runs once per host key and is read back from its fact file after."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from pytest_vllmcompat.process import vec_isa


@pytest.fixture
def checks(monkeypatch):
    """Stand-in for the check's interpreter (the dev venv has no torch): returns `answer`, counts the runs."""
    state = SimpleNamespace(runs=0, answer={"checked": ["avx2"], "by_flags": ["avx2"]}, returncode=0)

    def run(argv, **kwargs):
        state.runs += 1
        assert argv[1:3] == ["-c", vec_isa.CHECK]
        return subprocess.CompletedProcess(argv, state.returncode, stdout=json.dumps(state.answer) + "\n", stderr="")

    monkeypatch.setattr(vec_isa, "host_key", lambda: "k1")
    monkeypatch.setattr(vec_isa.subprocess, "run", run)
    return state


def test_equal_answers_set_it_to_1_and_the_second_run_reads_the_fact_file(tmp_path, checks):
    assert vec_isa.vec_isa_env(tmp_path, {}) == {"TORCHINDUCTOR_VEC_ISA_OK": "1"}
    assert vec_isa.vec_isa_env(tmp_path, {}) == {"TORCHINDUCTOR_VEC_ISA_OK": "1"}
    assert checks.runs == 1
    assert json.loads((tmp_path / "compile" / "host" / "vec-isa-k1.json").read_text()) == checks.answer


def test_a_damaged_fact_file_is_measured_again_and_replaced(tmp_path, checks):
    folder = tmp_path / "compile" / "host"
    folder.mkdir(parents=True)
    (folder / "vec-isa-k1.json").write_text('["not", "a", "fact"]')
    assert vec_isa.vec_isa_env(tmp_path, {}) == {"TORCHINDUCTOR_VEC_ISA_OK": "1"}
    assert checks.runs == 1 and json.loads((folder / "vec-isa-k1.json").read_text()) == checks.answer


def test_an_isa_the_flags_name_but_the_check_refuses_leaves_it_unset(tmp_path, checks):
    checks.answer = {"checked": ["avx2"], "by_flags": ["avx512", "avx2"]}
    assert vec_isa.vec_isa_env(tmp_path, {}) == {}


def test_no_working_isa_at_all_sets_it_to_0(tmp_path, checks):
    checks.answer = {"checked": [], "by_flags": []}
    assert vec_isa.vec_isa_env(tmp_path, {}) == {"TORCHINDUCTOR_VEC_ISA_OK": "0"}


def test_a_value_already_set_wins_and_nothing_runs(tmp_path, checks):
    assert vec_isa.vec_isa_env(tmp_path, {"TORCHINDUCTOR_VEC_ISA_OK": "0"}) == {}
    assert checks.runs == 0


def test_a_check_that_fails_sets_nothing_and_writes_nothing(tmp_path, checks):
    checks.returncode = 1
    assert vec_isa.vec_isa_env(tmp_path, {}) == {}
    assert not (tmp_path / "compile" / "host").exists()


def test_without_torch_nothing_runs(tmp_path, checks, monkeypatch):
    monkeypatch.setattr(vec_isa, "host_key", lambda: None)
    assert vec_isa.vec_isa_env(tmp_path, {}) == {} and checks.runs == 0


def test_the_key_changes_with_the_cpu_flags(monkeypatch, tmp_path):
    """The real key (torch from the metadata, no import), with /proc/cpuinfo replaced."""
    monkeypatch.setattr(vec_isa.importlib.util, "find_spec", lambda name: SimpleNamespace(origin="/x/torch/__init__.py"))
    monkeypatch.setattr(vec_isa.importlib.metadata, "version", lambda name: "2.9.0")
    keys = []
    for flags in ("flags : fpu avx2", "flags : fpu avx2 avx512f"):
        cpuinfo = tmp_path / f"cpuinfo-{len(keys)}"
        cpuinfo.write_text(f"processor : 0\n{flags}\n")
        monkeypatch.setattr(vec_isa, "CPUINFO", cpuinfo)
        keys.append(vec_isa.host_key())
    assert None not in keys and keys[0] != keys[1]

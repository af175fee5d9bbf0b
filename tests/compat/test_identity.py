"""The cell is what it claims: vLLM presents exactly the upstream identity of the matrix version."""

from importlib import metadata

import pytest


def test_vllm_reports_the_upstream_version(cell):
    import vllm

    assert vllm.__version__ == cell.vllm
    assert metadata.version("vllm") == cell.vllm


def test_only_one_vllm_distribution(cell):
    names = sorted(d.metadata["Name"].lower() for d in metadata.distributions() if d.metadata["Name"].lower().startswith("vllm"))
    assert names == ["vllm"], "a second vllm distribution shadows the first; the backend may read either"


def test_transformers_line_matches_the_cell(cell):
    assert metadata.version("transformers").split(".")[0] == cell.transformers


def test_cpu_lane_runs_on_vllms_cpu_platform(cell):
    if cell.lane != "cpu":
        pytest.skip(f"not applicable: {cell}: the CPU-platform check is for the cpu lane")
    from vllm.platforms import current_platform

    assert current_platform.is_cpu(), f"vLLM selected {type(current_platform).__name__}, not the CPU platform"

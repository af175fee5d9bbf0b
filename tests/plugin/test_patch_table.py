"""The backend's patches as data (pytest_vllmcompat.testing.patches) against the matrix: the same answer in every
cell, so it runs here once instead of in each cell."""

import pytest

from pytest_vllmcompat import matrix
from pytest_vllmcompat.testing.patches import PATCHES, cells_needing


@pytest.mark.parametrize("name", list(PATCHES))
def test_each_patch_is_needed_by_a_declared_cell(name):
    """A patch no cell of the matrix needs any more is removable: this fails and says so (e.g. once the matrix
    drops vLLM 0.10.2 and 0.11.0, DisabledTqdm is removable)."""
    m = matrix.load()
    needing = cells_needing(name, m.vllm_versions, tuple(m.transformers))
    assert needing, (f"{name} patch is removable: no cell of {m.path} has {PATCHES[name].condition_text} "
                     f"(declared: vLLM {', '.join(m.vllm_versions)}; transformers lines {', '.join(m.transformers)})")
    print(f"{name} patch is needed by {len(needing)} cell(s) of {m.path.name}: {', '.join(needing)}")


def test_patch_conditions_select_the_documented_cells():
    m = matrix.load()
    assert cells_needing("DisabledTqdm", m.vllm_versions, tuple(m.transformers)) == [
        "vllm-0.10.2(tf4)", "vllm-0.10.2(tf5)", "vllm-0.11.0(tf4)", "vllm-0.11.0(tf5)"]
    assert cells_needing("get_cached_tokenizer", m.vllm_versions, tuple(m.transformers)) == [
        "vllm-0.10.2(tf5)", "vllm-0.11.0(tf5)", "vllm-0.11.1(tf5)", "vllm-0.11.2(tf5)"]

"""The backend's import-time vLLM patches are active exactly in the cells their conditions name.

Probed in a fresh interpreter (patch_probe.py, shared with test_patch_tripwires.py): vLLM's originals are
captured first, then the backend is imported (which applies its patches), and we look at what each attribute is
afterwards and which module defined it.
"""

import pytest
from patch_probe import USER_LOGGING_LEVEL

from pytest_vllmcompat.testing.patches import PATCH_MODULE, PATCHES

# The probe interpreters start no engine and mostly wait: first in the run, beside the servers' start-ups.
pytestmark = pytest.mark.vllm_first


@pytest.fixture(scope="module")
def default_probe(patch_probes):
    """What each patched name is after `import trl`, and the logging level the backend left."""
    found = patch_probes["default"]["import_order"]
    return {"patched": {name: found[name]["module_attr_replaced"] for name in found},
            "defined_in": {name: found[name]["module_attr_defined_in"] for name in found},
            "VLLM_LOGGING_LEVEL": patch_probes["default"]["VLLM_LOGGING_LEVEL"]}


def expected_patches(cell) -> dict[str, bool]:
    """The conditions the backend documents for each patch, evaluated for this cell's upstream versions."""
    return {name: patch.condition(cell.vllm, cell.transformers) for name, patch in PATCHES.items()}


@pytest.mark.parametrize("name", ["DisabledTqdm", "get_cached_tokenizer"])
def test_patch_active_exactly_where_its_condition_holds(cell, default_probe, name):
    expected = expected_patches(cell)[name]
    assert default_probe["patched"][name] is expected, f"{name} patched={default_probe['patched'][name]}, expected {expected} in {cell}"
    if expected:
        assert default_probe["defined_in"][name] == PATCH_MODULE
    else:
        # vLLM's original untouched (or, where this vLLM no longer has the name, not added by the backend)
        assert default_probe["defined_in"][name] is None or default_probe["defined_in"][name].startswith("vllm.")


def test_logging_patch_sets_error_when_unset(default_probe):
    assert default_probe["VLLM_LOGGING_LEVEL"] == "ERROR"


def test_logging_patch_keeps_the_users_level(patch_probes):
    assert patch_probes["user_level"]["VLLM_LOGGING_LEVEL"] == USER_LOGGING_LEVEL

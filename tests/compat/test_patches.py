"""The backend's import-time vLLM patches are active exactly in the cells their conditions name.

Probed in a fresh interpreter: vLLM's originals are captured first, then the
backend is imported (which applies its patches), and we look at what each
attribute is afterwards and which module defined it.
"""

import textwrap

import pytest

from pytest_vllmcompat.testing.patches import PATCH_MODULE, PATCHES
from pytest_vllmcompat.testing.probe import run_probe

PROBE = textwrap.dedent(
    """
    import importlib, json, os
    TARGETS = {
        "DisabledTqdm": "vllm.model_executor.model_loader.weight_utils",
        "get_cached_tokenizer": "vllm.transformers_utils.tokenizer",
    }
    def module(name):  # a later vLLM may have moved or dropped the module: then the patched name is absent
        try:
            return importlib.import_module(name)
        except ImportError:
            return None
    modules = {name: module(mod) for name, mod in TARGETS.items()}
    originals = {name: getattr(modules[name], name, None) for name in TARGETS}
    import trl  # applies the backend's patches
    now = {name: getattr(modules[name], name, None) for name in TARGETS}
    print(json.dumps({
        "patched": {name: now[name] is not originals[name] for name in now},
        "defined_in": {name: getattr(now[name], "__module__", None) for name in now},
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL"),
    }))
    """
)


def probe(extra_env: dict[str, str]) -> dict:
    return run_probe(PROBE, env=extra_env)


@pytest.fixture(scope="module")
def default_probe():
    return probe({})


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


def test_logging_patch_keeps_the_users_level():
    assert probe({"VLLM_LOGGING_LEVEL": "DEBUG"})["VLLM_LOGGING_LEVEL"] == "DEBUG"

"""Tripwires for the backend's vLLM patches (trl/_compat.py): each one fixes a real bug, exactly where it applies.

For each patch, in every cell, a fresh interpreter (patch_probe.py) shows either
  - the bug + the fix (the patch's condition holds in this cell): vLLM's original, called in a process that never
    imported trl, fails with the bug's exact error; after `import trl` the same call succeeds; or
  - that vLLM's original is fine (the condition does not hold): the call succeeds without trl.
That the engine then builds and generates with the patched code in such a cell is covered by the colocate tests
(test_generation / test_sampling / test_weight_sync build a real engine through the backend in every cell).

Import order: the patches replace module attributes, so a name bound *before* `import trl`
(`from vllm.transformers_utils.tokenizer import get_cached_tokenizer`) keeps vLLM's original, bug included.

The matrix side (a patch that no declared cell needs is removable) gives the same answer in every cell, so it is
one of the plugin's own tests: tests/plugin/test_patch_table.py.
"""

import pytest

from pytest_vllmcompat.testing.patches import PATCH_MODULE, PATCHES

# The probe interpreters start no engine and mostly wait: first in the run, beside the servers' start-ups.
pytestmark = pytest.mark.vllm_first

# The calls (patch_probe.py, one interpreter for both modes): DisabledTqdm with a caller-supplied `disable` (the
# case vLLM PR #28471 fixed; vLLM hands DisabledTqdm to huggingface_hub as `tqdm_class` for Hub downloads, so a
# local model never reaches it); get_cached_tokenizer on an HF tokenizer, as vLLM's get_tokenizer does for every
# engine it builds.


@pytest.fixture(scope="module")
def original_probe(patch_probes):
    """vLLM's originals called before anything imported trl."""
    return patch_probes["default"]["original"]


@pytest.fixture(scope="module")
def import_order_probe(patch_probes):
    """Names bound before `import trl`, then trl, then the same calls through each binding."""
    return patch_probes["default"]["import_order"]


def needed(name: str, cell) -> bool:
    return PATCHES[name].condition(cell.vllm, cell.transformers)


def assert_is_the_bug(name: str, result: dict, where: str) -> None:
    kind, text = PATCHES[name].error
    assert not result["ok"], f"{name}: vLLM's original works {where}; the patch's condition " \
                             f"({PATCHES[name].condition_text}) says it should not"
    assert result["type"] == kind and text in result["message"], \
        f"{name}: expected {kind} containing {text!r} {where}, got {result['type']}: {result['message']}"


@pytest.mark.parametrize("name", list(PATCHES))
def test_without_the_backend_vllms_original_has_the_bug_exactly_where_patched(cell, original_probe, name):
    """(b)/(d): in a process that never imports trl, vLLM's original fails with the bug iff the condition holds."""
    assert original_probe["trl_imported"] is False
    result = original_probe[name]
    if needed(name, cell):
        assert_is_the_bug(name, result, f"in {cell} without trl")
    elif result.get("absent"):
        pass  # this vLLM no longer has the name (e.g. get_cached_tokenizer in 0.12.0): nothing to patch or break
    else:
        assert result["ok"], f"{name}: vLLM's original fails in {cell}, where the backend does not patch it: " \
                             f"{result.get('type')}: {result.get('message')}"


@pytest.mark.parametrize("name", list(PATCHES))
def test_after_importing_the_backend_the_call_works(cell, import_order_probe, name):
    """(c): after `import trl`, the same call through the module attribute succeeds (a later `from ... import`
    reads that same attribute)."""
    result = import_order_probe[name]
    assert result["module_attr_replaced"] is needed(name, cell)
    if result["after_trl"].get("absent"):
        assert not needed(name, cell), f"{name}: the backend should patch it in {cell} but vLLM has no such name"
        return  # and the backend did not add one (module_attr_replaced is False)
    assert result["module_attr_defined_in"] == (PATCH_MODULE if needed(name, cell) else PATCHES[name].module)
    assert result["after_trl"]["ok"], f"{name} fails after import trl in {cell}: " \
                                      f"{result['after_trl'].get('type')}: {result['after_trl'].get('message')}"


@pytest.mark.parametrize("name", list(PATCHES))
def test_a_name_bound_before_importing_the_backend_keeps_vllms_original(cell, import_order_probe, name):
    """`from vllm... import get_cached_tokenizer as early; import trl`: `early` is vLLM's original, so calling it
    still fails where the patch is needed (only code that looks the name up after `import trl` is fixed)."""
    result = import_order_probe[name]
    if needed(name, cell):
        assert result["module_attr_replaced"], f"{name}: not patched in {cell}"
        assert_is_the_bug(name, result["early"], f"in {cell} through a name bound before `import trl`")
    else:
        assert not result["module_attr_replaced"]
        assert result["early"]["ok"] or result["early"].get("absent"), result["early"]

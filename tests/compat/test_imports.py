"""The backend's vLLM-facing modules import in every cell, and its version gates take the branch the cell's
vLLM needs. Pure Python: no engine, so these run in every cell (vLLM 0.10.2 on hosts that cannot load its _C
included)."""

import importlib
import warnings

import pytest
from packaging.version import Version


@pytest.mark.backend
@pytest.mark.parametrize("module, names", [
    ("trl.generation.vllm_generation", ["VLLMGeneration"]),
    ("trl.generation.vllm_client", ["VLLMClient"]),
    ("trl.scripts.vllm_serve", ["main", "make_parser"]),
    ("trl", ["GRPOTrainer", "GRPOConfig", "RLOOTrainer", "RLOOConfig"]),
])
def test_backend_module_imports(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert callable(getattr(mod, name)), f"{module}.{name}"


@pytest.mark.backend
def test_the_servers_llm_worker_exists_where_trl_serves_its_own_app(vllm_backend):
    """TRL's own server runs vLLM in `llm_worker` processes; TRL 1.11+ execs stock `vllm serve` instead."""
    if vllm_backend.server_is_vllm_serve:
        pytest.skip(f"not applicable: TRL {vllm_backend.version}'s `trl vllm-serve` execs stock `vllm serve` (no "
                    "llm_worker): tests/compat/test_vllm_serve_wrapper.py")
    assert callable(importlib.import_module("trl.scripts.vllm_serve").llm_worker)


@pytest.mark.backend
def test_server_binds_the_structured_output_class_the_installed_vllm_provides(cell):
    """`trl.scripts.vllm_serve` imports `GuidedDecodingParams` when vLLM <= 0.10.2, else `StructuredOutputsParams`
    (colocate `VLLMGeneration.generate` applies the same rule at call time; its behaviour is tested in
    test_sampling.py::test_structured_output_regex). The chosen name must exist in this vLLM and be bound to
    vLLM's own class."""
    import vllm.sampling_params as sp

    serve = importlib.import_module("trl.scripts.vllm_serve")
    bound_at_import(serve, ("GuidedDecodingParams", "StructuredOutputsParams"),
                    "test_structured_outputs.py checks the server's structured outputs end to end")
    chosen, other = (("GuidedDecodingParams", "StructuredOutputsParams") if Version(cell.vllm) <= Version("0.10.2")
                     else ("StructuredOutputsParams", "GuidedDecodingParams"))
    assert hasattr(sp, chosen), f"vLLM {cell.vllm} has no vllm.sampling_params.{chosen}"
    assert getattr(serve, chosen) is getattr(sp, chosen)
    assert not hasattr(serve, other)


def bound_at_import(module, names: tuple[str, ...], covered_by: str) -> None:
    """TRL 1.x imports these inside the functions that use them: then there is no import-time binding to check."""
    if not any(hasattr(module, name) for name in names):
        pytest.skip(f"not applicable: this TRL's {module.__name__} binds none of {', '.join(names)} at import "
                    f"(it imports them where they are used); {covered_by}")


@pytest.mark.backend
def test_server_binds_get_open_port_from_where_the_installed_vllm_has_it(cell):
    """vLLM 0.11.1 moved `get_open_port` to `vllm.utils.network_utils`; the server picks by version."""
    serve = importlib.import_module("trl.scripts.vllm_serve")
    bound_at_import(serve, ("get_open_port",), "every server test starts a server that calls it")
    home = "vllm.utils" if Version(cell.vllm) <= Version("0.11.0") else "vllm.utils.network_utils"
    assert serve.get_open_port is importlib.import_module(home).get_open_port


def test_is_vllm_available_does_not_warn_in_this_cell(cell):
    """The installed vLLM (upstream identity) is in range. The range itself, version by version, is a plugin test
    (tests/plugin/test_version_gate.py): its answer depends on the target only."""
    import trl.import_utils as iu

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = iu.is_vllm_available()
    assert available is True
    assert [str(w.message) for w in caught] == []

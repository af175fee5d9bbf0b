"""The shared colocate engine of the trainer runs (pytest_vllmcompat/testing/shared_engine.py), with a stand-in for
vllm.LLM: what it builds, hands back, resets and refuses. The real engine runs in the cells' trainer tests."""

import pytest

from pytest_vllmcompat.testing import shared_engine
from pytest_vllmcompat.testing.shared_engine import SharedEngine, SharedEngineFailed


class Built:
    count = 0

    def __init__(self, **kwargs):
        Built.count += 1
        if kwargs.get("fail"):
            raise RuntimeError("Engine core initialization failed")


@pytest.fixture
def engine(monkeypatch, tmp_path):
    Built.count = 0
    resets = []
    monkeypatch.setattr(shared_engine, "reset_to_checkpoint", lambda llm, checkpoint: resets.append((llm, checkpoint)))
    return SharedEngine(Built, tmp_path), resets


def test_the_same_arguments_get_the_same_engine_back_reset_to_the_checkpoint(engine, tmp_path):
    shared, resets = engine
    first = shared(model="m", seed=0)
    shared.run = 1
    assert shared(model="m", seed=0) is first
    assert (Built.count, shared.built, shared.reused) == (1, 1, 1)
    assert resets == [(first, tmp_path)]  # the first run gets a fresh engine; the next one is reset


def test_other_arguments_are_refused(engine):
    shared, _ = engine
    shared(model="m", seed=0)
    shared.run = 2
    with pytest.raises(RuntimeError, match=r"harness: run 2 asks for another engine .*it needs a process of its own"):
        shared(model="m", seed=1)
    assert Built.count == 1


def test_a_failed_build_is_not_retried_and_names_the_run_that_holds_its_output(engine):
    shared, resets = engine
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        shared(model="m", fail=True)
    shared.run = 3
    with pytest.raises(SharedEngineFailed, match=r"failed to start in run 0: RuntimeError: Engine core") as info:
        shared(model="m", fail=True)
    assert info.value.failed_in == 0 and Built.count == 1 and not resets


def test_a_run_with_an_engine_of_its_own_gets_a_new_one_after_release(engine, tmp_path):
    shared, resets = engine
    first = shared(model="m", fail=False)
    shared.run = 4
    shared.release(tmp_path / "llava")
    second = shared(model="llava")  # other arguments: allowed after release, built fresh (not reset)
    assert second is not first and (Built.count, shared.built, shared.reused) == (2, 2, 0) and not resets
    shared.run = 5
    assert shared(model="llava") is second and resets == [(second, tmp_path / "llava")]  # its own checkpoint


def test_release_clears_a_failed_build(engine, tmp_path):
    shared, _ = engine
    with pytest.raises(RuntimeError):
        shared(model="m", fail=True)
    shared.release(tmp_path)
    shared(model="llava")
    assert shared.built == 1 and shared.failed is None

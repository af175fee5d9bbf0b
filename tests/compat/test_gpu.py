"""What only the CUDA lane can show: NCCL weight sync with a server, colocate memory behaviour, sleep mode,
tensor / data parallel servers.

Every test is marked `gpu(n=...)`: collected in every cell, skipped (before any fixture runs) with a reason
naming the lane and the GPUs it needs unless this is the CUDA lane with that many GPUs visible. Under
pytest-xdist each worker sees one GPU (see README), so the 2- and 3-GPU tests run without -n.

Device layout: servers get GPUs through CUDA_VISIBLE_DEVICES; the trainer side of a weight sync is this
process's cuda:0 (the first visible GPU), the server the next one(s); other servers and the colocate engines
(run in a child process: vLLM's colocate engine always takes the first GPU it sees) use the last GPUs, away
from the session's own engines (colocate_generator / vllm_server, on the first GPU). On a single GPU they
share it with those engines and need the memory the session engines leave free.
Servers load float32 (`--dtype float32`), so their greedy ids equal the transformers fp32 reference; colocate
engines use the checkpoint's dtype (bf16: TRL's colocate mode passes none), so they are compared with
themselves.
"""

from __future__ import annotations

import json

import gpu_helpers as gh
import pytest

from pytest_vllmcompat.backend import SamplingOptions
from pytest_vllmcompat.testing import reference

PROMPTS = ["The quick brown fox", "Hello, world! This is", "0 1 2 3 4 5", "Once upon a time"]
MAX_TOKENS = 16
TRAINER_MEMORY = 0.3  # GRPOConfig / RLOOConfig default vllm_gpu_memory_utilization (colocate)
GiB = 1 << 30
pytestmark = pytest.mark.backend  # every test here imports the backend's vLLM modules


@pytest.fixture(scope="module")
def hf_model(vllm_model_dir):
    return reference.load(str(vllm_model_dir))  # (float32 model on CPU, tokenizer)


@pytest.fixture(scope="module")
def gpus():
    return gh.visible_gpus()


def greedy(client):
    return client.generate(PROMPTS, SamplingOptions.greedy(MAX_TOKENS))


def expected(model_and_tokenizer, prompt_ids):
    model, tokenizer = model_and_tokenizer
    return reference.greedy(model, tokenizer, prompt_ids, MAX_TOKENS)


# --- server mode: weight sync over NCCL ------------------------------------------------------------------------


@pytest.mark.gpu(n=2)
@pytest.mark.vllm_mode("server")
def test_server_weight_sync_over_nccl(vllm_server_factory, vllm_backend, hf_model, gpus, tmp_path):
    """init_communicator / update_named_param (every parameter) / reset_prefix_cache / close_communicator from
    a trainer on GPU 0 to a server on GPU 1: the server then generates what transformers predicts for the new
    weights, and no longer what it generated before."""
    import torch

    model, tokenizer = hf_model
    new_model = gh.perturbed(model)
    with gh.serve(vllm_server_factory, tmp_path, gpus=gpus[1:2]) as server, \
            gh.weight_sync_client(vllm_backend, server) as (client, raw):
        before = greedy(client)
        assert before.completion_ids == expected(hf_model, before.prompt_ids)
        after_expected = expected((new_model, tokenizer), before.prompt_ids)
        assert after_expected != before.completion_ids, "precondition: the perturbation changes greedy predictions"

        raw.init_communicator(device=0)
        trainer = new_model.to("cuda:0")
        raw.update_model_params(trainer)  # update_named_param per parameter, NCCL broadcast from GPU 0
        raw.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        after = greedy(client)
        raw.close_communicator()
        torch.cuda.synchronize()

    assert after.prompt_ids == before.prompt_ids
    assert after.completion_ids == after_expected


@pytest.mark.gpu(n=1)
@pytest.mark.vllm_mode("server")
def test_weight_sync_refused_when_trainer_and_server_share_a_gpu(vllm_server_factory, gpus, tmp_path):
    """Trainer and server on the same GPU: the server's worker raises TRL's RuntimeError (device UUID check in
    WeightSyncWorkerExtension.init_communicator) and the trainer's init_communicator never completes (its HTTP
    call returns at once, then it waits for the NCCL group the server never joins). The user sees this message
    in the server log."""
    from pytest_vllmcompat.process.ports import free_port

    shared = gpus[-1]  # the last GPU: the session's own engines live on the first
    with gh.serve(vllm_server_factory, tmp_path, gpus=[shared]) as server:
        child = gh.start_child("client_init_communicator", shared, tmp_path / "trainer.log",
                               base_url=server.base_url, group_port=free_port("0.0.0.0"))
        try:
            refused = gh.wait_for_log(server, gh.SAME_DEVICE_ERROR, timeout=180)
            log = server.log_path.read_text(errors="replace")
            trainer_finished = child.poll() == 0 and "RESULT " in (tmp_path / "trainer.log").read_text()
        finally:
            gh.stop_child(child)
    assert refused, f"the server did not refuse the shared GPU; log tail:\n{log[-4000:]}"
    assert "RuntimeError: Attempting to use the same CUDA device (UUID: GPU-" in log
    assert ("for multiple distinct roles/ranks within the same communicator. This setup is unsupported and will "
            "likely lead to program hangs or incorrect behavior. Ensure that trainer is using different devices "
            "than vLLM server.") in log
    assert not trainer_finished, "the trainer's init_communicator completed although the server refused"


# --- server mode: tensor and data parallel ---------------------------------------------------------------------


@pytest.mark.gpu(n=2)
@pytest.mark.vllm_mode("server")
def test_server_tensor_parallel_2(vllm_server_factory, vllm_backend, hf_model, gpus, tmp_path):
    """`trl vllm-serve --tensor_parallel_size 2` over two GPUs: world size 2, greedy ids as transformers."""
    import requests

    with gh.serve(vllm_server_factory, tmp_path, gpus=gpus[-2:], extra=("--tensor_parallel_size", "2")) \
            as server, gh.weight_sync_client(vllm_backend, server) as (client, _):
        assert requests.get(f"{server.base_url}/get_world_size/", timeout=10).json() == {"world_size": 2}
        out = greedy(client)
    assert out.completion_ids == expected(hf_model, out.prompt_ids)


@pytest.mark.gpu(n=3)
@pytest.mark.vllm_mode("server")
def test_server_data_parallel_2_with_weight_sync(vllm_server_factory, vllm_backend, hf_model, gpus, tmp_path):
    """`--data_parallel_size 2` on GPUs 1-2 (prompts split across the two engines): greedy ids as transformers;
    a weight sync from the trainer on GPU 0 reaches both engines (every prompt's completion follows the new
    weights)."""
    import requests

    model, tokenizer = hf_model
    new_model = gh.perturbed(model)
    with gh.serve(vllm_server_factory, tmp_path, gpus=gpus[1:3], extra=("--data_parallel_size", "2")) \
            as server, gh.weight_sync_client(vllm_backend, server) as (client, raw):
        assert requests.get(f"{server.base_url}/get_world_size/", timeout=10).json() == {"world_size": 2}
        before = greedy(client)
        assert before.completion_ids == expected(hf_model, before.prompt_ids)
        after_expected = expected((new_model, tokenizer), before.prompt_ids)
        assert after_expected != before.completion_ids, "precondition: the perturbation changes greedy predictions"
        raw.init_communicator(device=0)
        raw.update_model_params(new_model.to("cuda:0"))
        raw.reset_prefix_cache()
        after = greedy(client)
        raw.close_communicator()
    assert after.completion_ids == after_expected


# --- colocate mode: memory and sleep ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colocate_run(vllm_model_dir, gpus):
    """One colocate engine at the trainers' default memory share, in a child on the last visible GPU."""
    return gh.run_child("colocate", gpus[-1], model_dir=str(vllm_model_dir), prompts=PROMPTS,
                        max_tokens=MAX_TOKENS, gpu_memory_utilization=TRAINER_MEMORY)


@pytest.mark.gpu(n=1)
@pytest.mark.vllm_mode("colocate")
def test_colocate_at_trainer_default_gpu_memory_utilization(colocate_run):
    """VLLMGeneration(gpu_memory_utilization=0.3) starts, takes about 30 % of the GPU (weights + activations +
    KV cache), and generates the same greedy ids twice."""
    run = colocate_run
    used = run["free_before"] - run["free_engine"]
    assert 0.2 * run["total"] <= used <= 0.4 * run["total"], (
        f"engine took {used / GiB:.2f} GiB of {run['total'] / GiB:.2f} GiB; expected about {TRAINER_MEMORY:.0%}")
    assert run["first"] == run["second"]
    assert len(run["first"]) == len(PROMPTS)
    assert all(0 < len(ids) <= MAX_TOKENS for ids in run["first"])


@pytest.mark.gpu(n=1)
@pytest.mark.vllm_mode("colocate")
def test_device_memory_released_after_colocate_engine_close(colocate_run):
    """After ColocateGenerator.close() (engine dropped, distributed state destroyed, empty_cache) the device
    memory is back to what it was before the engine, within 2 % of the GPU (CUDA context, NCCL buffers)."""
    run = colocate_run
    leaked = run["free_before"] - run["free_after"]
    assert leaked <= max(0.02 * run["total"], 512 << 20), (
        f"{leaked / GiB:.2f} GiB still held after close (engine had taken "
        f"{(run['free_before'] - run['free_engine']) / GiB:.2f} GiB)")


@pytest.mark.gpu(n=1)
@pytest.mark.vllm_mode("colocate")
def test_colocate_sleep_mode_wakes_and_generates_the_same_greedy_ids(vllm_model_dir, gpus, colocate_run):
    """enable_sleep_mode=True: TRL puts the engine to sleep (level 2) after building it and after each generate;
    asleep it holds little memory; after wake-up + sync_weights it generates the same greedy ids as before
    sleeping and as the same engine without sleep mode."""
    run = gh.run_child("sleep", gpus[-1], model_dir=str(vllm_model_dir), prompts=PROMPTS, max_tokens=MAX_TOKENS,
                       gpu_memory_utilization=TRAINER_MEMORY)
    first, second = run["rounds"]
    assert first == second
    assert first == colocate_run["first"]
    for asleep in (run["free_asleep"], run["free_asleep_again"]):
        held = run["free_before"] - asleep
        assert held < 0.1 * run["total"], f"a sleeping engine still holds {held / GiB:.2f} GiB"


@pytest.mark.gpu(n=1)
@pytest.mark.vllm_mode("colocate")
def test_colocate_asking_for_more_memory_than_free_fails_clearly(vllm_model_dir, gpus):
    """With 10 % of the GPU held by another allocation, VLLMGeneration(gpu_memory_utilization=0.99) fails at
    startup with vLLM's ValueError that names free and requested memory and what to do."""
    run = gh.run_child("colocate_oom", gpus[-1], model_dir=str(vllm_model_dir), hold_fraction=0.1,
                       gpu_memory_utilization=0.99)
    assert run["error_type"] == "ValueError", json.dumps(run)
    assert "on startup is less than desired GPU memory utilization (0.99, " in run["error"]
    assert "Decrease GPU memory utilization or reduce GPU memory used by other processes." in run["error"]

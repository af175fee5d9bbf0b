"""Helpers of tests/compat/test_gpu.py (CUDA lane): extra `trl vllm-serve` servers pinned to GPUs, and colocate
engines in a child process pinned to one GPU.

Why a child process for colocate engines: vLLM's colocate engine (`distributed_executor_backend=
"external_launcher"`) always takes `cuda:LOCAL_RANK`, i.e. the first visible GPU, and a GPU is chosen only
through CUDA_VISIBLE_DEVICES before CUDA initializes. A child also gives each memory measurement a process of
its own, so engines of the session fixtures (colocate_generator / vllm_server) do not blur it.

Run as a script, this module is that child:
    CUDA_VISIBLE_DEVICES=<gpu> python gpu_helpers.py <scenario> '<json arguments>'
and prints one line `RESULT <json>` at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

RESULT_PREFIX = "RESULT "
CHILD_TIMEOUT = 900.0  # seconds: engine startup on a cold GPU runner plus generation
SERVER_ARGS = ("--dtype", "float32")  # float32: equal to the transformers reference
SERVER_MEMORY = 0.3
SAME_DEVICE_ERROR = "Attempting to use the same CUDA device (UUID: "  # TRL's WeightSyncWorkerExtension.init_communicator


def visible_gpus() -> list[str]:
    """Physical ids of the GPUs this process sees, in CUDA order (CUDA_VISIBLE_DEVICES or all of them)."""
    from pytest_vllmcompat import host

    visible = os.environ.get(host.CUDA_VISIBLE_ENV)
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()][: host.gpu_count()]
    return [str(i) for i in range(host.gpu_count())]


@contextlib.contextmanager
def serve(factory, log_dir: Path, *, gpus: list[str], extra: tuple[str, ...] = (), startup_timeout: float = 600.0):
    """`trl vllm-serve` (float32) on a free port with CUDA_VISIBLE_DEVICES=<gpus>, through the plugin's server
    factory (readiness, fatal log lines, log tails in reports); the whole group is stopped on exit."""
    with factory.vllm_serve(name=f"trl vllm-serve (GPU {','.join(gpus)})", extra=(*SERVER_ARGS, *extra),
                            gpu_memory_utilization=SERVER_MEMORY, env={"CUDA_VISIBLE_DEVICES": ",".join(gpus)},
                            startup_timeout=startup_timeout, log_dir=log_dir) as server:
        yield server


@contextlib.contextmanager
def weight_sync_client(backend, server, connection_timeout: float = 60.0):
    """(ServerClient, VLLMClient) with its own NCCL group port. Closes the communicator on exit and removes
    VLLMClient's atexit hook, which would otherwise retry for a minute against the stopped server."""
    import atexit

    from trl.generation.vllm_client import VLLMClient

    from pytest_vllmcompat.backend import ServerClient
    from pytest_vllmcompat.process.ports import free_port

    client = VLLMClient(base_url=server.base_url, group_port=free_port("0.0.0.0"),
                        connection_timeout=connection_timeout)
    try:
        yield ServerClient(backend, client, server.base_url), client
    finally:
        atexit.unregister(client.close_communicator)
        if getattr(client, "communicator", None) is not None and server.alive:  # set by init_communicator only
            client.close_communicator()
        client.session.close()


def perturbed(model, seed: int = 1234, scale: float = 0.5):
    """A copy of `model` whose weights moved by `scale` standard deviations of random noise (fixed seed)."""
    import copy

    import torch

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(other.named_parameters()):
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            std = float(param.std()) if param.numel() > 1 and float(param.std()) > 0 else 1.0
            param.add_(noise.to(param.device) * std * scale)
    return other


def run_child(scenario: str, gpu: str, timeout: float = CHILD_TIMEOUT, **kwargs) -> dict:
    """Run `scenario` in a child pinned to physical GPU `gpu`; its RESULT dict (AssertionError with the output
    tail if it crashed or printed none)."""
    from pytest_vllmcompat.process.childenv import child_env

    env = child_env({"CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run([sys.executable, __file__, scenario, json.dumps(kwargs)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((proc.stdout + "\n" + proc.stderr).splitlines()[-60:])
    raise AssertionError(f"GPU child {scenario!r} on GPU {gpu} exited {proc.returncode} without a result:\n{tail}")


def start_child(scenario: str, gpu: str, log_path: Path, **kwargs) -> subprocess.Popen:
    """Like run_child, but in the background (own process group, output to `log_path`): for a scenario expected
    to block, e.g. the trainer side of a refused weight sync. Stop it with stop_child."""
    from pytest_vllmcompat.process.childenv import child_env

    env = child_env({"CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"})
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, __file__, scenario, json.dumps(kwargs)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def stop_child(proc: subprocess.Popen) -> None:
    from pytest_vllmcompat.process.executor import stop_group

    stop_group(proc, grace=5.0)


def wait_for_log(server, text: str, timeout: float) -> bool:
    """Poll the server's log until it contains `text` (True) or `timeout` seconds pass (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log_path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return False


# --- the child side ---------------------------------------------------------------------------------------------


def _mem() -> tuple[int, int]:
    import torch

    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()  # (free, total) bytes of the device, all processes included


def _greedy(gen, prompts, max_tokens):
    from pytest_vllmcompat.backend import SamplingOptions

    return gen.generate(prompts, SamplingOptions.greedy(max_tokens)).completion_ids


def _release(gen) -> None:
    import gc

    import torch

    gen.close()
    gc.collect()
    torch.cuda.empty_cache()


def child_colocate(model_dir, prompts, max_tokens, gpu_memory_utilization):
    """Colocate engine at `gpu_memory_utilization`: memory before / with engine / after close, greedy twice."""
    from pytest_vllmcompat.backend import Backend

    free_before, total = _mem()
    gen = Backend.load().make_colocate(model_dir, gpu_memory_utilization=gpu_memory_utilization)
    free_engine, _ = _mem()
    first, second = _greedy(gen, prompts, max_tokens), _greedy(gen, prompts, max_tokens)
    _release(gen)
    free_after, _ = _mem()
    return dict(total=total, free_before=free_before, free_engine=free_engine, free_after=free_after,
                first=first, second=second)


def child_sleep(model_dir, prompts, max_tokens, gpu_memory_utilization):
    """Colocate engine with enable_sleep_mode=True, used like the trainers: TRL sleeps it (level 2: weights
    dropped) after building it and after each generate; sync_weights wakes the weights and loads them."""
    from pytest_vllmcompat.backend import Backend

    free_before, total = _mem()
    gen = Backend.load().make_colocate(model_dir, gpu_memory_utilization=gpu_memory_utilization,
                                       enable_sleep_mode=True)
    free_asleep, _ = _mem()
    rounds = []
    for _ in range(2):
        gen.sync_weights()  # wake_up(tags=["weights"]) + load the trainer's weights
        rounds.append(_greedy(gen, prompts, max_tokens))  # wake_up(kv_cache), generate, sleep(level=2)
    free_asleep_again, _ = _mem()
    _release(gen)
    return dict(total=total, free_before=free_before, free_asleep=free_asleep,
                free_asleep_again=free_asleep_again, rounds=rounds)


def child_colocate_oom(model_dir, hold_fraction, gpu_memory_utilization):
    """Hold `hold_fraction` of the GPU in a tensor, then ask a colocate engine for `gpu_memory_utilization`."""
    import torch

    from pytest_vllmcompat.backend import Backend

    free, total = _mem()
    held = torch.empty(int(total * hold_fraction), dtype=torch.uint8, device="cuda")
    free_held, _ = _mem()
    try:
        gen = Backend.load().make_colocate(model_dir, gpu_memory_utilization=gpu_memory_utilization)
    except Exception as exc:  # noqa: BLE001 - the error the user sees is the result
        return dict(total=total, free_held=free_held, error_type=type(exc).__name__, error=str(exc))
    finally:
        del held
    gen.close()
    return dict(total=total, free_held=free_held, error_type=None, error=None)


def child_client_init_communicator(base_url, group_port):
    """The trainer side of weight sync on this process's GPU 0 (blocks when the server refuses)."""
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=base_url, group_port=group_port, connection_timeout=60)
    client.init_communicator(device=0)
    return dict(initialized=getattr(client, "communicator", None) is not None)


SCENARIOS = {
    "colocate": child_colocate,
    "sleep": child_sleep,
    "colocate_oom": child_colocate_oom,
    "client_init_communicator": child_client_init_communicator,
}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](**json.loads(sys.argv[2]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    os._exit(0)  # skip interpreter teardown: vLLM/NCCL atexit hooks must not hang a finished child

"""How the suite starts its trainer children (trainer_run.py next to this file), and the server runs' child.

The server-mode trainer runs share one child, which runs in the background (pytest_vllmcompat/process/
background.py): its fixtures live here and conftest.py makes them visible to every module of the suite, because
the plugin requests `server_trainer_child` at the first engine test (whatever its module), so that the child runs
beside the engine tests. The tests that read its outcomes (test_trainers.py) are marked `vllm_background`: they
run after the engine tests.
"""

import json
import sys
from pathlib import Path

import gpu_helpers as gh
import pytest

from pytest_vllmcompat.process.background import BackgroundChild
from pytest_vllmcompat.process.childenv import child_env

SCRIPT = Path(__file__).with_name("trainer_run.py")
TIMEOUT = 900  # engine start ~40-60 s on 2 busy cores, training 2 steps < 5 s

# grpo-plain names the server by vllm_server_host + vllm_server_port, the others by vllm_server_base_url; it also
# evaluates once with num_generations_eval=2 (test_grpo_server_evaluation_uses_num_generations_eval).
SERVER_RUNS = {"grpo-plain": {"trainer": "grpo", "dataset": "plain", "address": "host-port", "eval": True},
               "grpo-chat": {"trainer": "grpo", "dataset": "chat"},
               "rloo-plain": {"trainer": "rloo", "dataset": "plain"},
               "rloo-chat": {"trainer": "rloo", "dataset": "chat"},
               "grpo-tools": {"trainer": "grpo", "dataset": "chat", "tools": True},
               "grpo-chat-kwargs": {"trainer": "grpo", "dataset": "chat", "chat_template_kwargs": {"greeting": "Hi"}},
               "grpo-rollout-func": {"trainer": "grpo", "dataset": "plain", "rollout": True},
               "grpo-tool-call-history": {"trainer": "grpo", "dataset": "chat-tool-calls"}}
STEPS = 2


def transformers_5() -> bool:
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("transformers")) >= Version("5")


@pytest.fixture(scope="session")
def trainer_server(request, vllmcompat_context, vllm_server, vllm_server_factory, tmp_path_factory):
    """(server, gpu of the trainer): the cell's session server on the CPU lane (the replaced transport changes
    nothing on it); on the CUDA lane a server of its own on the last GPU, the trainer on the first."""
    if vllmcompat_context.lane == "cpu":
        yield vllm_server, None
        return
    gpus = gh.visible_gpus()
    if len(gpus) < 2:
        pytest.skip(f"cuda lane: a server-mode trainer needs 2 GPUs (NCCL refuses trainer and server on one "
                    f"device); this host has {len(gpus)}")
    with gh.serve(vllm_server_factory, tmp_path_factory.mktemp("trainer-server"), gpus=[gpus[-1]]) as server:
        yield server, gpus[0]


class ServerTrainerChild:
    """Every server run of this module in one child process (pytest_vllmcompat.process.background)."""

    def __init__(self, context, model_dir: Path, out: Path):
        self.context, self.model_dir, self.out = context, model_dir, out
        self.wanted = dict(SERVER_RUNS)
        if not transformers_5():
            self.wanted.pop("grpo-tools")  # its test skips (TRL refuses tools below transformers 5)
        self.child: BackgroundChild | None = None
        self.base_url = ""

    def start(self, trainer_server) -> None:
        server, trainer_gpu = trainer_server
        self.base_url = server.base_url
        spec = {"mode": "server", "lane": self.context.lane, "base_url": server.base_url,
                "server_log": str(server.log_path), "model": str(self.model_dir), "out": str(self.out),
                "runs": [{**r, "steps": STEPS} for r in self.wanted.values()]}
        env = child_env({"CUDA_VISIBLE_DEVICES": trainer_gpu} if trainer_gpu is not None else {})
        self.child = BackgroundChild("server-trainers", [sys.executable, str(SCRIPT), json.dumps(spec)],
                                     out_dir=self.out, env=env, timeout=TIMEOUT, cwd=self.out)
        self.child.start()

    def outcomes(self) -> dict:
        """{run name: outcome (summary, skip or error)}, once the child has ended."""
        assert self.child is not None, "start() first"
        done = self.child.wait()
        assert done.returncode == 0, (f"the server-mode trainer runs failed after {done.seconds:.0f} s (exit "
                                      f"{'none: stopped at the ' + str(TIMEOUT) + ' s timeout' if done.timed_out else done.returncode}) "
                                      f"against {self.base_url}:\n{done.stderr[-4000:]}")
        printed = json.loads(done.stdout.strip().splitlines()[-1])
        return {name: {**outcome, "child_seconds": done.seconds, "libc": printed["libc"]}  # imports + every run
                for name, outcome in zip(self.wanted, printed["outcomes"])}

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


@pytest.fixture(scope="session")
def server_trainer_child(request, vllmcompat_context, vllm_model_dir, tmp_path_factory):
    """The server runs' child. On the CPU lane it starts here, and the plugin requests this at the first engine
    test (the tests that wait on it are marked `vllm_background`), so it runs beside the engine tests: it only
    talks HTTP to the session server, and most of its time is TRL's retry backoff (pytest_vllmcompat/process/
    background.py has the measurement). On the CUDA lane it starts when its first test waits: its server has a GPU
    that the engine tests use too."""
    runner = ServerTrainerChild(vllmcompat_context, vllm_model_dir, tmp_path_factory.mktemp("server-trainers"))
    if vllmcompat_context.lane == "cpu":
        runner.start(request.getfixturevalue("trainer_server"))
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def server_trainer_outcomes(server_trainer_child, trainer_server) -> dict:
    """Every server run's outcome: {run name: outcome (summary, skip or error)}."""
    if server_trainer_child.child is None:
        server_trainer_child.start(trainer_server)
    return server_trainer_child.outcomes()

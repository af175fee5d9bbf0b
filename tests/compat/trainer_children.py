"""How the suite starts its trainer children (trainer_run.py next to this file), and those that run in the
background.

On the CPU lane these run in the background (pytest_vllmcompat/process/background.py): the server-mode trainer
runs, from the session server's first user on (once it is ready), in one child and OWN_CHILD_RUNS in a second, and
the colocate run on vLLM's Transformers backend (an engine of its own), beside the engine tests. Their session
fixtures live here and conftest.py makes them visible to every module of the suite, because the plugin requests
them at the first test of their group (whatever its module). The tests that read their outcomes (test_trainers.py)
are marked `vllm_background`: they run after the engine tests. On the CUDA lane each starts
when its test waits: its engine or server takes GPU memory that the engine tests use too.

Why these and no more (measured on 2 cores, vllm-0.11.1(tf4), warm caches, the nox wall time of the whole
cell): nothing in the background 253 and 276 s; the server child 179, 187 and 180 s; the server child and the
Transformers-backend run 158 s; those and the LLaVA run as well 183 s (four processes at once: the foreground's
engines took twice as long); the Transformers-backend run started beside the session server's users instead 185 s
(it slowed the server's start-up, which those tests wait for). Two raw engines started side by side took 25.7 s
against 35.8 s one after the other: two at once pay, more do not. The second server child (OWN_CHILD_RUNS) only
imports and then sleeps in TRL's backoff; the shared colocate child started beside the server's users as well was
tried and reverted (whole-cell benchmark, Intel 2 cores: 87.6 and 87.5 s against 84.3 and 81.6 s without it; the
session colocate engine's start-up went from 4.5 s to 11.0 s once).
"""

import json
import os
import sys
from pathlib import Path

import gpu_helpers as gh
import pytest

from pytest_vllmcompat.process.background import BackgroundChild, Finished
from pytest_vllmcompat.process.childenv import child_env

SCRIPT = Path(__file__).with_name("trainer_run.py")
TIMEOUT = 900  # engine start ~40-60 s on 2 busy cores, training 2 steps < 5 s

# grpo-plain names the server by vllm_server_host + vllm_server_port, the others by vllm_server_base_url; it also
# evaluates once with num_generations_eval=2 (test_grpo_server_evaluation_uses_num_generations_eval).
# The RLOO runs go first: on TRL 0.29.x they end in the declared `logprobs: null` 500 after 12-28 s asleep in
# TRL's retry backoff (a few small requests), so that sleep falls beside the session server's own users, and
# the runs that keep the server busy come later, beside the colocate engine tests.
SERVER_RUNS = {"rloo-plain": {"trainer": "rloo", "dataset": "plain"},
               "rloo-chat": {"trainer": "rloo", "dataset": "chat"},
               "grpo-plain": {"trainer": "grpo", "dataset": "plain", "address": "host-port", "eval": True},
               "grpo-chat": {"trainer": "grpo", "dataset": "chat"},
               "grpo-tools": {"trainer": "grpo", "dataset": "chat", "tools": True},
               "grpo-chat-kwargs": {"trainer": "grpo", "dataset": "chat", "chat_template_kwargs": {"greeting": "Hi"}},
               "grpo-rollout-func": {"trainer": "grpo", "dataset": "plain", "rollout": True},
               "grpo-tool-call-history": {"trainer": "grpo", "dataset": "chat-tool-calls"}}
# On the CPU lane this run has a child of its own, beside the one with the others, so that the two RLOO runs'
# backoff sleeps overlap instead of adding up (measured, vllm-0.11.1(tf4), TRL 0.29.1, Intel 2 cores: one child
# 66.2 s, of which 56 s were the two RLOO runs asleep, each 28 s after a `ConnectionResetError(104)` retry, and the
# GRPO runs 2 s; the cell waited 22.9 s for it at the end). What a failing run quotes of the shared server's log is
# only its own connections' part (trainer_run.log_since), so the two cannot borrow each other's traceback.
OWN_CHILD_RUNS = ("rloo-chat",)
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
    """Every server run of this module in one child process (pytest_vllmcompat.process.background); on the CPU lane
    OWN_CHILD_RUNS in a second one, at the same time (the session server serves both; on the CUDA lane each run
    needs the trainer's GPU and the server's NCCL group, one run at a time)."""

    def __init__(self, context, model_dir: Path, out: Path):
        self.context, self.model_dir, self.out = context, model_dir, out
        self.wanted = dict(SERVER_RUNS)
        if not transformers_5():
            self.wanted.pop("grpo-tools")  # its test skips (TRL refuses tools below transformers 5)
        own = [name for name in OWN_CHILD_RUNS if name in self.wanted] if context.lane == "cpu" else []
        # [(child name, its runs)]: the child's output files and its runs' folder are named after it
        self.groups = [("server-trainers", [name for name in self.wanted if name not in own])]
        self.groups += [(f"server-trainers-{name}", [name]) for name in own]
        self.children: list[BackgroundChild] = []
        self.base_url = ""

    @property
    def started(self) -> bool:
        return bool(self.children)

    def start(self, trainer_server) -> None:
        server, trainer_gpu = trainer_server
        self.base_url = server.base_url
        env = child_env({"CUDA_VISIBLE_DEVICES": trainer_gpu} if trainer_gpu is not None else {})
        for name, runs in self.groups:
            out = self.out / name
            out.mkdir()
            spec = {"mode": "server", "lane": self.context.lane, "base_url": server.base_url,
                    "server_log": str(server.log_path), "model": str(self.model_dir), "out": str(out),
                    "runs": [{**self.wanted[run], "steps": STEPS} for run in runs]}
            child = trainer_child(name, spec, out, env)
            child.start()
            self.children.append(child)

    def outcomes(self) -> dict:
        """{run name: outcome (summary, skip or error)}, once the children have ended."""
        assert self.children, "start() first"
        outcomes = {}
        for (_, runs), child in zip(self.groups, self.children):
            done = child.wait()
            printed = last_line(done, f"the server-mode trainer runs {runs} against {self.base_url}")
            outcomes.update({run: {**outcome, "child_seconds": done.seconds, "libc": printed["libc"]}  # imports + runs
                             for run, outcome in zip(runs, printed["outcomes"])})
        return {name: outcomes[name] for name in self.wanted}

    def stop(self) -> None:
        for child in self.children:
            child.stop()


@pytest.fixture(scope="session")
def server_trainer_child(request, vllmcompat_context, vllm_model_dir, tmp_path_factory):
    """The server runs' child. On the CPU lane it starts here, and the plugin requests this at the session
    server's first user (the tests that wait on it are marked `vllm_background(..., beside="server")`), once that
    server is ready, so it runs beside the server's users and the engine tests: it only talks HTTP to the session
    server, and most of its time is TRL's retry backoff (pytest_vllmcompat/process/background.py has the
    measurement). On the CUDA lane it starts when its first test waits: its server has a GPU that the engine
    tests use too."""
    runner = ServerTrainerChild(vllmcompat_context, vllm_model_dir, tmp_path_factory.mktemp("server-trainers"))
    if vllmcompat_context.lane == "cpu":
        runner.start(request.getfixturevalue("trainer_server"))
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def server_trainer_outcomes(server_trainer_child, trainer_server) -> dict:
    """Every server run's outcome: {run name: outcome (summary, skip or error)}."""
    if not server_trainer_child.started:
        server_trainer_child.start(trainer_server)
    return server_trainer_child.outcomes()


def colocate_gpu(context) -> str | None:
    """The GPU a colocate trainer run gets on the CUDA lane (trainer and engine share it, as in a user's run);
    None on the CPU lane."""
    if context.lane == "cpu":
        return None
    gpus = gh.visible_gpus()
    if not gpus:
        pytest.fail("cuda lane, but no GPU is visible to this process", pytrace=False)
    return gpus[-1]


def trainer_env(gpu: str | None):
    """A colocate trainer child's environment: the CPU engine's KV cache size, or the GPU it gets."""
    return child_env({"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                      **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})})


def logged_errors(stdout: str) -> str:
    """vLLM logs some errors (a model module that fails to import) to stdout, not stderr: those lines."""
    logged = "\n".join(line for line in stdout.splitlines() if "Error" in line)[-2000:]
    return f"\n--- errors it logged to stdout ---\n{logged}" if logged else ""


def trainer_child(name: str, spec: dict, out: Path, env) -> BackgroundChild:
    """trainer_run.py on `spec`, in `out`, not started yet: the one way the suite launches a trainer child."""
    return BackgroundChild(name, [sys.executable, str(SCRIPT), json.dumps(spec)], out_dir=out, env=env,
                           timeout=TIMEOUT, cwd=out)


def last_line(done: Finished, what: str) -> dict:
    """The JSON a trainer child printed last; `what` failed (exit code or timeout, its stderr's tail, the errors
    vLLM logged to stdout) unless it exited 0."""
    exit_ = f"none: stopped at the {TIMEOUT} s timeout" if done.timed_out else done.returncode
    assert done.returncode == 0, (f"{what} failed after {done.seconds:.0f} s (exit {exit_}):\n"
                                  f"{done.stderr[-4000:]}" + logged_errors(done.stdout))
    return json.loads(done.stdout.strip().splitlines()[-1])


class TrainerRun:
    """One colocate run (trainer_run.py's single-run form) in a child of its own; `gpu`: its CUDA device (the
    CUDA lane), else CPU. `summary()` waits for it: the run's summary, a skip as the run reported it, or a
    failure with its exit code, the tail of its stderr and the errors vLLM logged to stdout."""

    def __init__(self, spec: dict, out: Path, gpu: str | None):
        self.what = f"{spec['trainer']} ({spec['dataset']})"
        self.spec = {**spec, "out": str(out / "out"), "lane": "cuda" if gpu is not None else "cpu"}
        self.child = trainer_child(f"{spec['trainer']}-{spec['dataset']}", self.spec, out, trainer_env(gpu))

    def start(self) -> "TrainerRun":
        if not self.child.started:
            self.child.start()
        return self

    def summary(self) -> dict:
        done = self.start().child.wait()
        summary = last_line(done, self.what)
        if "skip" in summary:
            pytest.skip(summary["skip"])
        print(json.dumps({**summary, "wall_seconds": done.seconds}))
        return summary

    def stop(self) -> None:
        self.child.stop()


TRANSFORMERS_IMPL = {"model_impl": "transformers"}  # the setting test_trainer_colocate_with_the_transformers_... checks


def background_run(context, spec: dict, tmp_path_factory):
    """A TrainerRun started now on the CPU lane (the plugin requests these fixtures at the first engine test), when
    its test waits on the CUDA lane; stopped at session end."""
    run = TrainerRun(spec, tmp_path_factory.mktemp(f"{spec['trainer']}-{spec['dataset']}"), colocate_gpu(context))
    if context.lane == "cpu":
        run.start()
    yield run
    run.stop()


@pytest.fixture(scope="session")
def transformers_impl_run(vllmcompat_context, vllm_engine_host, vllm_model_dir, tmp_path_factory):
    """GRPO colocate on plain prompts with `vllm_model_impl="transformers"`: an engine of its own."""
    yield from background_run(vllmcompat_context, {"trainer": "grpo", "dataset": "plain", "model": str(vllm_model_dir),
                                                   "steps": 2, **TRANSFORMERS_IMPL}, tmp_path_factory)

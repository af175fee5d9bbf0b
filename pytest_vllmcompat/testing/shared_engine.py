"""One colocate engine for several trainer runs in one process (trainer_run.py's colocate runs): never start an
engine twice for the same configuration.

TRL's VLLMGeneration builds its engine with `LLM(...)` (the name trl/generation/vllm_generation.py imports from
vllm). `share_engine()` replaces that one name by a `SharedEngine`: the first call builds the real engine; a later
call with the same arguments gets the same engine back, reset to the checkpoint's weights (the previous run
trained it), so each run starts where a fresh engine would. A call with other arguments is refused: the runs that
share must ask for the same engine (the tests check its configuration), else they need a process of their own.
If the build fails, every later run gets that failure again, naming the run whose report holds its output.
A run that wants an engine of its own (another model) in the same process asks for it first: `release(checkpoint)`
drops the engine the earlier runs shared, and its next call builds a new one. That saves the run a fresh
interpreter (torch, transformers, vLLM and TRL imported again: 12-16 CPU seconds on these CPUs), and no
configuration is built twice as long as the runs of one engine come one after the other.
What stays TRL's own: every argument it chooses, every generate, every weight sync.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SharedEngineFailed(RuntimeError):
    """The shared engine could not be built in run `failed_in`."""

    def __init__(self, failed_in: int, error: BaseException):
        super().__init__(f"the engine these runs share failed to start in run {failed_in}: "
                         f"{type(error).__name__}: {error}")
        self.failed_in = failed_in


class SharedEngine:
    def __init__(self, real: Any, checkpoint: Path):
        self.real, self.checkpoint = real, checkpoint
        self.arguments: tuple[tuple, dict] | None = None
        self.llm: Any = None
        self.failed: SharedEngineFailed | None = None
        self.built = self.reused = 0
        self.run = 0  # the run now asking (set by the caller before each run)

    def release(self, checkpoint: Path) -> None:
        """The next call builds a new engine (for a run on `checkpoint`); the shared one is dropped (its memory goes
        with the last reference: the finished trainers are already collected)."""
        self.checkpoint, self.arguments, self.llm, self.failed = checkpoint, None, None, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.arguments is None:
            self.arguments = (args, kwargs)
            try:
                self.llm = self.real(*args, **kwargs)
            except BaseException as exc:
                self.failed = SharedEngineFailed(self.run, exc)
                raise
            self.built += 1
            return self.llm
        if (args, kwargs) != self.arguments:
            raise RuntimeError(f"harness: run {self.run} asks for another engine than the one these runs share "
                               f"({kwargs} != {self.arguments[1]}): it needs a process of its own")
        if self.failed is not None:
            raise self.failed
        reset_to_checkpoint(self.llm, self.checkpoint)
        self.reused += 1
        return self.llm


def reset_to_checkpoint(llm: Any, checkpoint: Path) -> None:
    """Load the checkpoint's weights into the running engine (as TRL's sync does: the model runner's
    load_weights, HF names) and drop its prefix cache."""
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(checkpoint.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    model.load_weights(weights.items())
    llm.reset_prefix_cache()


def share_engine(checkpoint: Path) -> SharedEngine:
    """Install the shared engine where TRL's VLLMGeneration looks `LLM` up."""
    from trl.generation import vllm_generation

    if not hasattr(vllm_generation, "LLM"):
        raise RuntimeError("harness: trl.generation.vllm_generation has no module-level LLM to share (this TRL "
                           "builds its engine elsewhere): run each colocate trainer in a process of its own")
    shared = SharedEngine(vllm_generation.LLM, checkpoint)
    vllm_generation.LLM = shared
    return shared

"""Thin adapter over TRL's vLLM generation API, so tests are written once.

Covers TRL 0.28.0, 0.29.0, 0.29.1 and local checkouts. The adapter is chosen by feature detection
(signatures of `VLLMGeneration` / `VLLMClient`), not by version number:

  VLLMGeneration.generate(prompts, num_generations)          text/chat prompts       (0.28.0, 0.29.0)
  VLLMGeneration.generate(prompts, images, num_generations)  token-id prompts        (0.29.1)
  returns (prompt_ids, completion_ids, logprobs, extra)       logprobs[i][t] = float  (0.28.0)
  returns (..., logprobs, logprob_token_ids, extra)           logprobs[i][t] = [rank-sorted floats] (0.29.x)
  VLLMGeneration(logprobs=...), VLLMClient.generate(logprobs=...)  only 0.29.x

Nothing heavy is imported at module import: torch/trl/vllm/transformers are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

# Constructor arguments of VLLMGeneration this adapter relies on.
_REQUIRED_INIT = ("model", "accelerator", "is_fsdp_enabled", "processing_class", "mode", "max_model_length",
                  "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length",
                  "generation_kwargs", "structured_outputs_regex")
_REQUIRED_CLIENT = ("prompts", "n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens",
                    "structured_outputs_regex", "generation_kwargs")


class BackendIncompatible(RuntimeError):
    """No adapter fits the installed TRL (the message names the version, its location and what is missing)."""


class Unsupported(RuntimeError):
    """This TRL release lacks an optional feature the test asked for (e.g. `logprobs != 0` on 0.28.0)."""


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling for one call. `temperature=0.0` is greedy: TRL passes it to vLLM's `SamplingParams` unchanged, which
    then ignores top_p/top_k/min_p and requires n == 1 *per request*. Colocate mode always sends n=1 (it repeats the
    prompt), so greedy n>1 works there; server mode sends n and the server answers 500 (`n must be 1 when using
    greedy sampling`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    logprobs: int | None = 0  # 0: sampled token only; N: top-N (+ sampled); None: none. TRL 0.28.0 supports only 0.
    structured_outputs_regex: str | None = None
    generation_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra vLLM SamplingParams (seed, ignore_eos)

    @classmethod
    def greedy(cls, max_tokens: int = 16, **kw: Any) -> SamplingOptions:
        return cls(max_tokens=max_tokens, temperature=0.0, **kw)

    def replace(self, **kw: Any) -> SamplingOptions:
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class Generation:
    """One row per completion (prompt i's n completions are consecutive rows)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float | None]] | None  # logprob of the sampled token at each position (all releases)
    top_logprobs: list[list[list[float | None]]] | None  # rank-sorted, as TRL 0.29+ returns them; None on 0.28.0
    logprob_token_ids: list[list[list[int]]] | None  # token ids matching top_logprobs; None on 0.28.0


def _is_chat(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)


def _is_ids(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], int)


def _rows(xs) -> list[list[int]]:
    return [[int(t) for t in x] for x in xs]


def _normalize(prompt_ids, completion_ids, logprobs, logprob_token_ids) -> Generation:
    completion_ids = _rows(completion_ids)
    if logprobs is None:
        sampled = top = None
    elif logprob_token_ids is None:  # 0.28.0: already one float per position
        sampled, top = [list(r) for r in logprobs], None
    else:  # 0.29+: rank-sorted [num_logprobs] per position; the sampled token is always among them
        top = [[list(p) for p in r] for r in logprobs]
        sampled = [[lps[ids.index(tok)] if tok in ids else None for tok, lps, ids in zip(c, r, i)]
                   for c, r, i in zip(completion_ids, top, logprob_token_ids)]
    ids = None if logprob_token_ids is None else [[list(p) for p in r] for r in logprob_token_ids]
    return Generation(_rows(prompt_ids), completion_ids, sampled, top, ids)


def _rendezvous_port() -> int:
    """Free port for the colocate engine's TCPStore (MASTER_PORT), below the ephemeral range if possible: a bind(0)
    port was taken by another process between probe and use (EADDRINUSE) on a busy host."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(50 if low > 12000 else 0):
        port = random.randint(10000, low - 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    from .ports import free_port

    return free_port("127.0.0.1")


def _teardown_distributed() -> None:
    gc.collect()
    try:  # vLLM's own teardown: also gc.unfreeze()s (vLLM may gc.freeze() after start-up) and empties caches
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except ImportError:
            pass
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()
    if torch.cuda.is_available():  # give the freed engine memory back to the driver (cuda lane)
        torch.cuda.empty_cache()


# Log lines of `trl vllm-serve` that mean it will never answer /health/ although its main process lives on:
# its LLM worker (a multiprocessing.Process) died, or vLLM's engine core failed to start.
SERVE_FATAL_LOG_PATTERNS = (
    r"^Process \S+-\d+:$",  # multiprocessing's header before the traceback of a worker that raised
    r"EngineCore failed to start",
    r"Engine core initialization failed",
)


def serve_argv(trl_location: str, model_path: str, *, host: str = "127.0.0.1", port: int,
               max_model_len: int | None = 512, extra: Sequence[str] = ()) -> list[str]:
    """argv of `trl vllm-serve` for the trl package at `trl_location` (needs no import of trl, so the server can
    be started before the backend is loaded): the `trl` console script next to sys.executable (what users run)
    when that trl is installed in this environment, else (a checkout on sys.path) the same entry point
    `trl.cli:main` via `python -c`. No --enforce_eager: colocate mode cannot set it, so both modes run the same
    engine config."""
    script = os.path.join(os.path.dirname(sys.executable), "trl")
    if trl_location.startswith(sys.prefix + os.sep) and os.access(script, os.X_OK):
        cmd = [script]
    else:  # e.g. a checkout put on sys.path: make the child import this same trl
        cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(trl_location)!r}); "
               "sys.argv[0] = 'trl'; from trl.cli import main; sys.exit(main())"]
    argv = cmd + ["vllm-serve", "--model", str(model_path), "--host", host, "--port", str(port)]
    if max_model_len is not None:
        argv += ["--max_model_len", str(max_model_len)]
    return argv + [str(a) for a in extra]


@dataclass(frozen=True)
class Backend:
    name: str
    version: str
    location: str  # directory of the imported trl package
    token_id_prompts: bool  # VLLMGeneration.generate(prompts: list[list[int]], images, num_generations)
    init_params: frozenset  # VLLMGeneration.__init__ parameter names
    client_params: frozenset  # VLLMClient.generate parameter names

    @property
    def supports_logprobs_option(self) -> bool:
        return "logprobs" in self.init_params

    @classmethod
    def load(cls) -> Backend:
        """Import trl (which applies its import-time patches) and pick the adapter by feature detection."""
        import trl

        version, location = getattr(trl, "__version__", "unknown"), os.path.dirname(trl.__file__)
        where = f"TRL {version} ({location})"
        try:
            from trl.generation.vllm_client import VLLMClient
            from trl.generation.vllm_generation import VLLMGeneration
        except ImportError as exc:
            raise BackendIncompatible(
                f"{where}: cannot import trl.generation.vllm_generation.VLLMGeneration / "
                f"trl.generation.vllm_client.VLLMClient ({type(exc).__name__}: {exc}); this harness needs the "
                "VLLMGeneration API that TRL introduced in 0.28.0") from exc
        init = frozenset(inspect.signature(VLLMGeneration.__init__).parameters)
        gen = list(inspect.signature(VLLMGeneration.generate).parameters)
        client = frozenset(inspect.signature(VLLMClient.generate).parameters)
        missing = [f"VLLMGeneration.__init__({p}=...)" for p in _REQUIRED_INIT if p not in init]
        missing += [f"VLLMGeneration.generate({p}=...)" for p in ("prompts", "num_generations") if p not in gen]
        missing += [f"VLLMGeneration.{m}()" for m in ("sync_weights",) if not hasattr(VLLMGeneration, m)]
        missing += [f"VLLMClient.generate({p}=...)" for p in _REQUIRED_CLIENT if p not in client]
        if missing:
            raise BackendIncompatible(
                f"{where}: no adapter fits; missing {', '.join(missing)}. Seen signatures: "
                f"VLLMGeneration.generate{inspect.signature(VLLMGeneration.generate)}, "
                f"VLLMClient.generate{inspect.signature(VLLMClient.generate)}")
        token_ids = "images" in gen and gen.index("images") < gen.index("num_generations")
        return cls("trl", version, location, token_ids, init, client)

    def make_colocate(self, model_path: str, *, max_model_length: int = 512, sampling: SamplingOptions | None = None,
                      **vllm_generation_kwargs: Any) -> ColocateGenerator:
        """HF model (float32, CPU) + tokenizer + Accelerator + VLLMGeneration(mode="colocate").

        Extra keyword arguments go to VLLMGeneration (e.g. gpu_memory_utilization, max_num_seqs, model_impl);
        ones this release does not accept raise Unsupported."""
        import torch
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl.generation.vllm_generation import VLLMGeneration

        unknown = sorted(set(vllm_generation_kwargs) - self.init_params)
        if unknown:
            raise Unsupported(f"TRL {self.version}: VLLMGeneration does not accept {unknown}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).to(device="cpu", dtype=torch.float32)
        accelerator = Accelerator(cpu=True)
        for attempt in range(3):
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                # TRL's ensure_master_addr_port() keeps existing values: give each engine a fresh rendezvous port.
                os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(_rendezvous_port())
            try:
                vg = VLLMGeneration(model, accelerator, is_fsdp_enabled=False, processing_class=tokenizer,
                                    mode="colocate", max_model_length=max_model_length, **vllm_generation_kwargs)
            except Exception as exc:  # the port was taken between probe and bind: retry with a new one
                if attempt == 2 or "EADDRINUSE" not in str(exc):
                    raise
                _teardown_distributed()
            else:
                return ColocateGenerator(self, vg, sampling or SamplingOptions())

    def serve_argv(self, model_path: str, *, host: str = "127.0.0.1", port: int, max_model_len: int | None = 512,
                   extra: Sequence[str] = ()) -> list[str]:
        return serve_argv(self.location, model_path, host=host, port=port, max_model_len=max_model_len, extra=extra)

    def make_client(self, base_url: str, connection_timeout: float = 0.0) -> ServerClient:
        from trl.generation.vllm_client import VLLMClient

        from .ports import free_port

        kw: dict[str, Any] = {}
        if "group_port" in inspect.signature(VLLMClient.__init__).parameters:
            # The weight-sync group's port (init_communicator) defaults to a fixed 51216 in TRL: concurrent
            # clients (xdist workers, parallel runs) would collide on it, so give each client a free one.
            kw["group_port"] = free_port()
        return ServerClient(self, VLLMClient(base_url=base_url, connection_timeout=connection_timeout, **kw), base_url)

    def _check_logprobs(self, sampling: SamplingOptions, params: frozenset) -> None:
        if "logprobs" not in params and sampling.logprobs != 0:
            raise Unsupported(f"TRL {self.version}: logprobs={sampling.logprobs!r} is not supported "
                              "(this release always returns the sampled token's logprob only)")


class ColocateGenerator:
    def __init__(self, backend: Backend, vllm_generation: Any, sampling: SamplingOptions):
        self.backend, self.vllm_generation, self.sampling = backend, vllm_generation, sampling
        self.model, self.tokenizer = vllm_generation.model, vllm_generation.processing_class

    @property
    def llm(self):
        return self.vllm_generation.llm

    def _prompt_input(self, prompt: Any) -> Any:
        if self.backend.token_id_prompts:  # tokenized as TRL's GRPOTrainer._tokenize_prompts does
            if isinstance(prompt, str):
                return self.tokenizer(text=prompt)["input_ids"]
            if _is_chat(prompt):  # return_dict=True as TRL does: transformers 5 returns a BatchEncoding by default
                encoded = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                             return_dict=True)
                return [int(t) for t in encoded["input_ids"]]
            return [int(t) for t in prompt]
        # Text releases: strings are tokenized by vLLM, chats go to LLM.chat; token ids as a vLLM TokensPrompt.
        return {"prompt_token_ids": [int(t) for t in prompt]} if _is_ids(prompt) else prompt

    def generate(self, prompts: Sequence[Any], sampling: SamplingOptions | None = None) -> Generation:
        """prompts: strings, chat conversations (lists of messages) or token-id lists (one kind per call)."""
        s = sampling or self.sampling
        b, vg = self.backend, self.vllm_generation
        b._check_logprobs(s, b.init_params)
        vg.temperature, vg.top_p, vg.top_k, vg.min_p = s.temperature, s.top_p, s.top_k, s.min_p
        vg.repetition_penalty, vg.max_completion_length = s.repetition_penalty, s.max_tokens
        vg.structured_outputs_regex, vg.generation_kwargs = s.structured_outputs_regex, dict(s.generation_kwargs)
        if b.supports_logprobs_option:
            vg.logprobs = s.logprobs
        # Like the trainers: each prompt repeated n times; colocate generates with n=1 per row.
        rows = [self._prompt_input(p) for p in prompts for _ in range(s.n)]
        if b.token_id_prompts:
            out = vg.generate(rows, None, num_generations=s.n)
        else:
            out = vg.generate(rows, num_generations=s.n)
        if len(out) == 5:
            prompt_ids, completion_ids, logprobs, logprob_ids, _ = out
        elif len(out) == 4:
            (prompt_ids, completion_ids, logprobs, _), logprob_ids = out, None
        else:
            raise BackendIncompatible(f"TRL {b.version}: VLLMGeneration.generate returned a {len(out)}-tuple")
        return _normalize(prompt_ids, completion_ids, logprobs, logprob_ids)

    def sync_weights(self) -> None:
        self.vllm_generation.sync_weights()

    def close(self) -> None:
        """Free the engine and the torch.distributed state it created, so another engine can be built."""
        vg, self.vllm_generation = self.vllm_generation, None
        llm = getattr(vg, "llm", None) if vg is not None else None
        if llm is not None:
            vg.llm = None
            # Shut the engine core down explicitly (executor, worker, KV cache) instead of relying on the last
            # reference going away: a traceback or a test may still hold the LLM. In-process with colocate's
            # external_launcher executor; best effort, attribute names differ between vLLM releases.
            shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:
                    pass
        del vg, llm
        _teardown_distributed()


class ServerClient:
    def __init__(self, backend: Backend, client: Any, base_url: str):
        self.backend, self.client, self.base_url = backend, client, base_url.rstrip("/")

    def generate(self, prompts: Sequence[Any], sampling: SamplingOptions | None = None) -> Generation:
        """Strings or token-id lists go to POST /generate/, chat conversations to POST /chat/."""
        s, b = sampling or SamplingOptions(), self.backend
        prompts = list(prompts)
        chat = _is_chat(prompts[0])
        kw = dict(n=s.n, repetition_penalty=s.repetition_penalty, temperature=s.temperature, top_p=s.top_p,
                  top_k=s.top_k, min_p=s.min_p, max_tokens=s.max_tokens,
                  structured_outputs_regex=s.structured_outputs_regex, generation_kwargs=dict(s.generation_kwargs))
        b._check_logprobs(s, b.client_params)
        if "logprobs" in b.client_params:
            kw["logprobs"] = s.logprobs
        if chat:
            out = self.client.chat(messages=prompts, **kw)
        else:
            if _is_ids(prompts[0]):
                if not b.token_id_prompts:
                    raise Unsupported(f"TRL {b.version}: `trl vllm-serve` /generate/ takes text prompts only")
                prompts = [[int(t) for t in p] for p in prompts]
            out = self.client.generate(prompts=prompts, **kw)
        # The server returns one prompt_ids row per prompt; repeat it per completion like VLLMGeneration does.
        prompt_ids = [ids for ids in out["prompt_ids"] for _ in range(s.n)]
        return _normalize(prompt_ids, out["completion_ids"], out.get("logprobs"), out.get("logprob_token_ids"))

    def reset_prefix_cache(self) -> None:
        self.client.reset_prefix_cache()

    def health(self, timeout: float = 5.0) -> int:
        import requests

        with requests.Session() as http:
            http.trust_env = False
            return http.get(f"{self.base_url}/health/", timeout=timeout).status_code

    def sync_weights(self) -> None:
        raise Unsupported("server-mode weight sync (init_communicator/update_named_param) needs CUDA + NCCL")

    def close(self) -> None:
        self.client.session.close()

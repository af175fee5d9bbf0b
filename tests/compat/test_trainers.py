"""TRL's trainers end to end on the backend's colocate engine: GRPOTrainer and RLOOTrainer with use_vllm=True,
vllm_mode="colocate", a few optimizer steps on the tiny model, plain and conversational prompts.

Each run is a fresh interpreter (trainer_run.py next to this file, run with this cell's python): a colocate engine
lives in its process with torch.distributed state, and the session's `colocate_generator` may already hold one
in this pytest process. The child asserts and prints a JSON summary; a failure shows its stderr tail.

What is checked (inside trainer_run.py): the engine starts on the checkpoint's weights; training changes the HF
weights; the engine's weights change during training (TRL syncs before each step's generation); after a final
sync_weights() the engine holds exactly the trained weights (bf16 rounding) and its greedy output changed.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_vllmcompat.process.childenv import child_env

SCRIPT = Path(__file__).with_name("trainer_run.py")
TIMEOUT = 900  # engine start ~40-60 s on 2 busy cores, training 2 steps < 5 s

pytestmark = [pytest.mark.vllm_mode("colocate"), pytest.mark.backend]  # the trainers import the backend's vLLM modules


def run_trainer(spec: dict, tmp_path) -> dict:
    spec = {**spec, "out": str(tmp_path / "out")}
    env = child_env({"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), json.dumps(spec)], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, (f"{spec['trainer']} ({spec['dataset']}) failed after {elapsed:.0f} s "
                                  f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in summary:
        pytest.skip(summary["skip"])
    print(json.dumps({**summary, "wall_seconds": round(elapsed, 1)}))
    return summary


@pytest.mark.parametrize("dataset", ["plain", "chat"])
@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_trainer_colocate_trains_and_the_engine_follows(vllm_engine_host, vllm_model_dir, tmp_path, trainer, dataset):
    summary = run_trainer({"trainer": trainer, "dataset": dataset, "model": str(vllm_model_dir), "steps": 2},
                          tmp_path)
    assert summary["global_step"] == 2
    assert summary["hf_max_delta"] > 0 and summary["engine_max_delta_during_training"] > 0
    assert summary["engine_matches_trained"]
    assert summary["greedy_changed_after_final_sync"], "the engine's greedy output did not follow the training"


def skip_unless_transformers_5():
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("transformers")) < Version("5"):
        pytest.skip(f"not applicable: TRL refuses tools below transformers 5 ('Using tools with GRPOTrainer requires "
                    f"transformers version 5.0.0 or higher'; installed {version('transformers')})")


def test_grpo_with_tools_colocate(vllm_engine_host, vllm_model_dir, tmp_path):
    """GRPOTrainer(tools=[get_time]) on conversational prompts, as a user gets it: the tiny model's chat template is
    not one TRL knows, so the run sets `tokenizer.response_schema = qwen3_schema`, exactly what TRL's
    add_response_schema() does for a Qwen3 tokenizer. (The tiny model never emits a tool call: this covers the
    tool-enabled generation/parsing path, not tool execution.) On transformers 5.24 this fails at the first
    generation: TRL sets `response_schema`, transformers reads `response_template` (matrix known failure)."""
    skip_unless_transformers_5()
    summary = run_trainer({"trainer": "grpo", "dataset": "chat", "tools": True, "model": str(vllm_model_dir),
                           "steps": 2}, tmp_path)
    assert summary["global_step"] == 2 and summary["engine_matches_trained"]


TOOL_CALL = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("attribute", ["response_schema", "response_template"])
def test_trl_parses_a_tool_call_on_this_transformers(vllm_model_dir, attribute):
    """What GRPOTrainer(tools=...) does with each completion (no engine needed): trl.chat_template_utils.
    parse_response(tokenizer, completion_ids) must find the tool call. The schema is TRL's own Qwen3 one, set as
    TRL sets it (`response_schema`) or as transformers 5.24 reads it (`response_template`). On transformers 5.24
    both fail (matrix known failure): the first raises AttributeError (no `response_template`); the second makes
    transformers raise ValueError (TRL's schema is not in its new format, and `prefix=` is now required), which TRL
    swallows and falls back to plain text, so tool calls are silently never parsed."""
    skip_unless_transformers_5()
    from transformers import AutoTokenizer
    from trl.chat_template_utils import parse_response, qwen3_schema

    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    setattr(tokenizer, attribute, qwen3_schema)
    ids = tokenizer(TOOL_CALL, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == TOOL_CALL, "precondition: the tokenizer round-trips the tool call"
    try:
        direct = tokenizer.parse_response(ids, schema=qwen3_schema, prefix="")  # transformers' API, used correctly
    except Exception as exc:
        direct = f"{type(exc).__name__}: {exc}"
    parsed = parse_response(tokenizer, ids)
    assert parsed.get("tool_calls"), (f"TRL did not parse the tool call (tokenizer.{attribute} set): got {parsed!r}; "
                                      f"transformers' parse_response(ids, prefix='') gives {direct!r}")
